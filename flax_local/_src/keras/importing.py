"""tf_keras LocallyConnected1D/2D configs and weights to flax_local, and back.

``from_keras`` turns a tf_keras ``layer.get_config()`` plus ``get_weights()``
into a ``flax_local.LocallyConnected1D/2D`` and its variables, computing
exactly the same numbers. Every config entry is translated through a table
(activations, initializers, regularizers, constraints, dtype policies);
anything that has no flax_local equivalent raises a ``ValueError`` that names
it, so nothing is dropped silently. No TensorFlow is needed or imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_local._src import constraints as constraints_lib
from flax_local._src import geometry as geometry_lib
from flax_local._src import initializers as initializers_lib
from flax_local._src import regularizers as regularizers_lib
from flax_local._src.activations import ACTIVATIONS
from flax_local._src.keras.layouts import KerasLayout, check_implementation
from flax_local._src.linen import LocallyConnected, LocallyConnected1D, LocallyConnected2D

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


# Serialized Keras objects ---------------------------------------------------


def _unwrap(value: Any, argument: str) -> tuple[str, dict[str, Any]]:
    """A serialized Keras object as ``(class_name, config)``.

    Accepts a plain name (``"l2"``), the classic ``{"class_name", "config"}``
    dict, and the newer form with ``"module"`` and ``"registered_name"``.
    """
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and "class_name" in value:
        registered = value.get("registered_name")
        class_name = value["class_name"]
        if registered is not None and registered != class_name:
            raise ValueError(
                f"{argument}: {registered!r} is a custom (registered) Keras object; flax_local "
                f"cannot translate it. Pass an equivalent callable to the module instead. Got {value!r}."
            )
        config = value.get("config") or {}
        if not isinstance(config, Mapping):
            raise ValueError(f"{argument}: cannot translate {value!r} (its 'config' is not a dict).")
        return str(class_name), dict(config)
    raise ValueError(f"{argument}: cannot translate {value!r}; expected a name or a serialized Keras object.")


def _canonical(name: str) -> str:
    """``"GlorotUniform"``, ``"glorot_uniform"`` and ``"glorotuniform"`` alike."""
    return name.replace("_", "").lower()


def _take(config: dict[str, Any], argument: str, name: str, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``config`` in ``allowed`` (with defaults); raises on others."""
    unknown = set(config) - set(allowed)
    if unknown:
        raise ValueError(
            f"{argument}: {name} has config entries {sorted(unknown)} that flax_local cannot "
            f"translate (it understands {sorted(allowed)})."
        )
    return {key: config.get(key, default) for key, default in allowed.items()}


# Initializers -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomNormal:
    """``mean + stddev * normal``: Keras's ``RandomNormal``."""

    mean: float = 0.0
    stddev: float = 0.05

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return self.mean + self.stddev * jax.random.normal(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class RandomUniform:
    """Uniform on ``[minval, maxval)``: Keras's ``RandomUniform``."""

    minval: float = -0.05
    maxval: float = 0.05

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, self.minval, self.maxval)


@dataclasses.dataclass(frozen=True)
class TruncatedNormal:
    """``mean + stddev * normal`` truncated to two ``stddev``: Keras's ``TruncatedNormal``."""

    mean: float = 0.0
    stddev: float = 0.05

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return self.mean + self.stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def _variance_scaling(config: dict[str, Any]) -> Any:
    # Keras's "normal" is its truncated normal; "untruncated_normal" the plain one.
    distribution = {"normal": "truncated_normal", "untruncated_normal": "normal"}.get(
        config["distribution"], config["distribution"]
    )
    return initializers_lib.variance_scaling(float(config["scale"]), config["mode"], distribution)


