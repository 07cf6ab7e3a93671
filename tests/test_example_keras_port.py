"""examples/keras_port.py runs end to end where tf_keras is installed (the keras-live extra)."""

import importlib.util
import pathlib

import jax
import pytest

pytest.importorskip("tf_keras")
pytest.importorskip("h5py")

_PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "keras_port.py"


def test_keras_port_agrees_with_keras_and_fine_tunes(tmp_path):
    spec = importlib.util.spec_from_file_location("keras_port", _PATH)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # User code: run under jax's default promotion rules (optax's Adam needs them).
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        result = example.main(["--steps", "20", "--out", str(tmp_path)])
    assert (tmp_path / "model.keras").exists()
    assert result["difference"] < 1e-4
    assert result["loss_after"] < result["loss_before"]
