"""Finds, checks and registers the native CPU kernels built when flax_local was installed.

The kernels (``native_kernels/locally_connected.cc`` and its headers) are C++
behind XLA's FFI, compiled by the package's build (``CMakeLists.txt``, run by
scikit-build-core at ``pip install``) into one shared library,
``libflax_local_kernels``, installed next to this file. The library holds one
copy of the kernels per instruction set (AVX-512, AVX2 with FMA, the
baseline; on other architectures the baseline only) and uses the best copy
this CPU runs, chosen when it is loaded (``native_kernels/dispatch.cc``).
Nothing is compiled at run time.

Where the library is missing (the package was built without a C++ compiler),
unreadable, or ``FLAX_LOCAL_NATIVE`` is ``0``/``false``/``off``/``no``, the
kernels are unavailable: ``implementation="auto"`` then uses ``"patches"``
(warning once, with :class:`NativeKernelsUnavailableWarning`, unless the
kernels were disabled on purpose) and asking for ``"native"`` raises
:class:`NativeUnavailableError` with the reason.

Environment variables, read once, when the kernels are first needed:

* ``FLAX_LOCAL_NATIVE``: ``0``, ``false``, ``off`` or ``no`` (any case) disables the kernels.
* ``FLAX_LOCAL_NATIVE_PATH``: ``avx512``, ``avx2``, ``generic`` (or ``native``
  in a build that has it) uses that copy instead of the best one, e.g. to
  test a lower path; an error if this CPU or library cannot.
* ``FLAX_LOCAL_NATIVE_LIBRARY``: the library file to load instead of the
  installed one (e.g. one built from source for this machine).
* ``FLAX_LOCAL_STREAM_BYTES``: read by the kernels (see :func:`stream_threshold_bytes`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import importlib
import os
import pathlib
import struct
import sys
import threading
import warnings

import jax

LIBRARY_NAME = "libflax_local_kernels.dylib" if sys.platform == "darwin" else "libflax_local_kernels.so"
"""The library's file name, as CMakeLists.txt installs it into ``flax_local/_src/``."""
TARGETS = {
    "flax_local_forward": "FlaxLocalForward",
    "flax_local_kernel_grad": "FlaxLocalKernelGrad",
    "flax_local_input_grad": "FlaxLocalInputGrad",
    "flax_local_forward_bf16": "FlaxLocalForwardBf16",
    "flax_local_kernel_grad_bf16": "FlaxLocalKernelGradBf16",
    "flax_local_input_grad_bf16": "FlaxLocalInputGradBf16",
}
"""FFI target name -> exported handler symbol (``_bf16``: bfloat16 weights)."""
VECTOR_PATHS = ("avx512", "avx2", "generic")
"""Every vector path the kernels have, fastest first."""
FAST_VECTOR_PATHS = ("avx512", "avx2")
"""The vector code with hand-written loads, stores and transposes (``simd.h``):
AVX-512 (F, VL, BW, DQ, CD), or AVX2 with FMA. The ``"generic"`` copy, the
only one on other CPUs, gives the same results many times slower
(``benchmarks/EXPERIMENTS.md``, "On an AVX2-only CPU"), so ``"auto"`` does not
pick the kernels there."""
_DISABLING_VALUES = ("0", "false", "off", "no")

_lock = threading.Lock()
_state: dict[str, object] = {}


