"""Times ``implementation="native"`` with two builds of the kernels (issue 27).

Compares the kernels built at install (one library, a copy per instruction set
and a dispatcher) with those an older checkout compiled at first use with
``-march=native``, on the same cases' forward pass and training step
(``value_and_grad`` of ``mean(y**2)`` w.r.t. kernel, bias and input), float32,
jit, medians of many calls; the table gives new / old per case, mode and round.
The Python side of the layer is the same in both checkouts; only the library
and its loader differ.

``--in-process OLD_LIBRARY`` (the main method): both libraries in one process,
the old one's handlers registered under ``old_<target>``; each case is compiled
twice, once with native.py's target names prefixed, and the two programs'
calls alternate one by one, so load on the machine hits both alike.
``--check-library`` times another library in place of the installed one (a
copy of the old one: the method's own bias, from where each file lies).

``--old-root`` (the simple method): one process per checkout, alternating
(old, new; the next round new, old), each importing ``flax_local`` from its
checkout (the editable install's import hook is removed first, since it would
import the installed checkout in both).

Usage (results in ``benchmarks/RESULTS.md``, "Native kernels: built at install
vs compiled with -march=native")::

    python benchmarks/native_build_compare.py --in-process OLD.so --new-library INSTALLED.so --rounds 3
    git worktree add /tmp/flax_local_old 2aabba3
    python benchmarks/native_build_compare.py --old-root /tmp/flax_local_old --new-library INSTALLED.so
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_CASES = ("keras_doc", "mnist16", "stride2", "big56")
REUSE_TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"
"""``benchmarks.allocator.REUSE_TUNABLES`` (as ``benchmarks.run --malloc reuse``), spelled out: the
worker must not import this checkout's ``benchmarks`` package."""


def _drop_editable_hook() -> None:
    """Removes scikit-build-core's editable finder, so ``flax_local`` comes from ``sys.path``."""
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable_")]
    for name in [n for n in sys.modules if n == "flax_local" or n.startswith("flax_local.")]:
        del sys.modules[name]


