"""The README's main example, reduced: the locally-connected model beats the conv baseline.

Two seeds of a few epochs each; the margin it asserts is the example's point, so this
test fails if a change to the layer (or to the example) loses it. Skipped unless the
``examples`` extra (matplotlib, tqdm) is installed.
"""

import importlib.util
import pathlib
import re
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "climate_grid.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def climate_grid():
    # Loaded from its path: examples/ is a folder of scripts, not an installed package.
    spec = importlib.util.spec_from_file_location("examples_climate_grid", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax modules are dataclasses, which look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _run(module, argv):
    # optax.adam's bias correction needs jax's standard promotion rules (conftest makes them strict).
    with jax.numpy_dtype_promotion("standard"):
        return module.main(argv)


def _scores(text):
    found = dict(re.findall(r"(locally-connected|conv baseline)\s+test R2: ([-0-9.]+)", text))
    assert set(found) == {"locally-connected", "conv baseline"}, text
    return float(found["locally-connected"]), float(found["conv baseline"])


def test_local_beats_conv_then_restores(climate_grid, tmp_path, capsys):
    out = tmp_path / "climate"
    result = _run(climate_grid, ["--seeds", "2", "--epochs", "8", "--train-size", "512", "--out", str(out)])
    printed = capsys.readouterr().out
    local, conv = _scores(printed)
    assert len(result["scores"]["local"]) == len(result["scores"]["conv"]) == 2
    assert (local, conv) == (
        round(float(np.mean(result["scores"]["local"])), 3),
        round(float(np.mean(result["scores"]["conv"])), 3),
    )
    # The point of the example: every local run beats every conv run by a clear margin.
    assert min(result["scores"]["local"]) > max(result["scores"]["conv"]) + 0.2, result["scores"]
    assert min(result["scores"]["local"]) > 0.6  # after 8 short epochs; 0.98 with the defaults

    assert len(result["figures"]) == 2
    for path in map(pathlib.Path, result["figures"]):
        assert path.parent == out and str(path) in printed
        assert path.read_bytes()[:8] == PNG_MAGIC
    checkpoint = pathlib.Path(result["checkpoint"])
    assert checkpoint.is_file() and str(checkpoint) in printed

    # --restore trains nothing and scores the first seed's saved params on the same test set.
    restored = _run(climate_grid, ["--restore", "--out", str(out)])
    assert "restored" in capsys.readouterr().out
    np.testing.assert_allclose(restored["scores"]["local"], result["scores"]["local"][:1], rtol=1e-5)
    np.testing.assert_allclose(restored["scores"]["conv"], result["scores"]["conv"][:1], rtol=1e-5)


def test_world_is_fixed_and_targets_follow_it(climate_grid):
    first, second = climate_grid.make_world(), climate_grid.make_world()
    np.testing.assert_array_equal(first["kernel"], second["kernel"])
    # Cells differ: the true stencils are not one shared kernel.
    assert np.std(first["kernel"], axis=(0, 1)).min() > 0.05
    x, y = climate_grid.sample(first, 4, seed=1)
    assert x.shape == (4, 16, 16, 2) and y.shape == (4, 16, 16) and y.dtype == np.float32


def test_restore_without_checkpoint_fails_clearly(climate_grid, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.msgpack"):
        _run(climate_grid, ["--restore", "--out", str(tmp_path)])