class NativeUnavailableError(RuntimeError):
    """The native kernels cannot be loaded in this process.

    Raised by ``implementation="native"``; its message says why (the package
    was built without them, the library file is damaged, this CPU cannot run
    the requested copy, or ``FLAX_LOCAL_NATIVE=0``). ``"auto"`` never raises
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


class NativeKernelsUnavailableWarning(UserWarning):
    """``implementation="auto"`` would have used the native CPU kernels, but they are unavailable here.

    Issued once per process, the first time ``"auto"`` chooses for a layer the
    kernels would run; the layer then uses ``"patches"`` (same numbers, slower).
    The message says why and how to get the kernels. Not issued when they were
    disabled with ``FLAX_LOCAL_NATIVE=0``. Silence it with the standard filter
    (``warnings.filterwarnings("ignore", category=...)``, or as below for a block).

    Example:
      >>> import warnings
      >>> import jax.numpy as jnp
      >>> import flax_local
      >>> from flax_local.functional import choose_implementation, geometry
      >>> with warnings.catch_warnings():
      ...     warnings.simplefilter("ignore", category=flax_local.NativeKernelsUnavailableWarning)
      ...     choose_implementation(geometry((28, 28), 3), 16, 32, jnp.float32, "cpu") in ("native", "patches")
      True
    """


@dataclasses.dataclass(frozen=True)
class NativeKernels:
    """Which native CPU kernels this process uses, from :func:`native_kernels`.

    Attributes:
      path: the vector code in use, ``"avx512"``, ``"avx2"`` or ``"generic"``
        (``"auto"`` picks the kernels on the first two only); None when the
        kernels are unavailable.
      reason: why the kernels are unavailable, or why ``"auto"`` will not use
        them (the ``"generic"`` path); None when they are loaded with a fast path.
      library: the library file loaded (or found and rejected); None when there is none.
      variant: the copy of the kernels in use: ``path``'s, or ``"native"`` for a
        ``-march=native`` copy built from source; None when unavailable.

    Example:
      >>> import flax_local
      >>> kernels = flax_local.native_kernels()
      >>> kernels.path in ("avx512", "avx2", "generic") if kernels.reason is None else kernels.path in (None, "generic")
      True
    """

    path: str | None
    reason: str | None
    library: str | None
    variant: str | None = None


def _disabled_by() -> str | None:
    value = os.environ.get("FLAX_LOCAL_NATIVE", "")
    return value if value.strip().lower() in _DISABLING_VALUES else None


_HOW_TO_BUILD = (
    "The kernels are built when flax_local is installed from source, which needs a C++17 compiler and "
    "CMake (e.g. `apt-get install g++ cmake`); then reinstall: `pip install --force-reinstall --no-deps "
    "--no-binary flax_local flax_local`, or `pip install -e .` in a checkout."
)


def library_candidates() -> list[pathlib.Path]:
    """Where the library is looked for: ``$FLAX_LOCAL_NATIVE_LIBRARY``, else next to this package's modules.

    The package's ``__path__`` covers a regular install (the wheel's files),
    an editable one (scikit-build-core lists its build output as well as the
    source directory) and a source tree with the library installed into it.

    Returns:
      The paths to try, in order.

    Example:
      >>> from flax_local._src.native_build import library_candidates
      >>> len(library_candidates()) >= 1
      True
    """
    configured = os.environ.get("FLAX_LOCAL_NATIVE_LIBRARY")
    if configured:
        return [pathlib.Path(configured)]
    package = importlib.import_module(__package__)
    directories = list(getattr(package, "__path__", [])) or [str(pathlib.Path(__file__).parent)]
    return [pathlib.Path(directory) / LIBRARY_NAME for directory in dict.fromkeys(directories)]


_MACHO_MAGICS = (b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xca\xfe\xba\xbe", b"\xbe\xba\xfe\xca")


def _check_elf_extent(header: bytes, size: int) -> str | None:
    """Why an ELF file of ``size`` bytes is cut short (its tables point past its end), or None."""
    if len(header) < 64 or header[4] != 2:  # 64-bit only
        return None if len(header) >= 52 else "its ELF header is incomplete"
    endian = "<" if header[5] == 1 else ">"
    phoff, shoff = struct.unpack_from(endian + "QQ", header, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(endian + "HHHH", header, 0x36)
    if phoff + phentsize * phnum > size or shoff + shentsize * shnum > size:
        return f"its ELF tables end past the file's {size} bytes (the file is truncated)"
    return None


def validate_library(library: pathlib.Path) -> None:
    """Checks that ``library`` is whole before it is mapped (a truncated library crashes the process).

    The file must be non-empty, start with an ELF or Mach-O header, and match
    the size and SHA-256 recorded beside it at install (``<library>.sha256``);
    without that record (a library named by ``$FLAX_LOCAL_NATIVE_LIBRARY``), an
    ELF file's tables must lie inside it.

    Args:
      library: the library file.

    Raises:
      NativeUnavailableError: naming the file and what is wrong with it.

    Example:
      >>> import pathlib, tempfile
      >>> from flax_local._src.native_build import NativeUnavailableError, validate_library
      >>> with tempfile.TemporaryDirectory() as scratch:
      ...     empty = pathlib.Path(scratch) / "libflax_local_kernels.so"
      ...     _ = empty.write_bytes(b"")
      ...     try:
      ...         validate_library(empty)
      ...     except NativeUnavailableError as error:
      ...         print("empty" in str(error))
      True
    """
    try:
        size = library.stat().st_size
        with open(library, "rb") as file:
            header = file.read(64)
    except OSError as error:
        raise NativeUnavailableError(f"cannot read the kernels' library {library}: {error}") from None
    damaged = f"the kernels' library {library} is damaged: "
    fix = " Reinstall flax_local to replace it."
    if size == 0:
        raise NativeUnavailableError(damaged + "the file is empty." + fix)
    if not (header.startswith(b"\x7fELF") or header[:4] in _MACHO_MAGICS):
        raise NativeUnavailableError(damaged + "it is not a shared library (no ELF or Mach-O header)." + fix)
    record = library.with_name(library.name + ".sha256")
    if record.is_file():
        try:
            digest, recorded_size = record.read_text(encoding="ascii").split()
            recorded = int(recorded_size)
        except (OSError, UnicodeDecodeError, ValueError):
            raise NativeUnavailableError(
                f"cannot read the kernels' checksum record {record}." + fix
            ) from None
        if size != recorded:
            raise NativeUnavailableError(damaged + f"it has {size} bytes, {recorded} when installed." + fix)
        with open(library, "rb") as file:
            if hashlib.file_digest(file, "sha256").hexdigest() != digest:
                raise NativeUnavailableError(
                    damaged + "its SHA-256 differs from the one recorded at install." + fix
                )
    elif header.startswith(b"\x7fELF") and (problem := _check_elf_extent(header, size)):
        raise NativeUnavailableError(damaged + problem + "." + fix)


def _select(handle: ctypes.CDLL) -> None:
    requested = os.environ.get("FLAX_LOCAL_NATIVE_PATH", "").strip().lower()
    if not requested:
        return
    status = handle.FlaxLocalSelectPath(requested.encode())
    if status != 0:
        copies = handle.FlaxLocalVariants().decode()
        why = "the library has no such copy" if status == 1 else "this CPU cannot run that copy"
        raise NativeUnavailableError(
            f"FLAX_LOCAL_NATIVE_PATH={requested!r}: {why} (the library's copies, '!' where this CPU "
            f"lacks the instructions: {copies}). Unset it to use the best copy."
        )


def _load() -> None:
    disabled = _disabled_by()
    if disabled is not None:
        raise NativeUnavailableError(f"disabled by FLAX_LOCAL_NATIVE={disabled}.")
    candidates = library_candidates()
    library = next((path for path in candidates if path.exists()), None)
    if library is None:
        searched = ", ".join(str(path) for path in candidates)
        raise NativeUnavailableError(
            f"flax_local was installed without its native CPU kernels (no file {searched}). " + _HOW_TO_BUILD
        )
    _state["library"] = str(library)
    validate_library(library)
    try:
        handle = ctypes.CDLL(str(library))
    except OSError as error:
        raise NativeUnavailableError(f"loading the kernels' library {library} failed: {error}") from None
    try:
        handle.FlaxLocalVectorPath.restype = ctypes.c_char_p
        handle.FlaxLocalVariant.restype = ctypes.c_char_p
        handle.FlaxLocalVariants.restype = ctypes.c_char_p
        handle.FlaxLocalSelectPath.argtypes = [ctypes.c_char_p]
        handle.FlaxLocalSelectPath.restype = ctypes.c_int
        handle.FlaxLocalStreamThresholdBytes.restype = ctypes.c_int64
        handlers = {target: getattr(handle, symbol) for target, symbol in TARGETS.items()}
    except AttributeError as error:
        raise NativeUnavailableError(
            f"{library} is not this version's kernels library ({error}). Reinstall flax_local."
        ) from None
    _select(handle)
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    _state["handle"] = handle


def ensure_loaded() -> None:
    """Loads and registers the installed kernels, once per process.

    Raises:
      NativeUnavailableError: with the reason, when they cannot be loaded.

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
        except NativeUnavailableError as error:
            _state["error"] = str(error)
            raise


