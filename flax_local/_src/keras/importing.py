"""tf_keras LocallyConnected1D/2D configs and weights to flax_local modules.

``from_keras`` turns a tf_keras ``layer.get_config()`` plus ``get_weights()``
into a ``flax_local.LocallyConnected1D/2D`` and its variables, computing
exactly the same numbers. Every config entry is translated (see
``objects.py``) or raises a ``ValueError`` that names it. No TensorFlow is
needed or imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import flax_local
from flax_local import functional
from flax_local._src import arguments
from flax_local._src.keras.layouts import KerasLayout, check_keras_implementation
from flax_local._src.keras.objects import (
    activation_from_keras,
    check_param_dtype,
    constraint_from_keras,
    dtypes_from_keras,
    initializer_from_keras,
    regularizer_from_keras,
    unit_axes,
)

KERAS_CLASSES = {"LocallyConnected1D": 1, "LocallyConnected2D": 2}
_IMPLEMENTATION_NAMES = {1: "patches", 2: "dense", 3: "sparse"}

# Config keys of tf_keras's LocallyConnected layers that carry no computation
# (or none flax_local has: ``trainable`` is the optimizer's business in JAX).
_IGNORED_KEYS = frozenset({"name", "trainable", "batch_input_shape", "batch_size", "input_shape"})
_LAYER_KEYS = frozenset(
    {
        "filters",
        "kernel_size",
        "strides",
        "padding",
        "data_format",
        "activation",
        "use_bias",
        "kernel_initializer",
        "bias_initializer",
        "kernel_regularizer",
        "bias_regularizer",
        "activity_regularizer",
        "kernel_constraint",
        "bias_constraint",
        "implementation",
        "dtype",
    }
)


# Layers -----------------------------------------------------------------------


def _layer_config(config: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The spatial rank and the plain config of a layer config (wrapped or not)."""
    if not isinstance(config, Mapping):
        hint = " (a JSON string: decode it with json.loads first)" if isinstance(config, str) else ""
        raise ValueError(
            "config must be a tf_keras LocallyConnected1D/2D get_config() dict, got "
            f"{type(config).__name__} {config!r:.80}{hint}."
        )
    config = dict(config)
    class_name = None
    if "class_name" in config and "config" in config:
        class_name = config["class_name"]
        if class_name not in KERAS_CLASSES:
            raise ValueError(
                f"from_keras converts tf_keras LocallyConnected1D/2D layers, got class {class_name!r}."
            )
        if not isinstance(config["config"], Mapping):
            raise ValueError(f"config['config'] must be a dict, got {config['config']!r:.80}.")
        config = dict(config["config"])
    if "kernel_size" not in config or "filters" not in config:
        raise ValueError(
            "config must be a tf_keras LocallyConnected1D/2D get_config() dict with at least "
            f"'filters' and 'kernel_size', got keys {sorted(config)}."
        )
    kernel_size = config["kernel_size"]
    if class_name is not None:
        rank = KERAS_CLASSES[class_name]
    elif isinstance(kernel_size, (int, np.integer)):
        raise ValueError(
            f"kernel_size={kernel_size!r} does not tell LocallyConnected1D from 2D; pass a list "
            "(as get_config() does) or the {'class_name', 'config'} form."
        )
    elif isinstance(kernel_size, (list, tuple)):
        rank = len(kernel_size)
    else:
        raise ValueError(f"kernel_size must be a list of 1 or 2 positive ints, got {kernel_size!r}.")
    if rank not in (1, 2):
        raise ValueError(f"tf_keras LocallyConnected layers are 1D or 2D, got kernel_size={kernel_size!r}.")
    unknown = set(config) - _LAYER_KEYS - _IGNORED_KEYS
    if unknown:
        raise ValueError(
            f"config entries {sorted(unknown)} are not LocallyConnected{rank}D settings that flax_local "
            "knows how to translate."
        )
    config["kernel_size"] = list(arguments.to_tuple(kernel_size, rank, "kernel_size"))
    config["filters"] = arguments.check_positive(config["filters"], "filters")
    use_bias = config.get("use_bias", True)
    if not isinstance(use_bias, (bool, np.bool_)):
        raise ValueError(f"use_bias must be true or false, got {use_bias!r}.")
    return rank, config


