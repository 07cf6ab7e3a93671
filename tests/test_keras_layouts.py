"""flax_local.keras against tf_keras golden files (no TensorFlow needed).

The golden files are written by tests/keras_golden/generate.py.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import flax_local
from flax_local import keras as fk
from flax_local._src import geometry
from flax_local._src.activations import get_activation
from flax_local.functional import locally_connected

GOLDEN = os.path.join(os.path.dirname(__file__), "keras_golden")
TOL = dict(rtol=1e-5, atol=1e-5)


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(GOLDEN, name)) as data:
        return {key: data[key] for key in data.files}


def _cases(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    cases: dict[str, dict] = {}
    for key, value in arrays.items():
        if "__" not in key:
            continue
        case, field = key.split("__", 1)
        cases.setdefault(case, {})[field] = value
    for case in cases.values():
        case["config"] = json.loads(str(case["config"]))
        case["weights"] = [case[f"weight_{i}"] for i in range(2) if f"weight_{i}" in case]
    return cases


LAYERS = {**_cases(_load("layers_1d.npz")), **_cases(_load("layers_2d.npz"))}
REGULARIZATION = _cases(_load("regularization.npz"))


def _input_shape(case):
    return case["input"].shape[1:]


def test_golden_coverage():
    configs = [case["config"] for case in LAYERS.values()]
    assert len(configs) >= 80
    seen = {
        (
            len(c["kernel_size"]),
            c["implementation"],
            c["data_format"],
            c["padding"],
            c["strides"][0],
            c["kernel_size"][0] % 2,
        )
        for c in configs
    }
    for rank in (1, 2):
        for impl, padding in [(1, "valid"), (2, "valid"), (2, "same"), (3, "valid"), (3, "same")]:
            for data_format in ("channels_last", "channels_first"):
                for stride in (1, 2):
                    for parity in (0, 1):
                        assert (rank, impl, data_format, padding, stride, parity) in seen
    assert {c["use_bias"] for c in configs} == {True, False}
    assert len({c["activation"] for c in configs}) >= 10


def _softmax(y):
    e = np.exp(y - y.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_erf = np.vectorize(math.erf)
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
# tf_keras's activations, written out in numpy (independent of flax_local's).
NUMPY_ACTIVATIONS = {
    "linear": lambda y: y,
    "relu": lambda y: np.maximum(y, 0),
    "relu6": lambda y: np.clip(y, 0, 6),
    "tanh": np.tanh,
    "sigmoid": lambda y: 1 / (1 + np.exp(-y)),
    "hard_sigmoid": lambda y: np.clip(0.2 * y + 0.5, 0, 1),
    "elu": lambda y: np.where(y > 0, y, np.expm1(y)),
    "selu": lambda y: _SELU_SCALE * np.where(y > 0, y, _SELU_ALPHA * np.expm1(y)),
    "softplus": lambda y: np.logaddexp(y, 0),
    "softsign": lambda y: y / (1 + np.abs(y)),
    "swish": lambda y: y / (1 + np.exp(-y)),
    "gelu": lambda y: 0.5 * y * (1 + _erf(y / np.sqrt(2))),
    "exponential": np.exp,
    "leaky_relu": lambda y: np.where(y > 0, y, 0.2 * y),
    "softmax": _softmax,
}


def _reference(module, variables, x):
    """flax_local's definition in numpy: ``y[o, f] = bias[o, f] + sum_{j, c}
    x_padded[o * s + j, c] * kernel[o, j, c, f]``, then the activation."""
    params = variables["params"]
    kernel = np.asarray(params["kernel"], np.float64)
    rank = (kernel.ndim - 2) // 2
    kernel_size = kernel.shape[rank : 2 * rank]
    if module.data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    _, strides, padding, dilation = geometry.check_geometry_arguments(
        rank, kernel_size, module.strides, module.padding, module.dilation_rate
    )
    assert dilation == (1,) * rank
    geo = geometry.make_geometry(x.shape[1:-1], kernel_size, strides, padding, dilation)
    assert all(low >= 0 and high >= 0 for low, high in geo.padding)
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), *geo.padding, (0, 0)])
    windows = np.lib.stride_tricks.sliding_window_view(xp, kernel_size, axis=tuple(range(1, rank + 1)))
    windows = windows[(slice(None), *(slice(None, o * s, s) for o, s in zip(geo.output_spatial, strides)))]
    # windows: (B, *out, C, *k) -> (B, *out, *k, C)
    windows = np.moveaxis(windows, rank + 1, -1)
    spatial = "abc"[:rank]
    taps = "klm"[:rank]
    y = np.einsum(f"n{spatial}{taps}i,{spatial}{taps}if->n{spatial}f", windows, kernel)
    if "bias" in params:
        y = y + np.asarray(params["bias"], np.float64)
    if module.data_format == "channels_first":
        y = np.moveaxis(y, -1, 1)
    return NUMPY_ACTIVATIONS[module.activation or "linear"](y)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_from_keras_matches_golden_output(name):
    # Every golden case through the converted params and flax_local's
    # definition (numpy, fast); the modules themselves run on a covering
    # subset below (each case costs a compilation).
    case = LAYERS[name]
    module, variables = fk.from_keras(case["config"], case["weights"], _input_shape(case))
    expected_class = (
        flax_local.LocallyConnected1D if case["input"].ndim == 3 else flax_local.LocallyConnected2D
    )
    assert type(module) is expected_class
    assert ("bias" in variables["params"]) == case["config"]["use_bias"]
    np.testing.assert_allclose(_reference(module, variables, case["input"]), case["output"], **TOL)


def _covering_subset() -> list[str]:
    """One case per (rank, implementation, padding), data formats, strides and
    kernel parities alternating, plus one non-square case."""
    chosen, seen = [], set()
    for name in sorted(LAYERS):
        config = LAYERS[name]["config"]
        key = (len(config["kernel_size"]), config["implementation"], config["padding"])
        n = len(seen)
        wanted = (["channels_last", "channels_first"][n % 2], (n // 2) % 2 + 1, (n // 4) % 2)
        actual = (config["data_format"], config["strides"][0], config["kernel_size"][0] % 2)
        if key in seen or actual != wanted:
            continue
        seen.add(key)
        chosen.append(name)
    assert len(chosen) == 10
    return [*chosen, "2d_impl3_same_channels_first_s1x3_k3x2"]


@pytest.mark.parametrize("name", _covering_subset())
def test_module_matches_golden_output(name):
    case = LAYERS[name]
    module, variables = fk.from_keras(case["config"], case["weights"], _input_shape(case))
    np.testing.assert_allclose(jax.jit(module.apply)(variables, case["input"]), case["output"], **TOL)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_round_trip_and_cross_implementation(name):
    case = LAYERS[name]
    config, shape, weights = case["config"], _input_shape(case), case["weights"]
    module, variables = fk.from_keras(config, weights, shape)
    layout = fk.KerasLayout(
        shape,
        filters=config["filters"],
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        data_format=config["data_format"],
    )
    implementation = config["implementation"]
    back = fk.to_keras(module, variables, shape, implementation=implementation)
    assert len(back) == len(weights)
    expected_kernel = weights[0] * layout.mask() if implementation == 2 else weights[0]
    np.testing.assert_array_equal(back[0], expected_kernel)
    if config["use_bias"]:
        np.testing.assert_array_equal(back[1], weights[1])
    # Through every other Keras implementation the padding allows, and back.
    params = variables["params"]
    for other in (1, 2, 3):
        if other == 1 and config["padding"] != "valid":
            with pytest.raises(ValueError, match="implementation=1"):
                fk.to_keras(module, variables, shape, implementation=other)
            continue
        other_config = dict(config, implementation=other)
        exported = fk.to_keras(module, variables, shape, implementation=other)
        assert exported[0].shape == layout.kernel_shape(other)
        again, again_vars = fk.from_keras(other_config, exported, shape)
        for key in params:
            np.testing.assert_array_equal(again_vars["params"][key], params[key])
        assert again.padding == module.padding


def test_functional_core_with_explicit_padding():
    case = LAYERS["2d_impl2_same_channels_first_s2_k2"]
    config, shape = case["config"], _input_shape(case)
    layout = fk.KerasLayout(
        shape,
        filters=config["filters"],
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding="same",
        data_format="channels_first",
    )
    kernel = layout.kernel_from_keras(case["weights"][0], 2)
    bias = layout.bias_from_keras(case["weights"][1])
    activation = get_activation(config["activation"])

    @jax.jit
    def apply(x, kernel, bias):
        y = locally_connected(x, kernel, bias, strides=2, padding=layout.pads, data_format="channels_first")
        return activation(y)

    np.testing.assert_allclose(apply(case["input"], kernel, bias), case["output"], **TOL)


@pytest.mark.parametrize("implementation", ["patches", "dense", "sparse"])
def test_every_flax_implementation_matches(implementation):
    for name in ["2d_impl1_valid_channels_first_s2_k3", "1d_impl3_same_channels_last_s2_k2"]:
        case = LAYERS[name]
        module, variables = fk.from_keras(
            case["config"], case["weights"], _input_shape(case), implementation=implementation
        )
        assert module.implementation == implementation
        np.testing.assert_allclose(jax.jit(module.apply)(variables, case["input"]), case["output"], **TOL)


def _sown(state, name):
    values = state["losses"].get(name)
    return None if values is None else float(sum(jnp.sum(v) for v in values))


@pytest.mark.parametrize("name", sorted(REGULARIZATION))
def test_regularization_losses_match(name):
    case = REGULARIZATION[name]
    module, variables = fk.from_keras(case["config"], case["weights"], _input_shape(case))
    y, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["losses"]))(variables, case["input"])
    np.testing.assert_allclose(y, case["output"], **TOL)
    kernel = _sown(state, "kernel_regularization")
    expected_kernel = float(case.get("kernel_loss_masked", case["kernel_loss"]))
    np.testing.assert_allclose(kernel or 0.0, expected_kernel, rtol=1e-5)
    np.testing.assert_allclose(_sown(state, "bias_regularization") or 0.0, case["bias_loss"], rtol=1e-5)
    np.testing.assert_allclose(
        _sown(state, "activity_regularization") or 0.0, case["activity_loss"], rtol=1e-5, atol=1e-6
    )
    if "kernel_loss_masked" not in case or case["kernel_loss_masked"] == case["kernel_loss"]:
        np.testing.assert_allclose(
            float(flax_local.regularization_loss(state)), case["total_loss"], rtol=1e-5
        )


def test_keras_penalizes_implementation_2_junk():
    # tf_keras regularizes its whole implementation-2 kernel, junk included;
    # flax_local has no junk, so its penalty is that of the masked kernel.
    case = REGULARIZATION["2d_impl2_junk"]
    assert case["kernel_loss"] > 1.5 * case["kernel_loss_masked"]


def test_training_parity():
    data = _load("training.npz")
    model_config = json.loads(str(data["config"]))
    layers = model_config["config"]["layers"]
    lc_entry = next(entry for entry in layers if entry["class_name"] == "LocallyConnected2D")
    x, y, lr = data["x"], data["y"], float(data["lr"])
    initial = [data[f"initial_{i}"] for i in range(4)]
    final = [data[f"final_{i}"] for i in range(4)]
    input_shape = x.shape[1:]
    lc, lc_vars = fk.from_keras(lc_entry, initial[:2], input_shape)
    assert lc.kernel_regularizer is not None and lc.activity_regularizer is not None

    class Model(nn.Module):
        lc: nn.Module

        @nn.compact
        def __call__(self, inputs):
            h = self.lc(inputs)
            return nn.Dense(2, name="dense")(h.reshape(h.shape[0], -1))

    model = Model(lc)
    params = {
        "lc": lc_vars["params"],
        "dense": {"kernel": jnp.asarray(initial[2]), "bias": jnp.asarray(initial[3])},
    }

    def loss_fn(params):
        out, state = model.apply({"params": params}, x, mutable=["losses"])
        return jnp.mean((out - y) ** 2) + flax_local.regularization_loss(state)

    optimizer = optax.sgd(lr)
    opt_state = optimizer.init(params)
    losses = []
    step = jax.jit(jax.value_and_grad(loss_fn))
    for _ in range(3):
        loss, grads = step(params)
        losses.append(float(loss))
        updates, opt_state = optimizer.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(losses, data["losses"], rtol=1e-5)
    exported = fk.to_keras(lc, {"params": params["lc"]}, input_shape, implementation=1)
    np.testing.assert_allclose(exported[0], final[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported[1], final[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["dense"]["kernel"], final[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["dense"]["bias"], final[3], rtol=1e-5, atol=1e-6)


# Config translation -----------------------------------------------------------


def _base_config(**overrides):
    config = {
        "name": "lc",
        "trainable": True,
        "dtype": "float32",
        "filters": 2,
        "kernel_size": [3],
        "strides": [1],
        "padding": "valid",
        "data_format": "channels_last",
        "activation": "linear",
        "use_bias": True,
        "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}},
        "kernel_regularizer": None,
        "bias_regularizer": None,
        "activity_regularizer": None,
        "kernel_constraint": None,
        "bias_constraint": None,
        "implementation": 1,
    }
    config.update(overrides)
    return config


def test_serialized_forms_are_translated():
    new_style = {
        "module": "keras.regularizers",
        "class_name": "L2",
        "config": {"l2": 0.009999999776482582},
        "registered_name": None,
    }
    module = fk.module_from_keras(
        _base_config(
            kernel_regularizer=new_style,
            bias_regularizer={"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}},
            activity_regularizer="l1",
            kernel_constraint={"class_name": "MaxNorm", "config": {"max_value": 3, "axis": 0}},
            bias_constraint={"module": "keras.constraints", "class_name": "NonNeg", "config": {}},
            kernel_initializer={
                "module": "keras.initializers",
                "class_name": "VarianceScaling",
                "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal", "seed": 1},
                "registered_name": None,
            },
            bias_initializer={"class_name": "Constant", "config": {"value": 0.5}},
            activation="relu",
        ),
        (6, 2),
    )
    assert module.kernel_regularizer == flax_local.regularizers.l2(0.009999999776482582)
    assert module.bias_regularizer == flax_local.regularizers.l1_l2(l1=0.1, l2=0.2)
    assert module.activity_regularizer == flax_local.regularizers.l1(0.01)
    assert module.kernel_constraint == flax_local.constraints.max_norm(3.0)
    assert module.bias_constraint == flax_local.constraints.non_neg()
    assert module.activation == "relu"
    np.testing.assert_array_equal(module.bias_initializer(jax.random.key(0), (2,), jnp.float32), 0.5)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"kernel_regularizer": {"class_name": "OrthogonalRegularizer", "config": {"factor": 0.01}}},
            "Orthogonal",
        ),
        (
            {"bias_regularizer": {"class_name": "L2", "config": {"l2": 0.1}, "registered_name": "my>L2"}},
            "my>L2",
        ),
        (
            {"kernel_constraint": {"class_name": "MaxNorm", "config": {"max_value": 2, "axis": [0, 1]}}},
            "axis",
        ),
        ({"kernel_constraint": {"class_name": "MyConstraint", "config": {}}}, "MyConstraint"),
        ({"kernel_initializer": {"class_name": "RandomNormal", "config": {"mean": 0, "foo": 1}}}, "foo"),
        ({"kernel_initializer": "he_weird"}, "he_weird"),
        ({"activation": "crelu"}, "crelu"),
        ({"dilation_rate": [2]}, "dilation_rate"),
        ({"implementation": 4}, "implementation"),
        ({"padding": "causal"}, "causal"),
        ({"implementation": 1, "padding": "same"}, "implementation=1"),
        ({"dtype": {"class_name": "Odd", "config": {"x": 1}}}, "dtype"),
    ],
)
def test_untranslatable_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        fk.module_from_keras(_base_config(**overrides), (6, 2))


def test_weight_shape_and_count_errors():
    config = _base_config()
    with pytest.raises(ValueError, match="must have shape"):
        fk.from_keras(config, [np.zeros((4, 6, 2)), np.zeros((4, 2))], (7, 2))
    with pytest.raises(ValueError, match="weight array"):
        fk.from_keras(config, [np.zeros((4, 6, 2))], (6, 2))
    with pytest.raises(ValueError, match="input_shape"):
        fk.from_keras(config, [np.zeros((4, 6, 2)), np.zeros((4, 2))], (6,))


def test_no_bias_and_dtype_policy():
    config = _base_config(
        use_bias=False, dtype={"class_name": "Policy", "config": {"name": "mixed_bfloat16"}}
    )
    module, variables = fk.from_keras(config, [np.ones((4, 6, 2), np.float32)], (6, 2))
    assert set(variables["params"]) == {"kernel"}
    assert module.dtype == jnp.bfloat16 and module.param_dtype == jnp.float32
    assert fk.to_keras(module, variables, (6, 2))[0].shape == (4, 6, 2)


def test_keras_same_is_not_tf_same():
    # Even kernel: Keras starts window o at o*s - k//2 (low padding 1), TF SAME at o*s (low 0).
    assert fk.keras_padding((6,), (2,), (1,), "same") == ((1, 0),)
    assert fk.keras_padding((6,), (3,), (2,), "same") == ((1, 0),)  # TF SAME: (0, 1)
    assert fk.keras_padding((5,), (3,), (2,), "same") == ((1, 1),)
    module = fk.module_from_keras(_base_config(padding="same", kernel_size=[3], implementation=2), (6, 2))
    assert module.padding == "same"  # odd kernel, stride 1: TF SAME is the same
    module = fk.module_from_keras(_base_config(padding="same", kernel_size=[2], implementation=3), (6, 2))
    assert module.padding == ((1, 0),)


def _zeros_like_init(module, x):
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_to_keras_rejects_what_keras_cannot_express():
    x = jnp.ones((1, 8, 2))
    for module in [
        flax_local.LocallyConnected1D(2, 3, dilation_rate=2),
        flax_local.LocallyConnected1D(2, 3, padding="causal"),
        flax_local.LocallyConnected1D(2, 2, padding="same"),  # TF SAME: low 0, Keras same: low 1
    ]:
        variables = _zeros_like_init(module, x)
        with pytest.raises(ValueError):
            fk.to_keras(module, variables, (8, 2), implementation=2)
    module = flax_local.LocallyConnected1D(2, 3, padding="same")
    variables = _zeros_like_init(module, x)
    with pytest.raises(ValueError, match="implementation=1"):
        fk.to_keras(module, variables, (8, 2), implementation=1)
    assert fk.to_keras_config(module, (8, 2), implementation=3)["padding"] == "same"


def test_to_keras_config_round_trip():
    module = flax_local.LocallyConnected2D(
        4,
        (2, 3),
        strides=(1, 2),
        padding=((1, 0), (1, 0)),
        data_format="channels_first",
        activation="tanh",
        use_bias=False,
        kernel_regularizer=flax_local.regularizers.l2(0.5),
        kernel_constraint=flax_local.constraints.unit_norm(),
        kernel_initializer="he_normal",
    )
    config = fk.to_keras_config(module, (3, 5, 6), implementation=2)
    assert config["padding"] == "same"
    again = fk.module_from_keras(config, (3, 5, 6))
    for field in ("filters", "kernel_size", "strides", "padding", "data_format", "activation", "use_bias"):
        assert getattr(again, field) == getattr(module, field), field
    assert again.kernel_regularizer == module.kernel_regularizer
    assert again.kernel_constraint == module.kernel_constraint
    assert again.kernel_initializer == "he_normal"


def test_constraint_axes():
    config = _base_config(kernel_constraint={"class_name": "UnitNorm", "config": {"axis": 1}})
    assert fk.module_from_keras(config, (6, 2)).kernel_constraint == flax_local.constraints.unit_norm()
    config = _base_config(
        implementation=3, kernel_constraint={"class_name": "UnitNorm", "config": {"axis": 1}}
    )
    with pytest.raises(ValueError, match="axis=1"):
        fk.module_from_keras(config, (6, 2))
    module = flax_local.LocallyConnected1D(2, 3, kernel_constraint=flax_local.constraints.max_norm(1.0))
    assert fk.to_keras_config(module, (6, 2), implementation=1)["kernel_constraint"]["config"]["axis"] == [1]
    with pytest.raises(ValueError, match="implementation 3"):
        fk.to_keras_config(module, (6, 2), implementation=3)


def test_flax_local_never_imports_tensorflow():
    import ast

    root = os.path.dirname(flax_local.__file__)
    for directory, _, files in os.walk(root):
        for filename in files:
            if not filename.endswith(".py"):
                continue
            with open(os.path.join(directory, filename)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    assert module.split(".")[0] not in ("tensorflow", "tf_keras", "keras"), (filename, module)
