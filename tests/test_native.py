"""The ``"native"`` implementation: its kernels, derivatives, batching and build.

Forward values are also checked against the float64 reference in
test_functional.py (``"native"`` is one of its implementations). Here: shapes
that exercise every tile size and tail of the C++ kernels, every derivative
rule (first and second order, forward and reverse mode) against the float64
derivatives of ``"patches"`` (themselves checked by finite differences), every
batching rule, the gather-and-einsum lowering used off CPU, concurrent calls,
and loading the installed kernels: choosing a copy, refusing a damaged
library, running without a home directory.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_local._src import native, native_build
from flax_local._src.geometry import make_geometry
from flax_local.functional import locally_connected
from tests.reference import reference_locally_connected, resolve_padding

pytestmark = pytest.mark.skipif(
    os.environ.get("FLAX_LOCAL_NATIVE", "").strip().lower() in ("0", "false", "off", "no"),
    reason="native kernels disabled by FLAX_LOCAL_NATIVE",
)

HIGHEST = jax.lax.Precision.HIGHEST
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _on_the_cpu_device():
    """Runs every test here on the CPU device, where the kernels are.

    On a machine whose default device is an accelerator the primitives lower
    to their reference formulation instead (tests/test_functional.py runs the
    ``"native"`` layer there); these tests are about the C++ kernels.
    """
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def test_kernels_are_installed_on_this_machine():
    """CI installs with a C++ compiler: the native path must really run there, not be skipped."""
    native_build.ensure_loaded()
    assert native_build.is_available()


# (input_spatial, kernel_size, strides, dilation, padding, batch, channels, filters):
# filters cover 4-, 3-, 2-, 1-vector tiles and tails (1, 17, 70, 64 + 48); batch
# covers partial row tiles and, in the input gradient's batch-minor layout,
# partial and multiple vectors of 16 (AVX-512) or 8 (AVX2) lanes (1, 5, 17, 40, 70).
SHAPES = [
    ((9, 7), (3, 3), (1, 1), (1, 1), "same", 5, 3, 20),
    ((12,), (3,), (2,), (2,), "causal", 17, 4, 70),
    ((5, 6, 4), (2, 2, 2), (1, 1, 1), (1, 1, 1), "valid", 2, 2, 5),
    ((10, 10), (3, 3), (1, 1), (2, 2), "valid", 40, 16, 32),
    ((4, 4), (3, 3), (1, 1), (1, 1), "same", 1, 1, 1),
    ((11,), (5,), (1,), (1,), ((3, -1),), 70, 3, 112),
    ((6, 5), (2, 3), (2, 1), (1, 2), "same", 3, 7, 17),
]


def _arrays(shape, seed, dtype=np.float32):
    input_spatial, kernel_size, strides, dilation, padding, batch, channels, filters = shape
    rng = np.random.default_rng(seed)
    geometry = make_geometry(input_spatial, kernel_size, strides, _pairs(shape), dilation)
    x = rng.normal(size=(batch, *input_spatial, channels)).astype(dtype)
    kernel = rng.normal(size=(*geometry.output_spatial, *kernel_size, channels, filters)).astype(dtype)
    bias = rng.normal(size=(*geometry.output_spatial, filters)).astype(dtype)
    return x, kernel, bias


def _pairs(shape):
    input_spatial, kernel_size, strides, dilation, padding = shape[:5]
    return resolve_padding(padding, input_spatial, kernel_size, strides, dilation)


def _layer(shape, implementation):
    _, _, strides, dilation, padding = shape[:5]
    return functools.partial(
        locally_connected,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        implementation=implementation,
        precision=HIGHEST,
    )


def _loss(layer):
    return lambda x, kernel, bias: jnp.sum(jnp.sin(layer(x, kernel, bias)))


def _close(actual, expected, rtol=2e-5):
    """float32 results against float64 ones, relative to the largest entry."""
    expected = np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_float64(shape):
    x, kernel, bias = _arrays(shape, 0)
    _, _, strides, dilation, padding = shape[:5]
    y = jax.jit(_layer(shape, "native"))(x, kernel, bias)
    _close(
        y,
        reference_locally_connected(x, kernel, bias, strides=strides, padding=padding, dilation=dilation),
    )
    grads = jax.jit(jax.grad(_loss(_layer(shape, "native")), argnums=(0, 1, 2)))(x, kernel, bias)
    with jax.enable_x64(True):
        args64 = [jnp.asarray(a, jnp.float64) for a in (x, kernel, bias)]
        expected = jax.grad(_loss(_layer(shape, "patches")), argnums=(0, 1, 2))(*args64)
    for name, got, want in zip(("x", "kernel", "bias"), grads, expected):
        assert got.dtype == jnp.float32, name
        _close(got, want)


@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[-1:], ids=str)
def test_forward_mode_and_second_order_match_float64(shape):
    """jvp, and jvp of grad (Hessian-vector products): every rule composed with every other."""
    x, kernel, bias = _arrays(shape, 1)
    rng = np.random.default_rng(2)
    tangents = tuple(rng.normal(size=a.shape).astype(np.float32) for a in (x, kernel, bias))

    def both(layer, primals, tangents):
        jvp = jax.jvp(layer, primals, tangents)[1]
        hvp = jax.jvp(jax.grad(_loss(layer), argnums=(0, 1, 2)), primals, tangents)[1]
        return jvp, hvp

    got = jax.jit(functools.partial(both, _layer(shape, "native")))((x, kernel, bias), tangents)
    with jax.enable_x64(True):
        cast = [jnp.asarray(a, jnp.float64) for a in (x, kernel, bias)]
        want = both(
            _layer(shape, "patches"), tuple(cast), tuple(jnp.asarray(t, jnp.float64) for t in tangents)
        )
    _close(got[0], want[0])
    for got_part, want_part in zip(got[1], want[1]):
        _close(got_part, want_part, rtol=1e-4)


def test_only_the_needed_kernels_run():
    """A gradient w.r.t. the parameters alone never runs the input-gradient kernel."""
    shape = SHAPES[0]
    x, kernel, bias = _arrays(shape, 3)
    layer = _layer(shape, "native")
    text = jax.jit(jax.grad(_loss(layer), argnums=(1, 2))).lower(x, kernel, bias).compile().as_text()
    assert "flax_local_kernel_grad" in text and "flax_local_input_grad" not in text
    text = jax.jit(jax.grad(_loss(layer), argnums=0)).lower(x, kernel, bias).compile().as_text()
    assert "flax_local_input_grad" in text and "flax_local_kernel_grad" not in text


# Enough work per group for the kernels to split it between threads (each
# group's input gradient then sums two bands of the image).
SPLIT_SHAPE = ((10, 10), (3, 3), (1, 1), (1, 1), "valid", 8, 8, 16)


@pytest.mark.parametrize("shape", [SHAPES[6], SPLIT_SHAPE], ids=["small", "split"])
def test_batching_rules(shape):
    """vmap over inputs, over parameters, over both, nested, and of gradients."""
    x, kernel, bias = _arrays(shape, 4)
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(3, *x.shape)).astype(np.float32)
    kernels = rng.normal(size=(2, *kernel.shape)).astype(np.float32)
    biases = rng.normal(size=(2, *bias.shape)).astype(np.float32)

    def programs(layer):
        loss = _loss(layer)
        per_example = jax.vmap(lambda xi: jax.grad(loss, argnums=(1, 2))(xi[None], kernel, bias))(x)
        return {
            "inputs": jax.vmap(layer, in_axes=(0, None, None))(xs, kernel, bias),
            "parameters": jax.vmap(layer, in_axes=(None, 0, 0))(x, kernels, biases),
            "both": jax.vmap(layer, in_axes=(0, 0, 0))(xs[:2], kernels, biases),
            "nested": jax.vmap(jax.vmap(layer, in_axes=(0, None, None)), in_axes=(None, 0, 0))(
                xs, kernels, biases
            ),
            "per-example gradients": per_example,
            "ensemble gradients": jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), in_axes=(None, 0, 0))(
                x, kernels, biases
            ),
            "per-example input gradients": jax.vmap(jax.grad(loss), in_axes=(0, None, None))(
                xs, kernel, bias
            ),
        }

    got = jax.jit(lambda: programs(_layer(shape, "native")))()
    with jax.enable_x64(True):
        want = programs(_layer(shape, "patches"))
    for name in want:
        for got_leaf, want_leaf in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
            assert got_leaf.shape == want_leaf.shape, name
            _close(got_leaf, want_leaf, rtol=1e-4)


def test_reference_lowering_matches_the_kernels():
    """The gather-and-einsum formulation other platforms lower to computes the same products."""
    shape = SHAPES[1]
    x, kernel, bias = _arrays(shape, 6)
    geometry = make_geometry(shape[0], shape[1], shape[2], _pairs(shape), shape[3])
    batch, channels, filters = x.shape[0], x.shape[-1], kernel.shape[-1]
    x4 = jnp.asarray(x.reshape(1, batch, -1, channels))
    w4 = jnp.asarray(kernel.reshape(1, geometry.num_positions, -1, filters))
    b3 = jnp.asarray(bias.reshape(1, geometry.num_positions, filters))
    dy = jnp.asarray(
        np.random.default_rng(7).normal(size=(1, batch, geometry.num_positions, filters)), jnp.float32
    )
    pairs = [
        (
            native.forward(x4, w4, b3, geometry),
            native._forward_reference(x4, w4, b3, geometry=geometry, has_bias=True),
        ),
        (native.input_grad(dy, w4, geometry), native._input_grad_reference(dy, w4, geometry=geometry)),
        *zip(
            native.kernel_grad(x4, dy, geometry),
            native._kernel_grad_reference(x4, dy, geometry=geometry, weight_dtype=jnp.float32),
        ),
    ]
    w16 = w4.astype(jnp.bfloat16)  # bfloat16 weights, as the kernels take them
    pairs += [
        (
            native.forward(x4, w16, None, geometry),
            native._forward_reference(x4, w16, geometry=geometry, has_bias=False),
        ),
        (native.input_grad(dy, w16, geometry), native._input_grad_reference(dy, w16, geometry=geometry)),
    ]
    dw16 = native._kernel_grad_reference(x4, dy, geometry=geometry, weight_dtype=jnp.bfloat16)[0]
    assert dw16.dtype == jnp.bfloat16
    _close(
        dw16.astype(jnp.float32),
        native.kernel_grad(x4, dy, geometry, jnp.bfloat16)[0].astype(jnp.float32),
        rtol=1e-2,
    )
    for got, want in pairs:
        _close(got, want)
    empty = native._forward_reference(x4[:, :0], w4, b3, geometry=geometry, has_bias=True)
    assert empty.shape == (1, 0, geometry.num_positions, filters)
    # And the lowering for an accelerator uses it: no custom call in the module.
    lowered = jax.jit(lambda x, w, b: native.forward(x, w, b, geometry)).trace(x4, w4, b3)
    text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert "flax_local_forward" not in text and "custom_call" not in text


def test_half_precision_and_float64():
    shape = SHAPES[3]
    x, kernel, bias = _arrays(shape, 8)
    layer = _layer(shape, "native")
    _, _, strides, dilation, padding = shape[:5]
    for dtype, rtol in ((jnp.bfloat16, 2e-2), (jnp.float16, 2e-3)):
        args = [jnp.asarray(a, dtype) for a in (x, kernel, bias)]
        y = layer(*args)
        assert y.dtype == dtype
        exact = reference_locally_connected(
            *(np.asarray(a, np.float64) for a in args), strides=strides, padding=padding, dilation=dilation
        )
        _close(y, exact, rtol=rtol)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        with pytest.raises(ValueError, match=r"implementation='native'.*got float64.*'patches'"):
            layer(x64, jnp.asarray(kernel, jnp.float64), jnp.asarray(bias, jnp.float64))


@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[5]], ids=["split", "tails"])
def test_bfloat16_weights_are_read_and_written_as_bfloat16(shape):
    """bfloat16 weights: the same float32 arithmetic, and the kernel gradient rounded as XLA rounds.

    Each product with bfloat16 weights must equal the float32 product on the
    widened weights bit for bit (dw: then rounded to nearest even), including
    ties, infinities and NaN; and a bfloat16 layer's training step passes its
    kernel to the kernels without a float32 copy.
    """
    native_build.ensure_loaded()
    x, kernel, bias = _arrays(shape, 11)
    geometry = make_geometry(shape[0], shape[1], shape[2], _pairs(shape), shape[3])
    batch, channels, filters = x.shape[0], x.shape[-1], kernel.shape[-1]
    positions, rows = geometry.num_positions, int(np.prod(geometry.input_spatial))
    rng = np.random.default_rng(12)
    x4 = jnp.asarray(x.reshape(1, batch, rows, channels))
    w16 = jnp.asarray(kernel.reshape(1, positions, -1, filters), jnp.bfloat16)
    dy = jnp.asarray(rng.normal(size=(1, batch, positions, filters)), jnp.float32)
    dy = dy.at[0, 0, 0, :2].set(jnp.asarray([np.inf, np.nan], jnp.float32))  # dw gets inf and NaN
    y16 = native.forward(x4, w16, None, geometry)
    y32 = native.forward(x4, w16.astype(jnp.float32), None, geometry)
    np.testing.assert_array_equal(y16, y32)
    dx16 = native.input_grad(dy, w16, geometry)
    np.testing.assert_array_equal(dx16, native.input_grad(dy, w16.astype(jnp.float32), geometry))
    dw16, db16 = native.kernel_grad(x4, dy, geometry, jnp.bfloat16)
    dw32, db32 = native.kernel_grad(x4, dy, geometry, jnp.float32)
    assert dw16.dtype == jnp.bfloat16 and db16.dtype == jnp.float32
    assert np.isnan(np.asarray(dw32)).any() and np.isinf(np.asarray(dw32)).any()
    np.testing.assert_array_equal(
        np.asarray(dw16, np.float32), np.asarray(dw32.astype(jnp.bfloat16), np.float32)
    )
    np.testing.assert_array_equal(db16, db32)
    # Ties: with x = 1 in example 0 and 0 elsewhere, dw[p, k] = dy[0, p] where tap k is inside.
    ties = jnp.asarray([1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8), 1 + 2.0**-8 + 2.0**-20], jnp.float32)
    rounded = np.asarray([1.0, 1 + 2.0**-6, -1.0, 1 + 2.0**-7], np.float32)
    dy_ties = jnp.zeros_like(dy).at[0, 0, :, : len(ties)].set(jnp.broadcast_to(ties, (positions, len(ties))))
    x_ties = jnp.zeros_like(x4).at[0, 0].set(1.0)
    dw_ties = np.asarray(native.kernel_grad(x_ties, dy_ties, geometry, jnp.bfloat16)[0], np.float32)
    inside = np.repeat(native.tap_rows(geometry) >= 0, channels, axis=1)  # (P, K*C)
    np.testing.assert_array_equal(
        dw_ties[0][inside][:, : len(ties)], np.broadcast_to(rounded, (inside.sum(), 4))
    )

    # Under vmap with the kernel shared by the mapped examples, its bfloat16
    # gradient is the sum over them.
    layer = _layer(shape, "native")
    xs = jnp.asarray(rng.normal(size=(2, *x.shape)), jnp.float32)

    def shared_kernel_grad(kernel_):
        def loss(k):
            ys = jax.vmap(layer, in_axes=(0, None, None))(xs.astype(jnp.bfloat16).astype(k.dtype), k, None)
            return jnp.sum(jnp.sin(ys.astype(jnp.bfloat16).astype(jnp.float32)))  # same rounding of y

        return jax.jit(jax.grad(loss))(kernel_)

    got = shared_kernel_grad(jnp.asarray(kernel, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    want = shared_kernel_grad(jnp.asarray(kernel, jnp.bfloat16).astype(jnp.float32))
    _close(np.asarray(got, np.float32), want, rtol=2e-2)

    args = [jnp.asarray(a, jnp.bfloat16) for a in (x, kernel, bias)]
    text = jax.jit(jax.grad(_loss(_layer(shape, "native")), argnums=(0, 1))).lower(*args).compile().as_text()
    assert "flax_local_kernel_grad_bf16" in text and "flax_local_input_grad_bf16" in text
    float32_kernel = f"f32[1,{positions},{w16.shape[2]},{filters}]"
    assert float32_kernel not in text, "a float32 copy of the kernel (or of its gradient) was made"
    with pytest.raises(TypeError, match="float32 or bfloat16 weights, got float16"):
        native.forward(x4, w16.astype(jnp.float16), None, geometry)


def test_concurrent_calls_from_threads():
    """Calls from several Python threads share XLA's pool without deadlock or wrong numbers."""
    shape = SHAPES[3]
    x, kernel, bias = _arrays(shape, 9)
    # Committed to the CPU device: the fixture's default device is this thread's only.
    x, kernel, bias = jax.device_put((x, kernel, bias), jax.devices("cpu")[0])
    step = jax.jit(jax.grad(_loss(_layer(shape, "native")), argnums=(0, 1, 2)))
    expected = step(x, kernel, bias)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(step(x, kernel, bias))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 20
    for result in results:
        for got, want in zip(result, expected):
            np.testing.assert_array_equal(got, want)


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        # One CPU device (other tests may leave XLA_FLAGS asking for several).
        env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (none known where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split(":", 1)[-1].split())


