"""The cost model behind ``implementation="auto"``.

``"patches"`` does exactly the layer's multiply-adds. ``"dense"`` does one
matmul over the whole ``(input_size * C, positions * F)`` matrix, of which only
the fraction ``density`` holds real weights, so it wastes ``1 / density`` of
its work but runs as a single large matmul, which matrix units (GPU tensor
cores, TPU MXUs) execute far faster than many small per-position products.

The rule, from static shapes only:

* ``"dense"`` when its matrix is at most ``DENSE_MAX_BYTES[backend]`` and its
  wasted work ``1 / density`` is at most ``DENSE_MAX_WASTE[backend]``;
* ``"patches"`` otherwise.

On CPU, where ``"patches"`` runs its per-position matmuls, gathers and
folds at memory speed (see ``patches.py``), ``"dense"`` only wins on tiny
layers whose window covers most of the input: measured on 2 cores (float32,
forward and training step), dense was 2x slower than patches already at
wasted work 4 (a 0.56 MiB matrix) and at 4 MiB, and at best level with it at
wasted work <= 3 below 256 KiB. Hence the CPU limits of 256 KiB and 3.

``"sparse"`` is never picked: a BCOO matmul is slower than both on every
backend we measured; it exists for Keras parity and for users who want it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flax_local._src.dense import dense_matrix_bytes
from flax_local._src.geometry import Geometry

DENSE_MAX_BYTES = {"cpu": 256 << 10, "gpu": 64 << 20, "tpu": 64 << 20}
DENSE_MAX_WASTE = {"cpu": 3.0, "gpu": 16.0, "tpu": 16.0}


def choose_implementation(
    geometry: Geometry, channels: int, filters: int, dtype: jnp.dtype, backend: str | None = None
) -> str:
    """Returns ``"dense"`` or ``"patches"`` for this layer on ``backend``.

    Args:
      geometry: the layer's geometry.
      channels: input channels.
      filters: output channels.
      dtype: the dtype the matrix would be built in.
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; the default backend if None.

    Returns:
      The implementation name.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local.functional import choose_implementation, geometry
      >>> choose_implementation(geometry((56, 56), 3), 32, 32, jnp.float32, "cpu")
      'patches'
      >>> choose_implementation(geometry((4,), 3, padding="same"), 2, 2, jnp.float32, "tpu")
      'dense'
    """
    backend = (backend or jax.default_backend()).lower()
    backend = backend if backend in DENSE_MAX_BYTES else "gpu"
    _, valid = geometry.input_coordinates()
    cells = valid.shape[0] * math.prod(geometry.input_spatial)
    waste = cells / max(int(valid.sum()), 1)
    size = dense_matrix_bytes(geometry, channels, filters, jnp.dtype(dtype).itemsize)
    if size <= DENSE_MAX_BYTES[backend] and waste <= DENSE_MAX_WASTE[backend]:
        return "dense"
    return "patches"
