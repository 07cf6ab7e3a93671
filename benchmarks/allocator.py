"""The process's memory allocator: glibc settings that keep freed memory for reuse.

XLA:CPU asks ``malloc`` for every buffer of every call and frees it after. glibc
serves requests over 32 MiB (and any request too large for a thread's own
64 MiB arena) with a fresh ``mmap`` and returns it with ``munmap`` on free, so a
step whose gradient or temporaries exceed that size gets its memory from the
OS on every call: the OS zeroes each page before the step writes it, and in a
virtual machine that reports free pages to its host (see
``machine.memory_management``) the host must map it again too. With
:data:`REUSE_TUNABLES` every thread allocates from glibc's main heap, nothing is
mapped per request and nothing is handed back, so the second call of a step
reuses the first call's memory. The process keeps its peak heap for life.

The tunables must be in the environment when the process starts (glibc reads
them once), hence :func:`environment_with_reuse` for a child process or a
re-executed one.
"""

from __future__ import annotations

import os

REUSE_TUNABLES = (
    # Every thread in the main (brk) heap: a thread's own arena serves a request
    # larger than its 64 MiB with mmap whatever the other settings say.
    "glibc.malloc.arena_max=1"
    # Never mmap a request, whatever its size.
    ":glibc.malloc.mmap_max=0"
    # Give the top of the heap back to the OS only when more than 4 GiB of it
    # is free.
    ":glibc.malloc.trim_threshold=4294967295"
)


def glibc_version() -> str | None:
    """The C library's version (``"glibc 2.36"``), or None where it is not glibc."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None
    return version or None


def _settings(tunables: str) -> dict[str, str]:
    """GLIBC_TUNABLES as ``{name: value}``; for a tunable set twice the last, as glibc takes it."""
    return dict(s.split("=", 1) for s in tunables.split(":") if "=" in s)


def reuses_freed_memory(environ: dict | None = None) -> bool:
    """Whether ``environ``'s GLIBC_TUNABLES give every setting of :data:`REUSE_TUNABLES` its value.

    Args:
      environ: the environment to read (default: this process's).

    Returns:
      True when a glibc process started with ``environ`` keeps its freed memory.

    Example:
      >>> reuses_freed_memory({"GLIBC_TUNABLES": REUSE_TUNABLES})
      True
      >>> reuses_freed_memory({})
      False
      >>> reuses_freed_memory({"GLIBC_TUNABLES": REUSE_TUNABLES + ":glibc.malloc.mmap_max=4"})  # set again
      False
    """
    environ = os.environ if environ is None else environ
    present = _settings(environ.get("GLIBC_TUNABLES", ""))
    return all(present.get(name) == value for name, value in _settings(REUSE_TUNABLES).items())


def environment_with_reuse(environ: dict | None = None) -> dict:
    """A copy of ``environ`` whose GLIBC_TUNABLES also hold :data:`REUSE_TUNABLES`.

    Settings already there are kept; for a tunable set twice glibc takes the
    last, which is ours.

    Args:
      environ: the environment to extend (default: this process's).

    Returns:
      The new environment, for ``subprocess`` or ``os.execve``.

    Example:
      >>> environment_with_reuse({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})["GLIBC_TUNABLES"]
      'glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295'
    """
    environ = dict(os.environ if environ is None else environ)
    if not reuses_freed_memory(environ):
        current = environ.get("GLIBC_TUNABLES", "")
        environ["GLIBC_TUNABLES"] = f"{current}:{REUSE_TUNABLES}" if current else REUSE_TUNABLES
    return environ


def environment_without_reuse(environ: dict | None = None) -> dict:
    """A copy of ``environ`` whose GLIBC_TUNABLES hold none of :data:`REUSE_TUNABLES`.

    Other tunables are kept; GLIBC_TUNABLES is dropped when nothing is left.

    Args:
      environ: the environment to trim (default: this process's).

    Returns:
      The new environment, for ``subprocess`` or ``os.execve``.

    Example:
      >>> environment_without_reuse(environment_with_reuse({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}))
      {'GLIBC_TUNABLES': 'glibc.malloc.tcache_count=0'}
      >>> environment_without_reuse({"GLIBC_TUNABLES": REUSE_TUNABLES})
      {}
    """
    environ = dict(os.environ if environ is None else environ)
    ours = set(REUSE_TUNABLES.split(":"))
    kept = [s for s in environ.pop("GLIBC_TUNABLES", "").split(":") if s and s not in ours]
    if kept:
        environ["GLIBC_TUNABLES"] = ":".join(kept)
    return environ


def describe() -> dict:
    """The allocator facts for the report.

    * ``libc``: ``"glibc 2.36"``, or None where the C library is not glibc
      (then GLIBC_TUNABLES means nothing).
    * ``glibc_tunables``: this process's GLIBC_TUNABLES ("" when unset).
    * ``reuses_freed_memory``: glibc and :data:`REUSE_TUNABLES` both in effect.
    """
    libc = glibc_version()
    return {
        "libc": libc,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "reuses_freed_memory": libc is not None and reuses_freed_memory(),
    }
