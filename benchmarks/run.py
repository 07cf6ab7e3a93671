"""Benchmarks flax_local against ``flax.linen.ConvLocal`` and tf_keras.

Usage::

    python -m benchmarks.run                       # full run, table to stdout
    python -m benchmarks.run --json out.json --markdown benchmarks/RESULTS.md
    python -m benchmarks.run --quick --json /tmp/smoke.json   # CI smoke test, < 1 min
    python -m benchmarks.run --cases keras_doc big56 --tf-python /path/to/python

For every case, each flax_local implementation in the registry (those that
build a matrix, "dense" and "sparse", where it fits under ``--max-matrix-mib``),
and "auto",
ConvLocal with the same weights, and tf_keras implementations 1/2/3 (in a
subprocess, when a Python with tf_keras is available) are compiled and timed:
forward and training step, median of at least ``--repeats`` calls after
warm-up (fast rows get as many more as fit in ``--min-time-s``), with compile
time and peak memory. "patches", "auto" and ConvLocal (and any other
JAX row within 5x of "patches") are timed in turns, one call of each per
round, so that their ratios compare like with like. The machine's matmul and
copy ceilings are measured first and give each case a roofline floor; a
matmul timed in the same rounds as a case's training steps gives the floor of
that moment as well.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import allocator, jax_impls, machine, measure, report
from benchmarks import cases as cases_lib

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tf_keras_worker.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny cases, CI smoke test (< 1 min)")
    parser.add_argument("--cases", nargs="+", help="case names (default: all of the run's kind)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="least timed calls per measurement (default 10)"
    )
    parser.add_argument(
        "--min-time-s",
        type=float,
        default=None,
        help="time more rounds while they fit in this many seconds per case and mode, up to "
        "--max-repeats (default 1 s; 0 with --quick)",
    )
    parser.add_argument("--max-repeats", type=int, default=200, help="most timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
    parser.add_argument(
        "--compile-repeats",
        type=int,
        default=None,
        help='compile "patches", "auto" and ConvLocal this many times from scratch and report the '
        "fastest (default 3; 1 with --quick)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the report as Markdown")
    parser.add_argument(
        "--max-matrix-mib",
        type=float,
        default=512,
        help='skip "dense"/"sparse" (and tf_keras 2/3) when their matrix exceeds this (default 512)',
    )
    parser.add_argument(
        "--slow-limit-s",
        type=float,
        default=10.0,
        help="skip a measurement whose first call takes longer than this (default 10 s)",
    )
    parser.add_argument(
        "--tf-python",
        default=os.environ.get("FLAX_LOCAL_TF_PYTHON", sys.executable),
        help="Python with tensorflow and tf_keras for the tf_keras rows (default: this one, "
        "or $FLAX_LOCAL_TF_PYTHON)",
    )
    parser.add_argument("--no-tf", action="store_true", help="skip tf_keras")
    parser.add_argument(
        "--malloc",
        choices=("reuse", "default"),
        default="reuse",
        help="reuse: run (and the tf_keras worker) with glibc keeping freed memory for reuse "
        "(benchmarks/allocator.py: otherwise every XLA buffer over 32 MiB is mapped, zeroed and "
        "given back on every call); default: glibc's own settings (default: reuse)",
    )
    parser.add_argument(
        "--tf-timeout-s",
        type=float,
        default=300,
        help="give up on a case's tf_keras rows after this long (default 300 s)",
    )
    parser.add_argument("--implementations", nargs="+", default=list(jax_impls.FLAX_LOCAL_IMPLEMENTATIONS))
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: re-render the report of an earlier --json file (with --markdown)",
    )
    parser.add_argument(
        "--also",
        metavar="JSON",
        nargs="+",
        default=[],
        help="--json files of runs on other machines (e.g. benchmarks/results_gpu.json) to add "
        "to the Markdown report as sections of their own",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 10
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.compile_repeats is None:
        args.compile_repeats = 1 if args.quick else 3
    if args.compile_repeats < 1:
        parser.error("--compile-repeats must be >= 1")
    if args.min_time_s is None:
        args.min_time_s = 0.0 if args.quick else 1.0
    if args.min_time_s < 0:
        parser.error("--min-time-s must be >= 0")
    return args


def tf_available(python: str) -> dict:
    """Whether ``python`` can import tf_keras, and its version."""
    try:
        done = subprocess.run(
            [python, "-c", "import tf_keras, tensorflow as tf; print(tf.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": False, "python": python, "reason": f"{type(e).__name__}: {e}"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"available": False, "python": python, "reason": f"tf_keras not importable ({last})"}
    return {"available": True, "python": python, "version": done.stdout.strip().splitlines()[-1]}


def run_tf(case: cases_lib.Case, args: argparse.Namespace) -> list[dict]:
    """tf_keras rows for ``case``, timed in a subprocess."""
    spec = {
        "case": case.to_json(),
        "repeats": args.repeats,
        "max_matrix_bytes": int(args.max_matrix_mib * 2**20),
        "slow_limit_s": args.slow_limit_s,
    }
    timed_out, returncode = None, 0
    try:
        done = subprocess.run(
            [args.tf_python, WORKER, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=args.tf_timeout_s,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        stdout, stderr, returncode = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr = e.stdout or "", ""
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        timed_out = f"timed out after {args.tf_timeout_s:.0f} s (rows after this one not measured)"
    except OSError as e:
        return [{"impl": "tf_keras", "skipped": f"worker failed: {e}"}]
    rows = []
    for line in stdout.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "impl" in row:
            rows.append(row)
    tail = stderr.strip().splitlines()[-1:]
    if timed_out:
        rows.append({"impl": "tf_keras", "skipped": timed_out})
    elif returncode != 0:
        # Killed (e.g. out of memory: big56's implementation 1 trains in ~17 GiB) or crashed
        # after the rows it printed: the rest of the case is missing, and the table says why.
        reason = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        rows.append(
            {
                "impl": "tf_keras",
                "skipped": f"worker stopped ({reason}; rows after this one not measured): {tail}",
            }
        )
    elif not rows:
        rows.append({"impl": "tf_keras", "skipped": f"worker failed: {tail}"})
    for row in rows:
        row.setdefault("note", "timing only (own random weights)")
    return rows


def _agreement(case, contender, mode, outputs, reference) -> None:
    """Checks ``outputs`` against flax_local:patches's (no check without a reference).

    Raises:
      AssertionError: the relative error exceeds the case's tolerance.
    """
    if reference is None:
        return
    if mode == "forward":
        pairs = [("y", outputs, reference)]
    else:
        (loss, (grads, dx)), (ref_loss, (ref_grads, ref_dx)) = outputs, reference
        grads = contender.to_ours(grads)
        pairs = [
            ("loss", loss, ref_loss),
            ("dx", dx, ref_dx),
            ("dkernel", grads["kernel"], ref_grads["kernel"]),
            ("dbias", grads["bias"], ref_grads["bias"]),
        ]
    worst = 0.0
    for _, a, b in pairs:
        a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
        err = float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))
        worst = max(worst, err)
    if worst > jax_impls.tolerance(case):
        raise AssertionError(
            f"{case.name}: {contender.name} {mode} disagrees with flax_local:patches "
            f"(relative error {worst:.2e} > {jax_impls.tolerance(case):.0e})"
        )


REFERENCE_ROW = "flax_local:patches"


def _reference_first(contenders: list) -> list:
    """``contenders`` with flax_local:patches moved to the front, the rest in order.

    Its outputs are the agreement reference and its warm-up time decides which
    rows are timed in turns, so it must be prepared before every other row,
    whatever order ``--implementations`` lists them in.
    """
    return sorted(contenders, key=lambda contender: contender.name != REFERENCE_ROW)


TURN_ROWS = (REFERENCE_ROW, "flax_local:auto", "ConvLocal")
BACK_TO_BACK_ROW = "flax_local:auto"
"""The row also timed alone, back to back, after the rows timed in turns."""
TURN_SLOWDOWN = 5.0
PROBE_ROW = "machine:matmul"
"""A square matmul timed in turns with each case's training steps (``matmul_in_turns``)."""


