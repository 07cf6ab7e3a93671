"""Writes the tf_keras golden files that tests/test_keras_*.py check flax_local against.

Run it from the repository root in an environment with TensorFlow (never
needed by flax_local itself)::

    pip install -e .[keras-live]
    python tests/keras_golden/generate.py

It rewrites, in tests/keras_golden/ (about 1 MB in all):

* ``layers_1d.npz``, ``layers_2d.npz``: one case per tf_keras
  LocallyConnected layer: every implementation (1, 2, 3) x data_format x
  padding ("valid"; "same" for implementations 2 and 3) x stride (1, 2) x
  kernel size (even, odd), with and without bias, with various activations.
  Keys ``<case>__config`` (the ``get_config()`` JSON), ``__input``,
  ``__output``, ``__weight_0`` (kernel) and ``__weight_1`` (bias). Weights are
  random normal, set with ``set_weights``, so implementation 2's kernel has
  random junk outside its connectivity mask.
* ``regularization.npz``: layers with kernel/bias/activity regularizers and
  the penalties tf_keras computes (``__kernel_loss``, ``__bias_loss``,
  ``__activity_loss``, ``__total_loss`` = ``sum(layer.losses)``;
  ``__kernel_loss_masked``: the kernel penalty of implementation 2's kernel
  times its mask, i.e. without the junk).
* ``training.npz``: a LocallyConnected2D (kernel L2, activity L1) -> Flatten
  -> Dense model trained 3 plain SGD steps on one fixed batch with MSE:
  ``config`` (model JSON), ``x``, ``y``, ``lr``, ``initial_<i>`` and
  ``final_<i>`` (model ``get_weights()``), ``losses`` (per-step total loss as
  ``train_on_batch`` reports it, before that step's update).
* ``sequential.h5``/``.keras``, ``functional.h5``/``.keras``: tiny saved
  models for ``flax_local.keras.load_weights``, and ``weights_only.weights.h5``
  (``save_weights``, which holds no config). ``files.npz`` holds, per file and
  LocallyConnected layer, a random ``__input`` and the layer's ``__output``.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import numpy as np

# Imported by main() only, so that collecting this file (pytest's
# --doctest-modules) needs no TensorFlow.
tf = keras = None

HERE = os.path.dirname(os.path.abspath(__file__))
ACTIVATIONS = [
    "linear",
    "relu",
    "tanh",
    "sigmoid",
    "elu",
    "softplus",
    "swish",
    "gelu",
    "selu",
    "softsign",
    "hard_sigmoid",
    "relu6",
    "exponential",
    "leaky_relu",
    "softmax",
]


def seed(value: int) -> np.random.Generator:
    keras.utils.set_random_seed(value)
    return np.random.default_rng(value)


def layer_class(rank: int):
    return keras.layers.LocallyConnected1D if rank == 1 else keras.layers.LocallyConnected2D


def input_shape(rank: int, data_format: str, channels: int = 2) -> tuple[int, ...]:
    spatial = (7,) if rank == 1 else (6, 5)
    return (*spatial, channels) if data_format == "channels_last" else (channels, *spatial)


def build(layer, shape, rng: np.random.Generator, junk: bool = True) -> list[np.ndarray]:
    layer.build((None, *shape))
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()]
    if not junk and layer.implementation == 2:
        mask = np.broadcast_to(np.asarray(layer.kernel_mask, bool), weights[0].shape)
        weights[0] = np.where(mask, weights[0], 0).astype(np.float32)
    layer.set_weights(weights)
    return weights


def store(out: dict, case: str, layer, x: np.ndarray, y: np.ndarray, weights: list[np.ndarray]) -> None:
    out[f"{case}__config"] = np.array(json.dumps(layer.get_config()))
    out[f"{case}__input"] = x
    out[f"{case}__output"] = np.asarray(y, np.float32)
    for i, w in enumerate(weights):
        out[f"{case}__weight_{i}"] = w


def layer_cases(rank: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    combos = [(1, "valid"), (2, "valid"), (2, "same"), (3, "valid"), (3, "same")]
    index = 0
    for (implementation, padding), data_format, stride, kernel in itertools.product(
        combos, ["channels_last", "channels_first"], [1, 2], [2, 3]
    ):
        rng = seed(1000 * rank + index)
        use_bias = index % 3 != 2
        activation = ACTIVATIONS[index % len(ACTIVATIONS)]
        layer = layer_class(rank)(
            3,
            kernel,
            strides=stride,
            padding=padding,
            data_format=data_format,
            activation=activation,
            use_bias=use_bias,
            implementation=implementation,
        )
        shape = input_shape(rank, data_format)
        weights = build(layer, shape, rng)
        x = rng.standard_normal((2, *shape)).astype(np.float32)
        case = f"{rank}d_impl{implementation}_{padding}_{data_format}_s{stride}_k{kernel}"
        store(out, case, layer, x, layer(x).numpy(), weights)
        index += 1
    # Non-square kernels and strides, and a layer whose stride exceeds its kernel.
    extras = [
        dict(kernel_size=(2, 3), strides=(2, 1), padding="same", implementation=2),
        dict(kernel_size=(3, 2), strides=(1, 3), padding="same", implementation=3),
        dict(kernel_size=(3, 1), strides=(1, 2), padding="valid", implementation=1),
    ]
    for extra in extras if rank == 2 else []:
        for data_format in ["channels_last", "channels_first"]:
            rng = seed(1000 * rank + index)
            layer = layer_class(rank)(2, data_format=data_format, activation="relu", **extra)
            shape = input_shape(rank, data_format, channels=3)
            weights = build(layer, shape, rng)
            x = rng.standard_normal((2, *shape)).astype(np.float32)
            k, s = extra["kernel_size"], extra["strides"]
            case = (
                f"2d_impl{extra['implementation']}_{extra['padding']}_{data_format}"
                f"_s{s[0]}x{s[1]}_k{k[0]}x{k[1]}"
            )
            store(out, case, layer, x, layer(x).numpy(), weights)
            index += 1
    return out


def regularization_cases() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    regs = keras.regularizers
    cases = [
        (
            "2d_impl1",
            2,
            dict(
                implementation=1,
                kernel_regularizer=regs.L2(0.01),
                bias_regularizer=regs.L1(0.02),
                activity_regularizer=regs.L1L2(l1=0.01, l2=0.03),
                activation="relu",
            ),
            True,
        ),
        (
            "1d_impl3_same_cf",
            1,
            dict(
                implementation=3,
                padding="same",
                strides=2,
                data_format="channels_first",
                kernel_regularizer=regs.L1L2(l1=0.01, l2=0.01),
                activity_regularizer="l2",
            ),
            True,
        ),
        (
            "2d_impl2_cf_zero_junk",
            2,
            dict(
                implementation=2,
                padding="same",
                data_format="channels_first",
                kernel_regularizer=regs.L1(0.05),
                bias_regularizer="l2",
            ),
            False,
        ),
        (
            "2d_impl2_junk",
            2,
            dict(implementation=2, kernel_regularizer=regs.L2(0.01), activity_regularizer="l1"),
            True,
        ),
    ]
    for index, (name, rank, kwargs, junk) in enumerate(cases):
        rng = seed(5000 + index)
        layer = layer_class(rank)(3, 3 if rank == 1 else (3, 2), **kwargs)
        shape = input_shape(rank, kwargs.get("data_format", "channels_last"))
        weights = build(layer, shape, rng, junk=junk)
        x = rng.standard_normal((4, *shape)).astype(np.float32)
        y = layer(x)
        store(out, name, layer, x, y.numpy(), weights)
        zero = tf.constant(0.0)
        kernel_loss = layer.kernel_regularizer(layer.kernel) if layer.kernel_regularizer else zero
        bias_loss = layer.bias_regularizer(layer.bias) if layer.bias_regularizer else zero
        out[f"{name}__kernel_loss"] = np.float32(kernel_loss)
        out[f"{name}__bias_loss"] = np.float32(bias_loss)
        out[f"{name}__total_loss"] = np.float32(tf.add_n(layer.losses))
        out[f"{name}__activity_loss"] = np.float32(tf.add_n(layer.losses) - kernel_loss - bias_loss)
        if layer.implementation == 2 and layer.kernel_regularizer:
            masked = layer.kernel * tf.cast(layer.kernel_mask, tf.float32)
            out[f"{name}__kernel_loss_masked"] = np.float32(layer.kernel_regularizer(masked))
    return out


def training_case() -> dict[str, np.ndarray]:
    rng = seed(7)
    model = keras.Sequential(
        [
            keras.Input((6, 5, 2)),
            keras.layers.LocallyConnected2D(
                3,
                (3, 2),
                activation="tanh",
                kernel_regularizer=keras.regularizers.L2(0.01),
                activity_regularizer=keras.regularizers.L1(0.01),
                implementation=1,
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    initial = [(0.3 * rng.standard_normal(w.shape)).astype(np.float32) for w in model.get_weights()]
    model.set_weights(initial)
    lr = 0.1
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    x = rng.standard_normal((4, 6, 5, 2)).astype(np.float32)
    y = rng.standard_normal((4, 2)).astype(np.float32)
    losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
    out = {
        "config": np.array(model.to_json()),
        "x": x,
        "y": y,
        "lr": np.float32(lr),
        "losses": np.array(losses, np.float32),
    }
    for i, (w0, w1) in enumerate(zip(initial, model.get_weights(), strict=True)):
        out[f"initial_{i}"] = w0
        out[f"final_{i}"] = w1
    return out


def file_models() -> dict:
    seed(11)
    sequential = keras.Sequential(
        [
            keras.Input((8, 3)),
            keras.layers.LocallyConnected1D(4, 3, activation="relu", implementation=1, name="lc_first"),
            keras.layers.LocallyConnected1D(
                2, 2, strides=2, padding="same", implementation=3, use_bias=False, name="lc_second"
            ),
            keras.layers.LocallyConnected1D(2, 2, implementation=1, name="lc_third"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ],
        name="seq",
    )
    inputs = keras.Input((2, 4, 4))
    h = keras.layers.LocallyConnected2D(
        3,
        (2, 3),
        padding="same",
        data_format="channels_first",
        implementation=2,
        kernel_regularizer=keras.regularizers.L2(0.01),
        name="lc_a",
    )(inputs)
    block = keras.Sequential(
        [
            keras.Input((3, 4, 4)),
            keras.layers.LocallyConnected2D(
                2, 2, strides=(2, 1), data_format="channels_first", implementation=3, name="lc_b"
            ),
        ],
        name="block",
    )
    h = block(h)
    h = keras.layers.LocallyConnected2D(
        2, 2, data_format="channels_first", implementation=2, activation="tanh", name="lc_c"
    )(h)
    h = keras.layers.Flatten()(h)
    functional = keras.Model(inputs, keras.layers.Dense(1)(h), name="func")
    rng = np.random.default_rng(12)
    for model in (sequential, functional):
        model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    return {"sequential": sequential, "functional": functional}


def lc_layers(model, prefix=()):
    for layer in model.layers:
        if isinstance(layer, keras.layers.LocallyConnected1D | keras.layers.LocallyConnected2D):
            yield "/".join((*prefix, layer.name)), layer
        elif isinstance(layer, keras.Model):
            yield from lc_layers(layer, (*prefix, layer.name))


def file_cases() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(13)
    for name, model in file_models().items():
        model.save(os.path.join(HERE, f"{name}.h5"))
        model.save(os.path.join(HERE, f"{name}.keras"))
        for key, layer in lc_layers(model):
            x = rng.standard_normal((2, *layer.input_shape[1:])).astype(np.float32)
            out[f"{name}__{key}__input"] = x
            out[f"{name}__{key}__output"] = layer(x).numpy()
        if name == "sequential":
            model.save_weights(os.path.join(HERE, "weights_only.weights.h5"))
    return out


def main() -> None:
    global tf, keras
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    warnings.filterwarnings("ignore")
    import tensorflow as tf
    import tf_keras as keras

    meta = {"tf_keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__}
    outputs = {
        "layers_1d.npz": layer_cases(1),
        "layers_2d.npz": layer_cases(2),
        "regularization.npz": regularization_cases(),
        "training.npz": training_case(),
        "files.npz": file_cases(),
    }
    for filename, arrays in outputs.items():
        arrays["versions"] = np.array(json.dumps(meta))
        np.savez_compressed(os.path.join(HERE, filename), **arrays)
    total = 0
    for filename in sorted(os.listdir(HERE)):
        if filename.endswith((".npz", ".h5", ".keras")):
            size = os.path.getsize(os.path.join(HERE, filename))
            total += size
            print(f"{filename:28s} {size:8d} bytes", file=sys.stderr)
    print(f"{'total':28s} {total:8d} bytes ({meta})", file=sys.stderr)


if __name__ == "__main__":
    main()
