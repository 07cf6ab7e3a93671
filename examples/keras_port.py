"""Port a tf_keras model with LocallyConnected layers to JAX, then fine-tune it.

Needs the ``keras-live`` extra (TensorFlow and tf_keras), only to build and save the
Keras model: flax_local reads the saved file with h5py alone.

    pip install -e ".[keras-live]"
    python examples/keras_port.py

Steps:
1. build a small tf_keras model (LocallyConnected2D with implementation 2 and
   Keras's own ``padding="same"``, LocallyConnected1D with implementation 3,
   then Dense), fit it briefly on a synthetic task and save it as ``.keras``;
2. load every LocallyConnected layer with ``flax_local.keras.load_weights``,
   rebuild the model in Flax around them (the Dense layer's two arrays are
   read from Keras directly) and check that the outputs agree;
3. fine-tune the Flax model with optax under ``jit`` and print the loss.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import flax_local
from flax_local import keras as flax_keras


def make_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose label depends on *where* a bright blob is: position matters."""
    x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32) * 0.3
    rows = rng.integers(0, 8, n)
    x[np.arange(n), rows, rng.integers(0, 8, n), 0] += 3.0
    y = (rows >= 4).astype(np.float32)[:, None]
    return x, y


def build_and_save_keras_model(path: str, x: np.ndarray, y: np.ndarray, seed: int) -> object:
    """Trains a tiny tf_keras model for two epochs and saves it to ``path``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # only this step needs TensorFlow
    import tf_keras as keras

    tf.keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.LocallyConnected2D(
                4, 3, padding="same", activation="relu", implementation=2, name="lc2d"
            ),
            keras.layers.Reshape((64, 4)),
            keras.layers.LocallyConnected1D(2, 4, strides=4, implementation=3, name="lc1d"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(path)
    return model


class PortedModel(nn.Module):
    """The Keras model's architecture in Flax, around the converted layers."""

    lc2d: nn.Module
    lc1d: nn.Module

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.lc2d(x)
        h = self.lc1d(h.reshape(h.shape[0], 64, 4))
        return nn.Dense(1, name="head")(h.reshape(h.shape[0], -1))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Runs the port; returns the agreement and the losses it printed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="fine-tuning steps in JAX")
    parser.add_argument("--out", default=None, help="folder for the .keras file (default: a temp dir)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x, y = make_data(rng, 256)
    folder = args.out or tempfile.mkdtemp(prefix="keras_port_")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.keras")
    keras_model = build_and_save_keras_model(path, x, y, args.seed)
    keras_out = np.asarray(keras_model(x[:32]))
    print(f"saved the tf_keras model to {path}")

    layers = flax_keras.load_weights(path)  # h5py only: no TensorFlow here
    for name, (module, variables) in layers.items():
        shapes = jax.tree_util.tree_map(jnp.shape, variables["params"])
        print(f"  {name}: {type(module).__name__} padding={module.padding!r} params {shapes}")
    (lc2d, v2d), (lc1d, v1d) = layers["lc2d"], layers["lc1d"]
    head_kernel, head_bias = keras_model.get_layer("head").get_weights()
    model = PortedModel(lc2d=lc2d, lc1d=lc1d)
    params = {
        "lc2d": v2d["params"],
        "lc1d": v1d["params"],
        "head": {"kernel": jnp.asarray(head_kernel), "bias": jnp.asarray(head_bias)},
    }
    flax_out = np.asarray(model.apply({"params": params}, x[:32]))
    difference = float(np.abs(flax_out - keras_out).max())
    print(f"max |flax - keras| on 32 inputs: {difference:.2e}")
    if difference > 1e-4:
        raise SystemExit("the ported model does not compute what the Keras model computed")

    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    def loss_fn(params, xb, yb):
        return jnp.mean((model.apply({"params": params}, xb) - yb) ** 2)

    @jax.jit
    def step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = float(loss_fn(params, x, y))
    for _ in range(args.steps):
        batch = rng.integers(0, len(x), 32)
        params, opt_state, _ = step(params, opt_state, x[batch], y[batch])
    end = float(loss_fn(params, x, y))
    print(f"fine-tuned in JAX for {args.steps} steps: loss {start:.4f} -> {end:.4f}")
    print(f"flax_local {flax_local.__version__}, jax {jax.__version__}")
    return {"difference": difference, "loss_before": start, "loss_after": end}


if __name__ == "__main__":
    main()
