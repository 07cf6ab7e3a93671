"""What the machine can do: its description and its measured ceilings."""

from __future__ import annotations

import datetime
import glob
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import allocator, measure
from benchmarks.cases import Case


def describe() -> dict:
    """Machine, software and load facts for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    import flax

    from flax_local._src import native_build

    try:
        native_kernels = native_build.vector_path()
    except native_build.NativeUnavailableError as error:
        native_kernels = f"unavailable: {error}"
    backend = jax.default_backend()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": None if memory is None else round(memory / 2**30, 1),
        "load_average": load_average(),
        "backend": backend,
        "accelerator": None if backend == "cpu" else jax.devices()[0].device_kind,
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # The vector code the native CPU kernels were built with (avx512, avx2, generic).
        "native_kernels": native_kernels,
        **memory_management(),
        **allocator.describe(),
    }


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def memory_management() -> dict:
    """How the OS hands out memory, where Linux says (None elsewhere).

    * ``transparent_hugepages``: the THP mode (``always``, ``madvise`` or
      ``never``); the native kernels ask for huge pages on large outputs.
    * ``free_page_reporting``: in a virtual machine whose balloon device
      reports free memory to the hypervisor, ``{"order": o, "delay_ms": d}``
      (``d`` None where the kernel does not say; Linux's own delay is 2 s):
      free blocks of ``4 KiB * 2**o`` and more are handed back to the host
      after ``d`` ms, so writing them again costs a fault in the host as well
      as the guest. Freshly mapped buffers (every XLA:CPU buffer over 32 MiB,
      on every call) then write at a fraction of the memory's bandwidth.
      None where no device reports free pages.
    """
    mode = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if mode is not None and "[" in mode:
        mode = mode.split("[", 1)[1].split("]", 1)[0]
    return {"transparent_hugepages": mode, "free_page_reporting": _free_page_reporting()}


VIRTIO_BALLOON_F_REPORTING = 5  # feature bit of a virtio balloon that reports free pages


def _free_page_reporting() -> dict | None:
    balloons = glob.glob("/sys/bus/virtio/drivers/virtio_balloon/virtio*/features")
    features = [_read(path) or "" for path in balloons]
    if not any(
        len(f) > VIRTIO_BALLOON_F_REPORTING and f[VIRTIO_BALLOON_F_REPORTING] == "1" for f in features
    ):
        return None
    parameters = "/sys/module/page_reporting/parameters"
    order, delay = _read(f"{parameters}/page_reporting_order"), _read(f"{parameters}/min_free_ms")
    return {
        "order": None if order is None else int(order),
        "delay_ms": None if delay is None else int(delay),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the OS reports them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _timed(fn, *args, repeats: int) -> dict:
    """``measure.time_interleaved`` of one function, after a warm-up call."""
    jax.block_until_ready(fn(*args))
    return measure.time_interleaved([(fn, args)], repeats=repeats)[0]


CEILING_SIZES = {
    # backend: (matmul n, copy MiB, fresh-copy MiB or None)
    "cpu": (1024, 16, 128),
    # An accelerator needs far larger work to reach its peak: an 8192^3 matmul,
    # and a copy well beyond its last-level cache (50 MiB on an H100), so that
    # it measures device memory; its allocator reuses buffers (no fresh mapping).
    "accelerator": (8192, 1024, None),
}


def measure_ceilings(quick: bool = False) -> dict:
    """Measures peak matmul throughput and memory bandwidth (best of several runs).

    * ``matmul_gflops[dtype]``: an ``n x n`` by ``n x n`` matmul, ``2 n^3``
      flops, for float32 and bfloat16 at default precision (what the layers
      use unless given ``precision``; on GPUs with tensor cores XLA may run
      float32 products in TF32 there). ``n`` is 1024 on CPU, 8192 elsewhere.
    * ``copy_gbps``: ``y = 2 * x`` on a float32 array of ``copy_mib`` MiB,
      bytes read plus written. On CPU 16 MiB, below glibc's 32 MiB mmap
      threshold, so it measures the memory system, not page faults; elsewhere
      1 GiB, far beyond the device's cache.
    * ``copy_fresh_gbps`` (CPU only, else None): the same on 128 MiB, whose
      buffers glibc maps afresh on every call (what a large step's
      temporaries cost), unless the process reuses freed memory
      (``allocator.REUSE_TUNABLES``).
    * ``call_ms``: the median time of a trivial jitted call (``x + 1`` on 1024
      floats), dispatch and synchronisation: no call of a case runs faster.

    Args:
      quick: smaller sizes and fewer repeats (a smoke test, not a measurement).

    Returns:
      The ceilings as a dict.
    """
    backend = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    n, copy_mib, fresh_mib = CEILING_SIZES[backend]
    if quick:
        n, copy_mib, fresh_mib = 256, copy_mib // 8, fresh_mib and fresh_mib // 8
    repeats = 3 if quick else 20
    key = jax.random.key(0)
    gflops = {}
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(key, (n, n), dtype)
        ms = _timed(jax.jit(jnp.matmul), a, a, repeats=repeats)["min_ms"]
        gflops[dtype] = round(matmul_gflops(n, ms), 1)
        del a
    double = jax.jit(lambda x: x * 2)
    out = {"matmul_gflops": gflops, "matmul_size": n, "copy_mib": copy_mib, "copy_fresh_mib": fresh_mib}
    for label, mib in (("copy_gbps", copy_mib), ("copy_fresh_gbps", fresh_mib)):
        if mib is None:
            out[label] = None
            continue
        x = jax.random.normal(key, (mib * 2**20 // 4,), jnp.float32)
        ms = _timed(double, x, repeats=repeats)["min_ms"]
        out[label] = round(2 * x.size * 4 / ms / 1e6, 1)
        del x
    trivial = _timed(jax.jit(lambda x: x + 1), jnp.zeros((1024,)), repeats=10 * repeats)
    out["call_ms"] = round(trivial["median_ms"], 4)
    return out


def matmul_gflops(n: int, ms: float) -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` matmul (``2 n^3`` flops) that took ``ms``.

    Example:
      >>> matmul_gflops(1000, 10.0)
      200.0
    """
    return 2 * n**3 / ms / 1e6


def best_ceilings(*measurements: dict) -> dict:
    """The highest of several ``measure_ceilings`` results, ceiling by ceiling.

    A ceiling is what the machine can do; on a shared machine one measurement
    can land in a busy second (measured: a 16 MiB copy at 15.7 GB/s at the start
    of a run, 37.9 GB/s in another), which would lower every case's floor.

    Example:
      >>> best_ceilings(
      ...     {"matmul_gflops": {"float32": 200.0}, "matmul_size": 1024, "copy_gbps": 30.0},
      ...     {"matmul_gflops": {"float32": 280.0}, "matmul_size": 1024, "copy_gbps": 20.0},
      ... )
      {'matmul_gflops': {'float32': 280.0}, 'matmul_size': 1024, 'copy_gbps': 30.0}
    """
    first = measurements[0]
    best = {}
    for key, value in first.items():
        if key == "matmul_gflops":
            best[key] = {dtype: max(m[key][dtype] for m in measurements) for dtype in value}
        elif key in ("matmul_size", "copy_mib", "copy_fresh_mib") or value is None:
            best[key] = value
        elif key == "call_ms":  # a time: the best is the lowest
            best[key] = min(m[key] for m in measurements)
        else:
            best[key] = max(m[key] for m in measurements)
    return best


def case_costs(case: Case) -> dict:
    """The minimum work of a case: flops, and bytes that must cross memory.

    Forward: ``2 * batch * positions * window * C * F`` flops (plus the bias
    adds); bytes: read input, kernel and bias, write the output. Training step
    (value and gradient w.r.t. parameters and input): three times the matmul
    flops (forward, input gradient, kernel gradient); bytes: the forward's,
    then read the input, kernel and output cotangent again and write the three
    gradients. Intermediates (patches) are not counted: a fused kernel would
    not need them.

    Returns:
      ``{"forward": {"flops", "bytes"}, "train": {...}}``.
    """
    item = case.itemsize
    macs = case.batch * case.positions * case.window * case.channels * case.filters
    x = case.batch * int(np.prod(case.spatial)) * case.channels
    kernel = int(np.prod(case.kernel_shape))
    bias = int(np.prod(case.bias_shape))
    y = case.batch * case.positions * case.filters
    forward = {"flops": 2 * macs + y, "bytes": (x + kernel + bias + y) * item}
    train = {
        "flops": 6 * macs + 2 * y,
        "bytes": (2 * x + 2 * kernel + bias + 2 * y + x + kernel + bias) * item,
    }
    return {"forward": forward, "train": train}


def floor_ms(cost: dict, ceilings: dict, dtype: str) -> float:
    """Roofline floor: the larger of compute time and memory time, in ms."""
    compute = cost["flops"] / (ceilings["matmul_gflops"][dtype] * 1e9)
    memory = cost["bytes"] / (ceilings["copy_gbps"] * 1e9)
    return max(compute, memory) * 1e3
