"""Initializers for one output position's kernel, with Keras's names.

A locally-connected kernel is a stack of ordinary conv kernels, one per output
position. flax_local initializes each position's ``(*kernel_size,
in_channels, filters)`` block independently, exactly as a Conv layer with that
kernel would be initialized, so the fans are

``fan_in = prod(kernel_size) * in_channels``, ``fan_out = prod(kernel_size) *
filters``.

tf_keras and ``flax.linen.ConvLocal`` compute fans from the whole kernel, which
counts the output positions in, so their weights start up to
``sqrt(positions)`` times too small.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax.core import meta
from jax.nn import initializers as jax_init

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]

# The std of a standard normal truncated to [-2, 2].
_TRUNCATED_STD = 0.87962566103423978


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras's fans: a vector counts its length both ways; a conv kernel
    ``(*window, in, out)`` multiplies in and out by the window volume."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """Keras's VarianceScaling, with Keras's fans (also defined for vectors).

    Args:
      scale: the variance scale.
      mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
      distribution: ``"truncated_normal"``, ``"normal"`` or ``"uniform"``.

    Returns:
      An initializer ``(key, shape, dtype) -> Array``.

    Example:
      >>> import jax
      >>> init = variance_scaling(1.0, "fan_avg", "uniform")
      >>> init(jax.random.key(0), (3, 3, 4, 8), jax.numpy.float32).shape
      (3, 3, 4, 8)
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}.")
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(
            f"distribution must be 'truncated_normal', 'normal' or 'uniform', got {distribution!r}."
        )

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        fan_in, fan_out = _fans(tuple(shape))
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, fan)
        # Drawn flat and reshaped: the same numbers, and on CPU many-axis random
        # draws compile several times slower than flat ones.
        flat = (math.prod(shape),)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            values = jax.random.uniform(key, flat, dtype, -limit, limit)
        elif distribution == "normal":
            values = math.sqrt(variance) * jax.random.normal(key, flat, dtype)
        else:
            std = math.sqrt(variance) / _TRUNCATED_STD
            values = std * jax.random.truncated_normal(key, -2.0, 2.0, flat, dtype)
        return values.reshape(shape)

    return init


def constant(value: float = 0.0) -> Initializer:
    """Fills with ``value`` (Keras's ``Constant``; the name ``"constant"`` is 0).

    Example:
      >>> import jax
      >>> constant(0.5)(jax.random.key(0), (2,), jax.numpy.float32)
      Array([0.5, 0.5], dtype=float32)
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key
        return jnp.full(shape, value, dtype)

    return init


def identity(gain: float = 1.0) -> Initializer:
    """A kernel that copies input channel ``c`` to filter ``c`` from one tap.

    The tap is offset ``(k - 1) // 2`` in every dimension, the one that
    ``padding="same"`` with stride 1 aligns with the output position, so such
    a layer with ``in_channels == filters`` starts as the identity map. With
    ``in_channels != filters`` the channel matrix is a rectangular identity, as
    Keras's ``Identity``.

    Example:
      >>> import jax
      >>> k = identity()(jax.random.key(0), (3, 2, 2), jax.numpy.float32)
      >>> k[1].tolist(), float(k.sum())
      ([[1.0, 0.0], [0.0, 1.0]], 2.0)
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key
        if len(shape) < 2:
            raise ValueError(
                f"the 'identity' initializer needs a kernel (*window, in, out), got shape {shape}."
            )
        tap = tuple((k - 1) // 2 for k in shape[:-2])
        return jnp.zeros(shape, dtype).at[tap].set(gain * jnp.eye(shape[-2], shape[-1], dtype=dtype))

    return init


def orthogonal(gain: float = 1.0) -> Initializer:
    """An orthogonal ``(window * in_channels, filters)`` matrix per position.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> k = orthogonal()(jax.random.key(0), (2, 2, 4), jnp.float32).reshape(4, 4)
      >>> bool(jnp.allclose(k.T @ k, jnp.eye(4), atol=1e-5))
      True
    """
    inner = jax_init.orthogonal(scale=gain)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"the 'orthogonal' initializer needs at least 2 dimensions, got shape {shape}.")
        return inner(key, shape, dtype)

    return init


def _random_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return (0.05 * jax.random.normal(key, (math.prod(shape),), dtype)).reshape(shape)


def _random_uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, (math.prod(shape),), dtype, -0.05, 0.05).reshape(shape)


