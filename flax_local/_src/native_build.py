"""Builds and registers the native CPU kernels (``native_kernels/locally_connected.cc`` and its headers).

The kernels are C++ behind XLA's FFI, compiled on first use for the machine
they run on (``-O3 -march=native``, or the flag in ``$FLAX_LOCAL_NATIVE_ARCH``,
e.g. ``-march=x86-64-v3`` for a library shared by several machines) with the C++ compiler found as ``$CXX`` or
``c++``, against the FFI headers that jaxlib ships. The shared library is
cached under ``$FLAX_LOCAL_CACHE_DIR`` (default ``~/.cache/flax_local``), named
by a hash of the source, the flags, the compiler, jaxlib's version and the
CPU's instruction-set flags, so a later process loads it in milliseconds, and
an upgrade, or a home directory shared with another kind of CPU, rebuilds it.

Where no compiler works, or ``FLAX_LOCAL_NATIVE=0`` is set, the kernels are
unavailable: ``implementation="auto"`` then uses ``"patches"`` and asking for
``"native"`` raises an error that quotes the compiler's message.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading

import jax
import jaxlib

SOURCE = pathlib.Path(__file__).with_name("native_kernels") / "locally_connected.cc"
HEADERS = ("simd.h", "threads.h", "tiles.h")
"""The headers SOURCE includes (from its own directory): part of the cache key."""
FLAGS = (
    "-O3",
    os.environ.get("FLAX_LOCAL_NATIVE_ARCH", "-march=native"),
    "-std=c++17",
    "-shared",
    "-fPIC",
)
TARGETS = {
    "flax_local_forward": "FlaxLocalForward",
    "flax_local_kernel_grad": "FlaxLocalKernelGrad",
    "flax_local_input_grad": "FlaxLocalInputGrad",
    "flax_local_forward_bf16": "FlaxLocalForwardBf16",
    "flax_local_kernel_grad_bf16": "FlaxLocalKernelGradBf16",
    "flax_local_input_grad_bf16": "FlaxLocalInputGradBf16",
}
"""FFI target name -> exported handler symbol (``_bf16``: bfloat16 weights)."""

_lock = threading.Lock()
_state: dict[str, object] = {}


class NativeUnavailableError(RuntimeError):
    """The native kernels could not be built or loaded on this machine.

    Raised by ``implementation="native"``; its message says why (no compiler,
    the compiler's error, or ``FLAX_LOCAL_NATIVE=0``). ``"auto"`` never raises
    it: it falls back to ``"patches"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local.functional import NativeUnavailableError, locally_connected
      >>> try:
      ...     y = locally_connected(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 3, 3, 2, 4)), implementation="native")
      ... except NativeUnavailableError as error:
      ...     y = locally_connected(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 3, 3, 2, 4)), implementation="patches")
      >>> y.shape
      (1, 3, 3, 4)
    """


def cache_dir() -> pathlib.Path:
    """Where built libraries are kept: ``$FLAX_LOCAL_CACHE_DIR`` or ``~/.cache/flax_local``."""
    configured = os.environ.get("FLAX_LOCAL_CACHE_DIR")
    return pathlib.Path(configured) if configured else pathlib.Path.home() / ".cache" / "flax_local"


def _compiler() -> list[str]:
    command = shlex.split(os.environ.get("CXX", "c++"))
    if not command or shutil.which(command[0]) is None:
        raise NativeUnavailableError(
            f"no C++ compiler: CXX={os.environ.get('CXX', 'c++')!r} is not on PATH "
            "(install g++ or clang++, or set CXX)."
        )
    return command


def _cpu_features() -> str:
    """The CPU's instruction-set flags: a library built with -march=native must not move to another CPU."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _library_path(compiler: list[str]) -> pathlib.Path:
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes())
    for header in HEADERS:
        key.update(b"\0")
        key.update((SOURCE.parent / header).read_bytes())
    for part in (" ".join(FLAGS), version, jaxlib.__version__, platform.machine(), _cpu_features()):
        key.update(b"\0")
        key.update(part.encode())
    return cache_dir() / f"locally_connected_{key.hexdigest()[:16]}.so"


