"""GPU benchmark of the ``"pallas"`` kernels against ``"patches"`` and ``flax.linen.ConvLocal``.

Usage (on the GPU machine, from the repository root; ``benchmarks/gpu_check.sh`` runs it)::

    python -m benchmarks.gpu_run --json gpu.json
    python -m benchmarks.gpu_run --quick --json /tmp/smoke.json   # CPU smoke test, interpret mode

For every case of ``cases.GPU_CASES`` the three rows (``flax_local:pallas``
through ``pallas_layer.apply_pallas``, ``flax_local:patches`` and ``ConvLocal``, all
with the same weights) are compiled, checked against ``"patches"`` and timed
in turns, forward and training step (``value_and_grad`` with respect to the
parameters and the input), with compile time and XLA's temporary memory. The
roofline floor is ``machine.floor_ms`` of ``machine.case_costs`` with the
ceilings measured at the start of the run (``machine.measure_ceilings``), as
in ``benchmarks.run``. The issue's targets are evaluated over the run's cases
on the medians of calls waited for one by one (``measure.time_interleaved``);
each row also has ``pipelined_ms``, back-to-back calls without the per-call
wait (``time_pipelined``), the steady state of a training loop.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax
import numpy as np

from benchmarks import cases as cases_lib
from benchmarks import jax_impls, machine, measure
from flax_local._src.pallas import default_interpret
from flax_local._src.pallas_layer import apply_pallas

PALLAS, PATCHES, CONVLOCAL = "flax_local:pallas", "flax_local:patches", "ConvLocal"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny cases in interpret mode (a CPU smoke test)"
    )
    parser.add_argument("--cases", nargs="+", help="case names (default: cases.GPU_CASES)")
    parser.add_argument("--repeats", type=int, default=10, help="least timed calls per measurement")
    parser.add_argument(
        "--min-time-s", type=float, default=None, help="time more rounds within this (default 0.5)"
    )
    parser.add_argument("--max-repeats", type=int, default=500, help="most timed calls per measurement")
    parser.add_argument("--compile-repeats", type=int, default=None, help="compilations per row (default 2)")
    parser.add_argument(
        "--slow-limit-s", type=float, default=5.0, help="skip a row whose first call is slower"
    )
    parser.add_argument("--budget-s", type=float, default=300.0, help="start no case after this many seconds")
    parser.add_argument("--interpret", action="store_true", help="run the Pallas kernels in interpret mode")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.min_time_s is None:
        args.min_time_s = 0.0 if args.quick else 0.5
    if args.compile_repeats is None:
        args.compile_repeats = 1 if args.quick else 2
    args.interpret = args.interpret or args.quick or default_interpret()
    return args


def pallas_contender(case: cases_lib.Case, kernel: np.ndarray, bias: np.ndarray, interpret: bool):
    """``pallas_layer.apply_pallas`` with the case's weights, in flax_local's parameter layout."""
    geometry = jax_impls.geometry_of(case)
    dtype = jax.numpy.dtype(case.dtype)
    channels_first = case.data_format == "channels_first"

    def forward(params, x):
        if channels_first:
            x = jax.numpy.moveaxis(x, 1, -1)
        y = apply_pallas(x, params["kernel"], params["bias"], geometry, None, interpret=interpret)
        return jax.numpy.moveaxis(y, -1, 1) if channels_first else y

    params = {"kernel": jax.numpy.asarray(kernel, dtype), "bias": jax.numpy.asarray(bias, dtype)}
    return jax_impls.Contender(PALLAS, forward, params, lambda g: g, "interpret mode" if interpret else "")


def time_pipelined(fn, args: tuple, *, calls: int, rounds: int) -> dict:
    """Per-call time of ``calls`` back-to-back calls with one wait at the end, median of ``rounds``.

    The device runs the calls one after another while the host queues the
    next, so a short call's time is not its dispatch and wait (``call_ms``,
    tens of microseconds on a GPU), as it is when every call is waited for.
    """
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            outputs = fn(*args)
        jax.block_until_ready(outputs)
        per_call.append((time.perf_counter() - start) * 1e3 / calls)
        del outputs
    return {"pipelined_ms": statistics.median(per_call), "pipelined_calls": calls, "pipelined_rounds": rounds}


def _errors(contender, mode: str, outputs, reference) -> dict:
    """Relative error of each output against the reference row's."""
    if mode == "forward":
        return {"y": jax_impls.relative_error(outputs, reference)}
    (loss, (grads, dx)), (ref_loss, (ref_grads, ref_dx)) = outputs, reference
    grads = contender.to_ours(grads)
    return {
        "loss": jax_impls.relative_error(loss, ref_loss),
        "dx": jax_impls.relative_error(dx, ref_dx),
        "dkernel": jax_impls.relative_error(grads["kernel"], ref_grads["kernel"]),
        "dbias": jax_impls.relative_error(grads["bias"], ref_grads["bias"]),
    }