def _truncated_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return (0.05 * jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)).reshape(shape)


_NAMED: dict[str, Callable[[], Initializer]] = {
    "glorot_uniform": lambda: variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": lambda: variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "he_uniform": lambda: variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": lambda: variance_scaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": lambda: variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": lambda: variance_scaling(1.0, "fan_in", "truncated_normal"),
    "zeros": lambda: jax_init.zeros,
    "ones": lambda: jax_init.ones,
    "random_normal": lambda: _random_normal,
    "random_uniform": lambda: _random_uniform,
    "truncated_normal": lambda: _truncated_normal,
    "orthogonal": orthogonal,
    "constant": constant,
    "identity": identity,
}
NAMES = tuple(_NAMED)


def get_initializer(initializer: str | Initializer, argument: str = "initializer") -> Initializer:
    """Resolves a Keras name or a jax initializer to an initializer.

    Args:
      initializer: a callable ``(key, shape, dtype) -> Array`` or one of
        ``NAMES`` (case-insensitive).
      argument: the name of the argument, for the error message.

    Returns:
      The initializer.

    Raises:
      ValueError: for an unknown name or a value that is neither.

    Example:
      >>> import jax
      >>> init = get_initializer("he_normal")
      >>> init(jax.random.key(0), (3, 3, 8, 16), jax.numpy.float32).shape
      (3, 3, 8, 16)
    """
    if callable(initializer):
        return initializer
    if isinstance(initializer, str) and initializer.lower() in _NAMED:
        return _NAMED[initializer.lower()]()
    raise ValueError(f"{argument} must be a callable or one of {list(NAMES)}, got {initializer!r}.")


def _split_box(value: Any) -> tuple[Any, Callable[[jax.Array], Any] | None]:
    """``(array, rebox)`` for a value flax boxed with partitioning metadata, else ``(value, None)``.

    Knows linen's ``AxisMetadata`` boxes (``nn.Partitioned``,
    ``nn.LogicallyPartitioned``: what ``nn.with_partitioning`` and
    ``nn.with_logical_partitioning`` return) and NNX's ``VariableMetadata``
    (what ``nnx.with_partitioning`` returns); ``rebox`` puts another array in
    the same box.
    """
    if isinstance(value, meta.AxisMetadata):
        return value.unbox(), value.replace_boxed
    nnx = sys.modules.get("flax.nnx")  # not imported: no NNX box can exist
    if nnx is not None and isinstance(value, nnx.VariableMetadata):
        return value.raw_value, lambda array: dataclasses.replace(value, raw_value=array)
    return value, None


def per_position(initializer: Initializer, num_position_axes: int) -> Initializer:
    """Applies ``initializer`` to every output position independently.

    The wrapped initializer receives the full parameter shape
    ``(*output_spatial, *per_position_shape)``; ``initializer`` is called with
    ``per_position_shape`` and a fresh key for each position, so its fans are
    those of one position's block. An initializer wrapped by flax's
    ``nn.with_partitioning``, ``nn.with_logical_partitioning`` or
    ``nnx.with_partitioning`` keeps working: the values are drawn per position
    and the whole parameter comes back in the same box, whose axis names are
    those of the whole parameter.

    Args:
      initializer: an initializer for one position's block.
      num_position_axes: how many leading axes index the output positions.

    Returns:
      An initializer for the whole parameter.

    Example:
      >>> import jax
      >>> from flax import linen as nn
      >>> init = per_position(get_initializer("glorot_uniform"), 2)
      >>> init(jax.random.key(0), (5, 5, 3, 3, 2, 4), jax.numpy.float32).shape
      (5, 5, 3, 3, 2, 4)
      >>> boxed = per_position(nn.with_partitioning(get_initializer("ones"), ("model", None, None)), 1)
      >>> boxed(jax.random.key(0), (4, 3, 2), jax.numpy.float32).names
      ('model', None, None)
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Any:
        positions, block = tuple(shape[:num_position_axes]), tuple(shape[num_position_axes:])
        keys = jax.random.split(key, math.prod(positions))
        reboxes = []

        def one(k: jax.Array) -> jax.Array:
            value, rebox = _split_box(initializer(k, block, dtype))
            reboxes.append(rebox)  # the box's metadata is static: the same at every position
            return value

        values = jax.vmap(one)(keys).reshape(shape)
        return values if reboxes[0] is None else reboxes[0](values)

    return init
