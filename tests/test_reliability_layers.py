"""Issue 24, the layer side: each test failed before its fix (item numbers as in the issue)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import flax_local
from flax_local import constraints, sharding
from flax_local._src.constraints import constrain_kernel
from tests.layer_fronts import FRONTS, build, construct

# --- item 1: regularization_loss reads only the "losses" collection ---------------------------


class _WithBatchNorm(nn.Module):
    regularizer: str | None = None

    @nn.compact
    def __call__(self, x):
        x = flax_local.LocallyConnected1D(3, 3, kernel_regularizer=self.regularizer)(x)
        return nn.BatchNorm(use_running_average=False)(x)


def test_regularization_loss_ignores_batch_stats_and_params():
    x = jax.random.normal(jax.random.key(0), (4, 8, 2)) * 3 + 2
    net = _WithBatchNorm()
    variables = net.init(jax.random.key(1), x)
    _, state = net.apply(variables, x, mutable=["batch_stats", "losses"])
    assert "batch_stats" in state
    assert float(flax_local.regularization_loss(state)) == 0.0
    assert float(flax_local.regularization_loss(variables)) == 0.0  # params are not penalties
    # With a regularizer: exactly the sown term, nothing from batch_stats.
    net = _WithBatchNorm("l2")
    variables = net.init(jax.random.key(1), x)
    _, state = net.apply(variables, x, mutable=["batch_stats", "losses"])
    kernel = variables["params"]["LocallyConnected1D_0"]["kernel"]
    expected = 0.01 * jnp.sum(kernel**2)
    np.testing.assert_allclose(flax_local.regularization_loss(state), expected, rtol=1e-6)
    np.testing.assert_allclose(flax_local.regularization_loss(state["losses"]), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(flax_local.regularization_loss)(state), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "bad", [jnp.ones(3), [1.0, 2.0], {"LocallyConnected1D_0": {"kernel": jnp.ones(3)}}], ids=str
)
def test_regularization_loss_rejects_what_is_not_a_state(bad):
    with pytest.raises(ValueError, match=r"regularization_loss needs the variables returned by model.apply"):
        flax_local.regularization_loss(bad)


# --- items 2 and 3: activity penalty on an empty batch, and in float16 ------------------------


@pytest.mark.parametrize("front", FRONTS)
def test_activity_penalty_of_an_empty_batch_is_zero(front):
    built = build(front, 1, (2, 8, 3), filters=4, kernel_size=3, activity_regularizer="l2")
    empty = jnp.zeros((0, 8, 3))
    assert float(built.penalty(built.params, empty)) == 0.0
    assert float(jax.jit(built.penalty)(built.params, empty)) == 0.0
    if front == "nnx":  # and nothing NaN is left stored in the layer
        layer = built.layer
        layer(empty)
        assert float(layer.activity_loss[...]) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("front", FRONTS)
def test_half_precision_activity_penalty_accumulates_in_float32(front, dtype):
    kwargs = dict(filters=64, kernel_size=3, activity_regularizer="l2", param_dtype=dtype, dtype=dtype)
    built = build(front, 2, (1, 22, 22, 16), kernel_initializer="ones", **kwargs)
    x = jnp.full((1, 22, 22, 16), 30.0, dtype)
    penalty = jax.jit(built.penalty)(built.params, x)
    assert penalty.dtype == jnp.float32
    y = np.asarray(built.apply(built.params, x), np.float64)  # 4320 everywhere: 9 * 16 * 30
    np.testing.assert_allclose(float(penalty), 0.01 * (y**2).sum(), rtol=1e-2)


def test_l1l2_of_half_values_is_float32():
    x = jnp.full((1000,), 300.0, jnp.float16)
    penalty = flax_local.regularizers.l2(1.0)(x)
    assert penalty.dtype == jnp.float32 and float(penalty) == 9e7


# --- item 5: constraints on kernels stacked twice --------------------------------------------


def _unit_norms_1d(kernel):
    """Norms over (window, in_channels) of a 1D kernel (..., P, K, C, F)."""
    return np.sqrt((np.asarray(kernel) ** 2).sum(axis=(-3, -2)))


def test_nnx_constraints_on_a_kernel_stacked_twice():
    @nnx.vmap(in_axes=0, out_axes=0)
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
        return flax_local.nnx.LocallyConnected1D(
            3, 4, 3, input_shape=(8,), kernel_constraint=constraints.max_norm(2.0), rngs=nnx.Rngs(key)
        )

    keys = jax.random.split(jax.random.key(0), 6).reshape(2, 3)
    model = make(keys)
    assert model.kernel[...].shape == (2, 3, 6, 3, 3, 4)  # rank 6 for a 1D layer
    model.kernel[...] = model.kernel[...] * 50
    flax_local.nnx.apply_constraints(model)
    np.testing.assert_allclose(_unit_norms_1d(model.kernel[...]), 2.0, rtol=1e-5)


def test_linen_constraints_on_a_kernel_stacked_by_scan_and_vmap():
    class Stacked(nn.Module):
        @nn.compact
        def __call__(self, x):
            layer = nn.vmap(
                flax_local.LocallyConnected1D,
                in_axes=0,
                out_axes=0,
                variable_axes={"params": 0},
                split_rngs={"params": True},
            )
            layer = nn.vmap(
                layer, in_axes=0, out_axes=0, variable_axes={"params": 0}, split_rngs={"params": True}
            )
            return layer(4, 3, kernel_constraint=constraints.max_norm(2.0), name="lc")(x)

    model = Stacked()
    x = jnp.ones((2, 3, 5, 8, 3))
    params = model.init(jax.random.key(0), x)["params"]
    assert params["lc"]["kernel"].shape == (2, 3, 6, 3, 3, 4)
    tx = constraints.enforce_constraints(model, x)
    grow = jax.tree.map(lambda p: 49 * p, params)  # updates that take every unit far above the bound
    updates, _ = tx.update(grow, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(_unit_norms_1d(new["lc"]["kernel"]), 2.0, rtol=1e-4)


def test_constrain_kernel_refuses_too_few_axes():
    with pytest.raises(ValueError, match=r"a kernel of a 2D layer needs at least 6 axes"):
        constrain_kernel(constraints.max_norm(), jnp.ones((3, 3, 2, 2)), 2)


# --- item 12: a layer larger than memory ------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
def test_a_layer_larger_than_memory_raises_before_allocating(front):
    kwargs = dict(filters=4096, kernel_size=1024)
    shape = (1, 2**20, 512)
    with pytest.raises(ValueError, match=r"LocallyConnected1D's parameters need \d+ bytes .*kernel of shape"):
        if front == "linen":
            layer = construct(front, 1, shape, **kwargs)
            jax.eval_shape(layer.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
        else:
            nnx.eval_shape(lambda: construct(front, 1, shape, **kwargs))


# --- item 16: arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(use_bias="no"), r"use_bias must be True or False, got 'no'"),
        (dict(param_dtype="floaty"), r"param_dtype must be a floating dtype .*got 'floaty'"),
        (dict(kernel_constraint="radial_constraint"), r"radial_constraint applies to a 2D layer"),
        (dict(use_bias=False, bias_constraint="max_norm"), r"use_bias=False"),
    ],
    ids=["use_bias", "param_dtype", "radial_1d", "bias_constraint"],
)
def test_bad_arguments_raise_at_construction(front, kwargs, match):
    with pytest.raises(ValueError, match=match):
        construct(front, 1, (2, 8, 3), filters=2, kernel_size=3, **kwargs)


def test_state_shardings_names_an_unknown_mesh_axis():
    model = flax_local.LocallyConnected1D(4, 3, logical_partitioning=True)
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    with pytest.raises(ValueError, match=r"mesh axis 'modle'.*\('data', 'model'\)"):
        sharding.state_shardings(
            mesh,
            model,
            optax.sgd(0.1),
            jnp.ones((2, 10, 3)),
            rules=sharding.logical_axis_rules("data", "modle"),
        )


@pytest.mark.parametrize("bad", [5, ("data", 5), b"data", ()], ids=str)
def test_logical_axis_rules_rejects_what_is_not_a_mesh_axis(bad):
    with pytest.raises(ValueError, match=r"data_axis must be None, a mesh axis name"):
        sharding.logical_axis_rules(bad)
