"""Constraints: per-unit projections and the optax transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import flax_local
from flax_local import constraints


def _unit_norms(kernel):
    rank = (kernel.ndim - 2) // 2
    axes = tuple(range(rank, 2 * rank + 1))
    return np.sqrt((np.asarray(kernel, np.float64) ** 2).sum(axis=axes))


@pytest.fixture
def kernel():
    # 2D kernel: 3x4 positions, 2x2 window, 3 channels, 5 filters; norms spread around 1.
    return 0.35 * jax.random.normal(jax.random.key(0), (3, 4, 2, 2, 3, 5))


def test_max_norm(kernel):
    norms = _unit_norms(kernel)
    assert norms.min() < 1.0 < norms.max()
    out = constraints.max_norm(1.0)(kernel)
    np.testing.assert_allclose(_unit_norms(out), np.minimum(norms, 1.0), rtol=1e-5)
    small = norms < 1.0
    np.testing.assert_allclose(
        np.asarray(out).transpose(0, 1, 5, 2, 3, 4)[small],
        np.asarray(kernel).transpose(0, 1, 5, 2, 3, 4)[small],
        rtol=1e-5,
    )


def test_unit_norm_min_max_norm_and_non_neg(kernel):
    np.testing.assert_allclose(_unit_norms(constraints.unit_norm()(kernel)), 1.0, rtol=1e-5)
    norms = _unit_norms(kernel)
    out = constraints.min_max_norm(0.9, 1.1, rate=0.5)(kernel)
    np.testing.assert_allclose(_unit_norms(out), 0.5 * np.clip(norms, 0.9, 1.1) + 0.5 * norms, rtol=1e-5)
    out = constraints.non_neg()(kernel)
    np.testing.assert_array_equal(out, np.maximum(kernel, 0))


def test_radial_constraint_rejects_what_it_cannot_constrain():
    with pytest.raises(ValueError, match=r"radial_constraint.*got shape \(3, 4, 2, 2, 3, 5\)"):
        constraints.radial_constraint()(jnp.zeros((3, 4, 2, 2, 3, 5)))
    with pytest.raises(ValueError, match=r"rank 4, 6 or 8; got rank 3"):
        constraints.max_norm()(jnp.zeros((3, 4, 5)))


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = flax_local.LocallyConnected1D(
            4, 3, kernel_constraint=constraints.max_norm(0.5), bias_constraint="non_neg", name="lc"
        )(x)
        x = _Inner()(nn.relu(x))
        return nn.Dense(1)(x.reshape(x.shape[0], -1))


class _Inner(nn.Module):
    @nn.compact
    def __call__(self, x):
        return flax_local.LocallyConnected1D(3, 2, kernel_constraint="non_neg")(x)


def test_enforce_constraints_in_nested_model_under_jit():
    model = _Net()
    x = jax.random.normal(jax.random.key(0), (8, 10, 2))
    target = jax.random.normal(jax.random.key(1), (8, 1))
    params = model.init(jax.random.key(2), x)["params"]
    tx = optax.chain(optax.sgd(2.0), constraints.enforce_constraints(model, x))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - target) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    unconstrained = optax.sgd(2.0)
    free_params, free_state = params, unconstrained.init(params)
    for _ in range(3):
        params, state = step(params, state)
        grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - target) ** 2))(free_params)
        updates, free_state = unconstrained.update(grads, free_state, free_params)
        free_params = optax.apply_updates(free_params, updates)
    assert _unit_norms(params["lc"]["kernel"]).max() <= 0.5 + 1e-5
    assert float(params["lc"]["bias"].min()) >= 0
    assert float(params["_Inner_0"]["LocallyConnected1D_0"]["kernel"].min()) >= 0
    # Without the transformation the same steps break every constraint.
    assert _unit_norms(free_params["lc"]["kernel"]).max() > 0.6
    assert float(free_params["lc"]["bias"].min()) < 0
    assert float(free_params["_Inner_0"]["LocallyConnected1D_0"]["kernel"].min()) < 0
    # Unconstrained parameters are updated exactly as without it.
    assert not np.allclose(
        params["Dense_0"]["kernel"], model.init(jax.random.key(2), x)["params"]["Dense_0"]["kernel"]
    )


def test_enforce_constraints_accepts_full_variables():
    model = flax_local.LocallyConnected1D(2, 3, kernel_constraint="non_neg")
    x = jax.random.normal(jax.random.key(0), (2, 6, 3))
    variables = model.init(jax.random.key(1), x)
    tx = constraints.enforce_constraints(model, x)
    state = tx.init(variables)
    updates = jax.tree_util.tree_map(lambda p: -jnp.ones_like(p), variables)
    updates, _ = tx.update(updates, state, variables)
    new = optax.apply_updates(variables, updates)
    assert float(new["params"]["kernel"].min()) >= 0
    np.testing.assert_allclose(new["params"]["bias"], variables["params"]["bias"] - 1)


def test_enforce_constraints_refuses_to_drop_a_constraint():
    model = flax_local.LocallyConnected1D(2, 3, kernel_constraint="non_neg")
    x = jnp.zeros((1, 6, 3))
    tx = constraints.enforce_constraints(model, x)
    with pytest.raises(ValueError, match="constraint is declared on parameter kernel"):
        tx.init({"something_else": jnp.zeros(3)})
    params = model.init(jax.random.key(0), x)["params"]
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))
    # A bias constraint without a bias is rejected when the layer is built, not at the first update.
    with pytest.raises(ValueError, match="use_bias=False"):
        flax_local.LocallyConnected1D(2, 3, use_bias=False, bias_constraint="non_neg")
