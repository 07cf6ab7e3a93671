"""Data parallelism with the fused kernels: each device runs them on its share of the batch.

XLA's SPMD partitioner can split the ``"patches"`` contraction across a mesh,
but it cannot split a custom call (the ``"native"`` kernels) and can only
replicate it. So when the kernel and bias are replicated and only the batch is
sharded (ordinary data-parallel training), ``run_data_parallel`` runs the
layer under ``jax.shard_map``: every device applies the layer to its own rows,
with no communication in the forward pass; in the backward pass the cotangent
of the replicated kernel and bias is summed over the devices by
``shard_map``'s own transpose (a ``psum``, the all-reduce of data-parallel
training), and the input gradient stays sharded like the input.

Which kernels run per device: inside the ``shard_map`` every mesh axis is
``Manual``, the code is per device, and ``runs_per_device`` says so. The cost
model of ``"auto"`` (``flax_local._src.auto``) accepts the fused kernels when
``jax.device_count() == 1 or runs_per_device()``: ``"native"`` on CPU (and a
GPU rule for ``"pallas"`` must use the same condition). That rule is the one
place naming the fused implementation; this module only decides where the
code runs, so an explicit ``implementation=`` is honoured per device too
(``"patches"`` or ``"dense"`` per device is what the partitioner would do for
a batch-only sharding anyway).

When the library knows the shardings, at trace time:

* Only on a mesh whose axes of size > 1 are all ``Explicit`` (the default of
  ``jax.make_mesh``): there the array types carry the shardings
  (``jax.typeof(x).sharding.spec``). The mesh is the context's
  (``jax.set_mesh``) or, in an eager call without one, the one in the
  arguments' types.
* On ``Auto`` meshes (``jax.jit(..., in_shardings=...)``, or ``jax.set_mesh``
  of a mesh made with ``AxisType.Auto``) the shardings are decided after
  tracing, so nothing here can tell a replicated kernel from one sharded by
  position. Replicating a custom call there would gather a position-sharded
  kernel onto every device, so ``"auto"`` keeps ``"patches"``, which the
  partitioner splits either way (``flax_local.sharding``).

The rule (``data_parallel_specs``): the per-device path is taken when, from
the types,

* ``kernel`` and ``bias`` are sharded over no mesh axis of size > 1;
* ``x`` is sharded over no axis of size > 1 in its spatial and channel
  dimensions, and over at least one in its leading batch dimensions (any
  number of them, each over one or several mesh axes), evenly.

Otherwise ``run_data_parallel`` returns None and the caller keeps its
existing path: an unsharded batch (nothing to split), a kernel sharded by
position (the partitioner's halo exchange keeps each device's band of
positions), spatial sharding. Whatever the path, the numbers are the same.

``shard_map`` receives exactly the specs of the argument types, so it never
moves data on the way in, and runs with ``check_vma=False``: the primitives of
the native kernels carry no varying-axis types. With ``check_vma=False`` its
transpose still sums the cotangent of a replicated input over the devices
(``tests/data_parallel_checks.py`` compares every gradient with one device's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import AxisType, PartitionSpec


def runs_per_device() -> bool:
    """Whether the code being traced runs once per device, inside a ``shard_map`` over every mesh axis.

    Returns:
      True when the context's mesh is non-empty and each of its axes of size
      > 1 is ``Manual``: the partitioner will not split (or replicate) what is
      traced here, so a custom call is as cheap as on one device.

    Example:
      >>> from flax_local._src.data_parallel import runs_per_device
      >>> runs_per_device()
      False
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    return all(
        kind == AxisType.Manual or size == 1
        for kind, size in zip(mesh.axis_types, mesh.axis_sizes, strict=True)
    )