def _warn_once(message: str) -> None:
    with _lock:
        if "warned" in _state:
            return
        _state["warned"] = True
    warnings.warn(message, NativeKernelsUnavailableWarning, stacklevel=3)


def is_available() -> bool:
    """Whether the native kernels are loaded and registered (loading them if needed).

    ``implementation="auto"`` asks this before it picks the kernels; the first
    time they cannot be loaded (missing or damaged), it warns once with
    :class:`NativeKernelsUnavailableWarning`, unless ``FLAX_LOCAL_NATIVE``
    disabled them. (Loaded with only the ``"generic"`` path, on a CPU without
    AVX2, they are available but ``"auto"`` prefers ``"patches"``: nothing is
    missing, so nothing is said; :func:`native_kernels` gives the reason.)

    Returns:
      True when ``implementation="native"`` can run in this process.

    Example:
      >>> from flax_local._src.native_build import is_available
      >>> isinstance(is_available(), bool)
      True
    """
    try:
        ensure_loaded()
    except NativeUnavailableError as error:
        if _disabled_by() is None:
            _warn_once(
                f"flax_local's native CPU kernels are unavailable, so 'auto' uses 'patches' (slower): {error}"
            )
        return False
    return True


def vector_path() -> str:
    """The vector code of the kernels in use.

    Returns:
      ``"avx512"``, ``"avx2"`` or ``"generic"`` (see ``FAST_VECTOR_PATHS``).

    Raises:
      NativeUnavailableError: when the kernels cannot be loaded here.

    Example:
      >>> from flax_local._src.native_build import is_available, vector_path
      >>> vector_path() in ("avx512", "avx2", "generic") if is_available() else True
      True
    """
    ensure_loaded()
    return _state["handle"].FlaxLocalVectorPath().decode()