def _load_cases():
    spec = importlib.util.spec_from_file_location("native_compare_cases", HERE / "cases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _time_ms(fn, args, calls: int) -> float:
    import jax

    for _ in range(3):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _library_info() -> dict:
    import flax_local
    from flax_local._src import native_build

    if hasattr(flax_local, "native_kernels"):
        kernels = flax_local.native_kernels()
        return {"library": kernels.library, "path": kernels.path, "variant": kernels.variant}
    native_build.ensure_loaded()
    library = native_build._library_path(native_build._compiler())
    return {"library": str(library), "path": native_build.vector_path(), "variant": "march=native"}


def worker(case_names: list[str], budget_s: float, min_calls: int, max_calls: int) -> dict:
    """Times each case's forward and training step in this process; returns ms medians and the library."""
    _drop_editable_hook()
    import jax
    import jax.numpy as jnp

    from flax_local.functional import locally_connected

    module = _load_cases()
    cases = {c.name: c for c in [*module.FULL_CASES, *module.QUICK_CASES]}
    out = {"flax_local": None, "cases": {}}
    for name in case_names:
        case = cases[name]
        x, kernel, bias = (jnp.asarray(a) for a in case.arrays(0))

        def layer(kernel, bias, x, case=case):
            return locally_connected(
                x,
                kernel,
                bias,
                strides=case.strides,
                padding=case.padding,
                dilation_rate=case.dilation,
                data_format=case.data_format,
                implementation="native",
            )

        def loss(kernel, bias, x):
            return jnp.mean(jnp.square(layer(kernel, bias, x)))

        forward = jax.jit(layer)
        train = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        args = (kernel, bias, x)
        result = {}
        for mode, fn in (("forward", forward), ("train", train)):
            probe = _time_ms(fn, args, 3)
            calls = int(min(max_calls, max(min_calls, budget_s * 1e3 / max(probe, 1e-3))))
            result[mode] = _time_ms(fn, args, calls)
            result[mode + "_calls"] = calls
        out["cases"][name] = result
    import flax_local

    out["flax_local"] = flax_local.__file__
    out.update(_library_info())
    return out


def _layer_fns(case):
    import jax
    import jax.numpy as jnp

    from flax_local.functional import locally_connected

    def layer(kernel, bias, x):
        return locally_connected(
            x,
            kernel,
            bias,
            strides=case.strides,
            padding=case.padding,
            dilation_rate=case.dilation,
            data_format=case.data_format,
            implementation="native",
        )

    def loss(kernel, bias, x):
        return jnp.mean(jnp.square(layer(kernel, bias, x)))

    return {"forward": layer, "train": jax.value_and_grad(loss, argnums=(0, 1, 2))}


def in_process(
    old_library: str,
    case_names: list[str],
    rounds: int,
    budget_s: float,
    max_calls: int,
    new_library: str | None = None,
    new_suffix: str = "",
) -> dict:
    """Both libraries in one process, their calls alternated one by one (load on the machine cancels).

    The installed kernels are registered by flax_local under their usual FFI
    targets; ``old_library``'s handlers under ``old_<target>``. Each case and
    mode is compiled twice from the same function, once with native.py's
    target names prefixed (checked in the compiled HLO), and both programs'
    results are compared. With ``new_library``, that file's handlers (their
    symbols ending in ``new_suffix``) stand in for the installed kernels, under
    ``new_<target>``: a check of the method with two copies of one library.
    """
    _drop_editable_hook()
    import ctypes

    import jax
    import jax.numpy as jnp
    import numpy as np

    from flax_local._src import native, native_build

    native_build.ensure_loaded()
    new_prefix = "new_" if new_library else ""
    libraries = [("old_", old_library, "")] + ([("new_", new_library, new_suffix)] if new_library else [])
    for prefix, library, suffix in libraries:
        handle = ctypes.CDLL(library)
        for target, symbol in native_build.TARGETS.items():
            capsule = jax.ffi.pycapsule(getattr(handle, symbol + suffix))
            jax.ffi.register_ffi_target(prefix + target, capsule, platform="cpu")
    original = native._target
    module = _load_cases()
    cases = {c.name: c for c in [*module.FULL_CASES, *module.QUICK_CASES]}
    programs = {}
    for name in case_names:
        case = cases[name]
        args = tuple(jnp.asarray(a) for a in (case.arrays(0)[1], case.arrays(0)[2], case.arrays(0)[0]))
        for mode, fn in _layer_fns(case).items():
            native._target = lambda kernel, dtype: "old_" + original(kernel, dtype)
            try:
                old = jax.jit(fn).lower(*args).compile()
            finally:
                native._target = original
            native._target = lambda kernel, dtype: new_prefix + original(kernel, dtype)
            try:
                new = jax.jit(_layer_fns(case)[mode]).lower(*args).compile()
            finally:
                native._target = original
            if "old_flax_local" not in old.as_text() or "old_flax_local" in new.as_text():
                raise RuntimeError(f"{name} {mode}: the programs do not call the intended targets")
            outs = [jax.tree.leaves(jax.block_until_ready(exe(*args))) for exe in (old, new)]
            diff = max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(*outs, strict=True)
            )
            programs[name, mode] = (old, new, args, diff)
    table = []
    for r in range(rounds):
        for (name, mode), (old, new, args, diff) in programs.items():
            for exe in (old, new, old, new):
                jax.block_until_ready(exe(*args))
            start = time.perf_counter()
            jax.block_until_ready(new(*args))
            calls = int(min(max_calls, max(10, budget_s / 2 / (time.perf_counter() - start))))
            times = {"old": [], "new": []}
            for i in range(calls):
                order = (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))
                for which, exe in order:
                    start = time.perf_counter()
                    jax.block_until_ready(exe(*args))
                    times[which].append((time.perf_counter() - start) * 1e3)
            row = {"round": r + 1, "case": name, "mode": mode, "calls": calls, "max_abs_diff": diff}
            row.update({w: statistics.median(t) for w, t in times.items()})
            row["ratio"] = row["new"] / row["old"]
            print(json.dumps(row), file=sys.stderr, flush=True)
            table.append(row)
    library = new_library or native_build.native_kernels()
    return {"library": library, "old_library": old_library, "rows": table}


