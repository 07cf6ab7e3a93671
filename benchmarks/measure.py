"""Compile time, memory and timing of jitted functions, timed in turns."""

from __future__ import annotations

import gc
import os
import resource
import statistics
import threading
import time

import jax


def rss_bytes() -> int | None:
    """The process's resident set size, from /proc (None where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Samples the RSS in a background thread; ``peak`` is the largest seen."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s = interval_s
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            value = rss_bytes()
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class TooSlow(Exception):
    """The first call took longer than the limit: not worth ``repeats`` more."""


def xla_memory(compiled) -> dict:
    """XLA's memory analysis of a compiled executable, in bytes."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    if stats is None:
        return {"xla_peak_bytes": None, "xla_temp_bytes": None}
    peak = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return {"xla_peak_bytes": int(peak), "xla_temp_bytes": int(stats.temp_size_in_bytes)}


def compile_fresh(fn, args: tuple):
    """Traces, lowers and compiles ``fn`` for ``args`` from scratch; returns the executable.

    ``fn`` is wrapped in a new function first, so that jax does not hand back
    the trace or the executable of an earlier compilation of ``fn``: every call
    traces, lowers and compiles the whole program again. (The functions ``fn``
    calls keep what they cached, e.g. jax.numpy's own jitted helpers, as they
    do for every compilation after a process's first.)
    """
    return jax.jit(lambda *a: fn(*a)).lower(*args).compile()


def prepare(
    fn,
    args: tuple,
    *,
    warmup: int = 2,
    slow_limit_s: float | None = None,
    compile_repeats: int = 1,
) -> dict:
    """Compiles ``fn`` for ``args`` and warms it up, without timing its calls.

    Args:
      fn: a function of ``*args`` returning arrays (not yet jitted).
      args: its arguments (device arrays).
      warmup: untimed calls after compilation (at least one).
      slow_limit_s: raise ``TooSlow`` when the first call takes longer.
      compile_repeats: compile this many times from scratch and report the
        fastest. One compilation of the same program varied by up to 1.7x on
        the shared 2-core machine, and the first row of a case also pays jax's
        one-off costs for the case's shapes (measured: 10-20 ms of tracing),
        which later rows reuse.

    Returns:
      ``compiled`` (the executable), ``compile_ms`` (trace + lower + compile,
      the fastest of ``compile_repeats``), ``compile_ms_all`` (each of them),
      ``warmup_ms`` (the last warm-up call),
      ``xla_peak_bytes`` (arguments + outputs + temporaries - aliased),
      ``xla_temp_bytes``, ``rss_peak_delta_bytes`` (largest RSS seen while
      compiling and warming up, minus the RSS before compiling) and
      ``outputs`` (of the last warm-up call).

    Raises:
      TooSlow: see ``slow_limit_s``.
    """
    gc.collect()
    rss_before = rss_bytes()
    # The RSS sampler wakes every millisecond: it watches compilation and the
    # warm-up calls (same buffers as the timed ones), never the timed calls,
    # where it would take CPU from XLA's threads on a small machine.
    with RssSampler() as sampler:
        compile_times = []
        for _ in range(max(compile_repeats, 1)):
            compiled = None  # the previous executable is freed before the next compiles
            start = time.perf_counter()
            compiled = compile_fresh(fn, args)
            compile_times.append((time.perf_counter() - start) * 1e3)
        for i in range(max(warmup, 1)):
            start = time.perf_counter()
            outputs = jax.block_until_ready(compiled(*args))
            warmup_ms = (time.perf_counter() - start) * 1e3
            if i == 0 and slow_limit_s is not None and warmup_ms > slow_limit_s * 1e3:
                raise TooSlow(f"first call took {warmup_ms / 1e3:.1f} s > {slow_limit_s} s")
    rss_delta = None if rss_before is None or sampler.peak is None else sampler.peak - rss_before
    return {
        "compiled": compiled,
        "compile_ms": min(compile_times),
        "compile_ms_all": compile_times,
        "warmup_ms": warmup_ms,
        **xla_memory(compiled),
        "rss_peak_delta_bytes": rss_delta,
        "outputs": outputs,
    }


def rounds_for(repeats: int, round_ms: float, min_time_s: float, max_rounds: int) -> int:
    """How many rounds to time: ``repeats``, or more while they fit in ``min_time_s``.

    Fast rows get more calls, so their medians are steadier on a noisy machine,
    at a cost of about ``min_time_s`` per measurement; slow rows keep
    ``repeats``.

    Args:
      repeats: the least number of rounds.
      round_ms: the expected length of one round (e.g. the sum of the calls'
        last warm-up times).
      min_time_s: time to fill with rounds; 0 means exactly ``repeats``.
      max_rounds: the most rounds, however fast (never below ``repeats``).

    Returns:
      The number of rounds.

    Example:
      >>> rounds_for(10, round_ms=20.0, min_time_s=1.0, max_rounds=200)
      50
      >>> rounds_for(10, round_ms=500.0, min_time_s=1.0, max_rounds=200)
      10
    """
    if min_time_s <= 0 or round_ms <= 0:
        return repeats
    return max(repeats, min(max_rounds, int(min_time_s * 1e3 / round_ms)))


def time_interleaved(calls: list[tuple], *, repeats: int) -> list[dict]:
    """Times several compiled functions in turns, one call of each per round.

    Every function sees the same machine conditions (other load, frequency,
    memory state) spread over the same stretch of time, so the ratios between
    their medians are steadier than timing one function after another. The
    order within a round rotates, so none always runs first.

    Args:
      calls: ``(compiled, args)`` pairs.
      repeats: rounds; each function is timed this many times.

    Returns:
      One dict per pair, in order: ``median_ms``, ``min_ms``, ``times_ms``
      and ``system_ms``: the process's CPU time in the OS kernel per call
      (all threads, mean over the calls; page faults, thread wake-ups), which
      separates time lost to the machine's memory management from time spent
      computing.
    """
    times: list[list[float]] = [[] for _ in calls]
    system_s = [0.0 for _ in calls]
    for round_index in range(repeats):
        shift = round_index % len(calls)
        for index in [*range(shift, len(calls)), *range(shift)]:
            compiled, args = calls[index]
            system_before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            start = time.perf_counter()
            outputs = jax.block_until_ready(compiled(*args))
            times[index].append((time.perf_counter() - start) * 1e3)
            system_s[index] += resource.getrusage(resource.RUSAGE_SELF).ru_stime - system_before
            del outputs
    return [
        {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "times_ms": [round(v, 4) for v in t],
            "system_ms": round(s * 1e3 / len(t), 4),
        }
        for t, s in zip(times, system_s)
    ]
