"""Data-parallel checks on 8 forced CPU devices, run by ``tests/test_data_parallel.py`` in a subprocess.

As ``tests/sharding_checks.py``: JAX fixes the number of host devices when it
starts, so these run in a process of their own. Each check prints one JSON
line ``{"name", "status", "detail", "seconds"}`` (status ``"ok"``, ``"fail"``
or ``"skip"``).

"Single-device numbers" are the same jitted function applied to host arrays
with no mesh: XLA then runs it on one device, and ``"auto"`` picks
``"patches"`` (several devices, no mesh), an independent implementation.

Run it by hand: ``python tests/data_parallel_checks.py [name ...]``.
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
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax_local  # noqa: E402
from flax_local._src import data_parallel, native_build  # noqa: E402
from flax_local.functional import locally_connected  # noqa: E402
from tests.reference import reference_locally_connected  # noqa: E402

# As tests/conftest.py: implicit rank and dtype promotion are errors.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

_CUSTOM_CALLS = ("flax_local_forward", "flax_local_kernel_grad", "flax_local_input_grad")
_GATHER = re.compile(r"\bgather\(")


def _mesh(kind=AxisType.Explicit):
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _close(got, want, what):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5, err_msg=what)


def _all_close(got, want, what):
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
        _close(g, w, f"{what} {jax.tree_util.keystr(path)}")


def _fused_hlo(hlo, what):
    """Asserts the compiled HLO runs the three native kernels and no patches gather."""
    if not (native_build.is_available() and native_build.vector_path() in native_build.FAST_VECTOR_PATHS):
        raise RuntimeError("skip: numbers equal, but 'auto' does not pick 'native' on this CPU")
    missing = [name for name in _CUSTOM_CALLS if name not in hlo]
    assert not missing, f"{what}: custom calls {missing} missing from the compiled HLO"
    assert not _GATHER.search(hlo), f"{what}: the compiled HLO still gathers patches"
    assert "all-reduce" in hlo, f"{what}: no all-reduce (the psum of the kernel gradient)"


def _patches_hlo(hlo, what):
    present = [name for name in _CUSTOM_CALLS if name in hlo]
    assert not present, f"{what}: custom calls {present} in the compiled HLO"
    assert _GATHER.search(hlo), f"{what}: no patches gather in the compiled HLO"


def _functional_step(**options):
    """value_and_grad of a random projection of the layer's output w.r.t. x, kernel and bias."""

    def loss(x, kernel, bias, probe):
        y = locally_connected(x, kernel, bias, implementation="auto", **options)
        return jnp.sum(y * probe), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _functional_case(step, x, kernel, bias, probe, x_spec, reference_options):
    (loss, y), grads = step(x, kernel, bias, probe)  # single device
    want = reference_locally_connected(x, kernel, bias, **reference_options)
    _close(y, want, "single-device forward vs the float64 reference")
    mesh = _mesh()
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, x_spec)
        probe_s = jax.device_put(probe, x_spec)
        (loss_s, y_s), grads_s = step(xs, kernel, bias, probe_s)
        hlo = step.lower(xs, kernel, bias, probe_s).compile().as_text()
    _close(y_s, y, "forward")
    _close(loss_s, loss, "loss")
    _all_close(grads_s, grads, "gradient (x, kernel, bias)")
    for what, array in (("output", y_s), ("input gradient", grads_s[0])):
        assert tuple(array.sharding.spec)[: len(x_spec)] == tuple(x_spec), (what, array.sharding.spec)
    _fused_hlo(hlo, "functional")
    return hlo, y_s.sharding.spec


def check_functional_2d_batch_sharded():
    x, kernel = _random((8, 10, 10, 3), 0), _random((8, 8, 3, 3, 3, 16), 1)
    bias, probe = _random((8, 8, 16), 2), _random((8, 8, 8, 16), 3)
    _, spec = _functional_case(_functional_step(), x, kernel, bias, probe, P("data"), {})
    # Eager, with no mesh context: the mesh comes from the input's type.
    xs = jax.device_put(x, NamedSharding(_mesh(), P("data")))
    y = locally_connected(xs, kernel, bias)
    _close(y, reference_locally_connected(x, kernel, bias), "eager forward vs the float64 reference")
    assert y.sharding.spec == P("data"), y.sharding.spec
    return (
        f"2D, x {x.shape} sharded {P('data')} over mesh (data 4, model 2): forward, loss and "
        f"gradients equal the single-device ones; output {spec}; HLO holds {_CUSTOM_CALLS}, "
        "an all-reduce and no gather; eager call without a mesh context equal too"
    )