def _timed_in_turns(name: str, warmup_ms: float, reference_ms: float | None) -> bool:
    """Whether a row is timed in turns with the others of its case.

    "patches", "auto" and ConvLocal (the rows the targets compare) always are;
    another row joins them only when its last warm-up call was within
    ``TURN_SLOWDOWN`` of "patches'": a row tens of times slower (the dense and
    sparse matrices on most cases) would otherwise flood the memory system
    between their calls and measure the machine instead of them.
    """
    if name in TURN_ROWS or reference_ms is None:
        return True
    return warmup_ms <= TURN_SLOWDOWN * reference_ms


def _record(rows: list, case: cases_lib.Case, mode: str, calls: list, args: argparse.Namespace) -> None:
    """Times ``(row, prepared, args)`` calls in turns and appends their rows."""
    if not calls:
        return
    round_ms = sum(result["warmup_ms"] for _, result, _ in calls)
    rounds = measure.rounds_for(args.repeats, round_ms, args.min_time_s, args.max_repeats)
    compiled = [result.pop("compiled") for _, result, _ in calls]
    timings = measure.time_interleaved(
        [(fn, call_args) for fn, (_, _, call_args) in zip(compiled, calls)], repeats=rounds
    )
    for fn, (row, result, call_args), timing in zip(compiled, calls, timings):
        if row["impl"] == BACK_TO_BACK_ROW and len(calls) > 1:
            # Also alone (rounds of one call: back to back), the steady state
            # of a loop running only this step, without the other rows' evictions.
            timing["back_to_back"] = measure.time_interleaved([(fn, call_args)], repeats=rounds)[0]
        rows.append({**row, **result, **timing, "timed_in_turns": len(calls) > 1})
        print(
            f"  {case.name:<10} {row['impl']:<20} {mode:<7} median {timing['median_ms']:9.3f} ms  "
            f"compile {result['compile_ms']:7.0f} ms",
            flush=True,
        )


