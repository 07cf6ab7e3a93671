"""Train a network whose locally-connected kernels are sharded over a mesh of devices.

A locally-connected kernel holds one filter bank per output position, so it
grows with the image: a 3x3 layer with 64 channels in and out on a 224x224 map
has 1.8 billion weights. This example splits such kernels by output position
over the ``model`` axis of a device mesh (each device holds, updates and
computes one band of rows) and the batch over the ``data`` axis, with JAX's own
SPMD machinery: a ``Mesh``, flax logical-axis rules, and ``jax.jit`` with
in/out shardings. Then it checkpoints the sharded params with orbax, restores
them onto the same shardings, and trains on from the restored copy.

The task is synthetic (nothing is downloaded): 16x16x3 noise images labelled by
a fixed random linear "teacher" that looks at each 4x4 block's mean colour; the
loss goes down within a few dozen steps.

Usage (from the repository root, after ``pip install -e ".[examples]"``)::

  # 8 simulated devices on one CPU (the script sets this flag itself if unset):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/sharded_training.py
  python examples/sharded_training.py --data 1 --model 8 --steps 60

On one CPU the 8 "devices" share the same cores: this shows that the program
is correct and where the memory goes, not a speed-up.

Multi-host (TPU pods, multi-node GPU)
-------------------------------------
Run the same script once per host, with ``--distributed``: it then calls
``jax.distributed.initialize()`` before anything else touches JAX.

* TPU pods (Cloud TPU VMs): no arguments; the coordinator, the number of
  processes and this process's id come from the TPU metadata. Start it on all
  workers, e.g. ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command
  "python examples/sharded_training.py --distributed --data 4 --model 8"``.
* Multi-node GPU: under SLURM (or Open MPI) ``initialize()`` also finds
  everything itself; otherwise pass ``coordinator_address="host0:1234",
  num_processes=N, process_id=i`` (one process per node, each seeing its local
  GPUs). Leave ``XLA_FLAGS`` without the forced host device count.

What changes with several hosts:

* ``jax.devices()`` lists the devices of every host; ``jax.local_devices()``
  only this host's. The mesh spans all of them: ``data * model`` must equal
  ``jax.device_count()``. In ``jax.make_mesh``'s device order the last mesh
  axis varies fastest, over neighbouring devices (one host's GPUs, ICI
  neighbours on a TPU slice): keep the position axis last and no larger than
  such a group, since its halo exchanges run in every layer, while the data
  axis only all-reduces gradients once a step. (Several TPU slices joined by
  the data-centre network: build the mesh with
  ``jax.experimental.mesh_utils.create_hybrid_device_mesh``.)
* Each host feeds only its part of the batch: ``make_batch`` below builds the
  global array with ``jax.make_array_from_process_local_data`` from the rows
  this process generated (with one process, that is the whole batch).
* Checkpointing is collective: every process calls ``save``/``restore`` (orbax
  writes each host's shards itself), on storage all hosts see (GCS, a shared
  file system). Printing is done by process 0 only.

What does not change: the model, the logical-axis rules,
``flax_local.sharding.state_shardings``, the jitted step and its shardings.
XLA partitions the same program over however many devices the mesh holds.
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Simulate 8 devices when running on CPU; ignored by GPU and TPU backends.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import flax_local  # noqa: E402
from flax_local import sharding  # noqa: E402

IMAGE = (16, 16, 3)
CLASSES = 10


class LocalNet(nn.Module):
    """Two locally-connected layers (kernels sharded by position) and a Dense head."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = flax_local.LocallyConnected2D(
            32, 3, padding="same", activation="relu", logical_partitioning=True
        )(x)  # kernel (16, 16, 3, 3, 3, 32)
        x = flax_local.LocallyConnected2D(
            32, 3, strides=2, padding="same", activation="relu", logical_partitioning=True
        )(x)  # kernel (8, 8, 3, 3, 32, 32)
        # Params without logical names (this Dense) are replicated on every device.
        return nn.Dense(CLASSES)(x.reshape(x.shape[0], -1))


def make_batch(step: int, global_batch: int, sharding_: NamedSharding, teacher: np.ndarray) -> tuple:
    """This process's rows of the global batch, assembled into global sharded arrays."""
    rows = global_batch // jax.process_count()
    rng = np.random.default_rng([step, jax.process_index()])
    images = rng.standard_normal((rows, *IMAGE)).astype(np.float32)
    blocks = images.reshape(rows, 4, 4, 4, 4, 3).mean(axis=(2, 4))  # 4x4 block means
    labels = np.argmax(blocks.reshape(rows, -1) @ teacher, axis=-1).astype(np.int32)
    return (
        jax.make_array_from_process_local_data(sharding_, images),
        jax.make_array_from_process_local_data(sharding_, labels),
    )


