"""Keras activation names resolved to jax functions."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """tf_keras's piecewise-linear sigmoid: ``clip(0.2 * x + 0.5, 0, 1)``."""
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def linear(x: jax.Array) -> jax.Array:
    """The identity: Keras's ``"linear"``."""
    return x


# Keras's definitions, where they differ from jax.nn's defaults: exact gelu and
# leaky_relu with slope 0.2.
ACTIVATIONS: dict[str, Activation] = {
    "linear": linear,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": hard_sigmoid,
    "softmax": jax.nn.softmax,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "exponential": jnp.exp,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.2),
}


def get_activation(activation: str | Activation | None) -> Activation | None:
    """Resolves ``activation`` (None, a callable or a Keras name) to a function.

    Args:
      activation: None (no activation), a callable, or one of the names in
        ``ACTIVATIONS`` (case-insensitive).

    Returns:
      The callable, or None.

    Raises:
      ValueError: for an unknown name or a value that is neither.

    Example:
      >>> from flax_local._src.activations import get_activation
      >>> float(get_activation("relu6")(7.0))
      6.0
    """
    if activation is None or callable(activation):
        return activation
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return ACTIVATIONS[activation.lower()]
    raise ValueError(
        f"activation must be None, a callable or one of {sorted(ACTIVATIONS)}, got {activation!r}."
    )
