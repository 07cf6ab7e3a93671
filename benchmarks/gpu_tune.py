"""A sweep of the Pallas kernels' block sizes, warps and stages around their defaults.

Usage (on the GPU machine; ``benchmarks/gpu_check.sh`` runs it after the benchmark)::

    python -m benchmarks.gpu_tune --json tune.json
    python -m benchmarks.gpu_tune --quick --json /tmp/tune.json   # CPU smoke test, interpret mode

Each of the three kernels (``pallas.forward``, ``pallas.kernel_grad``,
``pallas.input_grad``) is compiled and timed alone for its default
``Blocks`` and a few variants (batch block halved and doubled, a longer and a
shorter run per program, the other warp count, other pipeline depths, for the
kernel gradient all or one offset per program). Each variant's result is
checked against the default's; a variant that fails to compile (e.g. out of
shared memory) is a row saying so. The best variant per case and kernel is
what the defaults (``pallas.forward_blocks`` etc.) should learn.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import jax
import jax.numpy as jnp

from benchmarks import cases as cases_lib
from benchmarks import jax_impls, measure
from benchmarks.gpu_run import time_pipelined
from flax_local._src import pallas
from flax_local._src.pallas_kernels import Blocks

DEFAULT_CASES = ["face48", "mid28", "seq1024", "vol16", "face48_bf16"]


def variants(default: Blocks, window: int, kernel: str, last_stride: int = 1) -> list[Blocks]:
    """The default and its neighbours (distinct, valid for Triton)."""
    out = [default]

    def add(**changes):
        candidate = dataclasses.replace(default, **changes)
        if candidate.batch >= 16 and candidate not in out:
            out.append(candidate)

    add(batch=default.batch // 2)
    add(batch=default.batch * 2)
    add(run=max(1, default.run // 4))
    add(run=default.run * 4)
    add(num_warps=8 if default.num_warps == 4 else 4)
    add(num_stages=2 if default.num_stages != 2 else 3)
    add(num_stages=1)
    if kernel == "kernel_grad":
        add(offsets=1)
        add(offsets=window, num_warps=8)
    if kernel == "forward" or (kernel == "input_grad" and last_stride == 1):
        # Rows shared along the last axis: run * BB * Fp (or Cp) float32 sums.
        add(reuse=True, run=4, batch=min(default.batch, 64), num_warps=8)
        add(reuse=True, run=8, batch=min(default.batch, 32), num_warps=8)
        add(reuse=True, run=4, batch=min(default.batch, 64), num_warps=8, num_stages=1)
    return out


def _operands(case: cases_lib.Case):
    geometry = jax_impls.geometry_of(case)
    key = jax.random.key(0)
    kx, kw, kd = jax.random.split(key, 3)
    rows, positions, window = math.prod(case.spatial), geometry.num_positions, geometry.window_volume
    x = jax.random.normal(kx, (1, case.batch, rows, case.channels), case.dtype)
    w = jax.random.normal(kw, (1, positions, window * case.channels, case.filters), case.dtype)
    dy = jax.random.normal(kd, (1, case.batch, positions, case.filters), case.dtype)
    return geometry, x, w, dy


def _calls(case: cases_lib.Case, interpret: bool):
    """``(kernel name, fn(blocks) -> function, args, default blocks)`` per kernel."""
    geometry, x, w, dy = _operands(case)
    cp, fp = pallas._block(case.channels), pallas._block(case.filters)
    positions, window, rows = geometry.num_positions, geometry.window_volume, math.prod(case.spatial)
    item = jnp.dtype(case.dtype).itemsize
    weight_dtype = jnp.bfloat16 if case.dtype == "bfloat16" else jnp.float32
    common = dict(geometry=geometry, interpret=interpret)
    return [
        (
            "forward",
            lambda b: (
                lambda x, w: pallas.forward(x, w, has_bias=False, out_dtype=x.dtype, blocks=b, **common)
            ),
            (x, w),
            pallas.forward_blocks(case.batch, positions, cp, fp, 1, item),
        ),
        (
            "kernel_grad",
            lambda b: lambda x, dy: pallas.kernel_grad(x, dy, weight_dtype=weight_dtype, blocks=b, **common),
            (x, dy),
            pallas.kernel_grad_blocks(case.batch, positions, window, cp, fp, 1, item),
        ),
        (
            "input_grad",
            lambda b: lambda dy, w: pallas.input_grad(dy, w, out_dtype=dy.dtype, blocks=b, **common),
            (dy, w),
            pallas.input_grad_blocks(case.batch, rows, cp, fp, 1, item),
        ),
    ]


def sweep(case: cases_lib.Case, args: argparse.Namespace, deadline: float) -> list[dict]:
    rows = []
    geometry = jax_impls.geometry_of(case)
    window, last_stride = geometry.window_volume, geometry.strides[-1]
    for name, make, operands, default in _calls(case, args.interpret):
        reference = None
        for blocks in variants(default, window, name, last_stride):
            row = {
                "case": case.name,
                "kernel": name,
                "blocks": dataclasses.asdict(blocks),
                "default": blocks == default,
            }
            if time.perf_counter() > deadline:
                rows.append({**row, "skipped": "over budget"})
                continue
            try:
                result = measure.prepare(make(blocks), operands, warmup=2)
            except Exception as e:  # noqa: BLE001 - a variant that fails to compile is a result
                rows.append({**row, "failed": f"{type(e).__name__}: {str(e)[:500]}"})
                continue
            outputs = result.pop("outputs")
            if reference is None:
                reference = outputs
            else:
                row["error_vs_default"] = max(
                    jax_impls.relative_error(a, b)
                    for a, b in zip(jax.tree.leaves(outputs), jax.tree.leaves(reference))
                )
            # Back-to-back calls: a kernel's tens of microseconds, not the dispatch and wait of each call.
            timing = time_pipelined(result.pop("compiled"), operands, calls=args.repeats, rounds=5)
            rows.append({**row, "compile_ms": result["compile_ms"], "median_ms": timing["pipelined_ms"]})
            print(
                f"  {case.name:<12} {name:<12} {_label(blocks):<34} {timing['pipelined_ms']:9.4f} ms"
                f"{'  (default)' if blocks == default else ''}",
                flush=True,
            )
    return rows


def _label(b: Blocks) -> str:
    return (
        f"bb{b.batch} run{b.run} off{b.offsets} w{b.num_warps} s{b.num_stages}{' reuse' if b.reuse else ''}"
    )


def best(rows: list[dict]) -> dict:
    """Per case and kernel: the default's time and the fastest variant's."""
    out = {}
    for row in rows:
        if "median_ms" not in row:
            continue
        key = f"{row['case']}/{row['kernel']}"
        entry = out.setdefault(key, {})
        if row["default"]:
            entry["default_ms"] = row["median_ms"]
        if "best_ms" not in entry or row["median_ms"] < entry["best_ms"]:
            entry.update(best_ms=row["median_ms"], best_blocks=row["blocks"])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_tune", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a tiny case in interpret mode (CPU smoke test)")
    parser.add_argument("--cases", nargs="+", help=f"case names (default {DEFAULT_CASES})")
    parser.add_argument("--repeats", type=int, default=30, help="back-to-back calls per timed round")
    parser.add_argument(
        "--budget-s", type=float, default=120.0, help="time no variant after this many seconds"
    )
    parser.add_argument("--interpret", action="store_true", help="interpret mode")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    args = parser.parse_args(argv)
    args.interpret = args.interpret or args.quick or pallas.default_interpret()
    names = args.cases or (["gpu_tiny2d"] if args.quick else DEFAULT_CASES)
    if args.quick:
        args.repeats = 2
    deadline = time.perf_counter() + args.budget_s
    rows = []
    for case in cases_lib.select(cases_lib.GPU_CASES + cases_lib.GPU_QUICK_CASES, names):
        rows.extend(sweep(case, args, deadline))
        jax.clear_caches()
    run = {"config": vars(args), "rows": rows, "best": best(rows)}
    for key, entry in run["best"].items():
        print(
            f"{key:<28} default {entry.get('default_ms', float('nan')):.4f} ms  best {entry['best_ms']:.4f} ms "
            f"{entry['best_blocks']}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(run, f, indent=1, default=str)
    return run


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