_SEED = {"seed": None}
# canonical Keras class name -> (config entries with defaults, builder).
INITIALIZERS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]] = {
    "glorotuniform": (_SEED, lambda c: "glorot_uniform"),
    "glorotnormal": (_SEED, lambda c: "glorot_normal"),
    "heuniform": (_SEED, lambda c: "he_uniform"),
    "henormal": (_SEED, lambda c: "he_normal"),
    "lecununiform": (_SEED, lambda c: "lecun_uniform"),
    "lecunnormal": (_SEED, lambda c: "lecun_normal"),
    "zeros": ({}, lambda c: "zeros"),
    "ones": ({}, lambda c: "ones"),
    "constant": ({"value": 0.0}, lambda c: initializers_lib.constant(float(c["value"]))),
    "randomnormal": (
        {"mean": 0.0, "stddev": 0.05, "seed": None},
        lambda c: RandomNormal(float(c["mean"]), float(c["stddev"])),
    ),
    "randomuniform": (
        {"minval": -0.05, "maxval": 0.05, "seed": None},
        lambda c: RandomUniform(float(c["minval"]), float(c["maxval"])),
    ),
    "truncatednormal": (
        {"mean": 0.0, "stddev": 0.05, "seed": None},
        lambda c: TruncatedNormal(float(c["mean"]), float(c["stddev"])),
    ),
    "variancescaling": (
        {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal", "seed": None},
        _variance_scaling,
    ),
    "orthogonal": ({"gain": 1.0, "seed": None}, lambda c: initializers_lib.orthogonal(float(c["gain"]))),
    "identity": ({"gain": 1.0}, lambda c: initializers_lib.identity(float(c["gain"]))),
}


def initializer_from_keras(value: Any, argument: str = "initializer") -> Any:
    """Translates a serialized Keras initializer (seeds are dropped: JAX uses keys).

    Note that flax_local initializes each output position like a Conv kernel
    (see ``flax_local.initializers``), so fresh weights are not distributed as
    tf_keras's, whose fans count all positions in.

    Args:
      value: a name or a ``{"class_name": ..., "config": ...}`` dict.
      argument: the config key, for error messages.

    Returns:
      A name or callable for ``LocallyConnected``'s initializer fields.

    Example:
      >>> initializer_from_keras({"class_name": "HeNormal", "config": {"seed": 3}})
      'he_normal'
      >>> initializer_from_keras({"class_name": "RandomNormal", "config": {"stddev": 0.3}})
      RandomNormal(mean=0.0, stddev=0.3)
    """
    name, config = _unwrap(value, argument)
    entry = INITIALIZERS.get(_canonical(name))
    if entry is None:
        raise ValueError(
            f"{argument}: Keras initializer {name!r} has no flax_local equivalent (known: "
            f"{sorted(INITIALIZERS)}); pass a jax initializer to the module instead."
        )
    allowed, build = entry
    return build(_take(config, argument, name, allowed))


# Regularizers -----------------------------------------------------------------

REGULARIZERS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]] = {
    "l1": ({"l1": 0.01}, lambda c: regularizers_lib.l1(float(c["l1"]))),
    "l2": ({"l2": 0.01}, lambda c: regularizers_lib.l2(float(c["l2"]))),
    "l1l2": ({"l1": 0.0, "l2": 0.0}, lambda c: regularizers_lib.l1_l2(l1=float(c["l1"]), l2=float(c["l2"]))),
}


def regularizer_from_keras(value: Any, argument: str = "regularizer") -> Any:
    """Translates a serialized Keras regularizer (None stays None).

    The factors are kept as serialized (tf_keras rounds them to float32, e.g.
    0.009999999776482582), so the penalties equal Keras's bit for bit in
    float32.

    Example:
      >>> regularizer_from_keras({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}})
      L1L2(l1=0.1, l2=0.2)
      >>> regularizer_from_keras("l1_l2")
      L1L2(l1=0.01, l2=0.01)
    """
    if value is None:
        return None
    name, config = _unwrap(value, argument)
    key = _canonical(name)
    if isinstance(value, str) and key == "l1l2":
        config = {"l1": 0.01, "l2": 0.01}  # the string "l1_l2" means Keras's l1_l2() defaults
    entry = REGULARIZERS.get(key)
    if entry is None:
        raise ValueError(
            f"{argument}: Keras regularizer {name!r} has no flax_local equivalent (known: L1, L2, "
            "L1L2); pass a callable array -> scalar to the module instead."
        )
    allowed, build = entry
    return build(_take(config, argument, name, allowed))