def run_case(case: cases_lib.Case, args: argparse.Namespace) -> list[dict]:
    """The rows of one case: each contender's forward and training step."""
    x, kernel, bias = jax_impls.inputs(case)
    contenders = [
        jax_impls.flax_local_contender(case, "patches", kernel, bias),
        pallas_contender(case, kernel, bias, args.interpret),
        jax_impls.convlocal_contender(case, kernel, bias),
    ]
    rows = []
    for mode in ("forward", "train"):
        calls, reference = [], None
        for contender in contenders:
            fn = contender.forward if mode == "forward" else contender.train_step()
            row = {"impl": contender.name, "mode": mode, "note": contender.note}
            try:
                result = measure.prepare(
                    fn,
                    (contender.params, x),
                    slow_limit_s=args.slow_limit_s,
                    compile_repeats=args.compile_repeats,
                )
            except measure.TooSlow as e:
                rows.append({**row, "skipped": str(e)})
                continue
            except Exception as e:  # noqa: BLE001 - a row that fails to build is a result to report
                rows.append({**row, "failed": f"{type(e).__name__}: {str(e)[:2000]}"})
                continue
            outputs = result.pop("outputs")
            if contender.name == PATCHES:
                reference = outputs
            elif reference is not None:
                row["errors"] = _errors(contender, mode, outputs, reference)
                row["agrees"] = max(row["errors"].values()) <= jax_impls.tolerance(case)
            del outputs
            calls.append((row, result, (contender.params, x)))
        round_ms = sum(result["warmup_ms"] for _, result, _ in calls)
        rounds = measure.rounds_for(args.repeats, round_ms, args.min_time_s, args.max_repeats)
        compiled = [result.pop("compiled") for _, result, _ in calls]
        timings = measure.time_interleaved(
            [(fn, a) for fn, (_, _, a) in zip(compiled, calls)], repeats=rounds
        )
        for fn, (row, result, call_args), timing in zip(compiled, calls, timings):
            calls_per_round = max(2, min(50, int(20.0 / max(timing["median_ms"], 1e-3))))
            timing.update(time_pipelined(fn, call_args, calls=calls_per_round, rounds=5))
            rows.append({**row, **result, **timing})
            print(
                f"  {case.name:<12} {row['impl']:<20} {mode:<7} median {timing['median_ms']:9.3f} ms  "
                f"pipelined {timing['pipelined_ms']:9.3f} ms  "
                f"compile {result['compile_ms']:7.0f} ms  temp {_mib(result['xla_temp_bytes'])} MiB",
                flush=True,
            )
        del compiled, calls, reference
    return rows


def _mib(value) -> str:
    return "?" if value is None else f"{value / 2**20:.0f}"


def _row(entry: dict, impl: str, mode: str) -> dict | None:
    return next(
        (r for r in entry["results"] if r["impl"] == impl and r["mode"] == mode and "median_ms" in r), None
    )


def summarize(entry: dict) -> dict:
    """Per-case ratios of the training step: pallas against patches, ConvLocal and the floor."""
    pallas, patches, convlocal = (_row(entry, impl, "train") for impl in (PALLAS, PATCHES, CONVLOCAL))
    out = {}
    if pallas and patches:
        out["speedup_vs_patches"] = patches["median_ms"] / pallas["median_ms"]
        if pallas.get("xla_temp_bytes") is not None and patches.get("xla_temp_bytes"):
            out["temp_memory_vs_patches"] = pallas["xla_temp_bytes"] / patches["xla_temp_bytes"]
        out["compile_vs_patches"] = pallas["compile_ms"] / patches["compile_ms"]
        out["patches_floor_ratio"] = patches["median_ms"] / entry["floor_ms"]["train"]
    if pallas and patches and "pipelined_ms" in pallas and "pipelined_ms" in patches:
        out["speedup_vs_patches_pipelined"] = patches["pipelined_ms"] / pallas["pipelined_ms"]
        out["pallas_floor_ratio_pipelined"] = pallas["pipelined_ms"] / entry["floor_ms"]["train"]
    if pallas:
        out["pallas_floor_ratio"] = pallas["median_ms"] / entry["floor_ms"]["train"]
        out["pallas_agrees"] = pallas.get("agrees")
    if pallas and convlocal:
        out["speedup_vs_convlocal"] = convlocal["median_ms"] / pallas["median_ms"]
    return out


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def targets(run: dict) -> dict:
    """The issue's targets, evaluated over the run's cases (None where no case applies)."""
    summaries = {e["name"]: (e, e["summary"]) for e in run["cases"]}
    slow = [
        s["speedup_vs_patches"]
        for e, s in summaries.values()
        if "speedup_vs_patches" in s and e["case"]["batch"] >= 64 and s["patches_floor_ratio"] > 4
    ]
    big = {
        name: s["pallas_floor_ratio"]
        for name, (e, s) in summaries.items()
        if "pallas_floor_ratio" in s and e["kernel_bytes"] >= 32e6
    }
    values = {
        "geomean_speedup_vs_patches_where_patches_over_4x_floor": _geomean(slow),
        "min_speedup_vs_patches": min(
            (s["speedup_vs_patches"] for _, s in summaries.values() if "speedup_vs_patches" in s),
            default=None,
        ),
        "geomean_speedup_vs_convlocal": _geomean(
            [s["speedup_vs_convlocal"] for _, s in summaries.values() if "speedup_vs_convlocal" in s]
        ),
        "floor_ratio_kernels_over_32MB": big,
        "max_temp_memory_vs_patches": max(
            (s["temp_memory_vs_patches"] for _, s in summaries.values() if "temp_memory_vs_patches" in s),
            default=None,
        ),
        "max_compile_vs_patches": max(
            (s["compile_vs_patches"] for _, s in summaries.values() if "compile_vs_patches" in s),
            default=None,
        ),
    }
    met = {
        "speedup_3x_geomean": None
        if values["geomean_speedup_vs_patches_where_patches_over_4x_floor"] is None
        else values["geomean_speedup_vs_patches_where_patches_over_4x_floor"] >= 3,
        "never_slower_than_patches": None
        if values["min_speedup_vs_patches"] is None
        else values["min_speedup_vs_patches"] >= 1,
        "convlocal_6x_geomean": None
        if values["geomean_speedup_vs_convlocal"] is None
        else values["geomean_speedup_vs_convlocal"] >= 6,
        "within_3x_floor": None if not big else all(v <= 3 for v in big.values()),
        "temp_memory_25pct": None
        if values["max_temp_memory_vs_patches"] is None
        else values["max_temp_memory_vs_patches"] <= 0.25,
        "compile_not_worse": None
        if values["max_compile_vs_patches"] is None
        else values["max_compile_vs_patches"] <= 1,
    }
    return {"values": values, "met": met}