def _x86_linux() -> bool:
    return os.uname().machine in ("x86_64", "AMD64") and pathlib.Path("/proc/cpuinfo").exists()


_PROBE = """
import warnings
import jax.numpy as jnp
from flax_local._src import native_build
from flax_local.functional import NativeUnavailableError, geometry, choose_implementation, locally_connected
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print("available", native_build.is_available())
    print("auto", choose_implementation(geometry((28, 28), 3), 16, 32, jnp.float32))
    print("auto", choose_implementation(geometry((28, 28), 3), 16, 32, jnp.float32))
print("warnings", [w.category.__name__ for w in caught])
for w in caught:
    print("warning", w.message)
try:
    locally_connected(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 3, 3, 2, 4)), implementation="native")
except NativeUnavailableError as error:
    print("error", error)
"""


def test_disabled_falls_back_to_patches_and_explains():
    """``FLAX_LOCAL_NATIVE`` set to 0, false, off or no (any case) disables the kernels, without a warning."""
    for value in ("0", "false", "OFF", "No"):
        result = _run_python(_PROBE, FLAX_LOCAL_NATIVE=value)
        assert result.returncode == 0, result.stderr
        assert "available False" in result.stdout, value
        assert "auto patches" in result.stdout
        assert "warnings []" in result.stdout
        assert f"error disabled by FLAX_LOCAL_NATIVE={value}." in result.stdout


