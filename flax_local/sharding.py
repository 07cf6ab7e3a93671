"""Sharding locally-connected layers over a device mesh (data and model parallel).

A locally-connected kernel grows with the number of output positions, so large
layers are split over devices by position: each device holds the weights of a
band of output positions and computes only those outputs, reading the input
rows it needs from its neighbours. This uses JAX's own SPMD machinery
(``jax.sharding.Mesh``, ``NamedSharding``, ``jax.jit`` with shardings) and
flax's logical axis names; the kernel is never gathered onto one device.

1. Build the layers with ``logical_partitioning=True``: their params then carry
   logical axis names (``kernel_axis_names``, ``bias_axis_names``).
2. Map the names to mesh axes with flax rules (``logical_axis_rules`` gives
   ``"batch" -> data`` and ``"local_pos_0" -> model``).
3. ``state_shardings`` gives the ``NamedSharding`` trees of the params and the
   optimizer state; jit the init and the training step with them.

NNX: build the ``flax_local.nnx`` layers with ``logical_partitioning=True``
(the same names), then ``nnx_shardings(mesh, model, rules)`` gives the
``NamedSharding`` of every variable; ``nnx.update(model,
jax.device_put(nnx.state(model), shardings))`` places the model, and an
``nnx.Optimizer`` built afterwards keeps its state sharded alike (see the
second example). The layers run under ``jax.set_mesh`` as the linen ones do.

Logical names (fixed; the position and window names are indexed by spatial
dimension, the same in 1D, 2D and 3D):

======================  ===============================================
``local_pos_<d>``       output-position axis ``d`` (kernel and bias)
``local_window_<d>``    kernel-window axis ``d``
``local_in``            the kernel's ``in_channels`` axis
``local_filters``       ``filters`` (kernel and bias)
``batch``               the batch axis of the data (flax's usual name)
======================  ===============================================

Notes:
  * Shard ``local_pos_0`` (the rules above do). Sharding only a later position
    axis is computed correctly but makes XLA gather the kernel.
  * The position count along the sharded axis must be divisible by the mesh
    axis size; ``state_shardings`` raises otherwise (or, with
    ``indivisible="replicate"``, leaves that layer's positions whole).
  * With ``logical_partitioning=True``, ``implementation="auto"`` means
    ``"patches"``: ``"dense"`` would build its whole matrix on every device,
    and ``"native"`` is a custom call that XLA can only replicate.
  * Meshes with ``Auto`` axes (as below) let XLA propagate the shardings given
    to ``jit``, including into ``model.init``, which then creates each shard
    on its device. The layers also run on ``Explicit`` meshes (the default of
    ``jax.make_mesh``, used with ``jax.set_mesh``); there wrap the init in
    ``jax.sharding.auto_axes(init, out_sharding=<the params' PartitionSpecs>)``
    or it builds whole kernels before slicing them.
  * Multi-host (TPU pods, multi-node GPU): call ``jax.distributed.initialize()``
    first; the mesh then spans every host's devices, each process feeds its
    rows of the batch (``jax.make_array_from_process_local_data``), and
    everything else here is unchanged. See ``examples/sharded_training.py``.

Example:
  A data- and position-parallel training step (here on a 1x1 mesh; the same
  code runs on a pod, see ``examples/sharded_training.py``):

  >>> import jax, jax.numpy as jnp, optax
  >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  >>> from flax import linen as nn
  >>> import flax_local
  >>> from flax_local import sharding
  >>> mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  >>> model = flax_local.LocallyConnected2D(8, 3, padding="same", logical_partitioning=True)
  >>> x, y = jnp.ones((4, 16, 16, 3)), jnp.zeros((4, 16, 16, 8))
  >>> tx = optax.sgd(0.1, momentum=0.9)
  >>> shardings = sharding.state_shardings(mesh, model, tx, x, rules=sharding.logical_axis_rules())
  >>> init = jax.jit(lambda key: nn.unbox(model.init(key, x))["params"], out_shardings=shardings.params)
  >>> params = init(jax.random.key(0))
  >>> opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  >>> def step(params, opt_state, x, y):
  ...     loss, grads = jax.value_and_grad(
  ...         lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2))(params)
  ...     updates, opt_state = tx.update(grads, opt_state, params)
  ...     return optax.apply_updates(params, updates), opt_state, loss
  >>> batch = NamedSharding(mesh, P("data"))
  >>> step = jax.jit(step, in_shardings=(shardings.params, shardings.opt_state, batch, batch),
  ...                out_shardings=(shardings.params, shardings.opt_state, None))
  >>> params, opt_state, loss = step(params, opt_state, x, y)
  >>> params["kernel"].sharding.spec
  P('model', None, None, None, None, None)

  The same with NNX:

  >>> from flax import nnx
  >>> from flax_local import nnx as local_nnx
  >>> model = local_nnx.LocallyConnected2D(
  ...     3, 8, 3, input_shape=(16, 16), padding="same", logical_partitioning=True, rngs=nnx.Rngs(0))
  >>> nnx.update(model, jax.device_put(nnx.state(model),
  ...                                  sharding.nnx_shardings(mesh, model, sharding.logical_axis_rules())))
  >>> model.kernel[...].sharding.spec
  P('model', None, None, None, None, None)
  >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  >>> @nnx.jit
  ... def nnx_step(model, optimizer, x, y):
  ...     grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
  ...     optimizer.update(model, grads)
  >>> nnx_step(model, optimizer, x, y)
"""

from flax_local._src.sharding import BATCH_AXIS as BATCH_AXIS
from flax_local._src.sharding import FILTERS_AXIS as FILTERS_AXIS
from flax_local._src.sharding import IN_CHANNELS_AXIS as IN_CHANNELS_AXIS
from flax_local._src.sharding import POSITION_AXIS_PREFIX as POSITION_AXIS_PREFIX
from flax_local._src.sharding import WINDOW_AXIS_PREFIX as WINDOW_AXIS_PREFIX
from flax_local._src.sharding import StateShardings as StateShardings
from flax_local._src.sharding import bias_axis_names as bias_axis_names
from flax_local._src.sharding import kernel_axis_names as kernel_axis_names
from flax_local._src.sharding import logical_axis_rules as logical_axis_rules
from flax_local._src.sharding import nnx_shardings as nnx_shardings
from flax_local._src.sharding import position_axis_names as position_axis_names
from flax_local._src.sharding import state_shardings as state_shardings
from flax_local._src.sharding import variable_shardings as variable_shardings

__all__ = [
    "BATCH_AXIS",
    "FILTERS_AXIS",
    "IN_CHANNELS_AXIS",
    "POSITION_AXIS_PREFIX",
    "StateShardings",
    "WINDOW_AXIS_PREFIX",
    "bias_axis_names",
    "kernel_axis_names",
    "logical_axis_rules",
    "nnx_shardings",
    "position_axis_names",
    "state_shardings",
    "variable_shardings",
]