def table(run: dict) -> str:
    """A short text table of the training step, one line per case."""
    lines = [
        f"{'case':<12} {'floor':>8} {'pallas':>9} {'patches':>9} {'ConvLocal':>10} "
        f"{'vs patch':>8} {'vs CL':>7} {'/floor':>7} {'temp':>6} {'compile':>8}"
    ]
    for entry in run["cases"]:
        s = entry["summary"]
        ms = [_row(entry, impl, "train") for impl in (PALLAS, PATCHES, CONVLOCAL)]
        cells = [f"{r['median_ms']:.3f}" if r else "-" for r in ms]

        def fmt(key, s=s):
            return format(s[key], ".2f") if key in s else "-"

        lines.append(
            f"{entry['name']:<12} {entry['floor_ms']['train']:8.3f} {cells[0]:>9} {cells[1]:>9} {cells[2]:>10} "
            f"{fmt('speedup_vs_patches'):>8} {fmt('speedup_vs_convlocal'):>7} {fmt('pallas_floor_ratio'):>7} "
            f"{fmt('temp_memory_vs_patches'):>6} {fmt('compile_vs_patches'):>8}"
        )
    lines.append(json.dumps(run["targets"]["met"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    default = cases_lib.GPU_QUICK_CASES if args.quick else cases_lib.GPU_CASES
    selected = cases_lib.select(default, args.cases)
    info = machine.describe()
    print(f"machine: {info.get('accelerator') or info['cpu']}, jax {info['jax']}, interpret {args.interpret}")
    ceilings = machine.measure_ceilings(quick=args.quick)
    print(f"ceilings: {ceilings}", flush=True)
    run = {"machine": info, "ceilings": ceilings, "config": vars(args), "cases": []}
    start = time.perf_counter()
    for case in selected:
        if time.perf_counter() - start > args.budget_s:
            run["cases"].append({"name": case.name, "skipped": f"over the {args.budget_s:.0f} s budget"})
            continue
        costs = machine.case_costs(case)
        floors = {mode: machine.floor_ms(costs[mode], ceilings, case.dtype) for mode in costs}
        print(f"{case.name}: {case.summary()}  floor train {floors['train']:.3g} ms", flush=True)
        entry = {
            "name": case.name,
            "case": case.to_json(),
            "kernel_bytes": math.prod(case.kernel_shape) * case.itemsize,
            "costs": costs,
            "floor_ms": floors,
            "results": run_case(case, args),
        }
        entry["summary"] = summarize(entry)
        run["cases"].append(entry)
        jax.clear_caches()
        if args.json:
            _write(args.json, run)
    run["cases"] = [e for e in run["cases"] if "results" in e] + [
        e for e in run["cases"] if "results" not in e
    ]
    measured = {**run, "cases": [e for e in run["cases"] if "results" in e]}
    run["targets"] = targets(measured)
    run["elapsed_s"] = round(time.perf_counter() - start, 1)
    print(table({**measured, "targets": run["targets"]}), flush=True)
    if args.json:
        _write(args.json, run)
    return run


def _write(path: str, run: dict) -> None:
    with open(path, "w") as f:
        json.dump(run, f, indent=1, default=str)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
