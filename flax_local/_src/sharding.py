"""Sharding locally-connected layers over a device mesh with JAX's SPMD machinery.

Three pieces, all thin layers over ``jax.sharding`` and flax's logical axes:

* **Logical axis names.** With ``logical_partitioning=True`` a linen layer boxes
  its parameters in ``flax.linen.Partitioned`` metadata naming every axis:
  ``kernel`` ``(local_pos_0, ..., local_window_0, ..., local_in,
  local_filters)`` and ``bias`` ``(local_pos_0, ..., local_filters)``. The
  names depend only on the axis's role and index, never on the layer's rank,
  so one rule (``("local_pos_0", "model")``) shards the first position axis of
  every 1D, 2D and 3D layer of a model.
* **Computation.** Nothing here re-implements the layer. Under ``jax.jit`` with
  the kernel sharded over its first position axis, XLA's SPMD partitioner
  splits the per-position contraction of the ``"patches"`` implementation:
  each device keeps its band of positions, computes only those outputs and
  fetches the input rows it needs from its neighbours (a halo exchange,
  ``collective-permute`` in the HLO); the kernel is never gathered (the tests
  check the compiled HLO). Sharding only a later position axis
  (``local_pos_1``) is computed correctly too, but XLA then gathers the
  kernel: the patches contraction flattens the positions row-major, so only
  a leading position axis splits into contiguous blocks. On meshes with
  ``Explicit`` axes (the default of ``jax.make_mesh``) the layer runs its
  computation under ``jax.sharding.auto_axes`` so the partitioner can do the
  same, and types its output as sharded like the batch of the input and the
  positions of the kernel.
* **Shardings for training.** ``state_shardings`` turns a model and an optax
  optimizer into ``NamedSharding`` trees for ``params`` and ``opt_state``, ready
  for ``jax.jit(..., in_shardings=..., out_shardings=...)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import optax
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from flax_local._src import data_parallel

BATCH_AXIS = "batch"
"""Logical name of the batch axis of activations (flax's usual name)."""

POSITION_AXIS_PREFIX = "local_pos_"
"""Output-position axis ``d`` of a kernel or bias is named ``f"local_pos_{d}"``."""

WINDOW_AXIS_PREFIX = "local_window_"
"""Kernel-window axis ``d`` of a kernel is named ``f"local_window_{d}"``."""

IN_CHANNELS_AXIS = "local_in"
"""Logical name of the kernel's ``in_channels`` axis."""

FILTERS_AXIS = "local_filters"
"""Logical name of the ``filters`` axis of the kernel and the bias."""

LogicalRules = Sequence[tuple[str, Any]]


def position_axis_names(rank: int) -> tuple[str, ...]:
    """Logical names of the output-position axes of a rank-``rank`` layer.

    Args:
      rank: number of spatial dimensions (1, 2, 3, ...).

    Returns:
      ``("local_pos_0", ..., f"local_pos_{rank - 1}")``.

    Example:
      >>> from flax_local.sharding import position_axis_names
      >>> position_axis_names(2)
      ('local_pos_0', 'local_pos_1')
    """
    return tuple(f"{POSITION_AXIS_PREFIX}{d}" for d in range(_check_rank(rank)))


def kernel_axis_names(rank: int) -> tuple[str, ...]:
    """Logical names of the axes of a kernel ``(*positions, *window, in, filters)``.

    Args:
      rank: number of spatial dimensions.

    Returns:
      ``rank`` position names, ``rank`` window names, ``"local_in"`` and
      ``"local_filters"``: ``2 * rank + 2`` names, one per kernel axis.

    Example:
      >>> from flax_local.sharding import kernel_axis_names
      >>> kernel_axis_names(1)
      ('local_pos_0', 'local_window_0', 'local_in', 'local_filters')
    """
    windows = tuple(f"{WINDOW_AXIS_PREFIX}{d}" for d in range(_check_rank(rank)))
    return (*position_axis_names(rank), *windows, IN_CHANNELS_AXIS, FILTERS_AXIS)


def bias_axis_names(rank: int) -> tuple[str, ...]:
    """Logical names of the axes of a bias ``(*positions, filters)``.

    Args:
      rank: number of spatial dimensions.

    Returns:
      ``rank`` position names and ``"local_filters"``.

    Example:
      >>> from flax_local.sharding import bias_axis_names
      >>> bias_axis_names(2)
      ('local_pos_0', 'local_pos_1', 'local_filters')
    """
    return (*position_axis_names(rank), FILTERS_AXIS)


def logical_axis_rules(
    data_axis: str | Sequence[str] | None = "data",
    model_axis: str | Sequence[str] | None = "model",
) -> tuple[tuple[str, Any], ...]:
    """Flax logical-axis rules for data parallelism plus sharded output positions.

    The rules map ``"batch"`` to ``data_axis`` and ``"local_pos_0"`` (the first
    output-position axis of every layer: rows in 2D, depth in 3D) to
    ``model_axis``; every other name of this library (the window axes,
    ``local_in``, ``local_filters``, the other position axes) matches no rule
    and stays replicated. Append your model's own rules to the returned tuple;
    flax uses the first rule that matches a name.

    Args:
      data_axis: mesh axis (or axes) for the batch, or None to replicate it.
      model_axis: mesh axis (or axes) for the output positions, or None to
        replicate the kernels (pure data parallelism). Every locally-connected
        layer of the model must have a number of positions along its first
        axis divisible by the size of ``model_axis``.

    Returns:
      A tuple of ``(logical_name, mesh_axes)`` pairs for
      ``flax_local.sharding.state_shardings``,
      ``flax.linen.logical_to_mesh_sharding`` or ``flax.linen.logical_axis_rules``.

    Example:
      >>> from flax_local.sharding import logical_axis_rules
      >>> logical_axis_rules("data", "model")
      (('batch', 'data'), ('local_pos_0', 'model'))
    """
    return ((BATCH_AXIS, data_axis), (f"{POSITION_AXIS_PREFIX}0", model_axis))


def variable_shardings(
    mesh: Mesh,
    variables: Any,
    rules: LogicalRules,
    *,
    indivisible: str = "raise",
) -> Any:
    """``NamedSharding`` for every leaf of a tree of (possibly boxed) variables.

    Leaves boxed in ``flax.linen.Partitioned`` / ``LogicallyPartitioned``
    (what ``nn.with_logical_partitioning`` makes) are sharded by their logical
    names through ``rules``; other leaves are replicated. The result has the
    structure of ``flax.linen.unbox(variables)``.

    Args:
      mesh: the device mesh.
      variables: a pytree from ``model.init`` or ``jax.eval_shape(model.init,
        ...)`` (arrays or ``jax.ShapeDtypeStruct``), boxed or not.
      rules: logical-axis rules, e.g. ``logical_axis_rules()``.
      indivisible: what to do when a dimension is not divisible by the number
        of devices its mesh axes span: ``"raise"`` (a ``ValueError`` naming
        the parameter) or ``"replicate"`` (leave that dimension unsharded).

    Returns:
      A pytree of ``jax.sharding.NamedSharding``.

    Raises:
      ValueError: for an indivisible dimension when ``indivisible="raise"``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local import LocallyConnected1D
      >>> from flax_local.sharding import logical_axis_rules, variable_shardings
      >>> layer = LocallyConnected1D(filters=4, kernel_size=3, logical_partitioning=True)
      >>> abstract = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((2, 10, 3)))
      >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
      >>> shardings = variable_shardings(mesh, abstract, logical_axis_rules())
      >>> shardings["params"]["kernel"].spec
      P('model', None, None, None)
    """
    if indivisible not in ("raise", "replicate"):
        raise ValueError(f"indivisible must be 'raise' or 'replicate', got {indivisible!r}.")
    mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(variables), rules)
    shapes = nn.unbox(variables)
    specs_flat, treedef = jax.tree_util.tree_flatten(
        mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    paths_and_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
    if len(paths_and_shapes) != len(specs_flat):  # pragma: no cover - flax keeps them aligned
        raise ValueError("variables and their partition specs do not line up.")
    shardings = []
    for (path, leaf), spec in zip(paths_and_shapes, specs_flat):
        spec = _fit_spec(mesh, spec, tuple(leaf.shape), jax.tree_util.keystr(path), indivisible)
        shardings.append(NamedSharding(mesh, spec))
    return jax.tree_util.tree_unflatten(treedef, shardings)


class StateShardings(NamedTuple):
    """The shardings ``state_shardings`` returns.

    Attributes:
      params: ``NamedSharding`` tree with the structure of ``variables["params"]``
        (unboxed).
      opt_state: ``NamedSharding`` tree with the structure of
        ``optimizer.init(params)``: each copy of the params inside it (Adam's
        moments, ...) is sharded as the params, other leaves (step counts) are
        replicated.
      variables: ``NamedSharding`` tree for every collection ``model.init``
        returns (``"params"``, ``"batch_stats"``, ...).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax_local import LocallyConnected1D
      >>> from flax_local.sharding import logical_axis_rules, state_shardings
      >>> model = LocallyConnected1D(filters=4, kernel_size=3, logical_partitioning=True)
      >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
      >>> shardings = state_shardings(
      ...     mesh, model, optax.sgd(0.1), jnp.ones((2, 10, 3)), rules=logical_axis_rules())
      >>> sorted(shardings.params)
      ['bias', 'kernel']
      >>> shardings.params["bias"].spec
      P('model', None)
    """

    params: Any
    opt_state: Any
    variables: Any


def state_shardings(
    mesh: Mesh,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *init_args: Any,
    rules: LogicalRules,
    rngs: Any = None,
    indivisible: str = "raise",
    **init_kwargs: Any,
) -> StateShardings:
    """Shardings of a model's params and its optimizer state on ``mesh``.

    Traces ``model.init`` and ``optimizer.init`` abstractly (``jax.eval_shape``:
    nothing is allocated), reads the logical axis names the layers attached to
    their params (``logical_partitioning=True`` on this library's layers,
    ``nn.with_logical_partitioning`` on any other) and maps them to mesh axes
    with ``rules``. Unnamed params are replicated.

    Args:
      mesh: the device mesh.
      model: a ``flax.linen`` module.
      optimizer: an optax ``GradientTransformation``.
      *init_args: example inputs for ``model.init`` (arrays or
        ``jax.ShapeDtypeStruct``: only shapes and dtypes are used), global
        shapes.
      rules: logical-axis rules, e.g. ``logical_axis_rules()`` plus your own.
      rngs: the ``rngs`` for ``model.init`` (default ``jax.random.key(0)``).
      indivisible: ``"raise"`` or ``"replicate"``, as in ``variable_shardings``.
      **init_kwargs: keyword arguments for ``model.init``.

    Returns:
      A ``StateShardings(params, opt_state, variables)``.

    Raises:
      ValueError: when a sharded dimension is not divisible by its mesh axes
        (``indivisible="raise"``).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax_local import LocallyConnected2D
      >>> from flax_local.sharding import logical_axis_rules, state_shardings
      >>> model = LocallyConnected2D(filters=4, kernel_size=3, logical_partitioning=True)
      >>> x = jax.ShapeDtypeStruct((8, 10, 10, 3), jnp.float32)
      >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
      >>> shardings = state_shardings(mesh, model, optax.adam(1e-3), x, rules=logical_axis_rules())
      >>> shardings.params["kernel"].spec
      P('model', None, None, None, None, None)
      >>> shardings.opt_state[0].mu["kernel"].spec
      P('model', None, None, None, None, None)
    """
    rngs = jax.random.key(0) if rngs is None else rngs
    init = functools.partial(model.init, **init_kwargs)
    abstract = jax.eval_shape(init, rngs, *init_args)
    variables = variable_shardings(mesh, abstract, rules, indivisible=indivisible)
    if "params" not in variables:
        raise ValueError(f"{type(model).__name__}.init returned no 'params' collection.")
    params = variables["params"]
    abstract_params = nn.unbox(abstract["params"])
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_utils.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt_state,
        params,
        transform_non_params=lambda _: replicated,
    )
    return StateShardings(params=params, opt_state=opt_state, variables=variables)