def keras_layout(config: Mapping[str, Any], input_shape: Sequence[int]) -> KerasLayout:
    """The ``KerasLayout`` of a tf_keras LocallyConnected config on ``input_shape``.

    Example:
      >>> config = {"filters": 4, "kernel_size": [3], "padding": "same", "strides": [2]}
      >>> keras_layout(config, (9, 2)).pads
      ((1, 1),)
    """
    rank, config = _layer_config(config)
    data_format = config.get("data_format") or "channels_last"
    if not isinstance(input_shape, Sequence) or len(input_shape) != rank + 1:
        raise ValueError(
            f"input_shape must be the input's shape without the batch dimension ({rank} spatial "
            f"dimension(s) and channels, {data_format}), got {input_shape!r}."
        )
    return KerasLayout(
        arguments.to_tuple(input_shape, rank + 1, "input_shape"),
        filters=config["filters"],
        kernel_size=config["kernel_size"],
        strides=arguments.to_tuple(config.get("strides", 1), rank, "strides"),
        padding=config.get("padding", "valid"),
        data_format=data_format,
    )


def _flax_padding(layout: KerasLayout) -> Any:
    """Our padding argument: a name where it means the same, else the pairs."""
    if all(pair == (0, 0) for pair in layout.pads):
        return "valid"
    tf_same = functional.geometry(
        layout.in_spatial, layout.kernel_size, strides=layout.strides, padding="same"
    ).padding
    if tf_same == layout.pads:
        return "same"
    return layout.pads


def _check_dtypes(dtype: Any, param_dtype: Any, keras_dtype: Any) -> None:
    """Raises where JAX would silently compute in float32 what Keras computes in float64."""
    wanted = [d for d in (dtype, param_dtype) if d is not None and jnp.dtype(d) == jnp.float64]
    if wanted and jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
        raise ValueError(
            f"dtype={keras_dtype!r}: the Keras layer computes in float64, but JAX's 64-bit mode is "
            "off, so its weights would be cut to float32 while the module claims float64. Enable it "
            "with jax.config.update('jax_enable_x64', True) before converting, or convert to float32 "
            "deliberately with param_dtype='float32'."
        )


def module_from_keras(
    config: Mapping[str, Any],
    input_shape: Sequence[int],
    *,
    implementation: str | int | None = None,
    param_dtype: Any = None,
) -> flax_local.LocallyConnected:
    """The flax_local module equivalent to a tf_keras LocallyConnected config.

    Args:
      config: the layer's ``get_config()`` (optionally wrapped as
        ``{"class_name": "LocallyConnected2D", "config": {...}}``).
      input_shape: the layer's input shape without the batch dimension, in its
        ``data_format``. Needed because Keras's ``padding="same"`` becomes
        explicit padding that depends on the input size.
      implementation: flax_local's implementation; default (None) Keras's
        choice (1, 2, 3 are flax_local's "patches", "dense", "sparse").
      param_dtype: the variables' dtype; default (None) the Keras ``dtype``'s
        (its variable dtype for a mixed policy). Given, it replaces Keras's
        variable dtype, and a plain Keras dtype's computation then follows the
        inputs and parameters.

    Returns:
      A ``LocallyConnected1D`` or ``LocallyConnected2D``.

    Raises:
      ValueError: for a config entry without a flax_local equivalent, and
        for a float64 Keras layer while JAX's 64-bit mode is off (JAX would
        silently keep float32 weights): enable ``jax_enable_x64``, or pass
        ``param_dtype="float32"`` to convert to float32 on purpose.

    Example:
      >>> config = {"filters": 4, "kernel_size": [2, 2], "padding": "same",
      ...           "implementation": 2, "activation": "relu"}
      >>> module = module_from_keras(config, (5, 5, 3))
      >>> module.padding, module.activation, module.implementation
      (((1, 0), (1, 0)), 'relu', 'dense')
    """
    rank, config = _layer_config(config)
    layout = keras_layout(config, input_shape)
    keras_implementation = check_keras_implementation(config.get("implementation", 1), layout.padding)
    dtype, keras_param_dtype = dtypes_from_keras(config.get("dtype"))
    if param_dtype is None:
        param_dtype = keras_param_dtype
    else:
        param_dtype = check_param_dtype(param_dtype, "param_dtype")
        if dtype == keras_param_dtype:  # a plain dtype, not a mixed policy
            dtype = None
    _check_dtypes(dtype, param_dtype, config.get("dtype"))
    cls = flax_local.LocallyConnected1D if rank == 1 else flax_local.LocallyConnected2D
    return cls(
        filters=layout.filters,
        kernel_size=layout.kernel_size,
        strides=layout.strides,
        padding=_flax_padding(layout),
        data_format=layout.data_format,
        activation=activation_from_keras(config.get("activation")),
        use_bias=bool(config.get("use_bias", True)),
        kernel_initializer=initializer_from_keras(
            config.get("kernel_initializer", "glorot_uniform"), "kernel_initializer"
        ),
        bias_initializer=initializer_from_keras(config.get("bias_initializer", "zeros"), "bias_initializer"),
        kernel_regularizer=regularizer_from_keras(config.get("kernel_regularizer"), "kernel_regularizer"),
        bias_regularizer=regularizer_from_keras(config.get("bias_regularizer"), "bias_regularizer"),
        activity_regularizer=regularizer_from_keras(
            config.get("activity_regularizer"), "activity_regularizer"
        ),
        kernel_constraint=constraint_from_keras(
            config.get("kernel_constraint"),
            "kernel_constraint",
            exact_axes=unit_axes("kernel", keras_implementation, rank),
        ),
        bias_constraint=constraint_from_keras(
            config.get("bias_constraint"),
            "bias_constraint",
            exact_axes=unit_axes("bias", keras_implementation, rank),
        ),
        implementation=(
            _IMPLEMENTATION_NAMES[keras_implementation] if implementation is None else implementation
        ),
        dtype=dtype,
        param_dtype=param_dtype,
    )


