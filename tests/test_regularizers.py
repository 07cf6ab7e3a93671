"""Regularizers: values, sowing into "losses", summing across nested layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import flax_local
from flax_local import regularizers
from flax_local.functional import locally_connected


def test_penalty_values_match_numpy():
    w = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(regularizers.l1(0.3)(w), 0.3 * np.abs(w).sum(), rtol=1e-5)
    np.testing.assert_allclose(regularizers.l2(0.2)(w), 0.2 * (w**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(
        regularizers.l1_l2(l1=0.1, l2=0.7)(w), 0.1 * np.abs(w).sum() + 0.7 * (w**2).sum(), rtol=1e-5
    )
    assert regularizers.get("l1_l2") == regularizers.L1L2(l1=0.01, l2=0.01)
    assert regularizers.get(None) is None


def test_layer_sows_kernel_bias_and_activity_terms():
    layer = flax_local.LocallyConnected2D(
        3,
        2,
        activation="relu",
        bias_initializer="random_normal",
        kernel_regularizer=regularizers.l2(0.1),
        bias_regularizer="l1",
        activity_regularizer=regularizers.l1(0.5),
    )
    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 2))
    variables = layer.init(jax.random.key(1), x)
    y, state = layer.apply(variables, x, mutable=["losses"])
    kernel, bias = (np.asarray(variables["params"][k], np.float64) for k in ("kernel", "bias"))
    losses = state["losses"]
    np.testing.assert_allclose(losses["kernel_regularization"][0], 0.1 * (kernel**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(losses["bias_regularization"][0], 0.01 * np.abs(bias).sum(), rtol=1e-5)
    np.testing.assert_allclose(
        losses["activity_regularization"][0], 0.5 * np.abs(np.asarray(y)).sum() / 4, rtol=1e-5
    )
    total = 0.1 * (kernel**2).sum() + 0.01 * np.abs(bias).sum() + 0.5 * np.abs(np.asarray(y)).sum() / 4
    np.testing.assert_allclose(flax_local.regularization_loss(state), total, rtol=1e-5)
    np.testing.assert_allclose(flax_local.regularization_loss(state["losses"]), total, rtol=1e-5)


def test_no_losses_unless_collection_is_mutable():
    layer = flax_local.LocallyConnected1D(2, 3, kernel_regularizer="l2")
    x = jax.random.normal(jax.random.key(0), (2, 6, 3))
    variables = layer.init(jax.random.key(1), x)
    assert "losses" not in variables
    _, state = layer.apply(variables, x, mutable=["losses"])
    assert set(state["losses"]) == {"kernel_regularization"}


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = flax_local.LocallyConnected1D(4, 3, kernel_regularizer="l2", name="first")(x)
        x = nn.relu(x)
        x = flax_local.LocallyConnected1D(2, 2, activity_regularizer="l1", name="second")(x)
        return nn.Dense(1)(x.reshape(x.shape[0], -1))


def test_regularization_loss_sums_nested_layers_and_differentiates_under_jit():
    model = _Net()
    x = jax.random.normal(jax.random.key(0), (3, 8, 2))
    params = model.init(jax.random.key(1), x)["params"]

    @jax.jit
    def penalty(params):
        _, state = model.apply({"params": params}, x, mutable=["losses"])
        return flax_local.regularization_loss(state)

    def reference(params):
        # The same penalty written by hand on the functional core.
        hidden = nn.relu(locally_connected(x, params["first"]["kernel"], params["first"]["bias"]))
        second = locally_connected(hidden, params["second"]["kernel"], params["second"]["bias"])
        return 0.01 * jnp.sum(params["first"]["kernel"] ** 2) + 0.01 * jnp.sum(jnp.abs(second)) / 3

    value, grads = jax.value_and_grad(penalty)(params)
    expected, expected_grads = jax.value_and_grad(reference)(params)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for name in ("first", "second"):
        np.testing.assert_allclose(
            grads[name]["kernel"], expected_grads[name]["kernel"], rtol=1e-5, atol=1e-8
        )
    assert float(jnp.abs(grads["second"]["kernel"]).sum()) > 0
    np.testing.assert_array_equal(grads["Dense_0"]["kernel"], 0)


def test_unknown_regularizer_name():
    with pytest.raises(ValueError, match=r"activity_regularizer must be .*'l3'"):
        flax_local.LocallyConnected1D(2, 3, activity_regularizer="l3").init(
            jax.random.key(0), jnp.zeros((1, 5, 2))
        )
