"""flax_local modules and variables to tf_keras LocallyConnected1D/2D configs and weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx
from flax.core import meta

from flax_local import functional
from flax_local._src import arguments
from flax_local._src import constraints as constraints_lib
from flax_local._src import regularizers as regularizers_lib
from flax_local._src.activations import ACTIVATIONS
from flax_local._src.keras.layouts import KerasLayout, check_keras_implementation
from flax_local._src.keras.objects import unit_axes


def _module_layout(module: Any, input_shape: Sequence[int], implementation: int) -> KerasLayout:
    """The Keras layout computing what ``module`` computes, or a ValueError."""
    _check_module(module)
    rank = module.rank
    if rank not in (1, 2):
        raise ValueError(f"tf_keras has LocallyConnected1D and 2D only; the module has rank {rank}.")
    data_format = arguments.check_data_format(module.data_format)
    if not isinstance(input_shape, Sequence) or len(input_shape) != rank + 1:
        raise ValueError(
            f"input_shape must be the input's shape without batch ({rank} spatial dimension(s) and "
            f"channels, {data_format}), got {input_shape!r}."
        )
    input_shape = arguments.to_tuple(input_shape, rank + 1, "input_shape")
    spatial = input_shape[:-1] if data_format == "channels_last" else input_shape[1:]
    ours = functional.geometry(
        spatial,
        module.kernel_size,
        strides=module.strides,
        padding=module.padding,
        dilation_rate=module.dilation_rate,
    )
    kernel_size, strides = ours.kernel_size, ours.strides
    if any(d != 1 for d in ours.dilation):
        raise ValueError(
            f"tf_keras LocallyConnected layers have no dilation; got dilation_rate={ours.dilation}."
        )
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


_MODULE_ATTRIBUTES = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "dilation_rate",
    "data_format",
    "use_bias",
)


def _check_module(module: Any) -> None:
    """Raises unless ``module`` is a flax_local LocallyConnected layer (linen or NNX)."""
    missing = [name for name in (*_MODULE_ATTRIBUTES, "rank") if not hasattr(module, name)]
    if missing:
        raise ValueError(
            "module must be a flax_local LocallyConnected1D/2D (flax_local.LocallyConnected2D or "
            f"flax_local.nnx.LocallyConnected2D, ...), got {type(module).__name__}, which lacks {missing}."
        )


def _weight(params: Any, name: str) -> np.ndarray:
    """``params[name]`` as a numpy array, unboxed from flax's partitioning or NNX's Variable."""
    if not isinstance(params, Mapping) or name not in params:
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(
            f"variables have no {name!r} (got {keys}); pass what module.init returns, "
            "{'params': {'kernel': ..., 'bias': ...}} (no 'bias' without use_bias), or nnx.state(module)."
        )
    value = params[name]
    if isinstance(value, meta.AxisMetadata):  # nn.with_(logical_)partitioning boxes
        value = value.unbox()
    if isinstance(value, nnx.Variable):
        value = value.get_value()
    return np.asarray(value)


def _params(module: Any, variables: Any) -> Any:
    if variables is None and isinstance(module, nnx.Module):
        return {"kernel": module.kernel, **({"bias": module.bias} if module.use_bias else {})}
    if isinstance(variables, Mapping) and "params" in variables:
        return variables["params"]
    return variables


def to_keras(
    module: Any,
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
        or 2) without dilation, linen or NNX.
      variables: ``{"params": {"kernel", "bias"}}`` as ``module.init``
        returns it (boxed by ``logical_partitioning=True`` or not), the
        params dict, ``nnx.state(module)``, or None for an NNX module's own
        parameters.
      input_shape: the input shape without batch, in the module's
        ``data_format``.
      implementation: the Keras implementation, 1, 2 or 3. Implementation 2's
        entries outside the connectivity mask are zeros.

    Returns:
      ``[kernel, bias]`` (``[kernel]`` without bias) as numpy arrays, for
      ``keras_layer.set_weights``.

    Raises:
      ValueError: for a module or padding Keras cannot express, or variables
        without the module's ``kernel`` (or ``bias``) of the right shape.

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
    implementation = check_keras_implementation(implementation)
    layout = _module_layout(module, input_shape, implementation)
    params = _params(module, variables)
    weights = [layout.kernel_to_keras(_weight(params, "kernel"), implementation)]
    if module.use_bias:
        weights.append(layout.bias_to_keras(_weight(params, "bias")))
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


def to_keras_config(module: Any, input_shape: Sequence[int], implementation: int = 1) -> dict[str, Any]:
    """A tf_keras LocallyConnected config computing what ``module`` computes.

    Use it with ``tf_keras.layers.LocallyConnected2D.from_config`` (or 1D),
    then ``set_weights(to_keras(...))``. Initializers given as names are
    exported; callables are not (the weights come from ``to_keras``), and
    neither are flax_local's ``dtype``/``param_dtype``. Norm constraints are
    exported with the Keras ``axis`` that means "per unit" (see
    ``unit_axes``); implementation 3 has none, so they raise there. NNX
    modules (``flax_local.nnx``) keep no initializers, so theirs are left to
    Keras's defaults.

    Example:
      >>> import flax_local
      >>> module = flax_local.LocallyConnected2D(4, (2, 2), padding=((1, 0), (1, 0)))
      >>> config = to_keras_config(module, (5, 5, 3), implementation=3)
      >>> config["padding"], config["kernel_size"], config["implementation"]
      ('same', (2, 2), 3)
    """
    implementation = check_keras_implementation(implementation)
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
        value = getattr(module, key, None)
        if isinstance(value, str):
            config[key] = value.lower()
    return config