def test_enabled_values_keep_the_kernels():
    result = _run_python(_PROBE, FLAX_LOCAL_NATIVE="1")
    assert "available True" in result.stdout, result.stderr
    assert "error" not in result.stdout


def test_the_installed_kernels_load_without_a_warning():
    """The normal path: the installed library loads, with a fast path where this CPU has one, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native_build.is_available()
        kernels = native_build.native_kernels()
    assert kernels.path == native_build.vector_path() and kernels.library is not None
    assert pathlib.Path(kernels.library).name == native_build.LIBRARY_NAME
    assert kernels.variant in ("native", kernels.path)
    if _cpu_flags() >= {"avx2", "fma"}:
        assert kernels.path in native_build.FAST_VECTOR_PATHS and kernels.reason is None


def _best_path(flags: set[str]) -> str:
    if flags >= {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512cd", "avx2", "fma", "bmi2"}:
        return "avx512"
    return "avx2" if flags >= {"avx2", "fma", "bmi2"} else "generic"


@pytest.mark.skipif(not _x86_linux(), reason="reads the x86 CPU flags from /proc/cpuinfo")
def test_dispatch_picks_the_best_path_this_cpu_runs():
    """The vector code the old ``-march=native`` build chose here: AVX-512 where the CPU has it, else AVX2."""
    kernels = native_build.native_kernels()
    if kernels.variant == "native":
        pytest.skip("a -march=native build (FLAX_LOCAL_MARCH_NATIVE=1) prefers its own copy")
    assert kernels.path == _best_path(_cpu_flags())


def _library_copy(tmp_path, damage) -> dict[str, str]:
    """A copy of the installed library (and its checksum record) damaged by ``damage(bytes) -> bytes``."""
    library = pathlib.Path(native_build.native_kernels().library)
    copy = tmp_path / library.name
    copy.write_bytes(damage(library.read_bytes()))
    record = library.with_name(library.name + ".sha256")
    if record.exists() and damage.__name__ != "without_record":
        shutil.copy(record, tmp_path / record.name)
    return {"FLAX_LOCAL_NATIVE_LIBRARY": str(copy)}


def half(data):
    return data[: len(data) // 2]


def without_record(data):
    return data[: len(data) // 2]


def empty(data):
    return b""


def garbage(data):
    return np.random.default_rng(0).bytes(4096)


def flipped(data):
    return data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (half, "bytes, "),
        (without_record, "the file is truncated"),
        (empty, "the file is empty"),
        (garbage, "not a shared library"),
        (flipped, "SHA-256 differs"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_a_damaged_library_is_refused_before_it_is_mapped(tmp_path, damage, message):
    """A truncated library would kill the process (SIGBUS) inside ctypes: it is checked first.

    ``"auto"`` then uses ``"patches"`` and warns once; ``"native"`` raises
    ``NativeUnavailableError`` naming the file.
    """
    env = _library_copy(tmp_path, damage)
    if damage is flipped and not (tmp_path / (native_build.LIBRARY_NAME + ".sha256")).exists():
        pytest.skip("the installed library has no checksum record")
    result = _run_python(_PROBE, **env)
    assert result.returncode == 0, result.stderr
    assert "available False" in result.stdout and "auto patches" in result.stdout
    assert "warnings ['NativeKernelsUnavailableWarning']" in result.stdout
    assert f"error the kernels' library {env['FLAX_LOCAL_NATIVE_LIBRARY']} is damaged" in result.stdout
    assert message in result.stdout


def test_a_missing_library_warns_once_and_says_how_to_build_it(tmp_path):
    result = _run_python(_PROBE, FLAX_LOCAL_NATIVE_LIBRARY=str(tmp_path / native_build.LIBRARY_NAME))
    assert result.returncode == 0, result.stderr
    assert "available False" in result.stdout and "auto patches" in result.stdout
    assert "warnings ['NativeKernelsUnavailableWarning']" in result.stdout
    assert "flax_local was installed without its native CPU kernels" in result.stdout
    assert "C++17 compiler and CMake" in result.stdout
    assert "error flax_local was installed without" in result.stdout


_NO_HOME = """
import os, pathlib, subprocess
os.environ.pop("HOME", None)
import jax.numpy as jnp, numpy as np
from flax_local.functional import locally_connected
# From here on (the kernels load at the first "native" call), as with no passwd entry, and no processes.
def refuse(*args, **kwargs):
    raise RuntimeError("Could not determine home directory")
