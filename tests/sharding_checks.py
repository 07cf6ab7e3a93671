"""Multi-device sharding checks, run by ``tests/test_sharding.py`` in a subprocess.

JAX fixes the number of host devices when it starts, so these checks run in a
process of their own with 8 forced CPU devices while the rest of the suite keeps
one (on CPU also on a machine with an accelerator, whose one device could not
hold a mesh of 8). Each check prints one JSON line ``{"name", "status", "detail", "seconds"}``
(status ``"ok"``, ``"fail"`` or ``"skip"``); the test file asserts on them.

Run it by hand: ``python tests/sharding_checks.py [name ...]``.
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import functools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import flax_local  # noqa: E402
from flax_local import nnx as local_nnx  # noqa: E402
from flax_local import sharding  # noqa: E402

# As tests/conftest.py: implicit rank and dtype promotion are errors.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

BATCH = 8


class Net(nn.Module):
    """Two 2D layers, the second strided; filters > batch so kernels outsize activations."""

    @nn.compact
    def __call__(self, x):
        x = flax_local.LocallyConnected2D(32, 3, padding="same", logical_partitioning=True)(x)
        x = nn.relu(x)
        return flax_local.LocallyConnected2D(16, 3, strides=2, padding="same", logical_partitioning=True)(x)


class Net3D(nn.Module):
    """A channels-first 3D layer."""

    @nn.compact
    def __call__(self, x):
        return flax_local.LocallyConnected3D(8, 2, data_format="channels_first", logical_partitioning=True)(x)


def _data(model):
    rng = np.random.default_rng(0)  # numpy: jax.random.normal would cost a compile per shape
    if isinstance(model, Net3D):
        shapes = (BATCH, 3, 9, 5, 5), (BATCH, 8, 8, 4, 4)
    else:
        shapes = (BATCH, 16, 16, 4), (BATCH, 8, 8, 16)
    return tuple(rng.standard_normal(shape).astype(np.float32) for shape in shapes)


def _mesh(shape, explicit=False):
    kind = AxisType.Explicit if explicit else AxisType.Auto
    return jax.make_mesh(shape, ("data", "model"), axis_types=(kind, kind))


def _loss(model):
    def loss(params, x, y):
        return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

    return loss


def _kernels(tree):
    return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if "kernel" in str(path[-1])]


_SETUPS = {}


def _setup(model, mesh, rules):
    """Sharded params and optimizer state for ``model`` on ``mesh`` (cached: compiles are slow)."""
    key = (type(model).__name__, tuple(mesh.shape.items()), tuple(mesh.axis_types), tuple(rules))
    if key not in _SETUPS:
        _SETUPS[key] = _make_setup(model, mesh, rules)
    return _SETUPS[key]


def _make_setup(model, mesh, rules):
    optimizer = optax.sgd(0.05, momentum=0.9)
    x, y = _data(model)
    shardings = sharding.state_shardings(mesh, model, optimizer, x, rules=rules)
    batch = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        specs = jax.tree.map(lambda s: s.spec, shardings.params)

        def init(key):
            return nn.unbox(model.init(key, x))["params"]

        if AxisType.Explicit in mesh.axis_types:  # keep init partitioned: see the sharding README
            init = jax.sharding.auto_axes(init, out_sharding=specs)
        params = jax.jit(init, out_shardings=shardings.params)(jax.random.key(0))
        xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    return dict(
        model=model,
        mesh=mesh,
        optimizer=optimizer,
        shardings=shardings,
        batch=batch,
        params=params,
        x=x,
        y=y,
        xs=xs,
        ys=ys,
    )


def _opt_state(s):
    """The optimizer state of a setup, made on first use (one more compile)."""
    if "opt_state" not in s:
        with jax.set_mesh(s["mesh"]):
            init = jax.jit(s["optimizer"].init, out_shardings=s["shardings"].opt_state)
            s["opt_state"] = init(s["params"])
    return s["opt_state"]


def _reference(model, params, x, y):
    """Loss and gradients on one device, from host copies (no sharding at all)."""
    host = jax.tree.map(np.asarray, params)
    return jax.tree.map(np.asarray, _forward_and_gradients(model)(host, x, y))


@functools.cache  # one jit per model: its cache then serves every sharding and the reference
def _forward_and_gradients(model):
    def run(params, x, y):
        loss, grads = jax.value_and_grad(_loss(model), argnums=(0, 1))(params, x, y)
        return model.apply({"params": params}, x), loss, grads

    return jax.jit(run)


def _close(a, b, what):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6, err_msg=what)


def _equivalence(model, mesh, rules):
    s = _setup(model, mesh, rules)
    with jax.set_mesh(mesh):
        out, loss, grads = _forward_and_gradients(model)(s["params"], s["xs"], s["ys"])
    ref_out, ref_loss, ref_grads = _reference(model, s["params"], s["x"], s["y"])
    _close(out, ref_out, "forward")
    _close(loss, ref_loss, "loss")
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        _close(g, r, f"gradient {jax.tree_util.keystr(path)}")
    kernel_specs = [str(k.sharding.spec) for k in _kernels(grads[0])]
    param_specs = [str(k.sharding.spec) for k in _kernels(s["params"])]
    return (
        f"mesh {dict(mesh.shape)} {[str(t) for t in mesh.axis_types]}: forward, loss and gradients "
        f"(params and input) equal the unsharded ones; kernel specs {param_specs}, "
        f"kernel-gradient specs {kernel_specs}, output spec {out.sharding.spec}"
    )


def check_equal_batch_only():
    return _equivalence(Net(), _mesh((8, 1)), sharding.logical_axis_rules("data", None))


def check_equal_positions_only():
    return _equivalence(Net(), _mesh((1, 8)), sharding.logical_axis_rules())  # data axis of size 1


def check_equal_batch_and_positions():
    return _equivalence(Net(), _mesh((2, 4)), sharding.logical_axis_rules())


def check_equal_explicit_mesh():
    return _equivalence(Net(), _mesh((2, 4), explicit=True), sharding.logical_axis_rules())


def check_equal_second_position_axis():
    # Correct, though XLA gathers the kernel for this one (see flax_local.sharding).
    return _equivalence(Net(), _mesh((2, 4)), (("batch", "data"), ("local_pos_1", "model")))


def check_equal_3d_channels_first():
    return _equivalence(Net3D(), _mesh((2, 4)), sharding.logical_axis_rules())


def check_kernel_share_is_one_nth():
    lines = []
    for shape in ((1, 8), (2, 4)):
        s = _setup(Net(), _mesh(shape), sharding.logical_axis_rules())
        n = shape[1]
        for kernel in _kernels(s["params"]) + _kernels(_opt_state(s)):
            shards = kernel.addressable_shards
            assert len(shards) == 8, len(shards)
            for shard in shards:
                expected = (kernel.shape[0] // n, *kernel.shape[1:])
                assert shard.data.shape == expected, (shard.data.shape, expected)
                assert shard.data.nbytes * n == kernel.nbytes
            distinct = {shard.index[0].start for shard in shards}
            assert len(distinct) == n, distinct
        lines.append(f"mesh {shape}: every device holds 1/{n} of each kernel and of its momentum")
    return "; ".join(lines)


_ALL_GATHER = re.compile(r"=\s*\(?(\w+)\[([\d,]*)\][^=]*\ball-gather(?:-start)?\(")


def _gathers(hlo):
    sizes = []
    for line in hlo.splitlines():
        match = _ALL_GATHER.search(line)
        if match:
            dims = [int(d) for d in match.group(2).split(",") if d]
            sizes.append((match.group(1), tuple(dims), int(np.prod(dims)) if dims else 1))
    return sizes


def _train_step(s):
    model, optimizer, shardings, batch = s["model"], s["optimizer"], s["shardings"], s["batch"]

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(_loss(model))(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(
        step,
        in_shardings=(shardings.params, shardings.opt_state, batch, batch),
        out_shardings=(shardings.params, shardings.opt_state, None),
        donate_argnums=(0, 1),
    )


def _compiled_step(s):
    with jax.set_mesh(s["mesh"]):
        opt_state = jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
            jax.eval_shape(s["optimizer"].init, s["params"]),
            s["shardings"].opt_state,
        )
        return _train_step(s).lower(s["params"], opt_state, s["xs"], s["ys"]).compile()


def _step_bytes(compiled):
    memory = compiled.memory_analysis()
    return memory.argument_size_in_bytes + memory.temp_size_in_bytes


def check_no_kernel_gather():
    lines = []
    for shape in ((1, 8), (2, 4)):
        n = shape[1]
        s = _setup(Net(), _mesh(shape), sharding.logical_axis_rules())
        compiled = _compiled_step(s)
        kernels = _kernels(s["params"])
        smallest = min(k.size for k in kernels)
        gathers = _gathers(compiled.as_text())
        big = [g for g in gathers if g[2] >= smallest]
        assert not big, f"all-gathers as large as a kernel ({smallest} elements): {big}"
        largest = max((g[2] for g in gathers), default=0)
        lines.append(
            f"mesh {shape}: {len(gathers)} all-gathers, largest {largest} elements < smallest kernel "
            f"{smallest} elements"
        )
        if shape == (1, 8):
            # The same step with replicated kernels on the same mesh.
            replicated = _compiled_step(_setup(Net(), _mesh(shape), sharding.logical_axis_rules(None, None)))
            sharded_bytes, replicated_bytes = _step_bytes(compiled), _step_bytes(replicated)
            # Params, momentum and gradients are 1/n; activations are not: allow 2/n.
            assert sharded_bytes < 2 * replicated_bytes / n, (sharded_bytes, replicated_bytes)
            lines[-1] += (
                f"; per-device arguments+temporaries {sharded_bytes} B vs {replicated_bytes} B with "
                f"replicated kernels ({sharded_bytes / replicated_bytes:.2f}, ideal 1/{n} plus activations)"
            )
    return "; ".join(lines)


def check_train_step_keeps_sharding():
    s = _setup(Net(), _mesh((2, 4)), sharding.logical_axis_rules())
    step = _train_step(s)
    params, opt_state = jax.tree.map(jnp.copy, (s["params"], _opt_state(s)))  # the step donates
    want = jax.tree.map(lambda sh: sh.spec, (s["shardings"].params, s["shardings"].opt_state))
    losses = []
    with jax.set_mesh(s["mesh"]):
        for _ in range(4):
            params, opt_state, loss = step(params, opt_state, s["xs"], s["ys"])
            got = jax.tree.map(lambda a: a.sharding.spec, (params, opt_state))
            assert got == want, (got, want)
            losses.append(float(loss))
    assert losses[-1] < losses[0], losses
    kernel = _kernels(params)[0]
    return (
        f"4 steps, params and momentum stay {kernel.sharding.spec}; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )


def check_checkpoint_round_trip():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        return "skip: orbax-checkpoint is not installed"
    s = _setup(Net(), _mesh((2, 4)), sharding.logical_axis_rules())
    params = s["params"]
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "params")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(path, params)
            checkpointer.wait_until_finished()
            target = jax.tree.map(
                lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                params,
                s["shardings"].params,
            )
            restored = checkpointer.restore(path, target)
    for (path_, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path_))
        assert b.sharding.is_equivalent_to(a.sharding, a.ndim), (a.sharding, b.sharding)
    return "orbax save/restore of the sharded params: identical values and shardings"


def check_indivisible_positions():
    mesh = _mesh((1, 8))
    layer = flax_local.LocallyConnected2D(4, 3, logical_partitioning=True)  # 10 x 10 positions
    x = jax.ShapeDtypeStruct((8, 12, 12, 2), jnp.float32)
    rules = sharding.logical_axis_rules()
    try:
        sharding.state_shardings(mesh, layer, optax.sgd(0.1), x, rules=rules)
    except ValueError as error:
        message = str(error)
    else:
        raise AssertionError("no error for 10 positions over 8 devices")
    assert "size 10" in message and "'model'" in message and "not divisible by 8" in message, message
    fallback = sharding.state_shardings(mesh, layer, optax.sgd(0.1), x, rules=rules, indivisible="replicate")
    assert fallback.params["kernel"].spec == P(None, None, None, None, None, None), fallback.params
    return f"raises: {message[:90]}...; indivisible='replicate' leaves that axis whole"


class NnxNet(nnx.Module):
    """Net's two layers on NNX, with the same logical names."""

    def __init__(self, rngs, logical_partitioning=True):
        self.first = local_nnx.LocallyConnected2D(
            4,
            32,
            3,
            input_shape=(16, 16),
            padding="same",
            logical_partitioning=logical_partitioning,
            rngs=rngs,
        )
        self.second = local_nnx.LocallyConnected2D(
            32,
            16,
            3,
            input_shape=(16, 16),
            strides=2,
            padding="same",
            logical_partitioning=logical_partitioning,
            rngs=rngs,
        )

    def __call__(self, x):
        return self.second(jax.nn.relu(self.first(x)))