def _check_rank(rank: int) -> int:
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int (number of spatial dimensions), got {rank!r}.")
    return rank


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[name] for name in names)


def _fit_spec(
    mesh: Mesh, spec: PartitionSpec, shape: tuple[int, ...], where: str, indivisible: str
) -> PartitionSpec:
    """Checks that ``spec`` divides ``shape``; raises or drops what does not."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    for dim, (axes, size) in enumerate(zip(entries, shape)):
        parts = _axis_size(mesh, axes)
        if size % parts:
            if indivisible == "raise":
                raise ValueError(
                    f"Cannot shard dimension {dim} (size {size}) of {where}, shape {shape}, over "
                    f"mesh axes {axes!r} ({parts} devices): {size} is not divisible by {parts}. "
                    "Choose a mesh axis size that divides it, or pass indivisible='replicate' "
                    "(this dimension is then not sharded)."
                )
            entries[dim] = None
    return PartitionSpec(*entries)


def _explicit_mesh(*arrays: jax.Array | None) -> Any:
    """The abstract mesh to use if it has ``Explicit`` axes, else None.

    The context's mesh (``jax.set_mesh``) if there is one, else the mesh in the
    type of the first argument that has one (eager calls on arrays placed on an
    explicit mesh without a mesh context).
    """
    mesh = jax.sharding.get_abstract_mesh()
    for array in arrays:
        if not mesh.empty:
            break
        if array is not None:
            mesh = jax.typeof(array).sharding.mesh
    if mesh.empty or AxisType.Explicit not in mesh.axis_types:
        return None
    return mesh


def _spec_of(x: jax.Array) -> tuple[Any, ...]:
    spec = tuple(jax.typeof(x).sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def call_on_any_mesh(
    compute: Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array],
    inputs: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    rank: int,
    channels_first: bool,
) -> jax.Array:
    """Runs ``compute(inputs, kernel, bias)`` so that it works on every mesh.

    Without a mesh, or on a mesh whose axes are ``Auto``, this is just
    ``compute(...)``: XLA propagates the shardings of the arguments. On a mesh
    with ``Explicit`` axes the computation runs under
    ``jax.sharding.auto_axes``, so the SPMD partitioner chooses its
    communication (a halo exchange of input rows, never a kernel gather), and
    the output is typed as sharded like the batch axes of ``inputs`` and the
    position and filter axes of ``kernel``. When the types show replicated
    ``kernel`` and ``bias`` and a batch-only sharded ``inputs``, ``compute``
    runs per device under ``shard_map`` instead (``flax_local._src.data_parallel``),
    so that ``"auto"`` keeps the fused kernels.
    """
    mesh = _explicit_mesh(inputs, kernel, bias)
    if mesh is None:
        return compute(inputs, kernel, bias)
    # Batch-only sharding: each device computes its share (flax_local._src.data_parallel).
    y = data_parallel.run_data_parallel(compute, inputs, kernel, bias, rank=rank)
    if y is not None:
        return y
    x_spec, k_spec = _spec_of(inputs), _spec_of(kernel)
    num_batch = inputs.ndim - rank - 1
    batch, positions, filters = x_spec[:num_batch], k_spec[:rank], k_spec[-1]
    out = (*batch, filters, *positions) if channels_first else (*batch, *positions, filters)
    used: set[str] = set()
    entries = []
    for axes in out:  # a mesh axis may shard one output dimension only: first one wins
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        if not names or used.intersection(names):
            entries.append(None)
            continue
        used.update(names)
        entries.append(axes)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.sharding.auto_axes(compute, out_sharding=PartitionSpec(*entries))(inputs, kernel, bias)