def from_keras(
    config: Mapping[str, Any],
    weights: Sequence[Any],
    input_shape: Sequence[int],
    *,
    implementation: str | int | None = None,
    param_dtype: Any = None,
) -> tuple[flax_local.LocallyConnected, dict[str, dict[str, jax.Array]]]:
    """Converts a tf_keras LocallyConnected1D/2D layer to flax_local.

    The returned module applied to the returned variables computes what the
    Keras layer computes (up to float32 rounding), for every Keras
    implementation, ``data_format`` and padding. Kernel and bias are
    converted to flax_local's layout (``(*out_spatial, *kernel_size, C, F)``
    and ``(*out_spatial, F)``); implementation 2's entries outside the
    connectivity mask, which Keras multiplies by zero, are dropped.

    Args:
      config: ``layer.get_config()`` of a tf_keras ``LocallyConnected1D`` or
        ``LocallyConnected2D`` (or the ``{"class_name", "config"}`` form of a
        saved model).
      weights: ``layer.get_weights()``: ``[kernel, bias]``, or ``[kernel]``
        when ``use_bias`` is False.
      input_shape: the layer's input shape without the batch dimension, in
        its ``data_format``: ``(*spatial, C)`` or ``(C, *spatial)``.
      implementation: flax_local's implementation; default (None) keeps
        Keras's choice. All implementations compute the same numbers.
      param_dtype: the variables' dtype; default (None) the Keras layer's
        (see ``module_from_keras``). The weights are cast to it.

    The config's ``name`` and ``trainable`` have no counterpart on a Flax
    module and are ignored (freeze parameters with an optax mask); every
    other entry is translated or raises.

    Returns:
      ``(module, variables)`` with ``variables = {"params": {"kernel": ...,
      "bias": ...}}`` (no ``"bias"`` when ``use_bias`` is False), ready for
      ``module.apply(variables, x)``.

    Raises:
      ValueError: for a config entry without a flax_local equivalent,
        weights whose shapes do not fit the config and ``input_shape``, or a
        float64 layer while JAX's 64-bit mode is off: rather than cut the
        weights to float32 silently, it asks for ``jax_enable_x64`` or an
        explicit ``param_dtype="float32"``.

    Example:
      >>> import numpy as np
      >>> config = {"filters": 2, "kernel_size": [3], "strides": [1], "padding": "valid",
      ...           "data_format": "channels_last", "activation": "linear", "use_bias": True,
      ...           "implementation": 1}
      >>> kernel = np.ones((4, 3 * 5, 2), np.float32)   # Keras impl 1: (P, k * C, F)
      >>> bias = np.zeros((4, 2), np.float32)
      >>> module, variables = from_keras(config, [kernel, bias], input_shape=(6, 5))
      >>> variables["params"]["kernel"].shape
      (4, 3, 5, 2)
      >>> module.apply(variables, np.ones((1, 6, 5), np.float32))[0, :, 0].tolist()
      [15.0, 15.0, 15.0, 15.0]
    """
    rank, plain = _layer_config(config)
    module = module_from_keras(plain, input_shape, implementation=implementation, param_dtype=param_dtype)
    layout = keras_layout(plain, input_shape)
    keras_implementation = check_keras_implementation(plain.get("implementation", 1), layout.padding)
    weights = list(weights)
    expected = 2 if module.use_bias else 1
    if len(weights) != expected:
        raise ValueError(
            f"a LocallyConnected{rank}D with use_bias={module.use_bias} has {expected} weight "
            f"array(s) ([kernel{', bias' if module.use_bias else ''}]), got {len(weights)}."
        )
    kernel = layout.kernel_from_keras(np.asarray(weights[0]), keras_implementation)
    params = {"kernel": jnp.asarray(kernel, module.param_dtype)}
    if module.use_bias:
        params["bias"] = jnp.asarray(layout.bias_from_keras(np.asarray(weights[1])), module.param_dtype)
    return module, {"params": params}
