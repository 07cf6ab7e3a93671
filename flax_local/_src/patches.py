"""The ``"patches"`` implementation: gather windows, one contraction per position.

Windows are gathered with ``kernel_volume`` strided slices of the padded input,
which is exact in every dtype and cheap to differentiate (the transpose of a
slice is a pad). ``jax.lax.conv_general_dilated_patches`` would instead build
them with a one-hot convolution whose cost grows with ``(kernel_volume *
channels) ** 2`` and which rounds float32 on matrix units at default precision.

The patches are laid out ``(positions, batch, window * channels)`` so that the
contraction is one ``dot_general`` batched over positions, the layout XLA runs
as a batched matmul without copying the kernel.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax

from flax_local._src.geometry import Geometry


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
    rank = geometry.rank
    batch, channels = x.shape[0], x.shape[-1]
    # (batch, *spatial, C) -> (*spatial, batch, C): positions lead from here on.
    x = jnp.moveaxis(x, 0, rank)
    pad_config = [(low, high, 0) for low, high in geometry.padding] + [(0, 0, 0)] * 2
    x = lax.pad(x, jnp.zeros((), x.dtype), pad_config)
    taps = []
    for offset in itertools.product(*(range(k) for k in geometry.kernel_size)):
        start = [j * d for j, d in zip(offset, geometry.dilation)]
        limit = [s + (o - 1) * st + 1 for s, o, st in zip(start, geometry.output_spatial, geometry.strides)]
        taps.append(lax.slice(x, start + [0, 0], limit + [batch, channels], list(geometry.strides) + [1, 1]))
    patches = jnp.stack(taps, axis=-2)  # (*out, batch, window, C)
    return patches.reshape(geometry.num_positions, batch, geometry.window_volume * channels)


def apply_patches(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    geometry: Geometry,
    precision: lax.PrecisionLike,
) -> jax.Array:
    """Applies the layer to channels-last ``x`` of shape ``(batch, *spatial, C)``.

    Returns:
      Array of shape ``(batch, *output_spatial, filters)``.
    """
    batch, filters = x.shape[0], kernel.shape[-1]
    patches = extract_patches(x, geometry)
    weights = kernel.reshape(geometry.num_positions, -1, filters)
    y = lax.dot_general(
        patches, weights, (((2,), (1,)), ((0,), (0,))), precision=precision
    )  # (positions, batch, filters)
    if bias is not None:
        y = y + bias.reshape(geometry.num_positions, 1, filters)
    y = y.reshape(*geometry.output_spatial, batch, filters)
    return jnp.moveaxis(y, geometry.rank, 0)