# Constraints ------------------------------------------------------------------


CONSTRAINTS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]] = {
    "maxnorm": ({"max_value": 2.0, "axis": 0}, lambda c: constraints_lib.max_norm(float(c["max_value"]))),
    "unitnorm": ({"axis": 0}, lambda c: constraints_lib.unit_norm()),
    "minmaxnorm": (
        {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0},
        lambda c: constraints_lib.min_max_norm(
            float(c["min_value"]), float(c["max_value"]), float(c["rate"])
        ),
    ),
    "nonneg": ({}, lambda c: constraints_lib.non_neg()),
    "radialconstraint": ({}, lambda c: constraints_lib.radial_constraint()),
}


def unit_axes(weight: str, implementation: int, rank: int) -> tuple[int, ...] | None:
    """The Keras ``axis`` that norms one output unit, as flax_local does.

    For the kernel: ``1`` on implementation 1's ``(P, K * C, F)``; the input
    and channel axes on implementation 2's dense kernel (exact while its junk
    is zero); none on implementation 3's flat vector. For the bias: no axis
    (each element is a unit).

    Example:
      >>> unit_axes("kernel", 1, 2), unit_axes("kernel", 2, 2), unit_axes("bias", 3, 1)
      ((1,), (0, 1, 2), ())
    """
    if weight == "bias":
        return ()
    return {1: (1,), 2: tuple(range(rank + 1)), 3: None}[implementation]


def constraint_from_keras(
    value: Any,
    argument: str = "constraint",
    *,
    exact_axes: tuple[int, ...] | None = None,
) -> Any:
    """Translates a serialized Keras constraint (None stays None).

    flax_local's norm constraints (``MaxNorm``, ``UnitNorm``, ``MinMaxNorm``)
    act per output unit: the window and input channels of one position and
    filter (each element of a bias), in every implementation. tf_keras's
    ``axis`` indexes its implementation-specific weights instead, and its
    default ``axis=0`` is not per unit: on implementation 1's kernel ``(P, K *
    C, F)`` it takes the norm *across output positions* (measured with
    tf_keras 2.21). The default ``axis=0`` is translated to the per-unit
    constraint anyway (so a default Keras norm constraint is not reproduced
    exactly during training), as is ``exact_axes`` (see ``unit_axes``); any
    other axis raises.

    Args:
      value: a name or a serialized Keras constraint.
      argument: the config key, for error messages.
      exact_axes: the Keras axes that mean "per unit" for this weight.

    Returns:
      A ``flax_local.constraints`` object, or None.

    Example:
      >>> constraint_from_keras({"class_name": "MaxNorm", "config": {"max_value": 3, "axis": 0}})
      MaxNorm(max_value=3.0)
    """
    if value is None:
        return None
    name, config = _unwrap(value, argument)
    entry = CONSTRAINTS.get(_canonical(name))
    if entry is None:
        raise ValueError(
            f"{argument}: Keras constraint {name!r} has no flax_local equivalent (known: "
            f"{sorted(CONSTRAINTS)}); pass a callable to the module instead."
        )
    allowed, build = entry
    config = _take(config, argument, name, allowed)
    if "axis" in allowed:
        axis = config["axis"]
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        if axis != (0,) and axis != exact_axes:
            raise ValueError(
                f"{argument}: {name} with axis={config['axis']!r} has no flax_local equivalent: Keras's "
                "axis indexes its own weight layout, while flax_local's norm constraints act on each "
                f"output unit. Translated are axis=0 (Keras's default) and {exact_axes!r} (per unit here)."
            )
    return build(config)


# Activations and dtypes -------------------------------------------------------


