"""flax_local.keras against live tf_keras; skipped where tf_keras is not installed.

Run with ``pip install -e .[keras-live]`` (TensorFlow in the environment).
"""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np
import pytest

import flax_local
from flax_local import keras as fk

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

TOL = dict(rtol=1e-5, atol=1e-5)
ACTIVATIONS = ["linear", "relu", "tanh", "sigmoid", "elu", "gelu", "swish", "softplus"]


def _random_config(rng: np.random.Generator) -> tuple[dict, tuple[int, ...]]:
    rank = int(rng.integers(1, 3))
    implementation = int(rng.integers(1, 4))
    padding = "valid" if implementation == 1 else str(rng.choice(["valid", "same"]))
    data_format = str(rng.choice(["channels_last", "channels_first"]))
    kernel = tuple(int(k) for k in rng.integers(1, 5, rank))
    strides = tuple(int(s) for s in rng.integers(1, 4, rank))
    spatial = tuple(int(k + rng.integers(0, 6)) for k in kernel)
    channels = int(rng.integers(1, 4))
    shape = (*spatial, channels) if data_format == "channels_last" else (channels, *spatial)
    config = dict(
        filters=int(rng.integers(1, 4)),
        kernel_size=kernel,
        strides=strides,
        padding=padding,
        data_format=data_format,
        implementation=implementation,
        use_bias=bool(rng.integers(0, 2)),
        activation=str(rng.choice(ACTIVATIONS)),
    )
    return config, shape


def _keras_layer(config: dict, shape, rng: np.random.Generator):
    rank = len(config["kernel_size"])
    cls = keras.layers.LocallyConnected1D if rank == 1 else keras.layers.LocallyConnected2D
    layer = cls(**config)
    layer.build((None, *shape))
    layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("seed", range(24))
def test_random_layers_match_live_keras(seed):
    rng = np.random.default_rng(seed)
    config, shape = _random_config(rng)
    layer = _keras_layer(config, shape, rng)
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    module, variables = fk.from_keras(layer.get_config(), layer.get_weights(), shape)
    np.testing.assert_allclose(jax.jit(module.apply)(variables, x), layer(x).numpy(), **TOL)


@pytest.mark.parametrize("implementation", [1, 2, 3])
def test_flax_to_live_keras(implementation):
    rng = np.random.default_rng(implementation)
    for data_format, padding in [("channels_first", "valid"), ("channels_last", ((1, 1), (1, 0)))]:
        if implementation == 1 and padding != "valid":
            continue
        module = flax_local.LocallyConnected2D(
            3, (3, 2), strides=(2, 1), padding=padding, data_format=data_format, activation="relu"
        )
        shape = (2, 7, 6) if data_format == "channels_first" else (7, 6, 2)
        x = rng.standard_normal((2, *shape)).astype(np.float32)
        variables = jax.jit(module.init)(jax.random.key(implementation), x)
        config = fk.to_keras_config(module, shape, implementation=implementation)
        layer = keras.layers.LocallyConnected2D.from_config(config)
        layer.build((None, *shape))
        layer.set_weights(fk.to_keras(module, variables, shape, implementation=implementation))
        np.testing.assert_allclose(layer(x).numpy(), jax.jit(module.apply)(variables, x), **TOL)


def test_regularization_matches_live_keras():
    rng = np.random.default_rng(0)
    layer = _keras_layer(
        dict(
            filters=2,
            kernel_size=(3,),
            implementation=3,
            padding="same",
            kernel_regularizer=keras.regularizers.L1L2(l1=0.01, l2=0.02),
            bias_regularizer="l2",
            activity_regularizer=keras.regularizers.L1(0.03),
        ),
        (9, 2),
        rng,
    )
    x = rng.standard_normal((5, 9, 2)).astype(np.float32)
    y = layer(x)
    module, variables = fk.from_keras(layer.get_config(), layer.get_weights(), (9, 2))
    ours, state = module.apply(variables, x, mutable=["losses"])
    np.testing.assert_allclose(ours, y.numpy(), **TOL)
    np.testing.assert_allclose(
        float(flax_local.regularization_loss(state)), float(tf.add_n(layer.losses)), rtol=1e-5
    )


