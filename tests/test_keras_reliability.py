"""flax_local.keras on hostile and edge-case inputs (issues 24 and 26).

Model files are written here with h5py and zipfile in the format tf_keras
2.21 writes (see tests/keras_golden/generate.py and keras_files.py's module
doc); TensorFlow is not needed. Weights go into the files in Keras's layout
through ``to_keras``, which the golden tests check against tf_keras itself.
"""

from __future__ import annotations

import io
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flax_local
from flax_local import keras as fk
from flax_local import nnx as local_nnx
from tests.reference import reference_locally_connected

h5py = pytest.importorskip("h5py")


# Writing tf_keras model files -----------------------------------------------


def _lc(name, rank, filters, kernel_size, *, implementation, padding="valid", strides=1, inbound=None):
    """A tf_keras LocallyConnected layer entry, its flax_local module (no batch) and random weights."""
    config = {
        "name": name,
        "trainable": True,
        "dtype": "float32",
        "filters": filters,
        "kernel_size": [kernel_size] * rank,
        "strides": [strides] * rank,
        "padding": padding,
        "data_format": "channels_last",
        "activation": "linear",
        "use_bias": True,
        "implementation": implementation,
    }
    entry = {"class_name": f"LocallyConnected{rank}D", "config": config}
    if inbound is not None:
        entry.update(name=name, inbound_nodes=[[[inbound, 0, 0, {}]]])
    return entry


def _layer(class_name, name, inbound=None, **config):
    entry = {"class_name": class_name, "config": {"name": name, **config}}
    if inbound is not None:
        entry.update(name=name, inbound_nodes=[[[inbound, 0, 0, {}]]])
    return entry


def _input(name, shape, functional=True):
    entry = {"class_name": "InputLayer", "config": {"batch_input_shape": [None, *shape], "name": name}}
    if functional:
        entry.update(name=name, inbound_nodes=[])
    return entry


def _functional(layers, output):
    return {
        "class_name": "Functional",
        "config": {
            "name": "model",
            "layers": layers,
            "input_layers": [[layers[0]["config"]["name"], 0, 0]],
            "output_layers": [[output, 0, 0]],
        },
    }


def _sequential(layers, name="seq"):
    return {"class_name": "Sequential", "config": {"name": name, "layers": layers}}