def activation_from_keras(value: Any) -> str | None:
    """Translates a Keras activation name (``"linear"`` and None become None).

    Example:
      >>> activation_from_keras("relu"), activation_from_keras("linear")
      ('relu', None)
    """
    if value is None:
        return None
    name, config = _unwrap(value, "activation")
    if config:
        raise ValueError(f"activation: cannot translate the configured Keras activation {value!r}.")
    if name.lower() == "linear":
        return None
    if name.lower() not in ACTIVATIONS:
        raise ValueError(
            f"activation: Keras activation {name!r} has no flax_local equivalent (known: "
            f"{sorted(ACTIVATIONS)}); pass a callable to the module instead."
        )
    return name.lower()


def dtypes_from_keras(value: Any) -> tuple[Any, Any]:
    """``(dtype, param_dtype)`` for a Keras dtype or dtype policy.

    ``"float32"`` gives ``(None, float32)``: computation in the inputs' and
    params' type, as flax does by default. ``"mixed_bfloat16"`` gives
    ``(bfloat16, float32)``: float32 variables, bfloat16 computation.

    Example:
      >>> dtypes_from_keras({"class_name": "Policy", "config": {"name": "mixed_float16"}})
      (dtype('float16'), dtype('float32'))
    """
    if value is None:
        return None, jnp.dtype(jnp.float32)
    name, config = _unwrap(value, "dtype")
    if config:
        if _canonical(name) not in ("policy", "dtypepolicy") or "name" not in config:
            raise ValueError(f"dtype: cannot translate the Keras dtype policy {value!r}.")
        name = config["name"]
    try:
        if name.startswith("mixed_"):
            return jnp.dtype(name[len("mixed_") :]), jnp.dtype(jnp.float32)
        dtype = jnp.dtype(name)
    except TypeError as error:
        raise ValueError(f"dtype: cannot translate the Keras dtype {value!r}.") from error
    return (None if dtype == jnp.float32 else dtype), dtype


# Layers -----------------------------------------------------------------------