def check_functional_1d_two_batch_dims_channels_first():
    options = dict(strides=2, padding="same", data_format="channels_first")
    reference = dict(strides=2, padding="same", data_format="channels_first")
    x, kernel = _random((2, 4, 3, 12), 4), _random((6, 3, 3, 5), 5)
    bias, probe = _random((6, 5), 6), _random((2, 4, 5, 6), 7)
    step = _functional_step(**options)
    _functional_case(step, x, kernel, bias, probe, P("model", "data"), reference)
    # One batch dimension over both mesh axes.
    x, probe = _random((8, 3, 12), 8), _random((8, 5, 6), 9)
    _functional_case(step, x, kernel, bias, probe, P(("data", "model")), reference)
    for implementation in ("patches", "dense"):  # an explicit choice runs per device too
        explicit = jax.jit(functools.partial(locally_connected, implementation=implementation, **options))
        with jax.set_mesh(_mesh()):
            xs = jax.device_put(x, P("data"))
            _close(explicit(xs, kernel, bias), explicit(x, kernel, bias), implementation)
            hlo = explicit.lower(xs, kernel, bias).compile().as_text()
        assert not any(name in hlo for name in _CUSTOM_CALLS), implementation
    return (
        "1D channels_first, stride 2, 'same': batch dims (2, 4) over (model, data), and one "
        "batch dim of 8 over (data, model): equal numbers, native kernels in the HLO; explicit "
        "'patches' and 'dense' per device: equal numbers"
    )


def _linen_step(layer):
    def loss(params, x, target):
        return jnp.mean((layer.apply({"params": params}, x) - target) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _linen_setup():
    layer = flax_local.LocallyConnected2D(16, 3, padding="same")
    x, target = _random((8, 8, 8, 4), 10), _random((8, 8, 8, 16), 11)
    params = jax.tree.map(np.asarray, layer.init(jax.random.key(0), x)["params"])
    params["bias"] = _random(params["bias"].shape, 12)  # initialized to zeros: make it count
    return layer, params, x, target


def check_linen_training_step():
    layer, params, x, target = _linen_setup()
    step = _linen_step(layer)
    loss, grads = step(params, x, target)
    with jax.set_mesh(_mesh()):
        xs, ts = jax.device_put(x, P("data")), jax.device_put(target, P("data"))
        loss_s, grads_s = step(params, xs, ts)
        hlo = step.lower(params, xs, ts).compile().as_text()
    _close(loss_s, loss, "loss")
    _all_close(grads_s, grads, "gradient (params, x)")
    _fused_hlo(hlo, "linen")
    kernel_grad = grads_s[0]["kernel"]
    assert kernel_grad.sharding.is_fully_replicated, kernel_grad.sharding
    return (
        "linen LocallyConnected2D('same'), x sharded P('data'), replicated params: loss and the "
        "gradients w.r.t. kernel, bias and x equal the single-device ones; kernel gradient "
        "replicated (summed over devices); HLO holds the native kernels and no gather"
    )


def check_nnx_3d_training_step():
    from flax import nnx

    from flax_local import nnx as local_nnx

    layer = local_nnx.LocallyConnected3D(2, 4, 2, input_shape=(4, 4, 3), rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.asarray(_random(layer.bias.shape, 17))
    graph, params = nnx.split(layer)
    params = jax.tree.map(np.asarray, params)
    x, target = _random((8, 4, 4, 3, 2), 18), _random((8, 3, 3, 2, 4), 19)

    def loss(params, x, target):
        return jnp.mean((nnx.merge(graph, params)(x) - target) ** 2)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    want = step(params, x, target)
    with jax.set_mesh(_mesh()):
        xs, ts = jax.device_put(x, P("data")), jax.device_put(target, P("data"))
        got = step(params, xs, ts)
        hlo = step.lower(params, xs, ts).compile().as_text()
    _all_close(got, want, "loss and gradients (params, x)")
    _fused_hlo(hlo, "nnx")
    return "nnx LocallyConnected3D, x sharded P('data'): equal loss and gradients, native kernels in the HLO"


def check_position_sharded_kernel_stays_on_patches():
    layer, params, x, target = _linen_setup()
    step = _linen_step(layer)
    loss, grads = step(params, x, target)
    mesh = _mesh()
    with jax.set_mesh(mesh):
        sharded = {
            "kernel": jax.device_put(params["kernel"], P("model")),
            "bias": jax.device_put(params["bias"], P("model")),
        }
        xs, ts = jax.device_put(x, P("data")), jax.device_put(target, P("data"))
        assert data_parallel.data_parallel_specs(xs, sharded["kernel"], sharded["bias"], rank=2) is None
        loss_s, grads_s = step(sharded, xs, ts)
        hlo = step.lower(sharded, xs, ts).compile().as_text()
    _close(loss_s, loss, "loss")
    _all_close(grads_s, grads, "gradient (params, x)")
    _patches_hlo(hlo, "position-sharded kernel")
    return (
        "kernel and bias sharded by position over 'model', batch over 'data': equal numbers, "
        f"kernel gradient {grads_s[0]['kernel'].sharding.spec}; HLO has the patches gather and "
        "no native kernel"
    )


def check_logical_partitioning_replicated_runs_fused():
    plain, params, x, target = _linen_setup()
    layer = flax_local.LocallyConnected2D(16, 3, padding="same", logical_partitioning=True)
    want = _linen_step(plain)(params, x, target)
    step = _linen_step(layer)
    with jax.set_mesh(_mesh()):
        xs, ts = jax.device_put(x, P("data")), jax.device_put(target, P("data"))
        got = step(params, xs, ts)
        fused = step.lower(params, xs, ts).compile().as_text()
        sharded = {name: jax.device_put(value, P("model")) for name, value in params.items()}
        got_sharded = step(sharded, xs, ts)
        by_position = step.lower(sharded, xs, ts).compile().as_text()
    _all_close(got, want, "replicated params: loss and gradients")
    _fused_hlo(fused, "logical_partitioning, replicated params")
    _all_close(got_sharded, want, "position-sharded params: loss and gradients")
    _patches_hlo(by_position, "logical_partitioning, position-sharded params")
    return (
        "linen logical_partitioning=True: replicated params with a batch-sharded input run the native "
        "kernels per device; params sharded by position run 'patches'; equal numbers both ways"
    )


def check_auto_mesh_stays_on_patches():
    layer, params, x, target = _linen_setup()
    mesh = _mesh(AxisType.Auto)
    batch = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def loss(params, x, target):
        return jnp.mean((layer.apply({"params": params}, x) - target) ** 2)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), in_shardings=(replicated, batch, batch))
    want = _linen_step(layer)(params, x, target)
    got = step(params, x, target)
    hlo = step.lower(params, x, target).compile().as_text()
    _all_close(got, want, "loss and gradients")
    _patches_hlo(hlo, "Auto mesh")
    return (
        "Auto mesh under jit(in_shardings=...): shardings invisible at trace time, so the layer "
        "keeps 'patches' (equal numbers, no custom call)"
    )


