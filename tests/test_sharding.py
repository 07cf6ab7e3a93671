"""Tests of flax_local.sharding.

The multi-device checks (8 forced CPU devices) run once, in a subprocess
(``tests/sharding_checks.py``), so the rest of the suite keeps one device; each
check is reported here as its own test. The single-device tests below cover the
names, the boxing and the sharding helpers.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax.core import meta
from jax.sharding import PartitionSpec as P

import flax_local
from flax_local import sharding

_CHECKS_SCRIPT = os.path.join(os.path.dirname(__file__), "sharding_checks.py")
_MULTI_DEVICE_CHECKS = [
    "checkpoint_round_trip",
    "equal_3d_channels_first",
    "equal_batch_and_positions",
    "equal_batch_only",
    "equal_explicit_mesh",
    "equal_positions_only",
    "equal_second_position_axis",
    "indivisible_positions",
    "kernel_share_is_one_nth",
    "nnx_checkpoint_round_trip",
    "nnx_equal_explicit_mesh",
    "nnx_equal_positions",
    "nnx_optimizer_step_keeps_sharding",
    "no_kernel_gather",
    "train_step_keeps_sharding",
]


@pytest.fixture(scope="module")
def multi_device_results():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the script sets its own device count
    proc = subprocess.run(
        [sys.executable, _CHECKS_SCRIPT], capture_output=True, text=True, timeout=900, env=env
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["name"]] = record
    if proc.returncode != 0 or not results:
        pytest.fail(f"sharding_checks.py exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return results


@pytest.mark.parametrize("name", _MULTI_DEVICE_CHECKS)
def test_on_eight_devices(multi_device_results, name):
    if name == "checkpoint_round_trip" and importlib.util.find_spec("orbax.checkpoint") is None:
        pytest.skip("orbax-checkpoint is not installed")
    assert name in multi_device_results, f"check {name} did not report"
    record = multi_device_results[name]
    if record["status"] == "skip":
        pytest.skip(record["detail"])
    assert record["status"] == "ok", record["detail"]


def test_every_multi_device_check_is_listed(multi_device_results):
    assert sorted(multi_device_results) == _MULTI_DEVICE_CHECKS


@pytest.mark.parametrize(
    "rank, kernel, bias",
    [
        (
            1,
            ("local_pos_0", "local_window_0", "local_in", "local_filters"),
            ("local_pos_0", "local_filters"),
        ),
        (
            2,
            (
                "local_pos_0",
                "local_pos_1",
                "local_window_0",
                "local_window_1",
                "local_in",
                "local_filters",
            ),
            ("local_pos_0", "local_pos_1", "local_filters"),
        ),
    ],
)
def test_axis_names(rank, kernel, bias):
    assert sharding.kernel_axis_names(rank) == kernel
    assert sharding.bias_axis_names(rank) == bias
    assert sharding.position_axis_names(rank) == kernel[:rank]
    assert len(set(sharding.kernel_axis_names(3))) == 8  # every axis separately nameable


@pytest.mark.parametrize("rank", [0, -1, 1.5, "2"])
def test_axis_names_reject_bad_rank(rank):
    with pytest.raises(ValueError, match=r"rank must be a positive int.*got"):
        sharding.kernel_axis_names(rank)


def test_logical_axis_rules():
    assert sharding.logical_axis_rules() == (("batch", "data"), ("local_pos_0", "model"))
    assert sharding.logical_axis_rules("dp", None) == (("batch", "dp"), ("local_pos_0", None))
    rules = sharding.logical_axis_rules(("replica", "data"), "model")
    spec = nn.logical_to_mesh_axes(sharding.kernel_axis_names(2), rules)
    assert spec == P("model", None, None, None, None, None)
    assert nn.logical_to_mesh_axes(("batch",), rules) == P(("replica", "data"))


def test_params_are_plain_arrays_by_default():
    layer = flax_local.LocallyConnected2D(4, 3)
    params = layer.init(jax.random.key(0), jnp.ones((1, 6, 6, 2)))["params"]
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params, is_leaf=_is_box))


@pytest.mark.parametrize(
    "layer_cls, shape",
    [
        (flax_local.LocallyConnected1D, (2, 9, 3)),
        (flax_local.LocallyConnected2D, (2, 7, 6, 3)),
        (flax_local.LocallyConnected3D, (2, 5, 4, 4, 3)),
    ],
)
def test_logical_partitioning_boxes_params_with_the_documented_names(layer_cls, shape):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    plain = layer_cls(4, 2)
    boxed = layer_cls(4, 2, logical_partitioning=True)
    variables = boxed.init(jax.random.key(0), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    rank = len(shape) - 2
    assert isinstance(kernel, nn.Partitioned) and isinstance(bias, nn.Partitioned)
    assert kernel.names == sharding.kernel_axis_names(rank)
    assert bias.names == sharding.bias_axis_names(rank)
    # Same values as without boxes, and apply accepts either form.
    reference = plain.init(jax.random.key(0), x)
    unboxed = nn.unbox(variables)
    for a, b in zip(jax.tree.leaves(unboxed), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)
    # Boxed layers compute with "patches"; the plain one may pick "dense" for so small a layer.
    y = plain.apply(reference, x)
    np.testing.assert_allclose(boxed.apply(variables, x), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(boxed.apply(unboxed, x), boxed.apply(variables, x))
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["kernel"] == P(*sharding.kernel_axis_names(rank))


def test_variable_shardings_replicates_unnamed_params():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = flax_local.LocallyConnected2D(4, 3, logical_partitioning=True)(x)
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    mesh = jax.make_mesh((1, 1), ("data", "model"))
    abstract = jax.eval_shape(Model().init, jax.random.key(0), jnp.ones((2, 6, 6, 1)))
    shardings = sharding.variable_shardings(mesh, abstract, sharding.logical_axis_rules())["params"]
    assert shardings["LocallyConnected2D_0"]["kernel"].spec == P("model", None, None, None, None, None)
    assert shardings["LocallyConnected2D_0"]["bias"].spec == P("model", None, None)
    assert shardings["Dense_0"]["kernel"].is_fully_replicated


def test_variable_shardings_rejects_unknown_indivisible_mode():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    with pytest.raises(ValueError, match="indivisible must be 'raise' or 'replicate', got 'drop'"):
        sharding.variable_shardings(mesh, {}, sharding.logical_axis_rules(), indivisible="drop")


def test_state_shardings_mirror_the_optimizer_state():
    model = flax_local.LocallyConnected1D(4, 3, logical_partitioning=True)
    x = jax.ShapeDtypeStruct((2, 10, 3), jnp.float32)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    shardings = sharding.state_shardings(mesh, model, tx, x, rules=sharding.logical_axis_rules())
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))["params"]
    opt_state = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(shardings.opt_state) == jax.tree.structure(opt_state)
    assert jax.tree.structure(shardings.params) == jax.tree.structure(params)
    mu = shardings.opt_state[1][0].mu
    assert mu["kernel"].spec == shardings.params["kernel"].spec == P("model", None, None, None)
    assert shardings.opt_state[1][0].count.spec == P()
    assert shardings.variables["params"] == shardings.params


def _is_box(x):
    return isinstance(x, meta.AxisMetadata)
