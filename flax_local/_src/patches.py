"""The ``"patches"`` implementation: gather windows, one contraction per position.

Forward: the input is viewed as rows ``(input_positions, batch, C)`` and one
``gather`` copies the ``window_volume`` rows each output position reads into
patches ``(positions, batch, window * C)``, zeroing the taps that fall in the
padding. The copy is exact in every dtype, and XLA emits it as a single
loop. The kernel's taps that read padding are zeroed too (a fused select,
only when the padding is reached), so that an ``inf`` there contributes 0,
not ``0 * inf``. (``k ** d`` strided slices stacked together compute the same array but
become ``k ** d`` loops and a concatenation, twice the memory traffic;
``conv_general_dilated_patches`` builds them with a one-hot convolution whose
cost grows with ``(window * C) ** 2`` and which rounds float32 on matrix
units at default precision.)
Then one ``dot_general`` batched over positions contracts the patches with the
kernel viewed as ``(positions, window * C, filters)``, a free reshape of its
``(*out, *kernel_size, C, filters)`` layout; the bias add is fused into the
loop that moves the batch axis back in front.

Derivatives come from a ``custom_jvp`` whose tangent is written so that
reverse mode, which transposes it, gets the backward pass we want (a
``custom_vjp`` would do the same for reverse mode but forbid ``jax.jvp`` and
forward-over-reverse). With ``g`` the output cotangent per position:

* ``d_kernel = patches_t @ g``, where ``patches_t`` are the patches regathered
  (rematerialised, not kept from the forward pass) as ``(positions, window *
  C, batch)`` and ``g`` is ``(positions, batch, filters)``: both operands
  row-major with the contraction where XLA:CPU's matmul library wants it, and
  the result lands directly in the kernel's layout;
* ``d_patches_t = kernel @ g^T``, the kernel read in place and ``g`` in
  the same ``(positions, batch, filters)`` layout (measured as fast as a
  batch-minor copy of ``g`` and one output-sized buffer smaller); ``d_x`` is
  its fold, the transpose of the tangent's strided slices (interior pads
  summed), one fused loop instead of the scatter-add that transposing the
  gather would give. That is the CPU's layout; on an accelerator the
  tangent is batch-major, ``d_patches = g @ kernel^T`` lands in ``(positions,
  batch, window * C)``, and its fold keeps channels minor throughout, which
  XLA:GPU fuses into one loop where the batch-minor fold took one tiled
  transpose per window tap (``TANGENT_BATCH_MINOR``);
* ``d_bias = g.sum(batch)`` over the middle axis of ``(positions, batch,
  filters)``, where XLA reduces it in one fast pass.

No step copies or transposes the kernel. On CPU, half-precision layers run in
float32: measured with jax 0.10.2, XLA:CPU's bfloat16 forward is no faster and
its bfloat16 training step 1.7x slower than converting to float32 first.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from flax_local._src.geometry import Geometry


def _input_rows(x: jax.Array, geometry: Geometry, batch_minor: bool) -> jax.Array:
    """``(batch, *spatial, C)`` -> ``(rows, batch, C)`` or ``(rows, C, batch)``."""
    rank = geometry.rank
    spatial_axes = tuple(range(1, rank + 1))
    perm = (*spatial_axes, rank + 1, 0) if batch_minor else (*spatial_axes, 0, rank + 1)
    x = jnp.transpose(x, perm)
    return x.reshape(math.prod(geometry.input_spatial), *x.shape[rank:])


def _gather_windows(x: jax.Array, geometry: Geometry, batch_minor: bool) -> jax.Array:
    """One gather of every window: ``(P, B, K * C)``, or ``(P, K * C, B)`` if batch_minor.

    Padding is never built: taps in it read row 0 and are then zeroed by a
    select fused into the gather's loop. (A padded copy of the input would
    be fused into that loop too, and XLA:CPU's gather over a fused ``pad`` ran
    2-4x slower, measured.)
    """
    rows = _input_rows(x, geometry, batch_minor)
    a, b = rows.shape[1:]
    window_rows, inside = geometry.tap_rows()
    # Output (P, a, K, b) for batch-major rows (a, b) = (B, C): the window axis
    # between batch and channels. For batch-minor rows (a, b) = (C, B) it is
    # (P, K, C, B): offsets before channels, batch last.
    offset_dims = (2, 3) if batch_minor else (1, 3)
    dimension_numbers = lax.GatherDimensionNumbers(
        offset_dims=offset_dims, collapsed_slice_dims=(0,), start_index_map=(0,)
    )
    patches = lax.gather(
        rows,
        window_rows[..., None],
        dimension_numbers,
        slice_sizes=(1, a, b),
        indices_are_sorted=False,
        unique_indices=False,
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    if inside is not None:
        mask_shape = (*inside.shape, 1, 1) if batch_minor else (inside.shape[0], 1, inside.shape[1], 1)
        patches = jnp.where(inside.reshape(mask_shape), patches, jnp.zeros((), patches.dtype))
    if batch_minor:
        return patches.reshape(geometry.num_positions, geometry.window_volume * a, b)
    return patches.reshape(geometry.num_positions, a, geometry.window_volume * b)


def extract_patches(x: jax.Array, geometry: Geometry) -> jax.Array:
    """Gathers every receptive field of ``x``.

    Args:
      x: input of shape ``(batch, *input_spatial, channels)``.
      geometry: the layer's geometry for this input size.

    Returns:
      Array of shape ``(num_positions, batch, window_volume * channels)``. Along
      the last axis the window offsets vary slowest, in row-major order of
      ``kernel_size``, and channels fastest: the order of a
      ``(*kernel_size, channels)`` kernel flattened row-major.
    """
    return _gather_windows(x, geometry, batch_minor=False)


def _weights(kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """The kernel as ``(positions, window * C, filters)``, zero at taps that read padding.

    The patches are zero there, but ``0 * inf`` is NaN: zeroing the weights
    too makes a padded tap contribute exactly zero whatever the kernel holds,
    as in every other implementation. A select (fused by XLA) only where some
    tap reaches the padding; otherwise a free reshape.
    """
    positions, window, (channels, filters) = geometry.num_positions, geometry.window_volume, kernel.shape[-2:]
    weights = kernel.reshape(positions, window, channels, filters)
    _, inside = geometry.tap_rows()
    if inside is not None:
        weights = jnp.where(inside[..., None, None], weights, jnp.zeros((), weights.dtype))
    return weights.reshape(positions, window * channels, filters)


def _forward(x, kernel, bias, geometry, precision):
    batch, filters = x.shape[0], kernel.shape[-1]
    patches = extract_patches(x, geometry)
    weights = _weights(kernel, geometry)
    y = lax.dot_general(
        patches, weights, (((2,), (1,)), ((0,), (0,))), precision=precision
    )  # (positions, batch, filters)
    if bias is not None:
        y = y + bias.reshape(geometry.num_positions, 1, filters)
    y = y.reshape(*geometry.output_spatial, batch, filters)
    return jnp.moveaxis(y, geometry.rank, 0)


def _slice_windows(x: jax.Array, geometry: Geometry, batch_minor: bool) -> jax.Array:
    """``_gather_windows(x, geometry, batch_minor)`` built from strided slices.

    Used only for tangents: reverse mode never runs it but transposes it, and
    the transpose of a strided slice is an interior pad, so the transpose is
    the fold (one fused loop) instead of a scatter-add.
    """
    rank = geometry.rank
    spatial_axes = tuple(range(1, rank + 1))
    # (*spatial, C, B) if batch_minor, else (*spatial, B, C).
    x = jnp.transpose(x, (*spatial_axes, rank + 1, 0) if batch_minor else (*spatial_axes, 0, rank + 1))
    x = lax.pad(x, jnp.zeros((), x.dtype), [(lo, hi, 0) for lo, hi in geometry.padding] + [(0, 0, 0)] * 2)
    taps = []
    for offset in itertools.product(*(range(k) for k in geometry.kernel_size)):
        start = [j * d for j, d in zip(offset, geometry.dilation)]
        limit = [s + (o - 1) * st + 1 for s, o, st in zip(start, geometry.output_spatial, geometry.strides)]
        taps.append(
            lax.slice(x, start + [0, 0], limit + list(x.shape[rank:]), list(geometry.strides) + [1, 1])
        )
    # Sizes spelled out: with an empty batch a -1 would divide by zero.
    a, b = x.shape[rank:]
    if batch_minor:
        # (*out, K, C, B) -> (P, K * C, B)
        return jnp.stack(taps, axis=rank).reshape(geometry.num_positions, geometry.window_volume * a, b)
    # (*out, B, K, C) -> (P, B, K * C)
    return jnp.stack(taps, axis=rank + 1).reshape(geometry.num_positions, a, geometry.window_volume * b)


TANGENT_BATCH_MINOR: bool | None = None
"""The input tangent's layout: batch-minor ``(P, K * C, B)`` or batch-major
``(P, B, K * C)``; None picks by backend (batch-minor on CPU only).

