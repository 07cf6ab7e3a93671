"""The package's metadata tells the truth: license, floors, version, extras, wheel configuration.

The builds themselves (platform wheel, pure-Python wheel without a compiler,
the floors installed exactly) run in CI: ``.ci/packaging``.
"""

from __future__ import annotations

import pathlib
import re
import tomllib

import pytest

import flax_local
from flax_local._src import native_build

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"

pytestmark = pytest.mark.skipif(not PYPROJECT.exists(), reason="needs the source tree (pyproject.toml)")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def test_license_is_apache_2_in_full_and_declared_by_spdx(project):
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS" in text
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]


def _floors(project) -> dict[str, str]:
    floors = {}
    for requirement in project["project"]["dependencies"]:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
        floors[name] = version
    return floors


def test_ci_installs_exactly_the_declared_floors(project):
    """``.ci/floors.txt`` pins every runtime dependency at pyproject's floor, so CI proves the floors work."""
    pins = {}
    for line in (REPO / ".ci" / "floors.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    assert {name: _release(v) for name, v in pins.items()} == {
        name: _release(v) for name, v in _floors(project).items()
    }


def _release(version: str) -> tuple[int, ...]:
    """``"2.0.0"`` and ``"2.0"`` alike: the numbers without trailing zeros."""
    parts = [int(part) for part in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_python_floor_matches_ruff_and_classifiers(project):
    floor = re.fullmatch(r">=3\.(\d+)", project["project"]["requires-python"]).group(1)
    assert project["tool"]["ruff"]["target-version"] == f"py3{floor}"
    versions = [
        c for c in project["project"]["classifiers"] if c.startswith("Programming Language :: Python :: 3.")
    ]
    assert versions[0] == f"Programming Language :: Python :: 3.{floor}"


def test_version_has_one_source(project):
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    version = project["tool"]["scikit-build"]["metadata"]["version"]
    assert version == {"provider": "scikit_build_core.metadata.regex", "input": "flax_local/__init__.py"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", flax_local.__version__)


def test_keras_extras_are_split(project):
    """h5py alone reads Keras files; TensorFlow is needed only for the golden files and live tests."""
    extras = project["project"]["optional-dependencies"]
    assert extras["keras"] == ["h5py"]
    assert {"tensorflow-cpu", "tf_keras", "h5py"} <= set(extras["keras-live"])
    assert {"test", "examples"} <= set(extras)


def test_wheels_are_portable(project):
    """cibuildwheel builds manylinux x86_64/aarch64 and macOS arm64 wheels, never with -march=native."""
    wheels = project["tool"]["cibuildwheel"]
    assert set(wheels["linux"]["archs"]) == {"x86_64", "aarch64"}
    assert wheels["macos"]["archs"] == ["arm64"]
    assert wheels["linux"]["environment"]["FLAX_LOCAL_MARCH_NATIVE"] == "0"
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    flagged = [line for line in cmake.splitlines() if "flax_local_copy(" in line and "-march" in line]
    assert flagged == ["  flax_local_copy(native -march=native)"]


def test_nothing_is_compiled_at_run_time():
    source = pathlib.Path(native_build.__file__).read_text(encoding="utf-8")
    assert "subprocess" not in source and "CXX" not in source and ".cache" not in source