def _run_worker(root: pathlib.Path, args, environ: dict) -> dict:
    env = dict(os.environ, **environ, PYTHONPATH=str(root), GLIBC_TUNABLES=REUSE_TUNABLES)
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", "--cases", *args.cases]
    command += ["--budget-s", str(args.budget_s), "--min-calls", str(args.min_calls)]
    command += ["--max-calls", str(args.max_calls)]
    done = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker for {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-root", type=pathlib.Path, help="checkout that compiles with -march=native")
    parser.add_argument("--new-root", type=pathlib.Path, default=HERE.parent)
    parser.add_argument("--new-library", help="FLAX_LOCAL_NATIVE_LIBRARY for the new checkout's process")
    parser.add_argument("--old-cache", help="FLAX_LOCAL_CACHE_DIR for the old checkout's process")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=2.0, help="timed seconds per case and mode")
    parser.add_argument("--min-calls", type=int, default=20)
    parser.add_argument("--max-calls", type=int, default=300)
    parser.add_argument("--json", type=pathlib.Path, help="write every round's numbers here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--in-process",
        metavar="OLD_LIBRARY",
        help="instead: load OLD_LIBRARY (the -march=native build) beside the installed kernels in this "
        "process and alternate their calls one by one",
    )
    parser.add_argument(
        "--check-library",
        help="with --in-process: a library to time in place of the installed kernels (e.g. a copy of "
        "OLD_LIBRARY, to see the method's own bias)",
    )
    parser.add_argument("--check-suffix", default="", help="its handler symbols' suffix, e.g. _avx512")
    args = parser.parse_args()
    if args.in_process:
        if args.new_library:
            os.environ["FLAX_LOCAL_NATIVE_LIBRARY"] = args.new_library
        sys.path.insert(0, str(args.new_root.resolve()))
        result = in_process(
            args.in_process,
            args.cases,
            args.rounds,
            args.budget_s,
            args.max_calls,
            args.check_library,
            args.check_suffix,
        )
        print(f"- new: {result['library']}; old: {result['old_library']}")
        rounds = sorted({row["round"] for row in result["rows"]})
        header = " | ".join(f"r{r}" for r in rounds)
        print(f"\n| case | mode | old ms | new ms | {header} | median new/old | max abs diff |")
        print("|---|---|---:|---:|" + "---:|" * len(rounds) + "---:|---:|")
        for name in args.cases:
            for mode in ("forward", "train"):
                rows = [row for row in result["rows"] if (row["case"], row["mode"]) == (name, mode)]
                cells = " | ".join(f"{row['ratio']:.3f}" for row in rows)
                print(
                    f"| {name} | {mode} | {statistics.median(r['old'] for r in rows):.3f} | "
                    f"{statistics.median(r['new'] for r in rows):.3f} | {cells} | "
                    f"{statistics.median(r['ratio'] for r in rows):.3f} | {rows[0]['max_abs_diff']:.2g} |"
                )
        return
    if args.worker:
        print(json.dumps(worker(args.cases, args.budget_s, args.min_calls, args.max_calls)))
        return
    if args.old_root is None:
        parser.error("--old-root is required")
    old_env = {"FLAX_LOCAL_CACHE_DIR": args.old_cache or tempfile.mkdtemp(prefix="flax_local_old_")}
    new_env = {"FLAX_LOCAL_NATIVE_LIBRARY": args.new_library} if args.new_library else {}
    rounds = []
    for r in range(args.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        runs = {}
        for which in order:
            root, environ = (args.old_root, old_env) if which == "old" else (args.new_root, new_env)
            runs[which] = _run_worker(root.resolve(), args, environ)
            print(f"round {r + 1} {which}: {json.dumps(runs[which])}", file=sys.stderr, flush=True)
        rounds.append(runs)
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=1))
    for which in ("old", "new"):
        info = rounds[0][which]
        print(
            f"- {which}: {info['flax_local']}, library {info['library']} ({info['path']}, {info['variant']})"
        )
    header = " | ".join(f"r{r + 1}" for r in range(args.rounds))
    print(f"\n| case | mode | old ms (median of rounds) | new ms | {header} | median new/old |")
    print("|---|---|---:|---:|" + "---:|" * args.rounds + "---:|")
    for name in args.cases:
        for mode in ("forward", "train"):
            old = [run["old"]["cases"][name][mode] for run in rounds]
            new = [run["new"]["cases"][name][mode] for run in rounds]
            ratios = [n / o for n, o in zip(new, old, strict=True)]
            cells = " | ".join(f"{q:.3f}" for q in ratios)
            print(
                f"| {name} | {mode} | {statistics.median(old):.3f} | {statistics.median(new):.3f} | "
                f"{cells} | {statistics.median(ratios):.3f} |"
            )


if __name__ == "__main__":
    main()
