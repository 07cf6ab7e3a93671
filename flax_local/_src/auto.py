"""The cost model behind ``implementation="auto"``.

``"native"`` and ``"patches"`` do exactly the layer's multiply-adds:
``"native"`` in fused C++ kernels (CPU only), ``"patches"`` in XLA.
``"dense"`` does one matmul over the whole ``(input_size * C, positions * F)``
matrix, of which only the fraction ``density`` holds real weights, so it wastes
``1 / density`` of its work but runs as a single large matmul, which matrix
units (GPU tensor cores, TPU MXUs) execute far faster than many small
per-position products.

The rule, from static shapes only:

* ``"dense"`` when its matrix is at most ``DENSE_MAX_BYTES[backend]`` and its
  wasted work ``1 / density`` is at most ``DENSE_MAX_WASTE[backend]``;
* else ``"native"`` on CPU, for float32 and half-precision layers, when its
  kernels are built (``native_build``) with a hand-written vector path
  (AVX-512, or AVX2 with FMA) and the process has a single device;
* ``"patches"`` otherwise.

On CPU, ``"dense"`` only wins on tiny layers whose window covers most of the
input: measured on 2 cores (float32, forward and training step), dense was 2x
slower than patches already at wasted work 4 (a 0.56 MiB matrix) and at 4 MiB,
and at best level with it at wasted work <= 3 below 256 KiB, where the native
kernels are level with both (tens of microseconds). Hence the CPU limits of 256
KiB and 3. Above that ``"native"`` ran the forward pass 2-6x and the training
step 1.2-3x faster than ``"patches"`` on every benchmark case with AVX-512,
and 1.5-5.0x and 1.5-3.1x with AVX2 (``benchmarks/RESULTS.md``).

On GPU (one H100, ``benchmarks/RESULTS.md``) ``"patches"`` was the fastest
implementation's equal (within 10%) on every benchmark case; ``"dense"`` at
264-271 MiB and 43-87x wasted work ran the training step 3.5-3.9x slower.
The accelerator limits (64 MiB, 16x) are still unmeasured at their edge: no
benchmark case falls under them.

With several devices ``"patches"`` stays the choice: XLA's SPMD partitioner
splits its per-position products across a mesh (``flax_local.sharding``),
while it can only replicate a custom call. The exception is data parallelism
on an ``Explicit`` mesh, where the layer runs per device under ``shard_map``
and the rule above applies to each device's share
(``flax_local._src.data_parallel``).

``"sparse"`` is never picked: a BCOO matmul is slower than both on every
backend we measured; it exists for Keras parity and for users who want it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flax_local._src import native_build
from flax_local._src.data_parallel import runs_per_device
from flax_local._src.dense import dense_matrix_bytes
from flax_local._src.geometry import Geometry
from flax_local._src.native import supports_dtype

DENSE_MAX_BYTES = {"cpu": 256 << 10, "gpu": 64 << 20, "tpu": 64 << 20}
DENSE_MAX_WASTE = {"cpu": 3.0, "gpu": 16.0, "tpu": 16.0}


def native_usable() -> bool:
    """Whether ``"auto"`` may pick ``"native"``: fast kernels build here and there is one device.

    Returns:
      True when the native kernels are available, were built with one of the
      hand-written vector paths (AVX-512, or AVX2 with FMA:
      ``native_build.FAST_VECTOR_PATHS``) and ``jax.device_count() == 1``, or
      the code runs per device, inside a ``shard_map`` over every mesh axis
      (``data_parallel.runs_per_device``).

    Example:
      >>> from flax_local.functional import native_usable
      >>> isinstance(native_usable(), bool)
      True
    """
    return (
        (jax.device_count() == 1 or runs_per_device())
        and native_build.is_available()
        and native_build.vector_path() in native_build.FAST_VECTOR_PATHS
    )


def choose_implementation(
    geometry: Geometry,
    channels: int,
    filters: int,
    dtype: jnp.dtype,
    backend: str | None = None,
    *,
    native: bool | None = None,
    max_dense_bytes: int | None = None,
) -> str:
    """Returns ``"dense"``, ``"native"`` or ``"patches"`` for this layer on ``backend``.

    Args:
      geometry: the layer's geometry.
      channels: input channels.
      filters: output channels.
      dtype: the layer's dtype.
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; the default backend if None.
      native: whether the native CPU kernels may be used; ``native_usable()``
        if None.
      max_dense_bytes: a caller's limit on the ``"dense"`` matrix, on top of
        the backend's.

    Returns:
      The implementation name.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local.functional import choose_implementation, geometry
      >>> choose_implementation(geometry((56, 56), 3), 32, 32, jnp.float32, "cpu", native=True)
      'native'
      >>> choose_implementation(geometry((56, 56), 3), 32, 32, jnp.float32, "cpu", native=False)
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
    dense_limit = (
        DENSE_MAX_BYTES[backend]
        if max_dense_bytes is None
        else min(max_dense_bytes, DENSE_MAX_BYTES[backend])
    )
    if size <= dense_limit and waste <= DENSE_MAX_WASTE[backend]:
        return "dense"
    if backend == "cpu" and supports_dtype(dtype):
        if native_usable() if native is None else native:
            return "native"
    return "patches"