def describe(params: Any) -> str:
    lines = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        shard = leaf.addressable_shards[0].data
        lines.append(
            f"  {jax.tree_util.keystr(path):42s} global {str(leaf.shape):22s} per device "
            f"{str(shard.shape):22s} spec {leaf.sharding.spec}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=int, default=2, help="size of the data-parallel mesh axis")
    parser.add_argument("--model", type=int, default=4, help="size of the position (model) mesh axis")
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--steps", type=int, default=40, help="training steps (half before the checkpoint)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--checkpoint-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize()")
    args = parser.parse_args(argv)

    if args.distributed:
        jax.distributed.initialize()  # before any other JAX call; see the module docstring
    log = print if jax.process_index() == 0 else (lambda *a, **k: None)

    if args.data * args.model != jax.device_count():
        log(f"--data {args.data} x --model {args.model} must equal the {jax.device_count()} devices.")
        return 2
    # Auto axes: XLA's partitioner propagates the shardings we give the params and batch.
    mesh = jax.make_mesh((args.data, args.model), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    rules = sharding.logical_axis_rules("data", "model")  # batch -> data, local_pos_0 -> model
    log(f"{jax.device_count()} {jax.devices()[0].platform} devices over {jax.process_count()} process(es);")
    log(f"mesh {dict(mesh.shape)}; rules {rules}")

    model = LocalNet()
    optimizer = optax.adam(args.lr)
    example = jax.ShapeDtypeStruct((args.batch, *IMAGE), jnp.float32)
    shardings = sharding.state_shardings(mesh, model, optimizer, example, rules=rules)
    batch_sharding = NamedSharding(mesh, P("data"))

    # Init directly into the shards: no device ever holds a whole kernel.
    def init(key: jax.Array) -> Any:
        return nn.unbox(model.init(key, jnp.zeros(example.shape, example.dtype)))["params"]

    init = jax.jit(init, out_shardings=shardings.params)
    params = init(jax.random.key(0))
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    log("params:\n" + describe(params))

    def loss_fn(params: Any, images: jax.Array, labels: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def train_step(params: Any, opt_state: Any, images: jax.Array, labels: jax.Array) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = jax.jit(
        train_step,
        in_shardings=(shardings.params, shardings.opt_state, batch_sharding, batch_sharding),
        out_shardings=(shardings.params, shardings.opt_state, None),
        donate_argnums=(0, 1),
    )

    teacher = np.random.default_rng(1234).standard_normal((4 * 4 * 3, CLASSES))
    teacher = teacher.astype(np.float32)

    def train(params: Any, opt_state: Any, first: int, last: int) -> tuple:
        losses = []
        for step in range(first, last):
            images, labels = make_batch(step, args.batch, batch_sharding, teacher)
            params, opt_state, loss = train_step(params, opt_state, images, labels)
            losses.append(loss)
            if (step + 1) % 5 == 0 or step == last - 1:
                mean = float(jnp.mean(jnp.stack(losses)))
                log(f"steps {step + 1 - len(losses):3d}-{step:3d}  mean loss {mean:.4f}")
                losses = []
        return params, opt_state

    import orbax.checkpoint as ocp

    half = args.steps // 2
    start = time.perf_counter()
    params, opt_state = train(params, opt_state, 0, half)

    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.abspath(args.checkpoint_dir or tmp)
        path = os.path.join(root, f"step_{half}")
        with ocp.StandardCheckpointer() as checkpointer:
            # Each process writes the shards it holds; nothing is gathered to one host.
            checkpointer.save(path, {"params": params, "opt_state": opt_state}, force=True)
            checkpointer.wait_until_finished()
            log(f"saved the sharded params and optimizer state to {path}")
            # Restore onto the same shardings: abstract arrays that carry them.
            target = jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                {"params": params, "opt_state": opt_state},
                {"params": shardings.params, "opt_state": shardings.opt_state},
            )
            restored = checkpointer.restore(path, target)
    same = jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, restored["params"]))
    kernel = restored["params"]["LocallyConnected2D_0"]["kernel"]
    log(f"restored: identical values {same}; kernel sharding {kernel.sharding.spec}")
    if not same:
        return 1

    params, opt_state = train(restored["params"], restored["opt_state"], half, args.steps)
    log(f"{args.steps} steps in {time.perf_counter() - start:.1f} s (including compilation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
