"""The linen modules against the float64 reference, and their argument checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import flax_local
from flax_local._src.activations import ACTIVATIONS
from tests.reference import reference_locally_connected

_LAYERS = {
    1: flax_local.LocallyConnected1D,
    2: flax_local.LocallyConnected2D,
    3: flax_local.LocallyConnected3D,
}


def _random_config(rng, rank):
    kernel_size = tuple(int(k) for k in rng.integers(1, 4, rank))
    strides = tuple(int(s) for s in rng.integers(1, 3, rank))
    dilation = tuple(int(d) for d in rng.integers(1, 3, rank))
    padding = rng.choice(["valid", "same", "explicit"] + (["causal"] if rank == 1 else []))
    if padding == "explicit":
        padding = tuple((int(lo), int(hi)) for lo, hi in rng.integers(-1, 3, (rank, 2)))
    spatial = tuple(int(s) for s in rng.integers(6, 9 if rank < 3 else 7, rank))
    return dict(
        filters=int(rng.integers(1, 5)),
        kernel_size=kernel_size,
        strides=strides,
        dilation_rate=dilation,
        padding=str(padding) if isinstance(padding, str) else padding,
        data_format=str(rng.choice(["channels_last", "channels_first"])),
        use_bias=bool(rng.integers(0, 2)),
        activation=str(rng.choice(["tanh", "linear", "relu"])),
        bias_initializer="random_normal",
    ), spatial


@pytest.mark.parametrize("seed", range(12))
def test_module_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    rank = 1 + seed % 3
    config, spatial = _random_config(rng, rank)
    channels = int(rng.integers(1, 4))
    batch = tuple(int(b) for b in rng.integers(1, 3, seed % 3))  # 0, 1 or 2 batch dims
    shape = (
        (*batch, *spatial, channels)
        if config["data_format"] == "channels_last"
        else (*batch, channels, *spatial)
    )
    x = rng.normal(size=shape).astype(np.float32)
    layer = _LAYERS[rank](**config, precision=jax.lax.Precision.HIGHEST)
    variables = layer.init(jax.random.key(seed), x)
    params = variables["params"]
    y = jax.jit(layer.apply)(variables, x)
    expected = reference_locally_connected(
        np.asarray(x, np.float64),
        np.asarray(params["kernel"], np.float64),
        np.asarray(params["bias"], np.float64) if config["use_bias"] else None,
        strides=config["strides"],
        padding=config["padding"],
        dilation=config["dilation_rate"],
        data_format=config["data_format"],
    )
    expected = {"tanh": np.tanh, "linear": lambda v: v, "relu": lambda v: np.maximum(v, 0)}[
        config["activation"]
    ](expected)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_keras_documentation_shapes_and_parameter_count():
    x = jax.random.normal(jax.random.key(0), (2, 10, 32))
    first, second = flax_local.LocallyConnected1D(64, 3), flax_local.LocallyConnected1D(32, 3)
    v1 = first.init(jax.random.key(1), x)
    h = first.apply(v1, x)
    assert h.shape == (2, 8, 64)
    assert second.apply(second.init(jax.random.key(2), h), h).shape == (2, 6, 32)
    image = jax.random.normal(jax.random.key(3), (1, 32, 32, 3))
    params = flax_local.LocallyConnected2D(64, (3, 3)).init(jax.random.key(4), image)["params"]
    count = sum(p.size for p in jax.tree_util.tree_leaves(params))
    assert count == (30 * 30) * (3 * 3 * 3 * 64) + (30 * 30) * 64


def test_nd_base_takes_rank_from_kernel_size_and_equals_2d():
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    base = flax_local.LocallyConnected(4, (3, 2), strides=(2, 1))
    two_d = flax_local.LocallyConnected2D(4, (3, 2), strides=(2, 1))
    variables = base.init(jax.random.key(1), x)
    np.testing.assert_array_equal(base.apply(variables, x), two_d.apply(variables, x))
    with pytest.raises(ValueError, match=r"kernel_size as a sequence.*got 3"):
        flax_local.LocallyConnected(4, 3).init(jax.random.key(0), x)


@pytest.mark.parametrize("implementation", ["native", "patches", "dense", "sparse", 1, 2, 3, "AUTO"])
def test_every_implementation_gives_the_same_numbers(implementation):
    x = jax.random.normal(jax.random.key(0), (3, 6, 5, 2))
    reference_layer = flax_local.LocallyConnected2D(
        3, 3, padding="same", strides=(1, 2), bias_initializer="ones"
    )
    variables = reference_layer.init(jax.random.key(1), x)
    layer = reference_layer.clone(implementation=implementation)
    np.testing.assert_allclose(
        layer.apply(variables, x), reference_layer.apply(variables, x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # Argument errors common to both front ends: tests/test_layers.py.
        (dict(kernel_size=9), r"input spatial shape \(6,\) is too small for kernel_size=\(9,\)"),
    ],
)
def test_bad_arguments_raise_at_init(kwargs, match):
    config = dict(filters=2, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        flax_local.LocallyConnected1D(**config).init(jax.random.key(0), jnp.zeros((2, 6, 3)))


def test_causal_padding_only_in_1d():
    with pytest.raises(
        ValueError, match=r"padding='causal' is only defined for 1 spatial dimension, but the layer has 2"
    ):
        flax_local.LocallyConnected2D(2, 3, padding="causal").init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
    layer = flax_local.LocallyConnected1D(2, 3, padding="CAUSAL", dilation_rate=2)
    x = jax.random.normal(jax.random.key(1), (1, 6, 1))
    variables = layer.init(jax.random.key(0), x)
    y = layer.apply(variables, x)
    assert y.shape == (1, 6, 2)
    # Causal: output t never reads input after t.
    x_future = x.at[:, 4:].set(100.0)
    np.testing.assert_allclose(layer.apply(variables, x_future)[:, :4], y[:, :4], rtol=1e-6)


def test_bfloat16_compute_and_params():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    layer = flax_local.LocallyConnected2D(4, 3, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(1), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    y = layer.apply(variables, x)
    assert y.dtype == jnp.bfloat16
    full = flax_local.LocallyConnected2D(4, 3).apply(variables, x)
    np.testing.assert_allclose(np.asarray(y, np.float32), full, rtol=0.05, atol=0.05)
    half = flax_local.LocallyConnected2D(4, 3, param_dtype=jnp.bfloat16)
    variables = half.init(jax.random.key(1), x.astype(jnp.bfloat16))
    assert variables["params"]["kernel"].dtype == jnp.bfloat16
    assert half.apply(variables, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_activation_names_compute_keras_definitions():
    z = np.linspace(-4, 4, 33).astype(np.float32)
    expected = {
        "hard_sigmoid": np.clip(0.2 * z + 0.5, 0, 1),
        "relu6": np.clip(z, 0, 6),
        "leaky_relu": np.where(z > 0, z, 0.2 * z),
        "softsign": z / (1 + np.abs(z)),
        "swish": z / (1 + np.exp(-z)),
        "gelu": np.asarray(jax.scipy.stats.norm.cdf(z)) * z,
        "exponential": np.exp(z),
        "linear": z,
    }
    for name, value in expected.items():
        np.testing.assert_allclose(
            ACTIVATIONS[name](jnp.asarray(z)), value, rtol=1e-5, atol=1e-6, err_msg=name
        )
    names = {"relu", "tanh", "sigmoid", "softmax", "elu", "selu", "softplus", "silu"}
    assert names | set(expected) == set(ACTIVATIONS)


def test_vmap_over_a_stack_of_parameter_sets_and_inputs():
    layer = flax_local.LocallyConnected1D(3, 2, bias_initializer="random_normal")
    x = jax.random.normal(jax.random.key(0), (5, 4, 7, 2))  # 5 models, batch 4
    stacked = jax.vmap(lambda k, xi: layer.init(k, xi))(jax.random.split(jax.random.key(1), 5), x)
    y = jax.vmap(layer.apply)(stacked, x)
    for i in range(5):
        single = jax.tree_util.tree_map(lambda p, i=i: p[i], stacked)
        np.testing.assert_allclose(y[i], layer.apply(single, x[i]), rtol=1e-6)


class _Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = flax_local.LocallyConnected2D(4, 3, activation="relu")(x)
        return nn.Dense(2)(x.reshape(x.shape[0], -1))


def test_inside_a_larger_module_gradients_reach_every_position():
    model = _Classifier()
    x = jax.random.normal(jax.random.key(0), (6, 7, 7, 2))
    params = model.init(jax.random.key(1), x)["params"]
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)
    kernel_grad = grads["LocallyConnected2D_0"]["kernel"]
    per_position = jnp.abs(kernel_grad).reshape(25, -1).sum(axis=1)
    assert float(per_position.min()) > 0
    assert math.isfinite(float(jnp.sum(kernel_grad)))