pathlib.Path.home = classmethod(refuse)
subprocess.Popen.__init__ = refuse
x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
k = np.random.default_rng(1).normal(size=(4, 4, 3, 3, 3, 5)).astype(np.float32)
got = locally_connected(x, k, implementation="native")
want = locally_connected(x, k, implementation="patches", precision="highest")
np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
print("native ok")
"""


def test_loading_needs_no_home_directory_and_no_subprocess():
    """A container with an arbitrary UID has no ``$HOME`` and no passwd entry; nothing is compiled either."""
    result = _run_python(_NO_HOME)
    assert result.returncode == 0, result.stderr
    assert "native ok" in result.stdout


_KERNEL_GRADIENTS = """
import jax, jax.numpy as jnp, numpy as np
from flax_local._src import native, native_build
from flax_local._src.geometry import make_geometry
from flax_local.functional import locally_connected
print("threshold", native_build.stream_threshold_bytes())
rng = np.random.default_rng(3)
results = {}
# filters: whole vectors with AVX2 and AVX-512 (32, 16), with AVX2 only (24), neither (20);
# 2 groups (vmap), padding (rows -1), and enough work for both threads.
for groups, filters in ((1, 32), (2, 16), (1, 24), (1, 20)):
    g = make_geometry((12, 10), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1))
    x = jnp.asarray(rng.normal(size=(groups, 5, 120, 16)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(groups, 5, g.num_positions, filters)), jnp.float32)
    dw, db = jax.jit(lambda x, dy: native.kernel_grad(x, dy, g))(x, dy)
    results[f"dw{filters}"], results[f"db{filters}"] = np.asarray(dw), np.asarray(db)
