"""Tests of data parallelism with the fused kernels (``flax_local._src.data_parallel``).

The multi-device checks (8 forced CPU devices) run once, in a subprocess
(``tests/data_parallel_checks.py``), as in ``tests/test_sharding.py``; each is
reported here as its own test. The tests below run on this process's one device.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flax_local._src import data_parallel
from flax_local.functional import locally_connected

_CHECKS_SCRIPT = os.path.join(os.path.dirname(__file__), "data_parallel_checks.py")
_MULTI_DEVICE_CHECKS = [
    "auto_mesh_stays_on_patches",
    "functional_1d_two_batch_dims_channels_first",
    "functional_2d_batch_sharded",
    "linen_training_step",
    "logical_partitioning_replicated_runs_fused",
    "nnx_3d_training_step",
    "position_sharded_kernel_stays_on_patches",
    "predicate",
]


@pytest.fixture(scope="module")
def multi_device_results():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the script sets its own device count
    proc = subprocess.run(
        [sys.executable, _CHECKS_SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["name"]] = record
    if proc.returncode != 0 or not results:
        pytest.fail(f"data_parallel_checks.py exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return results


@pytest.mark.parametrize("name", _MULTI_DEVICE_CHECKS)
def test_on_eight_devices(multi_device_results, name):
    assert name in multi_device_results, f"check {name} did not report"
    record = multi_device_results[name]
    if record["status"] == "skip":
        pytest.skip(record["detail"])
    assert record["status"] == "ok", record["detail"]


def test_every_multi_device_check_is_listed(multi_device_results):
    assert sorted(multi_device_results) == _MULTI_DEVICE_CHECKS


def test_without_a_mesh_nothing_changes():
    rng = np.random.default_rng(0)
    x, kernel = rng.standard_normal((4, 9, 3), np.float32), rng.standard_normal((7, 3, 3, 5), np.float32)
    assert not data_parallel.runs_per_device()
    assert data_parallel.data_parallel_specs(x, kernel, None, rank=1) is None
    assert data_parallel.run_data_parallel(locally_connected, x, kernel, None, rank=1) is None


def test_one_device_mesh_is_not_data_parallel():
    # A mesh of one device splits nothing: the layer keeps its single-device path.
    mesh = jax.make_mesh((1,), ("data",))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 3)), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(2).standard_normal((7, 3, 3, 5)), jnp.float32)
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, P("data"))
        assert data_parallel.data_parallel_specs(xs, kernel, None, rank=1) is None
        flags = []
        jax.shard_map(lambda x_: flags.append(data_parallel.runs_per_device()) or x_, out_specs=P("data"))(xs)
    assert flags == [True]  # inside a shard_map over every axis the code is per device


def test_logical_partitioning_keeps_native_on_one_device():
    """One device holds every position: nothing to partition, so "auto" keeps the fused kernels."""
    import flax_local
    from flax_local._src import native_build

    if not native_build.is_available():
        pytest.skip("native kernels not installed")
    layer = flax_local.LocallyConnected2D(4, 3, logical_partitioning=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: layer.apply(v, x).sum()))(variables))
    assert "flax_local_forward" in jaxpr and "flax_local_kernel_grad" in jaxpr, jaxpr[:2000]
