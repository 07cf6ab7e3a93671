"""Serialized Keras objects (initializers, regularizers, constraints, activations, dtypes).

Every translation goes through a table; anything without a flax_local
equivalent raises a ``ValueError`` that names the config key and the object,
so nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_local._src import constraints as constraints_lib
from flax_local._src import initializers as initializers_lib
from flax_local._src import regularizers as regularizers_lib
from flax_local._src.activations import ACTIVATIONS

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


# The dtypes flax_local's layers compute in; Keras's other dtypes have no equivalent.
FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")


def check_param_dtype(value: Any, argument: str) -> np.dtype:
    """``value`` as one of ``FLOAT_DTYPES``, or a ValueError naming ``argument``."""
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in FLOAT_DTYPES:
        raise ValueError(
            f"{argument}: {value!r} is not a dtype flax_local's layers compute in; expected one of "
            f"{FLOAT_DTYPES}."
        )
    return dtype


def dtypes_from_keras(value: Any) -> tuple[Any, Any]:
    """``(dtype, param_dtype)`` for a Keras dtype or dtype policy.

    ``"float32"`` gives ``(None, float32)``: computation in the inputs' and
    params' type, as flax does by default. ``"mixed_bfloat16"`` gives
    ``(bfloat16, float32)``: float32 variables, bfloat16 computation. Only
    floating dtypes the layers compute in are accepted (see
    ``FLOAT_DTYPES``); ``"int8"``, ``"complex64"``, ``"float128"`` raise.

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
        name = str(config["name"])
    if name.startswith("mixed_"):
        return check_param_dtype(name[len("mixed_") :], "dtype"), jnp.dtype(jnp.float32)
    dtype = check_param_dtype(name, "dtype")
    return (None if dtype == jnp.float32 else dtype), dtype