def check_predicate():
    mesh = _mesh()
    x, kernel, bias = _random((8, 6, 3), 13), _random((4, 3, 3, 5), 14), _random((4, 5), 15)
    cases = {}
    with jax.set_mesh(mesh):
        k, b = jax.device_put(kernel, P()), jax.device_put(bias, P())
        cases["batch sharded"] = data_parallel.data_parallel_specs(jax.device_put(x, P("data")), k, b, rank=1)
        for name, spec in (("replicated x", P()), ("spatial sharded", P(None, "model"))):
            cases[name] = data_parallel.data_parallel_specs(jax.device_put(x, spec), k, b, rank=1)
        cases["no batch dim"] = data_parallel.data_parallel_specs(
            jax.device_put(_random((8, 3), 16), P("data")),
            k,
            b,
            rank=1,  # (spatial, C)
        )
        cases["bias sharded"] = data_parallel.data_parallel_specs(
            jax.device_put(x, P("data")), k, jax.device_put(bias, P("model")), rank=1
        )
        inside = {}

        def per_device(x_):
            inside["runs_per_device"] = data_parallel.runs_per_device()
            inside["specs"] = data_parallel.data_parallel_specs(x_, kernel, bias, rank=1)
            return x_

        jax.shard_map(per_device, in_specs=P("data"), out_specs=P("data"))(jax.device_put(x, P("data")))
    with jax.set_mesh(_mesh(AxisType.Auto)):
        cases["Auto mesh"] = data_parallel.data_parallel_specs(x, kernel, bias, rank=1)
    assert cases.pop("batch sharded") is not None
    taken = [name for name, specs in cases.items() if specs is not None]
    assert not taken, f"data-parallel path taken for {taken}"
    assert inside == {"runs_per_device": True, "specs": None}, inside
    assert not data_parallel.runs_per_device()
    return f"only 'batch sharded' qualifies; not {sorted(cases)}; inside shard_map: {inside}"


CHECKS = {name[len("check_") :]: fn for name, fn in sorted(globals().items()) if name.startswith("check_")}


def main(names):
    assert jax.device_count() == 8, jax.devices()
    for name in names or CHECKS:
        start = time.perf_counter()
        try:
            detail = CHECKS[name]()
            status = "ok"
        except Exception as error:  # noqa: BLE001 - reported to the test, which fails with it
            if str(error).startswith("skip:"):
                status, detail = "skip", str(error)
            else:
                status, detail = "fail", traceback.format_exc(limit=8)
        record = dict(name=name, status=status, detail=detail, seconds=round(time.perf_counter() - start, 2))
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