def native_kernels() -> NativeKernels:
    """Which native CPU kernels this process uses, or why there are none.

    Loads the installed kernels if needed (nothing is compiled) and never
    raises or warns.

    Returns:
      A :class:`NativeKernels`: ``path`` is the vector code in use
      (``"avx512"``, ``"avx2"`` or ``"generic"``) or None, and ``reason`` says
      why the kernels are unavailable (or slow), else None.

    Example:
      >>> import flax_local
      >>> kernels = flax_local.native_kernels()
      >>> kernels.path in ("avx512", "avx2", "generic") or kernels.reason is not None
      True
    """
    try:
        ensure_loaded()
    except NativeUnavailableError as error:
        return NativeKernels(path=None, reason=str(error), library=_state.get("library"))
    handle = _state["handle"]
    path = handle.FlaxLocalVectorPath().decode()
    reason = (
        None
        if path in FAST_VECTOR_PATHS
        else "no fast vector path for this CPU (AVX2 with FMA, or AVX-512): 'auto' uses 'patches'"
    )
    return NativeKernels(
        path=path, reason=reason, library=_state["library"], variant=handle.FlaxLocalVariant().decode()
    )


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
      NativeUnavailableError: when the kernels cannot be loaded here.

    Example:
      >>> from flax_local._src.native_build import is_available, stream_threshold_bytes
      >>> stream_threshold_bytes() >= 0 if is_available() else True
      True
    """
    ensure_loaded()
    return int(_state["handle"].FlaxLocalStreamThresholdBytes())
