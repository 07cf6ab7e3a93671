"""Weight and activity penalties, computed as loss terms (tf_keras semantics)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Regularizer = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class L1L2:
    """``l1 * sum(|w|) + l2 * sum(w ** 2)``, as tf_keras's ``L1L2``.

    Half-precision inputs (float16, bfloat16) are summed in float32 and give
    a float32 penalty; other dtypes keep theirs.

    Attributes:
      l1: the L1 factor.
      l2: the L2 factor (no 1/2: Keras's convention, unlike weight decay).

    Example:
      >>> import jax.numpy as jnp
      >>> float(L1L2(l1=0.5, l2=0.25)(jnp.array([1.0, -2.0])))
      2.75
    """

    l1: float = 0.0
    l2: float = 0.0

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
            x = x.astype(jnp.float32)  # half dtypes overflow: 300.0 ** 2 is inf in float16
        penalty = jnp.zeros((), x.dtype)
        if self.l1:
            penalty = penalty + self.l1 * jnp.sum(jnp.abs(x)).astype(penalty.dtype)
        if self.l2:
            penalty = penalty + self.l2 * jnp.sum(jnp.square(x)).astype(penalty.dtype)
        return penalty


def l1(l1: float = 0.01) -> L1L2:
    """The L1 penalty ``l1 * sum(|w|)``.

    Example:
      >>> import jax.numpy as jnp
      >>> float(l1(0.1)(jnp.array([1.0, -3.0])))
      0.4000000059604645
    """
    return L1L2(l1=l1)


def l2(l2: float = 0.01) -> L1L2:
    """The L2 penalty ``l2 * sum(w ** 2)``.

    Example:
      >>> import jax.numpy as jnp
      >>> float(l2(0.5)(jnp.array([1.0, -3.0])))
      5.0
    """
    return L1L2(l2=l2)


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    """The sum of both penalties.

    Example:
      >>> import jax.numpy as jnp
      >>> float(l1_l2(l1=1.0, l2=1.0)(jnp.array([2.0])))
      6.0
    """
    return L1L2(l1=l1, l2=l2)


_NAMED: dict[str, Callable[[], Regularizer]] = {"l1": l1, "l2": l2, "l1_l2": l1_l2}


def get_regularizer(
    regularizer: str | Regularizer | None, argument: str = "regularizer"
) -> Regularizer | None:
    """Resolves None, a callable ``array -> scalar`` or a name ("l1", "l2", "l1_l2").

    Args:
      regularizer: None, a callable, or a name (each with factor 0.01).
      argument: the argument's name, for the error message.

    Returns:
      The regularizer, or None.

    Raises:
      ValueError: for an unknown name.

    Example:
      >>> get_regularizer("l2")
      L1L2(l1=0.0, l2=0.01)
    """
    if regularizer is None or callable(regularizer):
        return regularizer
    if isinstance(regularizer, str) and regularizer.lower() in _NAMED:
        return _NAMED[regularizer.lower()]()
    raise ValueError(
        f"{argument} must be None, a callable array -> scalar or one of {sorted(_NAMED)}, "
        f"got {regularizer!r}."
    )


# Flax's collection names other than "losses": a dict holding one is a variables dict.
_COLLECTIONS = ("params", "batch_stats", "intermediates", "cache", "constants", "aux_loss")


def regularization_loss(state: Mapping[str, Any]) -> jax.Array:
    """Sums every regularization term sown by flax_local layers.

    Only the ``"losses"`` collection is read: ``batch_stats``, ``params`` and
    any other collection in ``state`` are ignored.

    Args:
      state: the variables returned by ``model.apply(..., mutable=[...,
        "losses"])`` (the whole dict, whatever other collections it holds), or
        just its ``"losses"`` collection.

    Returns:
      A float32 scalar: the sum of all kernel, bias and activity penalties (0
      when there are none). Jit-able and differentiable.

    Raises:
      ValueError: when ``state`` is neither a dict of collections nor a
        ``"losses"`` collection (for example a bare array, or the ``params``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax_local
      >>> layer = flax_local.LocallyConnected1D(2, 3, kernel_regularizer="l2")
      >>> x = jnp.ones((1, 5, 2))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> y, state = layer.apply(variables, x, mutable=["losses"])
      >>> bool(regularization_loss(state) > 0)
      True
    """
    losses = _losses_collection(state)
    total = jnp.zeros((), jnp.float32)
    for leaf in jax.tree_util.tree_leaves(losses):
        total = total + jnp.sum(leaf).astype(jnp.float32)
    return total


def _losses_collection(state: Any) -> Any:
    """The ``"losses"`` collection inside ``state``; raises for anything else."""
    expected = (
        "regularization_loss needs the variables returned by model.apply(..., mutable=['losses']) "
        "(a dict of collections) or their 'losses' collection"
    )
    if not isinstance(state, Mapping):
        raise ValueError(f"{expected}, got a {type(state).__name__}.")
    if "losses" in state:
        return state["losses"]
    if not state or any(name in state for name in _COLLECTIONS):
        return {}  # a dict of collections in which no layer sowed a penalty
    paths = jax.tree_util.tree_flatten_with_path(state)[0]
    sown = [
        path for path, _ in paths if any(str(getattr(k, "key", "")).endswith("_regularization") for k in path)
    ]
    if len(sown) != len(paths):
        stray = next(jax.tree_util.keystr(path) for path, _ in paths if path not in sown)
        raise ValueError(
            f"{expected}; got a dict whose entry {stray} is not a sown penalty (flax_local sows "
            "'<kernel|bias|activity>_regularization'). Pass the whole state returned by apply."
        )
    return state