def _padded_spec(array):
    spec = tuple(array.sharding.spec)
    return spec + (None,) * (array.ndim - len(spec))


def _by_position(kernel):
    """The kernel's spec, asserted to shard its first position axis over "model" and nothing else."""
    spec = _padded_spec(kernel)
    assert spec == ("model",) + (None,) * (kernel.ndim - 1), spec
    return P(*spec)


def _nnx_sharded(mesh):
    """An NnxNet placed on ``mesh`` by ``sharding.nnx_shardings``, with its shardings."""
    model = NnxNet(nnx.Rngs(0))
    shardings = sharding.nnx_shardings(mesh, model, sharding.logical_axis_rules())
    nnx.update(model, jax.device_put(nnx.state(model), shardings))
    return model, shardings


def _nnx_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def _nnx_equivalence(mesh):
    model, _ = _nnx_sharded(mesh)
    x, y = _data(Net())
    batch = NamedSharding(mesh, P("data"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)

    @nnx.jit
    def run(model, x, y):
        loss, grads = nnx.value_and_grad(_nnx_loss)(model, x, y)
        return model(x), loss, grads

    with jax.set_mesh(mesh):
        out, loss, grads = run(model, xs, ys)
    host = NnxNet(nnx.Rngs(0))  # the same values, on one device, never sharded
    ref_out, ref_loss, ref_grads = run(host, x, y)
    _close(out, ref_out, "forward")
    _close(loss, ref_loss, "loss")
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        _close(g, r, f"gradient {jax.tree_util.keystr(path)}")
    spec = _by_position(model.first.kernel[...])
    return f"mesh {dict(mesh.shape)}: NNX forward, loss and gradients equal the unsharded ones; kernel {spec}"


def check_nnx_equal_positions():
    return _nnx_equivalence(_mesh((2, 4)))


def check_nnx_equal_explicit_mesh():
    return _nnx_equivalence(_mesh((2, 4), explicit=True))


def check_nnx_optimizer_step_keeps_sharding():
    mesh = _mesh((2, 4))
    model, _ = _nnx_sharded(mesh)
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    x, y = _data(Net())
    batch = NamedSharding(mesh, P("data"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(_nnx_loss)(model, x, y)
        optimizer.update(model, grads)
        return loss

    def specs():
        leaves = jax.tree.leaves((nnx.state(model, nnx.Param), nnx.state(optimizer)))
        return [_padded_spec(a) for a in leaves if getattr(a, "ndim", 0) > 0]

    want = specs()
    kernel_spec = _by_position(model.first.kernel[...])
    momentum = [a for a in jax.tree.leaves(nnx.state(optimizer)) if getattr(a, "ndim", 0) == 6]
    assert momentum and all(_padded_spec(a) == _padded_spec(model.first.kernel[...]) for a in momentum[:1])
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(4):
            losses.append(float(step(model, optimizer, xs, ys)))
            got = specs()
            assert got == want, (got, want)
    assert losses[-1] < losses[0], losses
    return f"4 jitted nnx.Optimizer steps: params and momentum stay {kernel_spec}; loss {losses[0]:.4f} -> {losses[-1]:.4f}"


def check_nnx_checkpoint_round_trip():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        return "skip: orbax-checkpoint is not installed"
    mesh = _mesh((2, 4))
    model, shardings = _nnx_sharded(mesh)
    state = nnx.state(model)
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "state")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(path, state)
            checkpointer.wait_until_finished()
            abstract = nnx.state(nnx.eval_shape(lambda: NnxNet(nnx.Rngs(1))))
            target = jax.tree.map(
                lambda sh, v: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh)),
                shardings,
                abstract,
                is_leaf=lambda x: isinstance(x, nnx.Variable),
            )
            restored = checkpointer.restore(path, target)
    fresh = NnxNet(nnx.Rngs(1))
    nnx.update(fresh, restored)
    for (path_, a), b in zip(
        jax.tree_util.tree_leaves_with_path(nnx.state(model)), jax.tree.leaves(nnx.state(fresh))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path_))
        assert b.sharding.is_equivalent_to(a.sharding, a.ndim), (a.sharding, b.sharding)
    spec = _by_position(fresh.first.kernel[...])
    return f"orbax save/restore of an NNX model's sharded state: identical values and shardings ({spec})"


CHECKS = {name[len("check_") :]: fn for name, fn in sorted(globals().items()) if name.startswith("check_")}


def main(names):
    assert jax.device_count() == 8, jax.devices()
    for name in names or CHECKS:
        start = time.perf_counter()
        try:
            detail = CHECKS[name]()
            status = "skip" if detail.startswith("skip:") else "ok"
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            status, detail = "fail", traceback.format_exc(limit=8)
        record = dict(name=name, status=status, detail=detail, seconds=round(time.perf_counter() - start, 2))
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
