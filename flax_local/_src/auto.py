"""The cost model behind ``implementation="auto"``.

``"native"`` and ``"patches"`` do exactly the layer's multiply-adds:
``"native"`` in fused C++ kernels (CPU only), ``"patches"`` in XLA.
``"dense"`` does one matmul over the whole ``(input_size * C, positions * F)``
matrix, of which only the fraction ``density`` holds real weights, so it wastes
``1 / density`` of its work but runs as a single large matmul, which matrix
units (GPU tensor cores, TPU MXUs) execute far faster than many small
per-position products.

``"auto"`` asks the implementations in registry order (``registry.py``) and
takes the first whose cost hook here accepts the layer:

* ``"dense"`` (``dense_pays_off``), on GPU and TPU only, when its matrix is at
  most ``DENSE_MAX_BYTES[backend]`` and its wasted work ``1 / density`` at
  most ``DENSE_MAX_WASTE[backend]``;
* ``"native"`` on CPU, for float32 and half-precision layers, when its
  kernels are built (``native_build``) with a hand-written vector path
  (AVX-512, or AVX2 with FMA) and the process has a single device
  (``native_usable``);
* ``"patches"`` otherwise.

Non-finite inputs: ``"native"``, ``"patches"`` and ``"sparse"`` keep a NaN or
``inf`` input local: it reaches only the outputs whose windows read it.
``"dense"`` multiplies every input by every matrix entry, zeros included, so
one NaN or ``inf`` input makes every output of that example NaN (``0 * inf``);
other examples of the batch are unaffected. That is why ``"auto"`` never
picks ``"dense"`` on CPU, where it buys no speed: measured on 2 cores
(float32, forward and training step), dense was 2x slower than patches
already at wasted work 4 (a 0.56 MiB matrix) and at best level with it on
tiny layers, where the native kernels are level with both (tens of
microseconds). On GPU and TPU it is picked for small layers only, where a
single matmul on the matrix units pays off; pass ``implementation="patches"``
there for NaN-local outputs. Every implementation gives exactly zero for a
tap that reads padding, whatever the kernel holds there.

On CPU ``"native"`` ran the forward pass 2-6x and the training step 1.2-3x
faster than ``"patches"`` on every benchmark case with AVX-512, and 1.5-5.0x
and 1.5-3.1x with AVX2 (``benchmarks/RESULTS.md``).

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

Everything here works from static shapes with per-axis arithmetic: nothing of
size positions x window is built to decide.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from flax_local._src import native_build
from flax_local._src.data_parallel import runs_per_device
from flax_local._src.dense import dense_matrix_bytes
from flax_local._src.geometry import Geometry

DENSE_MAX_BYTES = {"gpu": 64 << 20, "tpu": 64 << 20}
DENSE_MAX_WASTE = {"gpu": 16.0, "tpu": 16.0}
BACKENDS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Layer:
    """What a cost hook sees of a layer: static shapes, dtype and backend.

    Attributes:
      geometry: the layer's geometry.
      channels: input channels.
      filters: output channels.
      dtype: the layer's dtype.
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``.
      max_matrix_bytes: the caller's limit on any matrix an implementation builds.
    """

    geometry: Geometry
    channels: int
    filters: int
    dtype: jnp.dtype
    backend: str
    max_matrix_bytes: int | None = None


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


def dense_waste(geometry: Geometry) -> float:
    """``1 / density`` of the dense matrix: its cells over its real connections.

    Per spatial axis, as a product: a tap is inside the input exactly when it
    is inside along every axis.
    """
    cells = geometry.num_positions * math.prod(geometry.input_spatial)
    return cells / max(geometry.num_connections, 1)


def dense_pays_off(layer: Layer) -> bool:
    """Cost hook of ``"dense"``: small, dense enough, and on matrix units (not on CPU)."""
    if layer.backend not in DENSE_MAX_BYTES:
        return False
    size = dense_matrix_bytes(layer.geometry, layer.channels, layer.filters, jnp.dtype(layer.dtype).itemsize)
    return (
        size <= DENSE_MAX_BYTES[layer.backend]
        and dense_waste(layer.geometry) <= DENSE_MAX_WASTE[layer.backend]
    )


def always(layer: Layer) -> bool:
    """Cost hook of an implementation that ``"auto"`` takes wherever it may run."""
    del layer
    return True


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
    """Returns the implementation ``"auto"`` runs for this layer on ``backend``.

    Asks the registry's entries in order and returns the first that runs on
    ``backend``, accepts ``dtype``, is available, builds no matrix over
    ``max_dense_bytes`` and whose cost hook accepts the layer (module
    docstring). Never ``"dense"`` on CPU: see the module docstring for how
    each implementation propagates a NaN input.

    Args:
      geometry: the layer's geometry.
      channels: input channels.
      filters: output channels.
      dtype: the layer's dtype.
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; the default backend if None
        (any other name counts as ``"gpu"``).
      native: whether the native CPU kernels may be used; ``native_usable()``
        if None.
      max_dense_bytes: a caller's limit on the matrix of ``"dense"`` (or any
        implementation that builds one), on top of the backend's.

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
      >>> choose_implementation(geometry((4,), 3, padding="same"), 2, 2, jnp.float32, "cpu", native=False)
      'patches'
    """
    from flax_local._src import registry  # the registry imports this module's cost hooks

    backend = (backend or jax.default_backend()).lower()
    backend = backend if backend in BACKENDS else "gpu"
    layer = Layer(geometry, channels, filters, jnp.dtype(dtype), backend, max_dense_bytes)
    overrides = {} if native is None else {"native": native}
    itemsize = jnp.dtype(dtype).itemsize
    for entry in registry.IMPLEMENTATIONS:
        if entry.picks is None or backend not in entry.backends or not entry.supports_dtype(dtype):
            continue
        available = overrides.get(entry.name)
        if available is None:
            available = entry.available is None or entry.available()
        if not available:
            continue
        if (
            entry.matrix_bytes is not None
            and max_dense_bytes is not None
            and entry.matrix_bytes(geometry, channels, filters, itemsize, 1) > max_dense_bytes
        ):
            continue
        if entry.picks(layer):
            return entry.name
    return "patches"