def _matmul_probe(case: cases_lib.Case, size: int, args: argparse.Namespace) -> tuple:
    """A ``size``-square matmul in the case's dtype, as a call for ``_record``.

    Timed in turns with the case's training steps it gives the matmul ceiling
    of the moment those steps ran, which on a shared machine drifts from the
    ceiling measured at the start and the end of the run.
    """
    a = jax.random.normal(jax.random.key(0), (size, size), case.dtype)
    result = measure.prepare(jnp.matmul, (a, a), warmup=args.warmup)
    del result["outputs"]
    return {"impl": PROBE_ROW, "mode": "train", "size": size}, result, (a, a)


def run_case(case: cases_lib.Case, args: argparse.Namespace, tf_info: dict, matmul_size: int) -> dict:
    """All rows of one case (with the PROBE_ROW of the training steps timed in turns)."""
    x, kernel, bias = jax_impls.inputs(case)
    limit = int(args.max_matrix_mib * 2**20)
    contenders, rows = [], []
    for implementation in args.implementations:
        needed = jax_impls.matrix_bytes(case, implementation)
        if implementation == "auto":
            needed = jax_impls.matrix_bytes(case, jax_impls.auto_choice(case))
        if needed > limit:
            rows.append(
                {
                    "impl": f"flax_local:{implementation}",
                    "skipped": f"matrix {needed / 2**20:.0f} MiB > limit {args.max_matrix_mib:.0f} MiB",
                }
            )
            continue
        contenders.append(jax_impls.flax_local_contender(case, implementation, kernel, bias))
    contenders.append(jax_impls.convlocal_contender(case, kernel, bias))
    contenders = _reference_first(contenders)
    references = {}
    for mode in ("forward", "train"):
        in_turns, reference_ms = [], None
        for contender in contenders:
            fn = contender.forward if mode == "forward" else contender.train_step()
            row = {"impl": contender.name, "mode": mode}
            if contender.note:
                row["note"] = contender.note
            try:
                result = measure.prepare(
                    fn,
                    (contender.params, x),
                    warmup=args.warmup,
                    slow_limit_s=args.slow_limit_s,
                    # Only the rows the targets compare; the others can take seconds to compile.
                    compile_repeats=args.compile_repeats if contender.name in TURN_ROWS else 1,
                )
            except measure.TooSlow as e:
                rows.append({**row, "skipped": str(e)})
                continue
            outputs = result.pop("outputs")
            if contender.name == REFERENCE_ROW:
                references[mode] = outputs
                reference_ms = result["warmup_ms"]
            else:
                _agreement(case, contender, mode, outputs, references.get(mode))
            del outputs
            call = (row, result, (contender.params, x))
            if _timed_in_turns(contender.name, result["warmup_ms"], reference_ms):
                in_turns.append(call)
            else:
                # Far slower than "patches": timed alone, at once, so that its
                # buffers and executable are gone before the rows timed in turns.
                _record(rows, case, mode, [call], args)
        if mode == "train" and len(in_turns) > 1:
            in_turns.append(_matmul_probe(case, matmul_size, args))
        # Timed in turns, so that every row of the case sees the same machine.
        _record(rows, case, mode, in_turns, args)
        del in_turns
    del references
    if not args.no_tf:
        if tf_info.get("available"):
            rows.extend(run_tf(case, args))
        else:
            rows.append({"impl": "tf_keras", "skipped": tf_info.get("reason", "not available")})
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            run = json.load(f)
        run["targets"] = report.targets(run)
        print(report.text(run))
        if args.markdown:
            _write(args.markdown, report.markdown(run, _load_others(args.also)))
        return run
    selected = cases_lib.select(cases_lib.QUICK_CASES if args.quick else cases_lib.FULL_CASES, args.cases)
    info = machine.describe()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_average']}, jax {info['jax']}")
    ceilings = machine.measure_ceilings(quick=args.quick)
    print(f"ceilings: {ceilings}", flush=True)
    tf_info = {"available": False, "reason": "--no-tf"} if args.no_tf else tf_available(args.tf_python)
    if not args.no_tf:
        print(f"tf_keras: {tf_info}", flush=True)
    run = {
        "machine": info,
        "ceilings": ceilings,
        "config": {
            "quick": args.quick,
            "repeats": args.repeats,
            "min_time_s": args.min_time_s,
            "max_repeats": args.max_repeats,
            "warmup": args.warmup,
            "compile_repeats": args.compile_repeats,
            "max_matrix_mib": args.max_matrix_mib,
            "slow_limit_s": args.slow_limit_s,
            "malloc": args.malloc,
        },
        "tf": tf_info,
        "cases": [],
        "notes": [],
    }
    start = time.perf_counter()
    for case in selected:
        costs = machine.case_costs(case)
        floors = _floors(costs, ceilings, case.dtype)
        print(
            f"{case.name}: {case.summary()}  floor fwd {floors['forward']:.3g} ms train {floors['train']:.3g} ms"
        )
        rows = run_case(case, args, tf_info, ceilings["matmul_size"])
        probe = next((row for row in rows if row["impl"] == PROBE_ROW), None)
        run["cases"].append(
            {
                "name": case.name,
                "case": case.to_json(),
                "costs": costs,
                "floor_ms": floors,
                "auto_choice": jax_impls.auto_choice(case),
                "results": [row for row in rows if row["impl"] != PROBE_ROW],
                "matmul_in_turns": None
                if probe is None
                else {
                    "size": probe["size"],
                    "median_ms": probe["median_ms"],
                    "gflops": machine.matmul_gflops(probe["size"], probe["median_ms"]),
                },
            }
        )
        _set_moment_floor(run["cases"][-1], ceilings)
        jax.clear_caches()
        if args.json:
            # After every case, so that a run stopped part-way keeps what it measured.
            _write(args.json, json.dumps(run, indent=1, default=str), quiet=True)
    run["elapsed_s"] = round(time.perf_counter() - start, 1)
    run["load_average_end"] = machine.load_average()
    # Measured again at the end; the floors use the best of both (see best_ceilings).
    run["ceilings_start"], run["ceilings_end"] = ceilings, machine.measure_ceilings(quick=args.quick)
    run["ceilings"] = machine.best_ceilings(run["ceilings_start"], run["ceilings_end"])
    print(f"ceilings at the end: {run['ceilings_end']}", flush=True)
    for entry in run["cases"]:
        entry["floor_ms"] = _floors(entry["costs"], run["ceilings"], entry["case"]["dtype"])
        _set_moment_floor(entry, run["ceilings"])
    run["targets"] = report.targets(run)
    print(report.text(run))
    if args.json:
        _write(args.json, json.dumps(run, indent=1, default=str))
    if args.markdown:
        _write(args.markdown, report.markdown(run, _load_others(args.also)))
    return run