def _build(compiler: list[str], library: pathlib.Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed, so concurrent processes never
    # load a half-written file.
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        output = pathlib.Path(scratch) / library.name
        command = [*compiler, *FLAGS, "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", str(output)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise NativeUnavailableError(
                f"compiling the native kernels failed ({shlex.join(command)}):\n{result.stderr.strip()}"
            )
        os.replace(output, library)


def _load() -> None:
    if os.environ.get("FLAX_LOCAL_NATIVE", "1") == "0":
        raise NativeUnavailableError("disabled by FLAX_LOCAL_NATIVE=0.")
    compiler = _compiler()
    library = _library_path(compiler)
    if not library.exists():
        _build(compiler, library)
    handle = ctypes.cdll.LoadLibrary(str(library))
    handle.FlaxLocalVectorPath.restype = ctypes.c_char_p
    handle.FlaxLocalStreamThresholdBytes.restype = ctypes.c_int64
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, symbol)), platform="cpu")
    _state["handle"] = handle


def ensure_loaded() -> None:
    """Builds (once per machine) and registers the kernels.

    Raises:
      NativeUnavailableError: with the reason, when they cannot be built.

    Example:
      >>> from flax_local._src.native_build import ensure_loaded, is_available
      >>> if is_available():
      ...     ensure_loaded()  # a no-op once loaded
    """
    with _lock:
        if "handle" in _state:
            return
        if "error" in _state:
            raise NativeUnavailableError(_state["error"])
        try:
            _load()
        except (NativeUnavailableError, OSError, AttributeError) as error:
            _state["error"] = str(error)
            raise NativeUnavailableError(str(error)) from None


def is_available() -> bool:
    """Whether the native kernels are built and registered (building them if needed).

    Returns:
      True when ``implementation="native"`` can run in this process.

    Example:
      >>> from flax_local._src.native_build import is_available
      >>> isinstance(is_available(), bool)
      True
    """
    try:
        ensure_loaded()
    except NativeUnavailableError:
        return False
    return True


FAST_VECTOR_PATHS = ("avx512", "avx2")
"""The vector code with hand-written loads, stores and transposes (``simd.h``),
chosen at build time from the compiler's target: ``-march=native`` on a CPU
with AVX-512 or with AVX2 and FMA. Anything else builds ``"generic"`` code:
the same results, measured 12-32x slower than the AVX2 code on an AVX2-only
machine (training steps of keras_doc, mnist16, stride2, big56), so ``"auto"``
does not pick the kernels there."""


def vector_path() -> str:
    """The vector code the loaded kernels were built with.

    Returns:
      ``"avx512"``, ``"avx2"`` or ``"generic"`` (see ``FAST_VECTOR_PATHS``).

    Raises:
      NativeUnavailableError: when the kernels cannot be built here.

    Example:
      >>> from flax_local._src.native_build import is_available, vector_path
      >>> vector_path() in ("avx512", "avx2", "generic") if is_available() else True
      True
    """
    ensure_loaded()
    return _state["handle"].FlaxLocalVectorPath().decode()


def stream_threshold_bytes() -> int:
    """The size above which the kernels write a float32 kernel gradient around the cache.

    A gradient larger than the last-level cache is evicted before the call
    ends, unread, so the kernels write it with non-temporal stores (no read
    of each line before it is written). The size is ``$FLAX_LOCAL_STREAM_BYTES``
    when set when the kernels are first called, else the size of the
    last-level cache one core sees: Linux's
    ``/sys/devices/system/cpu/cpu0/cache``, else ``sysconf`` (which may give
    the whole package's), else 32 MiB.

    Returns:
      The threshold in bytes.

    Raises:
      NativeUnavailableError: when the kernels cannot be built here.

    Example:
      >>> from flax_local._src.native_build import is_available, stream_threshold_bytes
      >>> stream_threshold_bytes() >= 0 if is_available() else True
      True
    """
    ensure_loaded()
    return int(_state["handle"].FlaxLocalStreamThresholdBytes())