@pytest.mark.parametrize("extension", ["h5", "keras"])
def test_load_weights_of_live_model(tmp_path, extension):
    inputs = keras.Input((9, 8, 2))
    h = keras.layers.LocallyConnected2D(3, 3, strides=2, implementation=1, name="first")(inputs)
    h = keras.layers.LocallyConnected2D(2, 2, padding="same", implementation=2, name="second")(h)
    model = keras.Model(inputs, keras.layers.Flatten()(h))
    path = str(tmp_path / f"model.{extension}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-.h5 notice
        model.save(path)
    layers = fk.load_weights(path)
    assert list(layers) == ["first", "second"]
    x = np.random.default_rng(0).standard_normal((2, 9, 8, 2)).astype(np.float32)
    h = x
    for key in ("first", "second"):
        module, variables = layers[key]
        h = jax.jit(module.apply)(variables, h)
    np.testing.assert_allclose(h.reshape(2, -1), model(x).numpy(), **TOL)


@pytest.mark.parametrize("implementation", [1, 2])
def test_exported_norm_constraints_match_live_keras(implementation):
    # to_keras_config exports per-unit norms with the Keras axis that means
    # "per unit" for the implementation; Keras then constrains the same way.
    module = flax_local.LocallyConnected2D(
        3,
        (2, 2),
        kernel_constraint=flax_local.constraints.max_norm(0.5),
        bias_constraint=flax_local.constraints.min_max_norm(0.2, 0.4),
    )
    shape = (5, 4, 2)
    rng = np.random.default_rng(implementation)
    params = {
        "kernel": rng.standard_normal((4, 3, 2, 2, 2, 3)).astype(np.float32),
        "bias": rng.standard_normal((4, 3, 3)).astype(np.float32),
    }
    config = fk.to_keras_config(module, shape, implementation=implementation)
    layer = keras.layers.LocallyConnected2D.from_config(config)
    layer.build((None, *shape))
    kernel, bias = fk.to_keras(module, {"params": params}, shape, implementation=implementation)
    constrained = {
        "kernel": np.asarray(module.kernel_constraint(params["kernel"])),
        "bias": np.asarray(module.bias_constraint(params["bias"], axis=())),
    }
    expected_kernel, expected_bias = fk.to_keras(
        module, {"params": constrained}, shape, implementation=implementation
    )
    np.testing.assert_allclose(layer.kernel_constraint(kernel).numpy(), expected_kernel, **TOL)
    np.testing.assert_allclose(layer.bias_constraint(bias).numpy(), expected_bias, **TOL)
    again = fk.module_from_keras(layer.get_config(), shape)
    assert again.kernel_constraint == module.kernel_constraint
    assert again.bias_constraint == module.bias_constraint


@pytest.mark.parametrize("sequential", [False, True])
def test_load_h5_chain_through_shape_preserving_layers(tmp_path, sequential):
    # Input -> LC(impl 2) -> Dropout -> BatchNormalization -> LC(impl 3): the
    # .h5 file records only the Input's shape; the graph gives lc_sparse's.
    layers = [
        keras.layers.LocallyConnected2D(3, 3, padding="same", implementation=2, name="lc_dense"),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Activation("relu", name="act"),
        keras.layers.LocallyConnected2D(2, 2, strides=2, implementation=3, name="lc_sparse"),
    ]
    if sequential:
        model = keras.Sequential([keras.Input((7, 6, 2)), *layers])
    else:
        inputs = h = keras.Input((7, 6, 2))
        for layer in layers:
            h = layer(h)
        model = keras.Model(inputs, h)
    rng = np.random.default_rng(7)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    path = str(tmp_path / "model.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-.h5 notice
        model.save(path)
    loaded = fk.load_weights(path)
    assert list(loaded) == ["lc_dense", "lc_sparse"]
    x = rng.standard_normal((2, 7, 6, 2)).astype(np.float32)
    module, variables = loaded["lc_sparse"]
    h = model.get_layer("act")(model.get_layer("bn")(model.get_layer("lc_dense")(x), training=False))
    np.testing.assert_allclose(jax.jit(module.apply)(variables, h.numpy()), model(x).numpy(), **TOL)
    module, variables = loaded["lc_dense"]
    np.testing.assert_allclose(module.apply(variables, x), model.get_layer("lc_dense")(x).numpy(), **TOL)