x = rng.normal(size=(6, 11, 9, 8)).astype(np.float32)
kernel = rng.normal(size=(9, 7, 3, 3, 8, 16)).astype(np.float32)
loss = lambda x, k: jnp.sum(jnp.sin(locally_connected(x, k, implementation="native")))
for name, value in zip(("dx", "dkernel"), jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)):
    results[name] = np.asarray(value)
np.savez(OUTPUT, **results)
"""


def test_kernel_gradient_written_around_the_cache_is_the_same(tmp_path):
    """Gradients larger than the cache are written with non-temporal stores: the same numbers.

    A subprocess with ``FLAX_LOCAL_STREAM_BYTES=0`` writes every eligible
    kernel gradient that way; this process, whose threshold (the cache's size)
    is far above these gradients, writes them with normal stores.
    """
    assert native_build.stream_threshold_bytes() > 1 << 20, "this side must use normal stores"
    streamed = _run_python(
        _KERNEL_GRADIENTS.replace("OUTPUT", repr(str(tmp_path / "s.npz"))), FLAX_LOCAL_STREAM_BYTES="0"
    )
    assert streamed.returncode == 0, streamed.stderr
    assert "threshold 0" in streamed.stdout
    exec(_KERNEL_GRADIENTS.replace("OUTPUT", repr(str(tmp_path / "n.npz"))), {})
    with np.load(tmp_path / "s.npz") as got, np.load(tmp_path / "n.npz") as want:
        assert sorted(got.files) == sorted(want.files) and len(got.files) == 10
        for name in want.files:
            assert np.abs(want[name]).max() > 0, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


_PORTABLE_CHECK = """
import jax, jax.numpy as jnp, numpy as np
from flax_local.functional import locally_connected
rng = np.random.default_rng(0)
def loss(implementation):
    return lambda x, k, b: jnp.sum(jnp.sin(locally_connected(
        x, k, b, strides=(2, 1), padding="same", implementation=implementation,
        precision=jax.lax.Precision.HIGHEST)))
# Full and partial vectors of 16 (or 8) lanes; then half vectors (batch and filters <= 8, <= 4).
for batch, filters in ((19, 21), (6, 5), (3, 4)):
    x = rng.normal(size=(batch, 9, 7, 5)).astype(np.float32)
    kernel = rng.normal(size=(5, 7, 3, 3, 5, filters)).astype(np.float32)
    bias = rng.normal(size=(5, 7, filters)).astype(np.float32)
    got = jax.jit(jax.value_and_grad(loss("native"), argnums=(0, 1, 2)))(x, kernel, bias)
    want = jax.value_and_grad(loss("patches"), argnums=(0, 1, 2))(x, kernel, bias)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))