def _write_h5(path, model, weights):
    """``weights``: {top-level layer name: {"inner/kernel": array, ...}} in get_weights() order."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(model)
        root = f.create_group("model_weights")
        for group_name, arrays in weights.items():
            group = root.create_group(group_name)
            group.attrs["weight_names"] = [f"{name}:0".encode() for name in arrays]
            for name, array in arrays.items():
                group.create_dataset(f"{name}:0", data=array)
    return path


def _random_chain(rng, input_shape, layers):
    """Random flax_local params for a chain of (entry) LC layers, with their Keras weights."""
    shape, chain, keras_weights = tuple(input_shape), [], {}
    for entry in layers:
        config = entry["config"]
        layout = fk.KerasLayout(
            shape,
            filters=config["filters"],
            kernel_size=config["kernel_size"],
            strides=config["strides"],
            padding=config["padding"],
        )
        kernel = rng.standard_normal(layout.our_kernel_shape()).astype(np.float32)
        # Taps that read padding have no Keras weight: make them zero, as loading does.
        kernel = layout.kernel_from_keras(layout.kernel_to_keras(kernel, 2), 2)
        bias = rng.standard_normal(layout.our_bias_shape()).astype(np.float32)
        weights = [layout.kernel_to_keras(kernel, config["implementation"]), bias]
        keras_weights[config["name"]] = dict(zip(("kernel", "bias"), weights, strict=True))
        chain.append((config["name"], kernel, bias, layout.strides, layout.pads))
        shape = (*layout.out_spatial, layout.filters)
    return chain, keras_weights


def _h5_weights(keras_weights):
    return {name: {f"{name}/{w}": a for w, a in arrays.items()} for name, arrays in keras_weights.items()}


def _check_chain(layers, chain, x):
    """Loaded modules applied in turn equal the float64 reference on the original weights."""
    assert list(layers) == [name for name, *_ in chain]
    expected = x
    for name, kernel, bias, strides, pads in chain:
        module, variables = layers[name]
        y = jax.jit(module.apply)(variables, x)
        expected = reference_locally_connected(expected, kernel, bias, strides, pads)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(variables["params"]["kernel"], kernel)
        x = y


# load_weights walks the model graph (issue 26) -------------------------------


def test_functional_h5_chain_of_implementations_2_and_3(tmp_path):
    # Input -> LC(impl 2) -> LC(impl 3): lc_sparse's flat kernel does not hold
    # its input shape, but lc_dense's output shape is in its config.
    lc_dense = _lc("lc_dense", 2, 3, 3, implementation=2, padding="same", inbound="x")
    lc_sparse = _lc("lc_sparse", 2, 2, 2, implementation=3, strides=2, inbound="lc_dense")
    model = _functional([_input("x", (7, 6, 2)), lc_dense, lc_sparse], "lc_sparse")
    rng = np.random.default_rng(0)
    chain, weights = _random_chain(rng, (7, 6, 2), [lc_dense, lc_sparse])
    path = _write_h5(tmp_path / "model.h5", model, _h5_weights(weights))
    layers = fk.load_weights(path)
    _check_chain(layers, chain, rng.standard_normal((2, 7, 6, 2)).astype(np.float32))


def test_shape_preserving_layers_pass_the_shape_on(tmp_path):
    first = _lc("lc_one", 1, 4, 3, implementation=3, padding="same")
    second = _lc("lc_two", 1, 3, 2, implementation=3, strides=2)
    layers = [
        _input("x", (9, 2), functional=False),
        _layer("Activation", "act", activation="relu"),
        first,
        _layer("Dropout", "drop", rate=0.5),
        _layer("BatchNormalization", "bn", axis=[2]),
        _layer("GaussianNoise", "noise", stddev=0.1),
        second,
    ]
    rng = np.random.default_rng(1)
    chain, weights = _random_chain(rng, (9, 2), [first, second])
    path = _write_h5(tmp_path / "seq.h5", _sequential(layers), _h5_weights(weights))
    loaded = fk.load_weights(path)
    assert loaded["lc_two"][0].padding == "valid"
    _check_chain(loaded, chain, rng.standard_normal((3, 9, 2)).astype(np.float32))


def test_nested_sequential_without_input_layer_takes_its_callers_shape(tmp_path):
    inner = _lc("lc_inner", 1, 2, 2, implementation=3)
    outer = _lc("lc_outer", 1, 3, 3, implementation=3, inbound="x")
    block = _sequential([_layer("LayerNormalization", "norm"), inner], name="block")
    block.update(name="block", inbound_nodes=[[["lc_outer", 0, 0, {}]]])
    model = _functional([_input("x", (8, 2)), outer, block], "block")
    rng = np.random.default_rng(2)
    chain, weights = _random_chain(rng, (8, 2), [outer, inner])
    h5_weights = _h5_weights(weights)
    h5_weights["block"] = h5_weights.pop("lc_inner")
    path = _write_h5(tmp_path / "nested.h5", model, h5_weights)
    loaded = fk.load_weights(path)
    loaded["lc_inner"] = loaded.pop("block/lc_inner")
    _check_chain(loaded, chain, rng.standard_normal((2, 8, 2)).astype(np.float32))


def test_new_node_format_is_followed(tmp_path):
    # tf_keras >= 2.13 may write {"args": [{"config": {"keras_history": [...]}}]} nodes.
    lc_a = _lc("lc_a", 1, 2, 2, implementation=2)
    lc_b = _lc("lc_b", 1, 2, 2, implementation=3)
    for entry, source in ((lc_a, "x"), (lc_b, "lc_a")):
        history = {"class_name": "__keras_tensor__", "config": {"keras_history": [source, 0, 0]}}
        entry.update(name=entry["config"]["name"], inbound_nodes=[{"args": [history], "kwargs": {}}])
    model = _functional([_input("x", (6, 3)), lc_a, lc_b], "lc_b")
    rng = np.random.default_rng(3)
    chain, weights = _random_chain(rng, (6, 3), [lc_a, lc_b])
    loaded = fk.load_weights(_write_h5(tmp_path / "m.h5", model, _h5_weights(weights)))
    _check_chain(loaded, chain, rng.standard_normal((1, 6, 3)).astype(np.float32))


def test_a_layer_of_unknown_output_shape_is_named(tmp_path):
    first = _lc("lc_one", 1, 4, 3, implementation=1, inbound="x")
    reshape = _layer("Reshape", "reshape", inbound="lc_one", target_shape=[12, 2])
    second = _lc("lc_two", 1, 2, 2, implementation=3, inbound="reshape")
    model = _functional([_input("x", (8, 3)), first, reshape, second], "lc_two")
    rng = np.random.default_rng(4)
    _, weights = _random_chain(rng, (8, 3), [first])
    weights["lc_two"] = {
        "kernel": np.zeros(11 * 2 * 2 * 2, np.float32),
        "bias": np.zeros((11, 2), np.float32),
    }
    path = _write_h5(tmp_path / "m.h5", model, _h5_weights(weights))
    with pytest.raises(ValueError, match=r"'lc_two'.*'reshape' \(Reshape\).*input_shapes=\{'lc_two'"):
        fk.load_weights(path)
    loaded = fk.load_weights(path, input_shapes={"lc_two": (12, 2)})
    assert loaded["lc_two"][1]["params"]["kernel"].shape == (11, 2, 2, 2)


def test_a_wrong_weight_shape_names_the_file_and_layer(tmp_path):
    lc_a = _lc("lc_a", 1, 2, 2, implementation=2, inbound="x")
    lc_b = _lc("lc_b", 1, 2, 2, implementation=3, inbound="lc_a")
    model = _functional([_input("x", (6, 3)), lc_a, lc_b], "lc_b")
    _, weights = _random_chain(np.random.default_rng(5), (6, 3), [lc_a, lc_b])
    weights["lc_b"]["kernel"] = weights["lc_b"]["kernel"][:-1]
    path = _write_h5(tmp_path / "m.h5", model, _h5_weights(weights))
    with pytest.raises(ValueError, match=r"m\.h5: layer 'lc_b': .*must have shape"):
        fk.load_weights(path)


# Model files that cannot be read (issue 24, item 15) --------------------------


def _keras_zip(path, files):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


_CONFIG = json.dumps(_sequential([_input("x", (6, 2), functional=False)]))


def _weights_h5_bytes():
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_group("layers")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"config.json": _CONFIG, "model.weights.h5": b"\x89HDF\r\n garbage"}, "model.weights.h5"),
        ({"model.weights.h5": b"", "metadata.json": "{}"}, "config.json"),
        ({"config.json": "{not json", "model.weights.h5": b""}, "not valid JSON"),
        ({"config.json": "[1, 2]", "model.weights.h5": b""}, "not a tf_keras model config"),
    ],
)
def test_unreadable_keras_file_raises_value_error_naming_it(tmp_path, files, match):
    path = _keras_zip(tmp_path / "broken.keras", files)
    with pytest.raises(ValueError, match=match) as info:
        fk.load_weights(path)
    assert "broken.keras" in str(info.value)
    if "config.json" not in files or files["config.json"] != _CONFIG:
        with pytest.raises(ValueError, match=match) as info:
            fk.read_model_config(path)
        assert "broken.keras" in str(info.value)


def test_keras_file_with_readable_weights_loads(tmp_path):
    path = _keras_zip(
        tmp_path / "ok.keras", {"config.json": _CONFIG, "model.weights.h5": _weights_h5_bytes()}
    )
    assert fk.load_weights(path) == {}


def test_unreadable_h5_file_raises_value_error_naming_it(tmp_path):
    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = "{not json"
    for read in (fk.load_weights, fk.read_model_config):
        with pytest.raises(ValueError, match=r"broken\.h5.*not valid JSON"):
            read(path)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ValueError, match=r"truncated\.h5"):
        fk.load_weights(truncated)
    with pytest.raises(FileNotFoundError, match="missing"):
        fk.load_weights(tmp_path / "missing.h5")


def test_unreadable_weights_dataset_names_the_layer(tmp_path):
    lc = _lc("lc", 1, 2, 2, implementation=1)
    model = _sequential([_input("x", (5, 2), functional=False), lc])
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(model)
        group = f.create_group("model_weights/lc")
        group.attrs["weight_names"] = [b"lc/kernel:0", b"lc/bias:0"]
        group.create_dataset("lc/kernel:0", data=np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"m\.h5: cannot read the weights of layer 'lc'"):
        fk.load_weights(path)


# from_keras argument checks (issue 24, items 4 and 14) ------------------------


def _config(**overrides):
    config = {"filters": 2, "kernel_size": [3], "strides": [1], "padding": "valid", "implementation": 1}
    return {**config, **overrides}


def _weights(rng, dtype=np.float32):
    return [rng.standard_normal((4, 6, 2)).astype(dtype), rng.standard_normal((4, 2)).astype(dtype)]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"filters": None}, r"filters must be a positive int, got None"),
        ({"filters": 2.5}, r"filters must be a positive int, got 2\.5"),
        ({"kernel_size": [-3]}, r"kernel_size must be >= 1 .*got \(-3,\)"),
        ({"kernel_size": [-3, 3]}, r"kernel_size must be >= 1 .*got \(-3, 3\)"),
        ({"kernel_size": [2.7]}, r"kernel_size must be an int or a sequence of 1 ints, got \[2\.7\]"),
        ({"kernel_size": "3"}, r"kernel_size must be a list"),
        ({"strides": [1.5]}, r"strides must be an int or a sequence of 1 ints, got \[1\.5\]"),
        ({"use_bias": "no"}, r"use_bias must be true or false, got 'no'"),
        ({"dtype": "float128"}, r"dtype: 'float128' is not a dtype .*expected one of"),
        ({"dtype": "int8"}, r"dtype: 'int8' is not a dtype"),
        ({"dtype": "complex64"}, r"dtype: 'complex64' is not a dtype"),
        ({"dtype": {"class_name": "Policy", "config": {"name": "mixed_int8"}}}, r"dtype: 'int8'"),
    ],
)
def test_from_keras_rejects_bad_config_values(overrides, match):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=match):
        fk.from_keras(_config(**overrides), _weights(rng), (6, 2))


def test_from_keras_rejects_bad_input_shape():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"input_shape"):
        fk.from_keras(_config(), _weights(rng), (6.0, 2))
    with pytest.raises(ValueError, match=r"input_shape"):
        fk.from_keras(_config(), _weights(rng), 6)


def test_from_keras_rejects_a_json_string():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"got str .*json\.loads"):
        fk.from_keras(json.dumps(_config()), _weights(rng), (6, 2))
    with pytest.raises(ValueError, match=r"config\['config'\] must be a dict"):
        fk.from_keras(
            {"class_name": "LocallyConnected1D", "config": json.dumps(_config())}, _weights(rng), (6, 2)
        )


def test_float64_keras_layer_without_x64_raises_with_the_fix():
    assert not jax.config.read("jax_enable_x64")
    rng = np.random.default_rng(0)
    weights = _weights(rng, np.float64)
    config = _config(dtype="float64")
    with pytest.raises(ValueError, match=r"float64.*jax_enable_x64.*param_dtype='float32'"):
        fk.from_keras(config, weights, (6, 2))
    with pytest.raises(ValueError, match=r"jax_enable_x64"):
        fk.module_from_keras(config, (6, 2))
    module, variables = fk.from_keras(config, weights, (6, 2), param_dtype="float32")
    assert module.param_dtype == jnp.float32 and module.dtype is None
    assert variables["params"]["kernel"].dtype == jnp.float32
    np.testing.assert_array_equal(variables["params"]["bias"], weights[1].astype(np.float32))
    with pytest.raises(ValueError, match=r"param_dtype: 'int8'"):
        fk.from_keras(config, weights, (6, 2), param_dtype="int8")


def test_float64_keras_layer_with_x64_keeps_float64():
    rng = np.random.default_rng(0)
    weights = _weights(rng, np.float64)
    with jax.enable_x64(True):
        module, variables = fk.from_keras(_config(dtype="float64"), weights, (6, 2))
        assert module.param_dtype == jnp.float64
        assert variables["params"]["kernel"].dtype == jnp.float64
        np.testing.assert_array_equal(variables["params"]["bias"], weights[1])
        x = rng.standard_normal((2, 6, 2))
        kernel = np.asarray(variables["params"]["kernel"])
        expected = reference_locally_connected(x, kernel, weights[1])
        np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-12, atol=1e-12)


# to_keras and to_keras_config (issue 24, item 14) ------------------------------


def _linen_and_variables(**kwargs):
    module = flax_local.LocallyConnected2D(3, (2, 2), kernel_regularizer="l2", activation="tanh", **kwargs)
    x = jax.random.normal(jax.random.key(0), (1, 5, 4, 2))
    return module, module.init(jax.random.key(1), x)


def test_to_keras_unboxes_logically_partitioned_variables():
    module, boxed = _linen_and_variables(logical_partitioning=True)
    plain = flax_local.LocallyConnected2D(3, (2, 2), kernel_regularizer="l2", activation="tanh")
    unboxed = {"params": {k: v.unbox() for k, v in boxed["params"].items()}}
    for implementation in (1, 2, 3):
        got = fk.to_keras(module, boxed, (5, 4, 2), implementation)
        want = fk.to_keras(plain, unboxed, (5, 4, 2), implementation)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("variables", "match"),
    [
        ({"params": {"kernel": np.zeros((4, 3, 2, 2, 2, 3))}}, r"no 'bias' \(got \['kernel'\]\)"),
        ({"params": {"bias": np.zeros((4, 3, 3))}}, r"no 'kernel' \(got \['bias'\]\)"),
        ({}, r"no 'kernel'"),
        (None, r"no 'kernel' \(got NoneType\)"),
    ],
)
def test_to_keras_missing_weights_raise(variables, match):
    module = flax_local.LocallyConnected2D(3, (2, 2))
    with pytest.raises(ValueError, match=match):
        fk.to_keras(module, variables, (5, 4, 2))


def test_to_keras_rejects_other_modules():
    with pytest.raises(ValueError, match=r"module must be a flax_local LocallyConnected1D/2D.*Linear"):
        fk.to_keras_config(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), (5, 2))


def test_nnx_modules_export_like_linen():
    linen_module, variables = _linen_and_variables()
    model = local_nnx.LocallyConnected2D(
        2, 3, (2, 2), input_shape=(5, 4), kernel_regularizer="l2", activation="tanh", rngs=nnx.Rngs(0)
    )
    model.kernel.set_value(variables["params"]["kernel"])
    model.bias.set_value(variables["params"]["bias"])
    for implementation in (1, 2, 3):
        want_config = fk.to_keras_config(linen_module, (5, 4, 2), implementation)
        got_config = fk.to_keras_config(model, (5, 4, 2), implementation)
        for key in ("kernel_initializer", "bias_initializer"):  # NNX modules keep no initializers
            want_config.pop(key)
        assert got_config == want_config
        want = fk.to_keras(linen_module, variables, (5, 4, 2), implementation)
        for got in (
            fk.to_keras(model, nnx.state(model), (5, 4, 2), implementation),
            fk.to_keras(model, None, (5, 4, 2), implementation),
        ):
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