The layout decides the input gradient's fold. Batch-minor suits XLA:CPU's
matmul (module docstring). On GPU, XLA emits the batch-minor fold as one
tiled transpose per window tap plus a sum (26 kernels for a 5x5 window); the
batch-major fold keeps channels minor in every step and fuses into one loop.
"""


def _tangent_batch_minor() -> bool:
    if TANGENT_BATCH_MINOR is not None:
        return TANGENT_BATCH_MINOR
    return jax.default_backend() == "cpu"


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _locally_connected(x, kernel, bias, geometry, precision):
    return _forward(x, kernel, bias, geometry, precision)


def _locally_connected_jvp(geometry, precision, primals, tangents):
    x, kernel, bias = primals
    x_dot, kernel_dot, bias_dot = tangents
    y = _locally_connected(x, kernel, bias, geometry, precision)
    batch, filters = x.shape[0], kernel.shape[-1]
    positions, rank = geometry.num_positions, geometry.rank
    # Every term is built as (P, B, F) and the batch axis moved to the front
    # once, so reverse mode transposes the output cotangent into one layout, g
    # as (P, B, F), that all three gradients read: the bias gradient reduces
    # its middle axis (fast) and no second, batch-minor copy of g is made.
    per_position = []
    if not isinstance(x_dot, SymbolicZero):
        # (P, K*C, F) x (P, K*C, B) -> (P, F, B), swapped to (P, B, F). Reverse
        # mode transposes this into kernel @ g^T per position, reading the
        # kernel in place and g as (P, B, F), and lands in (P, K*C, B); the
        # swap becomes the dot's operand order there, not a copy of g (checked
        # in the compiled training step). Forward mode pays one (P, B, F) swap.
        weights = _weights(kernel, geometry)
        if _tangent_batch_minor():
            patches_dot = _slice_windows(x_dot, geometry, batch_minor=True)
            term = lax.dot_general(weights, patches_dot, (((1,), (1,)), ((0,), (0,))), precision=precision)
            per_position.append(jnp.swapaxes(term, 1, 2))
        else:
            # (P, B, K*C) x (P, K*C, F) -> (P, B, F); transposed: g @ kernel^T
            # lands in (P, B, K*C), whose fold keeps channels minor.
            patches_dot = _slice_windows(x_dot, geometry, batch_minor=False)
            per_position.append(
                lax.dot_general(patches_dot, weights, (((2,), (1,)), ((0,), (0,))), precision=precision)
            )
    if not isinstance(kernel_dot, SymbolicZero):

        def kernel_term(x, kernel_dot):
            # (P, K*C, B) x (P, K*C, F) -> (P, B, F); transposed: patches_t @ g.
            patches_t = _gather_windows(x, geometry, batch_minor=True)
            weights_dot = kernel_dot.reshape(positions, math.prod(kernel_dot.shape[rank:-1]), filters)
            return lax.dot_general(patches_t, weights_dot, (((1,), (1,)), ((0,), (0,))), precision=precision)

        # Rematerialised: the backward pass regathers the patches from x
        # instead of keeping them alive from the forward pass.
        per_position.append(jax.checkpoint(kernel_term, prevent_cse=False)(x, kernel_dot))
    if bias is not None and not isinstance(bias_dot, SymbolicZero):
        per_position.append(
            jnp.broadcast_to(bias_dot.reshape(positions, 1, filters), (positions, batch, filters))
        )
    if not per_position:
        return y, jnp.zeros_like(y)
    y_dot = functools.reduce(jnp.add, per_position).reshape(*geometry.output_spatial, batch, filters)
    return y, jnp.moveaxis(y_dot, rank, 0)


_locally_connected.defjvp(_locally_connected_jvp, symbolic_zeros=True)


def apply_patches(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    geometry: Geometry,
    precision: lax.PrecisionLike,
) -> jax.Array:
    """Applies the layer to channels-last ``x`` of shape ``(batch, *spatial, C)``.

    Args:
      x: the input, ``(batch, *input_spatial, C)``.
      kernel: ``(*output_spatial, *kernel_size, C, filters)``, same dtype as x.
      bias: ``(*output_spatial, filters)`` or None, same dtype as x.
      geometry: the layer's geometry for this input size.
      precision: passed to the matrix products.

    Returns:
      Array of shape ``(batch, *output_spatial, filters)``.
    """
    dtype = x.dtype
    if _compute_in_float32(dtype):
        # Faster on XLA:CPU than its own half-precision paths (module docstring).
        x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
        bias = None if bias is None else bias.astype(jnp.float32)
    y = _locally_connected(x, kernel, bias, geometry, _hashable(precision))
    return y.astype(dtype)


def _compute_in_float32(dtype) -> bool:
    """Whether to run a half-precision layer in float32 (on CPU, where that is faster)."""
    dtype = jnp.dtype(dtype)
    return jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4 and jax.default_backend() == "cpu"


def _hashable(precision: lax.PrecisionLike):
    if isinstance(precision, list):
        return tuple(precision)
    return precision