# bfloat16 weights (scalar widening and rounding): the float32 kernel gradient, rounded.
from flax_local._src import native
from flax_local._src.geometry import make_geometry
g = make_geometry((9, 7), (3, 3), (1, 1), "valid", (1, 1))
x = jnp.asarray(rng.normal(size=(1, 6, 63, 5)), jnp.float32)
dy = jnp.asarray(rng.normal(size=(1, 6, 35, 21)), jnp.float32).at[0, 0, 0, :2].set(jnp.asarray([3e38, -3e38]))
dw16 = native.kernel_grad(x, dy, g, jnp.bfloat16)[0]
dw32 = native.kernel_grad(x, dy, g, jnp.float32)[0]
np.testing.assert_array_equal(np.asarray(dw16, np.float32), np.asarray(dw32.astype(jnp.bfloat16), np.float32))
w16 = dw32.astype(jnp.bfloat16)
w16 = jnp.where(jnp.isfinite(w16), w16, 0)
np.testing.assert_array_equal(native.forward(x, w16, None, g), native.forward(x, w16.astype(jnp.float32), None, g))
print("portable ok")
"""


@pytest.mark.parametrize("path", ["avx512", "avx2", "generic"])
def test_every_vector_path_is_correct(path):
    """Each copy of the kernels in the library, chosen with ``FLAX_LOCAL_NATIVE_PATH``, whatever this CPU's best.

    CI machines differ (some have AVX-512, some only AVX2): each copy runs where
    this CPU can run it; elsewhere asking for it is a clear error, not a crash.
    "auto" picks the kernels on the two hand-written paths only.
    """
    probe = "from flax_local._src import native_build; print('path', native_build.vector_path())"
    result = _run_python(_PORTABLE_CHECK + _PROBE + probe, FLAX_LOCAL_NATIVE_PATH=path)
    if path != "generic" and not (_x86_linux() and _best_path(_cpu_flags()) in ("avx512", path)):
        assert result.returncode != 0
        assert f"FLAX_LOCAL_NATIVE_PATH='{path}'" in result.stderr
        assert "no such copy" in result.stderr or "this CPU cannot run that copy" in result.stderr
        pytest.skip(f"this CPU (or library) has no {path} copy")
    assert "portable ok" in result.stdout, result.stderr
    assert f"path {path}" in result.stdout
    assert ("auto native" if path in native_build.FAST_VECTOR_PATHS else "auto patches") in result.stdout
    assert "warnings []" in result.stdout  # a path chosen on purpose does not warn


def test_an_unknown_path_is_a_clear_error():
    result = _run_python(_PROBE, FLAX_LOCAL_NATIVE_PATH="sse9")
    assert "error FLAX_LOCAL_NATIVE_PATH='sse9': the library has no such copy" in result.stdout
    assert "generic" in result.stdout and "available False" in result.stdout