def _load_others(paths: list[str]) -> tuple[dict, ...]:
    """The runs of ``--also`` (``report.markdown`` evaluates their targets)."""
    others = []
    for path in paths:
        with open(path) as f:
            others.append(json.load(f))
    return tuple(others)


def _floors(costs: dict, ceilings: dict, dtype: str) -> dict:
    """The roofline floor of each mode of a case, in ms."""
    return {mode: machine.floor_ms(costs[mode], ceilings, dtype) for mode in costs}


def _set_moment_floor(entry: dict, ceilings: dict) -> None:
    """The training step's floor with the matmul timed in turns in place of the run's best.

    Stored as ``entry["matmul_in_turns"]["floor_ms"]`` (nothing where the case
    timed no matmul); the copy ceiling stays the run's.
    """
    probe = entry.get("matmul_in_turns")
    if probe:
        dtype = entry["case"]["dtype"]
        moment = {**ceilings, "matmul_gflops": {dtype: probe["gflops"]}}
        probe["floor_ms"] = machine.floor_ms(entry["costs"]["train"], moment, dtype)


def _write(path: str, content: str, quiet: bool = False) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    if not quiet:
        print(f"wrote {path}")


def cli(argv: list[str]) -> None:
    """The command line: ``main``, in a process started with the allocator ``--malloc`` asks for.

    glibc reads its tunables once, at start-up, so a process started without
    the settings of ``--malloc reuse`` (or, for ``--malloc default``, with any
    of them) runs this module again with the environment it needs (the same
    arguments; ``os.execve`` replaces this process).
    """
    args = parse_args(argv)
    if not args.render and allocator.glibc_version():
        environ = None
        if args.malloc == "reuse" and not allocator.reuses_freed_memory():
            environ = allocator.environment_with_reuse()
        elif args.malloc == "default" and "GLIBC_TUNABLES" in os.environ:
            # Started with our settings (or some of them) already in the environment.
            trimmed = allocator.environment_without_reuse()
            if trimmed.get("GLIBC_TUNABLES") != os.environ["GLIBC_TUNABLES"]:
                environ = trimmed
        if environ is not None:
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable, "-m", "benchmarks.run", *argv], environ)
    main(argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
