"""The ``"dense"`` and ``"sparse"`` implementations: one matrix for the layer.

Both scatter the kernel into the ``(input_size * channels, positions *
filters)`` matrix of the linear map the layer computes and apply it with one
matrix product: dense as an ordinary array, sparse as a
``jax.experimental.sparse.BCOO`` holding only the real connections. Taps that
fall into padding have no entry: they would multiply zeros.

The dense matrix multiplies every input by every column, zeros included, so a
non-finite input value makes every output of its example NaN (``0 * inf``);
the sparse matrix has no entries outside the windows and keeps it local.

Before building anything, each computes the bytes it will allocate and raises
if that exceeds ``max_matrix_bytes``, instead of exhausting memory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import sparse

from flax_local._src.geometry import INDEX_LIMIT, Geometry

DEFAULT_MAX_MATRIX_BYTES = 1 << 30
"""Largest matrix (1 GiB) ``"dense"`` and ``"sparse"`` build unless told otherwise."""


def dense_matrix_bytes(geometry: Geometry, channels: int, filters: int, itemsize: int, batch: int = 1) -> int:
    """Bytes of the dense ``(input_size * C, positions * F)`` matrix (whatever the batch)."""
    del batch
    return math.prod(geometry.input_spatial) * channels * geometry.num_positions * filters * itemsize


def sparse_matrix_bytes(
    geometry: Geometry, channels: int, filters: int, itemsize: int, batch: int = 1
) -> int:
    """Peak bytes of a ``"sparse"`` training step, the most it ever holds.

    Per stored entry: two int32 indices on the host while building and again
    in the program, its value, and the BCOO products, which gather one input
    value per entry and example: one ``(batch, entries)`` array in the
    forward pass and two more in the backward pass (measured with
    ``memory_analysis``, ``tests/test_reliability.py``).
    """
    entries = geometry.num_connections * channels * filters
    return entries * (itemsize * (3 * max(batch, 1) + 1) + 2 * 8)


def check_size(implementation: str, needed: int, limit: int | None) -> None:
    """Raises if ``needed`` bytes exceed ``limit`` (None: no limit)."""
    if limit is not None and needed > limit:
        raise ValueError(
            f"implementation={implementation!r} would build a {needed / 2**20:.1f} MiB matrix "
            f"({needed} bytes), over max_matrix_bytes={limit}. Use implementation='patches' "
            f"(memory grows with the kernel only) or raise max_matrix_bytes."
        )


def _connections(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input index, position, window offset) of every tap inside the input."""
    index, valid = geometry.input_coordinates()
    positions, offsets = np.nonzero(valid)
    return index[positions, offsets], positions, offsets


def _connected_weights(
    implementation: str, kernel: jax.Array, geometry: Geometry, channels: int, needed: int, limit: int | None
) -> tuple[np.ndarray, np.ndarray, jax.Array]:
    """Checks the size, then returns (input index, position, weights (n, C, F)) per connection."""
    check_size(implementation, needed, limit)
    inputs, positions, offsets = _connections(geometry)
    filters = kernel.shape[-1]
    taps = kernel.reshape(geometry.num_positions, geometry.window_volume, channels, filters)
    return inputs, positions, taps[positions, offsets]


def _matmul_and_finish(
    x: jax.Array, product, bias: jax.Array | None, geometry: Geometry, filters: int
) -> jax.Array:
    """``product`` of flat ``(batch, input_size * C)`` x, reshaped and biased."""
    batch = x.shape[0]
    y = product(x.reshape(batch, math.prod(x.shape[1:])))
    y = y.reshape(batch, *geometry.output_spatial, filters)
    return y if bias is None else y + bias[None]


def apply_dense(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    geometry: Geometry,
    precision: lax.PrecisionLike,
    max_matrix_bytes: int | None = None,
) -> jax.Array:
    """Applies the layer to ``(batch, *spatial, C)`` with one dense matmul.

    ``max_matrix_bytes`` None builds without checking (``locally_connected``
    checks through the registry's ``matrix_bytes`` hook first).
    """
    channels, filters = x.shape[-1], kernel.shape[-1]
    needed = dense_matrix_bytes(geometry, channels, filters, jnp.dtype(kernel.dtype).itemsize)
    inputs, positions, weights = _connected_weights(
        "dense", kernel, geometry, channels, needed, max_matrix_bytes
    )
    matrix = jnp.zeros(
        (math.prod(geometry.input_spatial), channels, geometry.num_positions, filters), kernel.dtype
    )
    # Two index arrays around a slice: the indexed axes lead, so the update is
    # (connections, C, F), exactly the shape of weights.
    matrix = matrix.at[inputs, :, positions, :].set(weights)
    matrix = matrix.reshape(-1, geometry.num_positions * filters)
    return _matmul_and_finish(
        x, lambda flat: jnp.matmul(flat, matrix, precision=precision), bias, geometry, filters
    )


def apply_sparse(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    geometry: Geometry,
    precision: lax.PrecisionLike,
    max_matrix_bytes: int | None = None,
) -> jax.Array:
    """Applies the layer to ``(batch, *spatial, C)`` with one sparse matmul (unchecked if the limit is None)."""
    channels, filters = x.shape[-1], kernel.shape[-1]
    needed = sparse_matrix_bytes(geometry, channels, filters, jnp.dtype(kernel.dtype).itemsize, x.shape[0])
    inputs, positions, weights = _connected_weights(
        "sparse", kernel, geometry, channels, needed, max_matrix_bytes
    )
    for axis, size in (
        ("rows", math.prod(geometry.input_spatial) * channels),
        ("columns", geometry.num_positions * filters),
    ):
        if size > INDEX_LIMIT:
            raise ValueError(
                f"implementation='sparse' indexes its matrix with int32, but it would have {size} {axis} "
                f"(over 2**31 - 1); use implementation='patches'."
            )
    # Built in int32 in place: one (entries, 2) array on the host, no int64 copies.
    indices = np.empty((inputs.shape[0], channels, filters, 2), np.int32)
    indices[..., 0] = (inputs.astype(np.int32) * np.int32(channels))[:, None, None]
    indices[..., 0] += np.arange(channels, dtype=np.int32)[None, :, None]
    indices[..., 1] = (positions.astype(np.int32) * np.int32(filters))[:, None, None]
    indices[..., 1] += np.arange(filters, dtype=np.int32)[None, None, :]
    matrix = sparse.BCOO(
        (weights.reshape(-1), jnp.asarray(indices.reshape(-1, 2))),
        shape=(math.prod(geometry.input_spatial) * channels, geometry.num_positions * filters),
        indices_sorted=False,
        unique_indices=True,
    )
    dimension_numbers = (((1,), (0,)), ((), ()))
    return _matmul_and_finish(
        x,
        lambda flat: sparse.bcoo_dot_general(
            flat, matrix, dimension_numbers=dimension_numbers, precision=precision
        ),
        bias,
        geometry,
        filters,
    )
