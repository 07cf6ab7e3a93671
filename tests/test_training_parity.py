"""Training parity with tf_keras: the same SGD steps end at the same weights.

The golden file (tests/keras_golden/training.npz, written by generate.py)
holds a tf_keras model -- LocallyConnected2D (kernel L2, activity L1, tanh),
Flatten, Dense -- its initial weights, one batch, and its weights after three
``train_on_batch`` steps of plain SGD on MSE. Here the same model is built
from the converted weights with flax_local + optax and trained the same way.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import flax_local
from flax_local import keras

_GOLDEN = os.path.join(os.path.dirname(__file__), "keras_golden", "training.npz")


def _layer_config(model_config):
    layers = model_config["config"]["layers"]
    return next(layer["config"] for layer in layers if layer["class_name"] == "LocallyConnected2D")


def test_three_sgd_steps_end_at_the_keras_weights():
    golden = np.load(_GOLDEN)
    config = _layer_config(json.loads(str(golden["config"])))
    x, y, lr = golden["x"], golden["y"], float(golden["lr"])
    layer, variables = keras.from_keras(config, [golden["initial_0"], golden["initial_1"]], x.shape[1:])
    assert layer.kernel_regularizer is not None and layer.activity_regularizer is not None

    class Model(nn.Module):
        local: nn.Module  # the converted layer, adopted as submodule "local"

        @nn.compact
        def __call__(self, inputs):
            h = self.local(inputs)
            return nn.Dense(2, name="dense")(h.reshape(h.shape[0], -1))

    model = Model(local=layer)
    params = {
        "local": variables["params"],
        "dense": {"kernel": jnp.asarray(golden["initial_2"]), "bias": jnp.asarray(golden["initial_3"])},
    }

    def loss_fn(params):
        prediction, state = model.apply({"params": params}, x, mutable=["losses"])
        return jnp.mean((prediction - y) ** 2) + flax_local.regularization_loss(state)

    tx = optax.sgd(lr)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(3):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))

    np.testing.assert_allclose(losses, golden["losses"], rtol=1e-5)
    kernel, bias = keras.to_keras(layer, {"params": params["local"]}, x.shape[1:], implementation=1)
    np.testing.assert_allclose(kernel, golden["final_0"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bias, golden["final_1"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(params["dense"]["kernel"], golden["final_2"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(params["dense"]["bias"], golden["final_3"], rtol=1e-4, atol=1e-6)
    # The steps moved the weights: parity is not the trivial one of an untrained model.
    assert np.abs(golden["final_0"] - golden["initial_0"]).max() > 1e-3