def _layer_config(config: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The spatial rank and the plain config of a layer config (wrapped or not)."""
    config = dict(config)
    class_name = None
    if "class_name" in config and "config" in config:
        class_name = config["class_name"]
        if class_name not in KERAS_CLASSES:
            raise ValueError(
                f"from_keras converts tf_keras LocallyConnected1D/2D layers, got class {class_name!r}."
            )
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
    else:
        rank = len(kernel_size)
    if rank not in (1, 2):
        raise ValueError(f"tf_keras LocallyConnected layers are 1D or 2D, got kernel_size={kernel_size!r}.")
    unknown = set(config) - _LAYER_KEYS - _IGNORED_KEYS
    if unknown:
        raise ValueError(
            f"config entries {sorted(unknown)} are not LocallyConnected{rank}D settings that flax_local "
            "knows how to translate."
        )
    config["kernel_size"] = list(_as_tuple(kernel_size, rank, "kernel_size"))
    return rank, config


def _as_tuple(value: Any, rank: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * rank
    values = tuple(int(v) for v in value)
    if len(values) != rank:
        raise ValueError(f"{name} must have {rank} entries, got {value!r}.")
    return values


def keras_layout(config: Mapping[str, Any], input_shape: Sequence[int]) -> KerasLayout:
    """The ``KerasLayout`` of a tf_keras LocallyConnected config on ``input_shape``.

    Example:
      >>> config = {"filters": 4, "kernel_size": [3], "padding": "same", "strides": [2]}
      >>> keras_layout(config, (9, 2)).pads
      ((1, 1),)
    """
    rank, config = _layer_config(config)
    data_format = config.get("data_format") or "channels_last"
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != rank + 1:
        raise ValueError(
            f"input_shape must be the input's shape without the batch dimension ({rank} spatial "
            f"dimension(s) and channels, {data_format}), got {input_shape}."
        )
    return KerasLayout(
        input_shape,
        filters=int(config["filters"]),
        kernel_size=_as_tuple(config["kernel_size"], rank, "kernel_size"),
        strides=_as_tuple(config.get("strides", 1), rank, "strides"),
        padding=config.get("padding", "valid"),
        data_format=data_format,
    )


def _flax_padding(layout: KerasLayout) -> Any:
    """Our padding argument: a name where it means the same, else the pairs."""
    if all(pair == (0, 0) for pair in layout.pads):
        return "valid"
    tf_same = geometry_lib.resolve_padding(
        "same", layout.in_spatial, layout.kernel_size, layout.strides, (1,) * layout.rank
    )
    if tf_same == layout.pads:
        return "same"
    return layout.pads


def module_from_keras(
    config: Mapping[str, Any],
    input_shape: Sequence[int],
    *,
    implementation: str | int | None = None,
) -> LocallyConnected:
    """The flax_local module equivalent to a tf_keras LocallyConnected config.

    Args:
      config: the layer's ``get_config()`` (optionally wrapped as
        ``{"class_name": "LocallyConnected2D", "config": {...}}``).
      input_shape: the layer's input shape without the batch dimension, in its
        ``data_format``. Needed because Keras's ``padding="same"`` becomes
        explicit padding that depends on the input size.
      implementation: flax_local's implementation; default (None) Keras's
        choice (1, 2, 3 are flax_local's "patches", "dense", "sparse").

    Returns:
      A ``LocallyConnected1D`` or ``LocallyConnected2D``.

    Example:
      >>> config = {"filters": 4, "kernel_size": [2, 2], "padding": "same",
      ...           "implementation": 2, "activation": "relu"}
      >>> module = module_from_keras(config, (5, 5, 3))
      >>> module.padding, module.activation, module.implementation
      (((1, 0), (1, 0)), 'relu', 'dense')
    """
    rank, config = _layer_config(config)
    layout = keras_layout(config, input_shape)
    keras_implementation = check_implementation(config.get("implementation", 1), layout.padding)
    dtype, param_dtype = dtypes_from_keras(config.get("dtype"))
    cls = LocallyConnected1D if rank == 1 else LocallyConnected2D
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
) -> tuple[LocallyConnected, dict[str, dict[str, jax.Array]]]:
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

    The config's ``name`` and ``trainable`` have no counterpart on a Flax
    module and are ignored (freeze parameters with an optax mask); every
    other entry is translated or raises.

    Returns:
      ``(module, variables)`` with ``variables = {"params": {"kernel": ...,
      "bias": ...}}`` (no ``"bias"`` when ``use_bias`` is False), ready for
      ``module.apply(variables, x)``.

    Raises:
      ValueError: for a config entry without a flax_local equivalent, or
        weights whose shapes do not fit the config and ``input_shape``.

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
    module = module_from_keras(plain, input_shape, implementation=implementation)
    layout = keras_layout(plain, input_shape)
    keras_implementation = check_implementation(plain.get("implementation", 1), layout.padding)
    weights = list(weights)
    expected = 2 if module.use_bias else 1
    if len(weights) != expected:
        raise ValueError(
            f"a LocallyConnected{rank}D with use_bias={module.use_bias} has {expected} weight "
            f"array(s) ([kernel{', bias' if module.use_bias else ''}]), got {len(weights)}."
        )
    params = {"kernel": jnp.asarray(layout.kernel_from_keras(np.asarray(weights[0]), keras_implementation))}
    if module.use_bias:
        params["bias"] = jnp.asarray(layout.bias_from_keras(np.asarray(weights[1])))
    return module, {"params": params}


# Back to Keras ----------------------------------------------------------------


def _module_layout(module: LocallyConnected, input_shape: Sequence[int], implementation: int) -> KerasLayout:
    """The Keras layout computing what ``module`` computes, or a ValueError."""
    rank = module.rank
    kernel_size, strides, padding, dilation = geometry_lib.check_geometry_arguments(
        rank, module.kernel_size, module.strides, module.padding, module.dilation_rate
    )
    if any(d != 1 for d in dilation):
        raise ValueError(f"tf_keras LocallyConnected layers have no dilation; got dilation_rate={dilation}.")
    if rank not in (1, 2):
        raise ValueError(f"tf_keras has LocallyConnected1D and 2D only; the module has rank {rank}.")
    data_format = module.data_format.lower()
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != rank + 1:
        raise ValueError(
            f"input_shape must be the input's shape without batch ({rank} spatial dimension(s) and "
            f"channels, {data_format}), got {input_shape}."
        )
    spatial = input_shape[:-1] if data_format == "channels_last" else input_shape[1:]
    ours = geometry_lib.make_geometry(spatial, kernel_size, strides, padding, dilation)
    candidates = ("valid",) if implementation == 1 else ("valid", "same")
    for keras_padding in candidates:
        try:
            layout = KerasLayout(
                input_shape,
                filters=module.filters,
                kernel_size=kernel_size,
                strides=strides,
                padding=keras_padding,
                data_format=data_format,
            )
        except ValueError:
            continue
        lows_match = all(p[0] == q[0] for p, q in zip(layout.pads, ours.padding, strict=True))
        if lows_match and layout.out_spatial == ours.output_spatial:
            return layout
    raise ValueError(
        f"padding={module.padding!r} (resolved to {ours.padding} for input spatial shape {spatial}) "
        f"has no tf_keras implementation={implementation} equivalent: Keras offers 'valid' and, with "
        "implementation 2 or 3, 'same' meaning low padding kernel_size // 2 and ceil(size / stride) outputs."
    )


def _params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    return variables["params"] if "params" in variables else variables


def to_keras(
    module: LocallyConnected,
    variables: Mapping[str, Any],
    input_shape: Sequence[int],
    implementation: int = 1,
) -> list[np.ndarray]:
    """flax_local weights as ``get_weights()`` of the equivalent tf_keras layer.

    The tf_keras layer must have the same ``filters``, ``kernel_size``,
    ``strides``, ``data_format`` and ``use_bias``, the given
    ``implementation``, and the padding ``to_keras_config`` reports (the
    module's padding must be expressible in Keras: see ``keras_padding``).

    Args:
      module: a ``LocallyConnected1D``/``2D`` (or ``LocallyConnected`` of rank 1
        or 2) without dilation.
      variables: ``{"params": {"kernel", "bias"}}`` (or the params dict).
      input_shape: the input shape without batch, in the module's
        ``data_format``.
      implementation: the Keras implementation, 1, 2 or 3. Implementation 2's
        entries outside the connectivity mask are zeros.

    Returns:
      ``[kernel, bias]`` (``[kernel]`` without bias) as numpy arrays, for
      ``keras_layer.set_weights``.

    Example:
      >>> import numpy as np
      >>> import flax_local
      >>> module = flax_local.LocallyConnected1D(filters=2, kernel_size=3)
      >>> # For inputs (batch, 6, 5): kernel (4, 3, 5, 2), bias (4, 2), as module.init makes.
      >>> variables = {"params": {"kernel": np.ones((4, 3, 5, 2)), "bias": np.zeros((4, 2))}}
      >>> [w.shape for w in to_keras(module, variables, (6, 5), implementation=1)]
      [(4, 15, 2), (4, 2)]
      >>> [w.shape for w in to_keras(module, variables, (6, 5), implementation=2)]
      [(6, 5, 4, 2), (4, 2)]
    """
    implementation = check_implementation(implementation)
    layout = _module_layout(module, input_shape, implementation)
    params = _params(variables)
    weights = [layout.kernel_to_keras(np.asarray(params["kernel"]), implementation)]
    if module.use_bias:
        weights.append(layout.bias_to_keras(np.asarray(params["bias"])))
    return weights


def _activation_to_keras(activation: Any) -> str:
    if activation is None:
        return "linear"
    if isinstance(activation, str):
        if activation.lower() not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not a Keras activation name.")
        return activation.lower()
    for name, function in ACTIVATIONS.items():
        if function is activation:
            return name
    raise ValueError(f"activation {activation!r} is a callable with no Keras name; it cannot be exported.")


def _regularizer_to_keras(regularizer: Any, argument: str) -> Any:
    regularizer = regularizers_lib.get_regularizer(regularizer, argument)
    if regularizer is None:
        return None
    if isinstance(regularizer, regularizers_lib.L1L2):
        return {"class_name": "L1L2", "config": {"l1": regularizer.l1, "l2": regularizer.l2}}
    raise ValueError(f"{argument}={regularizer!r} has no Keras equivalent.")


def _constraint_to_keras(constraint: Any, argument: str, axes: tuple[int, ...] | None) -> Any:
    constraint = constraints_lib.get_constraint(constraint, argument)
    if constraint is None:
        return None
    if isinstance(constraint, constraints_lib.NonNeg):
        return {"class_name": "NonNeg", "config": {}}
    if isinstance(constraint, constraints_lib.RadialConstraint):
        return {"class_name": "RadialConstraint", "config": {}}
    norms = (constraints_lib.MaxNorm, constraints_lib.UnitNorm, constraints_lib.MinMaxNorm)
    if not isinstance(constraint, norms):
        raise ValueError(f"{argument}={constraint!r} has no Keras equivalent.")
    if axes is None:
        raise ValueError(
            f"{argument}={constraint!r}: a per-unit norm has no Keras axis on implementation 3's flat "
            "kernel; export with implementation 1 or 2."
        )
    config = dataclasses.asdict(constraint)
    return {"class_name": type(constraint).__name__, "config": {**config, "axis": list(axes)}}


def to_keras_config(
    module: LocallyConnected, input_shape: Sequence[int], implementation: int = 1
) -> dict[str, Any]:
    """A tf_keras LocallyConnected config computing what ``module`` computes.

    Use it with ``tf_keras.layers.LocallyConnected2D.from_config`` (or 1D),
    then ``set_weights(to_keras(...))``. Initializers given as names are
    exported; callables are not (the weights come from ``to_keras``), and
    neither are flax_local's ``dtype``/``param_dtype``. Norm constraints are
    exported with the Keras ``axis`` that means "per unit" (see
    ``unit_axes``); implementation 3 has none, so they raise there.

    Example:
      >>> import flax_local
      >>> module = flax_local.LocallyConnected2D(4, (2, 2), padding=((1, 0), (1, 0)))
      >>> config = to_keras_config(module, (5, 5, 3), implementation=3)
      >>> config["padding"], config["kernel_size"], config["implementation"]
      ('same', (2, 2), 3)
    """
    implementation = check_implementation(implementation)
    layout = _module_layout(module, input_shape, implementation)
    config: dict[str, Any] = {
        "filters": layout.filters,
        "kernel_size": layout.kernel_size,
        "strides": layout.strides,
        "padding": layout.padding,
        "data_format": layout.data_format,
        "activation": _activation_to_keras(module.activation),
        "use_bias": bool(module.use_bias),
        "kernel_regularizer": _regularizer_to_keras(module.kernel_regularizer, "kernel_regularizer"),
        "bias_regularizer": _regularizer_to_keras(module.bias_regularizer, "bias_regularizer"),
        "activity_regularizer": _regularizer_to_keras(module.activity_regularizer, "activity_regularizer"),
        "kernel_constraint": _constraint_to_keras(
            module.kernel_constraint, "kernel_constraint", unit_axes("kernel", implementation, layout.rank)
        ),
        "bias_constraint": _constraint_to_keras(
            module.bias_constraint, "bias_constraint", unit_axes("bias", implementation, layout.rank)
        ),
        "implementation": implementation,
    }
    for key in ("kernel_initializer", "bias_initializer"):
        value = getattr(module, key)
        if isinstance(value, str):
            config[key] = value.lower()
    return config
