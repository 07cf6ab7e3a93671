"""flax_local.keras.load_weights on tiny tf_keras model files (no TensorFlow needed).

The files are written by tests/keras_golden/generate.py; ``files.npz`` holds a
random input and tf_keras's output for every LocallyConnected layer in them.
"""

from __future__ import annotations

import os
import zipfile

import jax
import numpy as np
import pytest

import flax_local
from flax_local import keras as fk

pytest.importorskip("h5py")

GOLDEN = os.path.join(os.path.dirname(__file__), "keras_golden")
TOL = dict(rtol=1e-5, atol=1e-5)

with np.load(os.path.join(GOLDEN, "files.npz")) as _data:
    EXPECTED = {key: _data[key] for key in _data.files}

LAYER_KEYS = {
    "sequential": ["lc_first", "lc_second", "lc_third"],
    "functional": ["lc_a", "block/lc_b", "lc_c"],
}
# The .h5 format records the input shape of a model's first layer only; the
# others follow from the model graph (or are given: the override must agree).
H5_OVERRIDES = {"sequential": {"lc_second": (6, 4)}, "functional": {}}


def _path(name: str) -> str:
    return os.path.join(GOLDEN, name)


def _check(name: str, layers: dict) -> None:
    assert list(layers) == LAYER_KEYS[name]
    for key, (module, variables) in layers.items():
        x = EXPECTED[f"{name}__{key}__input"]
        y = EXPECTED[f"{name}__{key}__output"]
        assert x.shape[1:] == _input_shape(module, variables, x)
        np.testing.assert_allclose(jax.jit(module.apply)(variables, x), y, **TOL, err_msg=key)


def _input_shape(module, variables, x):
    # The module accepts exactly the input shape it was converted for.
    jax.eval_shape(module.apply, variables, x)
    return x.shape[1:]


@pytest.mark.parametrize("name", ["sequential", "functional"])
def test_load_keras_format(name):
    _check(name, fk.load_weights(_path(f"{name}.keras")))


@pytest.mark.parametrize("name", ["sequential", "functional"])
def test_load_h5_format(name):
    _check(name, fk.load_weights(_path(f"{name}.h5"), input_shapes=H5_OVERRIDES[name]))


@pytest.mark.parametrize("name", ["sequential", "functional"])
def test_h5_input_shapes_follow_the_model_graph(name):
    # lc_second (implementation 3: a flat kernel) records no input shape; it
    # is lc_first's output shape, (6, 4), which its config determines.
    _check(name, fk.load_weights(_path(f"{name}.h5")))


def test_input_shape_sources_agree():
    # lc_third (1D, implementation 1, stride 1) and lc_c (implementation 2)
    # have their input shapes inferred from their weights in the .h5 files;
    # the .keras files record them in build_config.
    for name, overrides in H5_OVERRIDES.items():
        from_h5 = fk.load_weights(_path(f"{name}.h5"), input_shapes=overrides)
        from_keras = fk.load_weights(_path(f"{name}.keras"))
        for key, (module, variables) in from_h5.items():
            other_module, other_variables = from_keras[key]
            assert module == other_module
            for param, value in variables["params"].items():
                np.testing.assert_array_equal(value, other_variables["params"][param])


def test_converted_modules_keep_the_config():
    layers = fk.load_weights(_path("functional.keras"))
    module, variables = layers["lc_a"]
    assert isinstance(module, flax_local.LocallyConnected2D)
    assert module.data_format == "channels_first"
    assert module.implementation == "dense"
    assert module.padding == ((1, 0), (1, 1))  # Keras "same" with kernel (2, 3) on 4x4
    assert module.kernel_regularizer == flax_local.regularizers.l2(0.009999999776482582)
    module, variables = fk.load_weights(_path("sequential.keras"))["lc_second"]
    assert set(variables["params"]) == {"kernel"}
    assert fk.load_weights(_path("sequential.keras"), implementation="patches")["lc_first"][
        0
    ].implementation == ("patches")


def test_read_model_config():
    config = fk.read_model_config(_path("functional.h5"))
    assert config["class_name"] == "Functional"
    assert fk.read_model_config(_path("functional.keras"))["config"]["name"] == "func"


def test_weights_only_file_raises():
    with pytest.raises(ValueError, match="save_weights"):
        fk.load_weights(_path("weights_only.weights.h5"))


def test_unknown_override_raises():
    with pytest.raises(ValueError, match="not_a_layer"):
        fk.load_weights(_path("sequential.keras"), input_shapes={"not_a_layer": (3, 3)})


def test_not_a_model_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="neither"):
        fk.load_weights(text)
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="config.json"):
        fk.load_weights(archive)
