"""Initializers: per-position fans, Keras names, statistics of the default."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_local
from flax_local import initializers


def _kernel(layer, x):
    return np.asarray(layer.init(jax.random.key(0), x)["params"]["kernel"], np.float64)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (flax_local.LocallyConnected2D(16, 3), (1, 20, 20, 8)),
        (flax_local.LocallyConnected1D(32, 5), (1, 300, 4)),
        (flax_local.LocallyConnected3D(8, 2), (1, 9, 9, 9, 4)),
    ],
)
def test_default_init_std_is_per_position_glorot(layer, shape):
    x = jax.random.normal(jax.random.key(1), shape)
    kernel = _kernel(layer, x)
    rank = (kernel.ndim - 2) // 2
    window = math.prod(kernel.shape[rank : 2 * rank])
    fan_in, fan_out = window * kernel.shape[-2], window * kernel.shape[-1]
    expected = math.sqrt(2.0 / (fan_in + fan_out))  # uniform(-l, l): std = l / sqrt(3)
    assert kernel.std() == pytest.approx(expected, rel=0.03)
    assert np.abs(kernel).max() <= math.sqrt(3) * expected * (1 + 1e-6)
    # tf_keras's and ConvLocal's fans count the positions in; ours must not.
    positions = math.prod(kernel.shape[:rank])
    assert kernel.std() > 5 * math.sqrt(2.0 / (positions * (fan_in + fan_out)))


def test_positions_are_initialized_independently():
    kernel = _kernel(flax_local.LocallyConnected2D(4, 3), jnp.zeros((1, 6, 6, 2)))
    flat = kernel.reshape(16, -1)
    correlation = np.corrcoef(flat)
    assert np.abs(correlation[np.triu_indices(16, 1)]).max() < 0.9


@pytest.mark.parametrize(
    ("name", "std"),
    [
        ("he_normal", math.sqrt(2 / 72)),
        ("he_uniform", math.sqrt(2 / 72)),
        ("lecun_normal", math.sqrt(1 / 72)),
        ("lecun_uniform", math.sqrt(1 / 72)),
        ("glorot_normal", math.sqrt(2 / (72 + 144))),
        ("random_normal", 0.05),
        ("random_uniform", 0.05 / math.sqrt(3)),
        ("truncated_normal", 0.05 * 0.87962566103423978),
    ],
)
def test_named_initializer_std(name, std):
    values = initializers.get(name)(jax.random.key(3), (3, 3, 8, 16), jnp.float32)
    big = jax.vmap(lambda k: initializers.get(name)(k, (3, 3, 8, 16), jnp.float32))(
        jax.random.split(jax.random.key(4), 40)
    )
    assert values.shape == (3, 3, 8, 16)
    assert float(jnp.std(big)) == pytest.approx(std, rel=0.03)


def test_constant_zeros_ones_and_identity():
    key = jax.random.key(0)
    np.testing.assert_array_equal(initializers.get("zeros")(key, (2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(initializers.get("ones")(key, (2, 3)), np.ones((2, 3)))
    np.testing.assert_array_equal(initializers.constant(0.25)(key, (4,)), np.full(4, 0.25))
    layer = flax_local.LocallyConnected2D(3, 3, padding="same", kernel_initializer="identity")
    x = jax.random.normal(jax.random.key(2), (2, 5, 6, 3))
    variables = layer.init(key, x)
    np.testing.assert_allclose(layer.apply(variables, x), x, rtol=1e-6)


def test_orthogonal_is_orthogonal_per_position():
    layer = flax_local.LocallyConnected1D(6, 2, kernel_initializer="orthogonal")
    kernel = layer.init(jax.random.key(0), jnp.zeros((1, 5, 3)))["params"]["kernel"]
    for position in kernel:
        matrix = position.reshape(6, 6)
        np.testing.assert_allclose(matrix.T @ matrix, np.eye(6), atol=1e-5)


def test_jax_initializer_callable_gets_one_position_shape():
    seen = []

    def init(key, shape, dtype):
        seen.append(shape)
        return jax.random.normal(key, shape, dtype)

    layer = flax_local.LocallyConnected2D(5, (2, 3), kernel_initializer=init, bias_initializer=init)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))["params"]
    assert seen == [(2, 3, 2, 5), (5,)]
    assert params["kernel"].shape == (3, 2, 2, 3, 2, 5)
    assert params["bias"].shape == (3, 2, 5)
    assert float(jnp.std(params["bias"])) > 0.3  # random, not zeros


def test_unknown_initializer_name():
    with pytest.raises(ValueError, match=r"kernel_initializer must be .*'glorot_unifrom'"):
        flax_local.LocallyConnected1D(2, 3, kernel_initializer="glorot_unifrom").init(
            jax.random.key(0), jnp.zeros((1, 5, 2))
        )
    with pytest.raises(ValueError, match="orthogonal.*at least 2 dimensions"):
        flax_local.LocallyConnected1D(2, 3, bias_initializer="orthogonal").init(
            jax.random.key(0), jnp.zeros((1, 5, 2))
        )
