"""The digits example end to end: 1 epoch, both accuracies, figures, checkpoint round trip.

Skipped unless the ``examples`` extra (scikit-learn, matplotlib, tqdm) is installed.
"""

import importlib.util
import pathlib
import re
import sys

import jax
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(module, argv):
    # tests/conftest.py makes implicit dtype promotion an error for the whole run; optax.adam's
    # bias correction (a Python float to the power of an int32 step count) needs the standard rules.
    with jax.numpy_dtype_promotion("standard"):
        return module.main(argv)


@pytest.fixture(scope="module")
def train_digits():
    # Loaded from its path: examples/ is a folder of scripts, not an installed package.
    spec = importlib.util.spec_from_file_location("examples_train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax modules are dataclasses, which look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _accuracies(text):
    local = re.search(r"locally-connected test accuracy: ([0-9.]+)", text)
    conv = re.search(r"conv baseline\s+test accuracy: ([0-9.]+)", text)
    assert local and conv, text
    return float(local.group(1)), float(conv.group(1))


def test_train_then_restore(train_digits, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "digits"
    result = _run(train_digits, ["--epochs", "1", "--batch-size", "128", "--seed", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    local, conv = _accuracies(printed)
    assert (local, conv) == (round(result["local_accuracy"], 4), round(result["conv_accuracy"], 4))
    # One epoch of 11 steps already beats chance (0.1) by far.
    assert local > 0.3 and conv > 0.3

    assert len(result["figures"]) == 2
    for path in map(pathlib.Path, result["figures"]):
        assert path.parent == out and str(path) in printed
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    checkpoint = pathlib.Path(result["checkpoint"])
    assert checkpoint.is_file() and str(checkpoint) in printed

    # --restore trains nothing and evaluates the saved params on the same split (its seed is saved).
    restored = _run(train_digits, ["--restore", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "restored" in printed and "trained with --seed 3" in printed
    assert restored["local_accuracy"] == result["local_accuracy"]
    assert restored["conv_accuracy"] == result["conv_accuracy"]
    assert _accuracies(printed) == (local, conv)


def test_restore_without_checkpoint_fails_clearly(train_digits, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.msgpack"):
        _run(train_digits, ["--restore", "--out", str(tmp_path)])
