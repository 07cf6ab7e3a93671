"""The NNX modules: same numbers, layout and errors as the linen ones."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flax_local
from flax_local import nnx as local_nnx


def _normal(key, shape, dtype=jnp.float32):
    # Drawn flat, then reshaped: the same numbers as jax.random.normal(key, shape), but XLA:CPU
    # compiles threefry for a flat shape in a fraction of the time it takes for e.g. (3, 3, 3, 8).
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


# (linen class, nnx class, layer kwargs, input shape): one per rank, covering
# strides, padding modes, dilation, channels_first, activations and regularizers.
CASES = {
    "1d_causal_dilated": (
        flax_local.LocallyConnected1D,
        local_nnx.LocallyConnected1D,
        dict(filters=4, kernel_size=3, padding="causal", dilation_rate=2, activation="tanh"),
        (2, 9, 3),
    ),
    "2d_same_strided_channels_first": (
        flax_local.LocallyConnected2D,
        local_nnx.LocallyConnected2D,
        dict(
            filters=5,
            kernel_size=(3, 2),
            strides=(2, 1),
            padding="same",
            data_format="channels_first",
            kernel_regularizer="l1_l2",
            bias_regularizer="l2",
            activity_regularizer="l1",
        ),
        (3, 2, 7, 6),
    ),
    "3d_dense_impl": (
        flax_local.LocallyConnected3D,
        local_nnx.LocallyConnected3D,
        dict(filters=3, kernel_size=2, implementation="dense", use_bias=False),
        (2, 4, 3, 4, 2),
    ),
}


def _nnx_layer(nnx_cls, kwargs, input_shape, **extra):
    kwargs = dict(kwargs)
    filters, kernel_size = kwargs.pop("filters"), kwargs.pop("kernel_size")
    if kwargs.get("data_format") == "channels_first":
        in_features, spatial = input_shape[1], input_shape[2:]
    else:
        in_features, spatial = input_shape[-1], input_shape[1:-1]
    return nnx_cls(
        in_features, filters, kernel_size, input_shape=spatial, rngs=nnx.Rngs(0), **kwargs, **extra
    )


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_as_linen_given_the_same_params(case):
    linen_cls, nnx_cls, kwargs, input_shape = CASES[case]
    x = _normal(jax.random.key(1), input_shape)
    linen_layer = linen_cls(**kwargs)
    linen_params = jax.eval_shape(linen_layer.init, jax.random.key(0), x)["params"]
    layer = _nnx_layer(nnx_cls, kwargs, input_shape, kernel_initializer=_normal)

    # Same layout: the same parameter names and shapes.
    nnx_shapes = {
        path[-1]: param.shape for path, param in nnx.iter_graph(layer) if isinstance(param, nnx.Param)
    }
    assert nnx_shapes == jax.tree_util.tree_map(jnp.shape, dict(linen_params))

    # Random params (not the initial ones), copied into both.
    keys = iter(jax.random.split(jax.random.key(2), 2))
    params = jax.tree_util.tree_map(lambda p: _normal(next(keys), p.shape), dict(linen_params))
    layer.kernel[...] = params["kernel"]
    if "bias" in params:
        layer.bias[...] = params["bias"]

    @nnx.jit
    def run_nnx(layer, x):
        return layer(x), layer.regularization_loss()

    @jax.jit
    def run_linen(params, x):
        y, state = linen_layer.apply({"params": params}, x, mutable=["losses"])
        return y, flax_local.regularization_loss(state)

    y_nnx, reg_nnx = run_nnx(layer, x)
    y_linen, reg_linen = run_linen(params, x)
    np.testing.assert_allclose(y_nnx, y_linen, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reg_nnx, reg_linen, rtol=1e-5)
    if kwargs.get("activity_regularizer"):
        # The stored activity penalty is the last call's, divided by the batch size.
        np.testing.assert_allclose(
            layer.activity_loss[...], 0.01 * jnp.abs(y_nnx).sum() / x.shape[0], rtol=1e-5
        )
    if not kwargs.get("use_bias", True):
        assert layer.bias is None


def test_training_step_with_optimizer_regularizer_and_constraint():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.local = local_nnx.LocallyConnected2D(
                1,
                4,
                3,
                input_shape=(6, 6),
                activation="relu",
                kernel_initializer=lambda key, shape, dtype: 0.3 * _normal(key, shape, dtype),
                kernel_regularizer=flax_local.regularizers.l2(1e-3),
                kernel_constraint=flax_local.constraints.max_norm(0.5),
                rngs=rngs,
            )
            self.head = nnx.Linear(4 * 4 * 4, 1, rngs=rngs)

        def __call__(self, x):
            return self.head(self.local(x).reshape(x.shape[0], -1))[:, 0]

    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    x = _normal(jax.random.key(1), (16, 6, 6, 1))
    y = x[:, 2, 3, 0] - x[:, 4, 1, 0]

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            mse = jnp.mean((model(x) - y) ** 2)
            return mse + local_nnx.regularization_loss(model), mse

        (_, mse), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        local_nnx.apply_constraints(model)
        return mse

    # tests/conftest.py makes implicit dtype promotion an error; optax.adam's bias correction (a
    # Python float to the power of an int32 step count) needs the standard rules.
    with jax.numpy_dtype_promotion("standard"):
        losses = [float(train_step(model, optimizer, x, y)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    norms = np.sqrt((np.asarray(model.local.kernel[...]) ** 2).sum(axis=(2, 3, 4)))
    assert norms.max() <= 0.5 + 1e-5


def test_wrong_input_size_raises():
    layer = local_nnx.LocallyConnected2D(
        3, 4, 3, input_shape=(8, 8), kernel_initializer="zeros", rngs=nnx.Rngs(0)
    )
    expected = (
        "LocallyConnected2D got inputs of spatial shape (9, 8) with 3 channels, which needs a kernel "
        "of shape (7, 6, 3, 3, 3, 4), but its kernel has shape (6, 6, 3, 3, 3, 4) (made for inputs "
        "of spatial shape (8, 8) with 3 channels). A locally-connected layer only accepts the "
        "input size it was initialized with."
    )
    with pytest.raises(ValueError) as error:
        layer(jnp.ones((2, 9, 8, 3)))
    assert str(error.value) == expected
    with pytest.raises(
        ValueError, match=r"with 2 channels.*made for inputs of spatial shape \(8, 8\) with 3"
    ):
        nnx.jit(lambda layer, x: layer(x))(layer, jnp.ones((2, 8, 8, 2)))
    # The rank check is word for word the linen module's.
    linen_layer = flax_local.LocallyConnected2D(filters=4, kernel_size=3, kernel_initializer="zeros")
    variables = linen_layer.init(jax.random.key(0), jnp.ones((2, 8, 8, 3)))
    with pytest.raises(ValueError) as linen_error:
        linen_layer.apply(variables, jnp.ones((8, 8)))
    with pytest.raises(ValueError) as nnx_error:
        layer(jnp.ones((8, 8)))
    assert str(nnx_error.value) == str(linen_error.value)


def test_constructor_validation():
    with pytest.raises(ValueError, match=r"input_shape must have 2 entries.*\(8, 8, 3\)"):
        local_nnx.LocallyConnected2D(3, 4, 3, input_shape=(8, 8, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"too small for kernel_size=\(5,\)"):
        local_nnx.LocallyConnected1D(3, 4, 5, input_shape=(4,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs kernel_size as a sequence"):
        local_nnx.LocallyConnected(3, 4, 3, input_shape=(8, 8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="bias_constraint.*use_bias=False"):
        local_nnx.LocallyConnected1D(
            3, 4, 3, input_shape=(8,), use_bias=False, bias_constraint="non_neg", rngs=nnx.Rngs(0)
        )
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        local_nnx.LocallyConnected1D(0, 4, 3, input_shape=(8,), rngs=nnx.Rngs(0))