def data_parallel_specs(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, rank: int
) -> tuple[Any, PartitionSpec, PartitionSpec, PartitionSpec | None, PartitionSpec] | None:
    """The predicate: the mesh and ``shard_map`` specs if the types prove batch-only sharding.

    Args:
      x: the input, ``(*batch, *spatial, C)`` or ``(*batch, C, *spatial)``.
      kernel: the kernel, ``(*output_spatial, *kernel_size, C, filters)``.
      bias: the bias or None.
      rank: number of spatial dimensions.

    Returns:
      ``(mesh, x_spec, kernel_spec, bias_spec, out_spec)`` when the mesh axes
      of size > 1 are all ``Explicit``, ``kernel`` and ``bias`` are replicated
      over them and ``x`` is evenly sharded over them in its batch dimensions
      only, with at least one such axis; None otherwise. The input specs are
      the arguments' own (``shard_map`` then moves no data); ``out_spec``
      shards the output's batch dimensions as ``x``'s.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local._src.data_parallel import data_parallel_specs
      >>> print(data_parallel_specs(jnp.ones((4, 6, 2)), jnp.ones((4, 3, 2, 5)), None, rank=1))
      None
    """
    mesh = _typed_mesh(x, kernel, bias)
    if mesh is None:
        return None
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    x_spec, k_spec = _spec(x), _spec(kernel)
    b_spec = None if bias is None else _spec(bias)
    num_batch = x.ndim - rank - 1
    replicated = [*x_spec[num_batch:], *k_spec, *(() if b_spec is None else b_spec)]
    if num_batch < 1 or any(_devices(entry, sizes) > 1 for entry in replicated):
        return None
    parts = [_devices(entry, sizes) for entry in x_spec[:num_batch]]
    if math.prod(parts) == 1 or any(size % n for size, n in zip(x.shape, parts)):
        return None
    out_spec = PartitionSpec(*x_spec[:num_batch])
    return (
        mesh,
        PartitionSpec(*x_spec),
        PartitionSpec(*k_spec),
        None if b_spec is None else PartitionSpec(*b_spec),
        out_spec,
    )


def run_data_parallel(
    compute: Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array],
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    rank: int,
) -> jax.Array | None:
    """Runs ``compute(x, kernel, bias)`` on each device's share of the batch, or returns None.

    ``compute`` is the layer's computation (``locally_connected`` with its
    geometry bound); inside, every mesh axis is ``Manual`` and
    ``runs_per_device()`` is True, so its ``"auto"`` picks the fused kernels.

    Args:
      compute: maps local ``(x, kernel, bias)`` to the local output; it must
        treat the leading batch dimensions row by row (as the layer does).
      x: the input, ``(*batch, *spatial, C)`` or ``(*batch, C, *spatial)``:
        the output has the batch dimensions first in both layouts, so the
        specs do not depend on the layout.
      kernel: the kernel.
      bias: the bias or None.
      rank: number of spatial dimensions.

    Returns:
      The output, sharded like ``x`` in its batch dimensions, when the types
      prove batch-only sharding (``data_parallel_specs``); None otherwise: the
      caller then keeps its existing path.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local.functional import locally_connected
      >>> from flax_local._src.data_parallel import run_data_parallel
      >>> x, kernel = jnp.ones((4, 6, 2)), jnp.ones((4, 3, 2, 5))
      >>> print(run_data_parallel(locally_connected, x, kernel, None, rank=1))  # no mesh
      None
    """
    specs = data_parallel_specs(x, kernel, bias, rank=rank)
    if specs is None:
        return None
    mesh, x_spec, k_spec, b_spec, out_spec = specs
    if bias is None:
        return jax.shard_map(
            lambda x_, k_: compute(x_, k_, None),
            mesh=mesh,
            in_specs=(x_spec, k_spec),
            out_specs=out_spec,
            check_vma=False,
        )(x, kernel)
    return jax.shard_map(
        compute, mesh=mesh, in_specs=(x_spec, k_spec, b_spec), out_specs=out_spec, check_vma=False
    )(x, kernel, bias)


def _typed_mesh(*arrays: jax.Array | None) -> Any:
    """The abstract mesh whose axes of size > 1 are all ``Explicit``, else None.

    The context's mesh (``jax.set_mesh``) if there is one, else the mesh in
    the type of the first argument that has one.
    """
    mesh = jax.sharding.get_abstract_mesh()
    for array in arrays:
        if not mesh.empty:
            break
        if array is not None:
            mesh = jax.typeof(array).sharding.mesh
    if mesh.empty:
        return None
    kinds = [kind for kind, size in zip(mesh.axis_types, mesh.axis_sizes, strict=True) if size > 1]
    if not kinds or any(kind != AxisType.Explicit for kind in kinds):
        return None
    return mesh


def _spec(x: jax.Array) -> tuple[Any, ...]:
    spec = tuple(jax.typeof(x).sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def _devices(entry: Any, sizes: dict[str, int]) -> int:
    """Number of devices a spec entry (None, an axis name or a tuple of them) splits a dimension into."""
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(sizes[name] for name in names)
