"""Weight constraints: projections applied to the parameters after each step.

Norm constraints act per output unit, i.e. per (position, filter): the norm is
taken over the kernel window and the input channels, axes ``n .. 2n`` of a
kernel ``(*output_spatial, *kernel_size, in_channels, filters)`` of spatial
rank ``n``. For a bias ``(*output_spatial, filters)`` they act on each element
(the norm over a single weight), which is what a per-unit norm means there.

Keras's ``axis`` argument means different things in its three kernel layouts
(impl 1 ``(P, K*C, F)``, impl 2 a dense ``(in..., C, out..., F)`` matrix,
impl 3 a flat vector); flax_local's single layout makes the per-unit norm well
defined. It equals Keras's ``axis=1`` on impl 1 (Keras's default ``axis=0``
there takes the norm across output positions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Constraint = Callable[..., jax.Array]
_EPSILON = 1e-7  # tf_keras's backend.epsilon()


def kernel_unit_axes(ndim: int) -> tuple[int, ...]:
    """The axes of one output unit of a kernel of rank ``ndim = 2n + 2``."""
    if ndim < 4 or ndim % 2:
        raise ValueError(
            "a kernel must have shape (*output_spatial, *kernel_size, in_channels, filters), "
            f"rank 4, 6 or 8; got rank {ndim}. Pass axis= for other arrays."
        )
    rank = (ndim - 2) // 2
    return tuple(range(rank, 2 * rank + 1))


def constrain_kernel(constraint: Constraint, kernel: jax.Array, rank: int) -> jax.Array:
    """Applies ``constraint`` to the kernel of a layer of spatial rank ``rank``.

    The layer's rank, not the kernel's ``ndim``, says which axes form a unit:
    leading axes beyond ``2 * rank + 2`` (kernels stacked by ``nnx.vmap``,
    ``nn.scan``, ...) are folded into the first position axis, which only
    adds units, so nested stacks are constrained per unit too.

    Raises:
      ValueError: when the kernel has fewer than ``2 * rank + 2`` axes.
    """
    ndim = 2 * rank + 2
    if kernel.ndim < ndim:
        raise ValueError(
            f"a kernel of a {rank}D layer needs at least {ndim} axes (*stack, *output_spatial, "
            f"*kernel_size, in_channels, filters), got shape {kernel.shape}."
        )
    lead = kernel.ndim - ndim
    if lead == 0:
        return constraint(kernel)
    folded = kernel.reshape((-1, *kernel.shape[lead + 1 :]))
    return constraint(folded).reshape(kernel.shape)


def _axes(w: jax.Array, axis: Sequence[int] | int | None) -> tuple[int, ...]:
    if axis is None:
        return kernel_unit_axes(w.ndim)
    return (axis,) if isinstance(axis, int) else tuple(axis)


def _norm(w: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(w), axis=axes, keepdims=True))


@dataclasses.dataclass(frozen=True)
class MaxNorm:
    """Rescales each unit whose norm exceeds ``max_value`` down to it.

    Example:
      >>> import jax.numpy as jnp
      >>> k = jnp.full((1, 2, 2, 1), 1.0)  # 1D kernel: one unit of norm 2
      >>> round(float(jnp.linalg.norm(MaxNorm(1.0)(k))), 5)
      1.0
    """

    max_value: float = 2.0

    def __call__(self, w: jax.Array, axis: Sequence[int] | int | None = None) -> jax.Array:
        norms = _norm(w, _axes(w, axis))
        desired = jnp.clip(norms, 0, self.max_value)
        return w * (desired / (_EPSILON + norms))


@dataclasses.dataclass(frozen=True)
class NonNeg:
    """Sets negative weights to zero.

    Example:
      >>> import jax.numpy as jnp
      >>> NonNeg()(jnp.array([-1.0, 2.0])).tolist()
      [0.0, 2.0]
    """

    def __call__(self, w: jax.Array, axis: Sequence[int] | int | None = None) -> jax.Array:
        del axis
        return jnp.maximum(w, 0)


@dataclasses.dataclass(frozen=True)
class UnitNorm:
    """Rescales each unit to norm 1.

    Example:
      >>> import jax.numpy as jnp
      >>> k = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
      >>> round(float(jnp.linalg.norm(UnitNorm()(k))), 5)
      1.0
    """

    def __call__(self, w: jax.Array, axis: Sequence[int] | int | None = None) -> jax.Array:
        return w / (_EPSILON + _norm(w, _axes(w, axis)))


@dataclasses.dataclass(frozen=True)
class MinMaxNorm:
    """Moves each unit's norm toward ``[min_value, max_value]`` at ``rate``.

    Example:
      >>> import jax.numpy as jnp
      >>> k = jnp.full((1, 2, 2, 1), 0.1)
      >>> round(float(jnp.linalg.norm(MinMaxNorm(1.0, 2.0)(k))), 4)
      1.0
    """

    min_value: float = 0.0
    max_value: float = 1.0
    rate: float = 1.0

    def __call__(self, w: jax.Array, axis: Sequence[int] | int | None = None) -> jax.Array:
        norms = _norm(w, _axes(w, axis))
        desired = self.rate * jnp.clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms
        return w * (desired / (_EPSILON + norms))


@dataclasses.dataclass(frozen=True)
class RadialConstraint:
    """Makes every 2D window radially symmetric (square windows of odd size).

    Each ring at Chebyshev distance ``r`` from the centre takes the value of its
    diagonal element ``(c + r, c + r)``, as Keras's ``RadialConstraint`` does
    for Conv2D kernels. Only a kernel of a 2D layer qualifies.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> k = jax.random.normal(jax.random.key(0), (1, 1, 3, 3, 1, 1))
      >>> r = RadialConstraint()(k)[0, 0, :, :, 0, 0]
      >>> bool(r[0, 0] == r[0, 2] == r[2, 1] == r[2, 2]) and bool(r[1, 1] == k[0, 0, 1, 1, 0, 0])
      True
    """

    def __call__(self, w: jax.Array, axis: Sequence[int] | int | None = None) -> jax.Array:
        del axis
        if w.ndim != 6 or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
            raise ValueError(
                "radial_constraint applies to the kernel of a 2D layer with a square window of "
                f"odd size, shape (oH, oW, k, k, C, F); got shape {w.shape}."
            )
        size = w.shape[2]
        centre = size // 2
        grid = jnp.arange(size) - centre
        ring = jnp.maximum(jnp.abs(grid)[:, None], jnp.abs(grid)[None, :])  # (k, k)
        diagonal = w[:, :, centre + jnp.arange(centre + 1), centre + jnp.arange(centre + 1)]
        return diagonal[:, :, ring]


def max_norm(max_value: float = 2.0) -> MaxNorm:
    """Each unit's norm at most ``max_value``. See ``MaxNorm``.

    Args:
      max_value: the largest norm a unit may have.

    Returns:
      The constraint, a callable on a kernel.

    Example:
      >>> import flax_local
      >>> layer = flax_local.LocallyConnected2D(8, 3, kernel_constraint=max_norm(2.0))
    """
    return MaxNorm(max_value)


def non_neg() -> NonNeg:
    """All weights >= 0. See ``NonNeg``.

    Returns:
      The constraint, a callable on any parameter.

    Example:
      >>> import jax.numpy as jnp
      >>> non_neg()(jnp.array([-0.5, 0.5])).tolist()
      [0.0, 0.5]
    """
    return NonNeg()


def unit_norm() -> UnitNorm:
    """Each unit's norm equal to 1. See ``UnitNorm``.

    Returns:
      The constraint, a callable on a kernel.

    Example:
      >>> import flax_local
      >>> layer = flax_local.LocallyConnected1D(4, 3, kernel_constraint=unit_norm())
    """
    return UnitNorm()


def min_max_norm(min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0) -> MinMaxNorm:
    """Each unit's norm within ``[min_value, max_value]``. See ``MinMaxNorm``.

    Args:
      min_value: the smallest norm a unit may have.
      max_value: the largest norm a unit may have.
      rate: how far each step moves a norm into the range (1: all the way).

    Returns:
      The constraint, a callable on a kernel.

    Example:
      >>> import flax_local
      >>> layer = flax_local.LocallyConnected1D(4, 3, kernel_constraint=min_max_norm(0.5, 1.0))
    """
    return MinMaxNorm(min_value, max_value, rate)


def radial_constraint() -> RadialConstraint:
    """Radially symmetric 2D windows. See ``RadialConstraint``.

    Returns:
      The constraint, a callable on the kernel of a 2D layer.

    Example:
      >>> import flax_local
      >>> layer = flax_local.LocallyConnected2D(4, 3, kernel_constraint=radial_constraint())
    """
    return RadialConstraint()


_NAMED: dict[str, Callable[[], Constraint]] = {
    "max_norm": max_norm,
    "non_neg": non_neg,
    "unit_norm": unit_norm,
    "min_max_norm": min_max_norm,
    "radial_constraint": radial_constraint,
}


def get_constraint(constraint: str | Constraint | None, argument: str = "constraint") -> Constraint | None:
    """Resolves None, a callable or a Keras name to a constraint.

    Args:
      constraint: None, a callable, or one of "max_norm", "non_neg",
        "unit_norm", "min_max_norm", "radial_constraint" (Keras defaults).
      argument: the argument's name, for the error message.

    Returns:
      The constraint, or None.

    Raises:
      ValueError: for an unknown name.

    Example:
      >>> get_constraint("non_neg")
      NonNeg()
    """
    if constraint is None or callable(constraint):
        return constraint
    if isinstance(constraint, str) and constraint.lower() in _NAMED:
        return _NAMED[constraint.lower()]()
    raise ValueError(f"{argument} must be None, a callable or one of {sorted(_NAMED)}, got {constraint!r}.")
