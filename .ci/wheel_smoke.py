"""Smoke test of an installed flax_local wheel, run by .ci/run outside the checkout with no compiler on PATH.

Usage: python wheel_smoke.py native|pure REFERENCE_PY

``native``: a platform wheel; its kernels load (a fast vector path on an x86
CPU with AVX2) and ``"native"`` equals the float64 reference. ``pure``: the
wheel built where no compiler works; it installs, ``"auto"`` warns once and
uses ``"patches"``, which equals the reference, and ``"native"`` says why not.
"""

import importlib.util
import os
import pathlib
import shutil
import sys
import warnings

import numpy as np

mode, reference_path = sys.argv[1], sys.argv[2]
for tool in ("c++", "g++", "gcc", "cc", "clang", "clang++", "cmake"):
    assert shutil.which(tool) is None, f"{tool} is on PATH: this check must run without a compiler"

import jax.numpy as jnp  # noqa: E402

import flax_local  # noqa: E402
from flax_local.functional import (  # noqa: E402
    NativeUnavailableError,
    choose_implementation,
    geometry,
    locally_connected,
)

package = pathlib.Path(flax_local.__file__).resolve().parent
assert "site-packages" in package.parts, f"flax_local imported from {package}, not the installed wheel"
spec = importlib.util.spec_from_file_location("reference", reference_path)
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)

rng = np.random.default_rng(0)
x = rng.normal(size=(3, 10, 9, 4)).astype(np.float32)
kernel = rng.normal(size=(8, 4, 3, 3, 4, 6)).astype(np.float32)
bias = rng.normal(size=(8, 4, 6)).astype(np.float32)
want = reference.reference_locally_connected(x, kernel, bias, strides=(1, 2), padding="valid")
kernels = flax_local.native_kernels()
print(kernels)

if mode == "native":
    assert kernels.path is not None, kernels.reason
    assert pathlib.Path(kernels.library).parent == package / "_src", kernels.library
    cpu = pathlib.Path("/proc/cpuinfo")
    if os.uname().machine == "x86_64" and cpu.exists() and {"avx2", "fma"} <= set(cpu.read_text().split()):
        assert kernels.path in ("avx512", "avx2"), kernels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = locally_connected(x, kernel, bias, strides=(1, 2), implementation="native")
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    print(f"native ({kernels.path}) equals the float64 reference")
else:
    assert mode == "pure", mode
    assert kernels.path is None and "installed without its native CPU kernels" in kernels.reason, kernels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            chosen = choose_implementation(geometry((28, 28), 3), 16, 32, jnp.float32)
            assert chosen == "patches", chosen
    categories = [w.category for w in caught]
    assert categories == [flax_local.NativeKernelsUnavailableWarning], caught
    try:
        locally_connected(x, kernel, bias, strides=(1, 2), implementation="native")
    except NativeUnavailableError as error:
        assert "C++17 compiler and CMake" in str(error), error
    else:
        raise AssertionError("implementation='native' ran without kernels")
    got = locally_connected(x, kernel, bias, strides=(1, 2), implementation="patches", precision="highest")
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    print("pure-Python install: 'auto' warned once and 'patches' equals the float64 reference")
