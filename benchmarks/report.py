"""Tables (plain text and Markdown) and the target check, from a run's JSON."""

from __future__ import annotations

import math

from flax_local._src import registry

MIB = 2**20
DEFAULT = "flax_local:auto"
BASELINE = "ConvLocal"
EXPLICIT = tuple(f"flax_local:{name}" for name in registry.NAMES)


def _row(case: dict, impl: str, mode: str) -> dict | None:
    for row in case["results"]:
        if row["impl"] == impl and row.get("mode") == mode and "median_ms" in row:
            return row
    return None


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.0f}" if value >= 10 * MIB else f"{value / MIB:.1f}"


def speedup(case: dict, impl: str, mode: str) -> float | None:
    """ConvLocal's median over ``impl``'s (> 1: ``impl`` is faster)."""
    ours, base = _row(case, impl, mode), _row(case, BASELINE, mode)
    if ours is None or base is None:
        return None
    return base["median_ms"] / ours["median_ms"]


def floor_ratio(case: dict, impl: str, mode: str) -> float | None:
    """``impl``'s median over the roofline floor (1 = at the floor)."""
    row = _row(case, impl, mode)
    return None if row is None else row["median_ms"] / case["floor_ms"][mode]


def back_to_back_floor_ratio(case: dict, impl: str, mode: str) -> float | None:
    """``impl``'s median timed alone, calls in a row, over the roofline floor (None if not timed so)."""
    row = _row(case, impl, mode)
    steady = row and row.get("back_to_back")
    return None if not steady else steady["median_ms"] / case["floor_ms"][mode]


def floor_ratio_matmul_in_turns(case: dict, impl: str) -> float | None:
    """``impl``'s training-step median over the floor of the case's own moment.

    That floor (``matmul_in_turns["floor_ms"]``, set by the run) takes the
    matmul's GFLOP/s from the median of a matmul timed in turns with the case's
    training steps instead of the run's best: a median against a median of the
    same rounds, so a machine that slows down during the run moves both. None
    where the run timed no matmul.
    """
    row, probe = _row(case, impl, "train"), case.get("matmul_in_turns")
    return None if row is None or not probe else row["median_ms"] / probe["floor_ms"]


def auto_check(case: dict, mode: str) -> dict:
    """Whether ``auto``'s pick is within 10% of the fastest explicit implementation."""
    timed = {impl: _row(case, impl, mode) for impl in EXPLICIT}
    timed = {impl: row["median_ms"] for impl, row in timed.items() if row is not None}
    picked = "flax_local:" + case["auto_choice"]
    if not timed or picked not in timed:
        return {"picked": case["auto_choice"], "fastest": None, "ratio": None, "ok": None}
    fastest = min(timed, key=timed.get)
    ratio = timed[picked] / timed[fastest]
    return {
        "picked": case["auto_choice"],
        "fastest": fastest.split(":")[1],
        "ratio": ratio,
        "ok": ratio <= 1.10,
    }


def targets(run: dict) -> dict:
    """The issue's targets, evaluated on the default implementation ("auto")."""
    cases = run["cases"]
    train = {c["name"]: speedup(c, DEFAULT, "train") for c in cases}
    forward = {c["name"]: speedup(c, DEFAULT, "forward") for c in cases}
    cases_2d = [c for c in cases if len(c["case"]["spatial"]) == 2]
    floors = {c["name"]: floor_ratio(c, DEFAULT, "train") for c in cases_2d}
    steady_floors = {c["name"]: back_to_back_floor_ratio(c, DEFAULT, "train") for c in cases_2d}
    moment_floors = {
        c["name"]: floor_ratio_matmul_in_turns(c, DEFAULT) for c in cases_2d if c.get("matmul_in_turns")
    }
    compile_ok, memory_ok = {}, {}
    for c in cases:
        ours, base = _row(c, DEFAULT, "train"), _row(c, BASELINE, "train")
        if ours and base:
            compile_ok[c["name"]] = ours["compile_ms"] <= base["compile_ms"]
            if ours.get("xla_peak_bytes") is not None and base.get("xla_peak_bytes") is not None:
                memory_ok[c["name"]] = ours["xla_peak_bytes"] <= base["xla_peak_bytes"]
    autos = {c["name"]: auto_check(c, "train")["ok"] for c in cases}
    beats_tf = {mode: _beats_tf_keras(cases, mode) for mode in ("train", "forward")}
    values = [v for v in train.values() if v]
    geomean = math.exp(sum(math.log(v) for v in values) / len(values)) if values else None
    return {
        "train_speedup": train,
        "train_min_speedup": min(values) if values else None,
        "train_geomean_speedup": geomean,
        "forward_speedup": forward,
        "train_floor_ratio_2d": floors,
        "train_floor_ratio_2d_back_to_back": steady_floors,
        "train_floor_ratio_2d_matmul_in_turns": moment_floors,
        "compile_no_worse": compile_ok,
        "xla_peak_no_worse": memory_ok,
        "auto_within_10pct": autos,
        "faster_than_tf_keras_train": beats_tf["train"],
        "faster_than_tf_keras_forward": beats_tf["forward"],
    }


def _beats_tf_keras(cases: list[dict], mode: str) -> dict:
    """Per case with a timed tf_keras row: whether "auto" is faster than every one."""
    result = {}
    for c in cases:
        ours = _row(c, DEFAULT, mode)
        theirs = [
            row["median_ms"]
            for row in c["results"]
            if row["impl"].startswith("tf_keras") and row.get("mode") == mode and "median_ms" in row
        ]
        if ours and theirs:
            result[c["name"]] = ours["median_ms"] < min(theirs)
    return result


def _all_met(d: dict) -> bool | None:
    """True when every case met it, None when no case could be checked."""
    return None if not d else all(d.values())


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "MISSED"


def markdown(run: dict, others: tuple[dict, ...] = ()) -> str:
    """The full report as Markdown (what ``--markdown`` writes).

    Args:
      run: the main run (this machine's), rendered first.
      others: runs of other machines (e.g. a GPU's, from ``--also``), each
        rendered after it as a section of its own with the same tables.

    Returns:
      The Markdown text.
    """
    lines = [
        "# flax_local benchmark results",
        "",
        "Regenerate with `python -m benchmarks.run --markdown benchmarks/RESULTS.md "
        "--json benchmarks/results.json` (add `--tf-python PATH` for a Python with "
        "`tensorflow` and `tf_keras`, and `--also benchmarks/results_cpu_default_malloc.json "
        "benchmarks/results_cpu_avx512.json benchmarks/results_gpu.json` to keep the other "
        "sections). The GPU section comes from `python -m benchmarks.run --no-tf --slow-limit-s 5 "
        "--max-repeats 1000 --json benchmarks/results_gpu.json` run on the GPU machine; the "
        "section with glibc's own malloc settings from `python -m benchmarks.run --malloc default "
        "--no-tf --cases keras_doc big56 large --json benchmarks/results_cpu_default_malloc.json`.",
        "",
    ]
    lines += _run_markdown(run, level=2)
    for other in others:
        lines += ["", f"## {_machine_title(other['machine'])}", ""]
        lines += _run_markdown(other, level=3)
    return "\n".join(lines) + "\n"


def _machine_title(machine: dict) -> str:
    """A section title naming a run's device, e.g. ``GPU: NVIDIA H100 80GB HBM3``.

    A CPU run that recorded its allocator and did not reuse freed memory says
    so, to tell it from the same machine's run that did.
    """
    if machine.get("accelerator"):
        return f"{machine['backend'].upper()}: {machine['accelerator']}"
    title = f"{machine['backend'].upper()}: {machine['cpu']}"
    if machine.get("libc") and not machine.get("reuses_freed_memory"):
        title += ", glibc's malloc as it comes (`--malloc default`)"
    return title


def _ceilings_line(ceil: dict, reuses_freed_memory: bool = False) -> str:
    """The ceilings as the Method list states them (sizes from the run; older runs: CPU sizes)."""
    copy = f"{ceil['copy_gbps']} GB/s ({ceil.get('copy_mib', 16)} MiB)"
    fresh_mib = ceil.get("copy_fresh_mib", 128)
    if ceil.get("copy_fresh_gbps") is not None:
        where = "into the heap's freed memory" if reuses_freed_memory else "freshly mapped"
        copy += f", {ceil['copy_fresh_gbps']} GB/s ({fresh_mib} MiB, {where})"
    return (
        f"matmul {ceil['matmul_gflops']['float32']} GFLOP/s float32, "
        f"{ceil['matmul_gflops']['bfloat16']} GFLOP/s bfloat16 ({ceil['matmul_size']}^3, default "
        f"precision); copy {copy}"
        + (
            f"; a trivial jitted call (dispatch and synchronisation) {ceil['call_ms']:.3g} ms"
            if ceil.get("call_ms") is not None
            else ""
        )
    )


def _run_markdown(run: dict, level: int) -> list[str]:
    """One run's facts and tables, its headings at ``level``."""
    m, ceil, h = run["machine"], run["ceilings"], "#" * level
    device = f"; {m['accelerator']}" if m.get("accelerator") else ""
    if m["backend"] == "cpu" and m.get("native_kernels"):
        device += f"; native kernels built for {m['native_kernels']}"
    lines = [
        f"- Date: {m['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; backend {m['backend']}{device}",
        f"- Load average (1/5/15 min) at start: {m['load_average']}; at end: {run.get('load_average_end')}",
        f"- Software: Python {m['python']}, jax {m['jax']}, flax {m['flax']}, numpy {m['numpy']}"
        + (
            f", tf_keras via `{run['tf']['python']}` ({run['tf'].get('version')})"
            if run["tf"].get("available")
            else ""
        ),
        *_memory_lines(m),
        f"- Ceilings ({_ceilings_source(run)}): {_ceilings_line(ceil, m.get('reuses_freed_memory', False))}",
        f"- Method: jit, {run['config']['warmup']} warm-up calls, median of {_calls(run['config'])}; `patches`, `auto` and ConvLocal (and other JAX rows within 5x of `patches`) are timed in turns, one call of each per round; `auto` is then timed again alone, as many calls in a row "
        '("back to back": the steady state of a loop running only this step, without the other rows '
        "evicting the caches in between). Training step = `value_and_grad` of `mean(y**2)` w.r.t. parameters and input. "
        f"{_compile_method(run['config'])} XLA peak = arguments + outputs + temporaries (XLA memory analysis); "
        "RSS = largest resident-set growth seen while compiling and warming up (not sampled during timed calls"
        + ("; host memory, not the device's" if m.get("accelerator") else "")
        + ").",
        "- Roofline floor = max(flops / matmul ceiling, minimum bytes / copy ceiling); see `benchmarks/machine.py`.",
        "",
    ]
    if m["load_average"] and m["cores"] and m["load_average"][0] > 0.5 * m["cores"]:
        lines += [
            f"**Note: the machine was shared and loaded (load average {m['load_average'][0]} on "
            f"{m['cores']} cores at the start): absolute times are inflated and noisy; ratios "
            "between rows of one case were measured interleaved in time and are more reliable.**",
            "",
        ]
    lines += _targets_markdown(run, level)
    lines += ["", f"{h} Per case: default implementation and the auto check", ""]
    lines += [
        "| case | shapes | floor fwd / train ms | auto picks | fastest (train) | auto / fastest (train) | "
        "auto within 10% | default fwd speed-up | default train speed-up | default train x floor | "
        "same, back to back |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in run["cases"]:
        check = auto_check(c, "train")
        lines.append(
            f"| {c['name']} | {c['case']['summary']} | {_ms(c['floor_ms']['forward'])} / "
            f"{_ms(c['floor_ms']['train'])} | {check['picked']} | {check['fastest'] or '-'} | "
            f"{_ratio(check['ratio'])} | {_verdict(check['ok'])} | "
            f"{_ratio(speedup(c, DEFAULT, 'forward'))} | {_ratio(speedup(c, DEFAULT, 'train'))} | "
            f"{_ratio(floor_ratio(c, DEFAULT, 'train'))} | {_ratio(back_to_back_floor_ratio(c, DEFAULT, 'train'))} |"
        )
    lines += _system_time_markdown(run, level)
    lines += _matmul_in_turns_markdown(run, level)
    lines += ["", f"{h} All rows", ""]
    lines += [
        "| case | implementation | fwd ms | train ms | speed-up vs ConvLocal fwd / train | train x floor | "
        "compile ms fwd / train | XLA peak MiB train | RSS growth MiB train | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in run["cases"]:
        for impl in _impls(c):
            lines.append(_markdown_row(c, impl))
    standing = STANDING_NOTES if m["backend"] == "cpu" else ACCELERATOR_NOTES
    lines += ["", f"{h} Notes", ""] + [f"- {n}" for n in [*standing, *run.get("notes", [])]]
    return lines


def _memory_lines(machine: dict) -> list[str]:
    """The OS's memory management, where the run recorded it (older runs did not)."""
    if "transparent_hugepages" not in machine:
        return []
    line = f"- Memory: transparent huge pages `{machine['transparent_hugepages']}`"
    reporting = machine.get("free_page_reporting")
    if reporting:
        block = (
            "" if reporting["order"] is None else f" in blocks of {4 * 2 ** reporting['order']} KiB and more"
        )
        delay = "" if reporting["delay_ms"] is None else f", {reporting['delay_ms']} ms after they are freed"
        line += (
            f"; a virtual machine that hands free memory back to its hypervisor{block}{delay} "
            "(free page reporting), so a freshly mapped buffer faults in the host as well as in the guest"
        )
    if "libc" in machine:
        line += f"; {_allocator_words(machine)}"
    return [line]


def _allocator_words(machine: dict) -> str:
    """What the run's allocator did with freed memory (``allocator.describe``'s facts)."""
    if machine["reuses_freed_memory"]:
        return (
            f"{machine['libc']} with `GLIBC_TUNABLES={machine['glibc_tunables']}` (`--malloc reuse`): "
            "freed buffers stay in the process's heap for the next call, none is mapped afresh, and "
            "RSS growth counts only memory beyond what earlier rows left in the heap"
        )
    if machine["libc"] is None:
        return "C library not glibc (its allocator as it comes)"
    tunables = f" (`GLIBC_TUNABLES={machine['glibc_tunables']}`)" if machine["glibc_tunables"] else ""
    return (
        f"{machine['libc']}'s malloc as configured{tunables} (`--malloc default`): every buffer over "
        "32 MiB is mapped afresh, zeroed by the OS and unmapped on every call"
    )


def _matmul_in_turns_markdown(run: dict, level: int) -> list[str]:
    """The floor from a matmul timed in turns with each case's training steps, where run."""
    rows = []
    for c in run["cases"]:
        ratio = floor_ratio_matmul_in_turns(c, DEFAULT)
        if ratio is None:
            continue
        rows.append(
            f"| {c['name']} | {c['matmul_in_turns']['gflops']:.0f} | "
            f"{_ratio(floor_ratio(c, DEFAULT, 'train'))} | "
            f"{_ratio(ratio)} |"
        )
    if not rows:
        return []
    matmul = run["ceilings"]["matmul_gflops"]["float32"]
    return [
        "",
        f"{'#' * level} The floor at each case's own moment (default training step)",
        "",
        f"A {run['ceilings']['matmul_size']}^3 matmul in the case's dtype was timed in the same "
        "rounds as the training steps timed in turns; its median GFLOP/s, in place of the run's "
        f"best ({matmul} float32), gives a floor of the moment the case ran: a median against a "
        "median, so a shared machine that slows down during the run moves both. The targets above "
        "use the run's ceilings.",
        "",
        "| case | matmul GFLOP/s, in turns | train x floor (run's ceilings) | train x floor (matmul in turns) |",
        "|---|---|---|---|",
        *rows,
    ]


def _system_time_markdown(run: dict, level: int) -> list[str]:
    """The default training step's time in the OS kernel, where the run measured it."""
    rows = []
    for c in run["cases"]:
        row = _row(c, DEFAULT, "train")
        if row is None or row.get("system_ms") is None:
            continue
        steady = row.get("back_to_back") or {}
        rows.append(
            f"| {c['name']} | {_ms(row['median_ms'])} | {_ms(row['system_ms'])} | "
            f"{_ms(steady.get('median_ms'))} | {_ms(steady.get('system_ms'))} |"
        )
    if not rows:
        return []
    return [
        "",
        f"{'#' * level} Time in the OS kernel (default training step)",
        "",
        "CPU time the process spent in the OS kernel per call (both threads, mean over the timed "
        "calls): page faults on freshly mapped buffers, thread wake-ups. Next to the median wall time "
        "it shows which cases lose time to the machine's memory management rather than to computing.",
        "",
        "| case | train ms, in turns | OS ms per call, in turns | train ms, back to back | OS ms per call, back to back |",
        "|---|---|---|---|---|",
        *rows,
    ]


STANDING_NOTES = [
    "Times are medians of wall-clock time; every timed call, the minimum and the load "
    "average are in the JSON (`--json`).",
    "`flax_local:auto` runs the same compiled program as the implementation it picks "
    "(`native` on a single-device CPU): the gap between those two rows is the run-to-run "
    "noise of the machine.",
    "With glibc's malloc as it comes, XLA's buffers over 32 MiB are mapped afresh on every "
    "call, so every implementation pays page faults on the large cases (big56, large); "
    "`--malloc reuse` (the default since 2026-11-24; each section's Memory line says which a run "
    "used) keeps freed memory in the heap instead. The native kernels also ask for transparent "
    "huge pages on their own large outputs (`madvise`), which halved big56's kernel-gradient "
    "time on the Intel machine and cut the training step of large to 0.4x (big56 0.6x) on the "
    "AMD one, timed back to back with fresh mappings.",
    "The native kernels split positions across XLA's intra-op thread pool (both cores). "
    "XLA:CPU (jax 0.10.2) runs the `patches` implementation's `dot_general` batched over "
    "positions on one core unless each position's batch is in the thousands, and TensorFlow's "
    "batched matmul (tf_keras implementation 1) splits positions across cores (measured on "
    "big56's shapes: 1.7 cores, 13.7 ms against XLA's 1.0 core, ~21 ms).",
    "tf_keras rows: TF in its own process, `tf.function` without XLA, timing only (its own "
    "random weights); its compile column is the first (tracing) call. tf_keras has no 3D "
    "layer and no dilation; implementation 1 supports only `valid` padding.",
    "The JAX rows hold the same weights (ConvLocal's kernel rearranged to its layout); "
    "outputs, loss and all gradients of every row were checked against `flax_local:patches` "
    "(relative error <= 1e-4, 3e-2 for bfloat16; the run stops on a mismatch).",
]


ACCELERATOR_NOTES = [
    "Times are medians of wall-clock time around each call, `block_until_ready` included, so "
    "they hold the host's dispatch of the call as well as the device's work; every timed call, "
    "the minimum and the load average are in the JSON (`--json`).",
    "`flax_local:auto` runs the same compiled program as the implementation it picks: the gap "
    "between those two rows is the run-to-run noise of the machine.",
    "The native kernels are CPU code: elsewhere `flax_local:native` lowers to a gather-and-einsum "
    "formulation of the same products, and `auto` never picks it.",
    "The targets are the issue's, set for the 2-core CPU; here they are the same ratios on "
    "another machine. No tf_keras rows (TensorFlow is not installed on the GPU machine).",
    "The JAX rows hold the same weights (ConvLocal's kernel rearranged to its layout); "
    "outputs, loss and all gradients of every row were checked against `flax_local:patches` "
    "(relative error <= 5e-3 for float32, since at default precision the GPU may round "
    "float32 products to TF32; 3e-2 for bfloat16; the run stops on a mismatch).",
]


def _ceilings_source(run: dict) -> str:
    """How the ceilings were measured, with both measurements when there were two."""
    start, end = run.get("ceilings_start"), run.get("ceilings_end")
    if not (start and end):
        return "measured"
    return (
        "measured at the start and at the end of the run, the higher of each; start: matmul "
        f"{start['matmul_gflops']['float32']} GFLOP/s float32, copy {start['copy_gbps']} GB/s; end: "
        f"{end['matmul_gflops']['float32']}, {end['copy_gbps']}"
    )


def _compile_method(config: dict) -> str:
    """What the compile column measured, as the Method line says it."""
    repeats = config.get("compile_repeats", 1)
    if repeats <= 1:
        return "Compile = trace + lower + compile, once."
    return (
        f"Compile = trace + lower + compile; for `patches`, `auto` and ConvLocal the fastest of {repeats} "
        "compilations from scratch (one compilation of the same program varied by up to 1.7x in earlier runs), once for the other rows."
    )


def _calls(config: dict) -> str:
    """How many timed calls a measurement took, as the Method line says it."""
    repeats, min_time_s = config["repeats"], config.get("min_time_s", 0)
    if not min_time_s:
        return f"{repeats} timed calls"
    return (
        f"at least {repeats} timed calls (more for fast rows: as many rounds as fit in "
        f"{min_time_s:g} s per case and mode, up to {config.get('max_repeats')}; the count is in the JSON)"
    )


def _impls(case: dict) -> list[str]:
    seen = []
    for row in case["results"]:
        if row["impl"] not in seen:
            seen.append(row["impl"])
    return seen


def _note(case: dict, impl: str) -> str:
    notes = []
    for row in case["results"]:
        if row["impl"] == impl:
            for key in ("skipped", "note", "agreement"):
                if row.get(key) and row[key] not in notes:
                    notes.append(row[key] if key != "skipped" else f"skipped: {row[key]}")
    return "; ".join(notes)


def _markdown_row(case: dict, impl: str) -> str:
    fwd, train = _row(case, impl, "forward"), _row(case, impl, "train")
    return (
        f"| {case['name']} | {impl} | {_ms(fwd and fwd['median_ms'])} | {_ms(train and train['median_ms'])} | "
        f"{_ratio(speedup(case, impl, 'forward'))} / {_ratio(speedup(case, impl, 'train'))} | "
        f"{_ratio(floor_ratio(case, impl, 'train'))} | {_ms(fwd and fwd['compile_ms'])} / "
        f"{_ms(train and train['compile_ms'])} | {_mib(train and train.get('xla_peak_bytes'))} | "
        f"{_mib(train and train.get('rss_peak_delta_bytes'))} | {_note(case, impl)} |"
    )


def _targets_markdown(run: dict, level: int = 2) -> list[str]:
    t = targets(run)
    train = [v for v in t["train_speedup"].values() if v is not None]
    forward = [v for v in t["forward_speedup"].values() if v is not None]
    floors = [v for v in t["train_floor_ratio_2d"].values() if v is not None]

    def worst(d: dict, fn=min) -> str:
        items = {k: v for k, v in d.items() if v is not None}
        if not items:
            return "-"
        k = fn(items, key=items.get)
        return f"{k} {_ratio(items[k])}"

    def failing(d: dict) -> str:
        bad = [k for k, v in d.items() if v is False]
        return "all cases" if not bad else "not on: " + ", ".join(bad)

    rows = [
        (
            "training step >= 3x faster than ConvLocal on every case",
            bool(train) and min(train) >= 3,
            f"worst {worst(t['train_speedup'])}",
        ),
        (
            "training step geometric-mean speed-up >= 5x",
            t["train_geomean_speedup"] is not None and t["train_geomean_speedup"] >= 5,
            _ratio(t["train_geomean_speedup"]),
        ),
        (
            "forward >= 3x faster than ConvLocal on every case",
            bool(forward) and min(forward) >= 3,
            f"worst {worst(t['forward_speedup'])}",
        ),
        (
            "training step within 3x of the roofline floor on 2D cases",
            bool(floors) and max(floors) <= 3,
            f"worst {worst(t['train_floor_ratio_2d'], max)} (timed in turns, as every ratio here; "
            f"timed back to back: worst {worst(t.get('train_floor_ratio_2d_back_to_back', {}), max)}"
            + (
                f"; against a matmul timed in the same turns: worst "
                f"{worst(t['train_floor_ratio_2d_matmul_in_turns'], max)}"
                if t.get("train_floor_ratio_2d_matmul_in_turns")
                else ""
            )
            + ")",
        ),
        (
            "compile time no worse than ConvLocal's (train)",
            _all_met(t["compile_no_worse"]),
            failing(t["compile_no_worse"]),
        ),
        (
            "XLA peak memory no worse than ConvLocal's (train)",
            _all_met(t["xla_peak_no_worse"]),
            failing(t["xla_peak_no_worse"]),
        ),
        (
            "faster than every tf_keras implementation (train)",
            _all_met(t.get("faster_than_tf_keras_train", {})),
            failing(t.get("faster_than_tf_keras_train", {})) + " (of the cases with a timed tf_keras row)",
        ),
        (
            "faster than every tf_keras implementation (forward)",
            _all_met(t.get("faster_than_tf_keras_forward", {})),
            failing(t.get("faster_than_tf_keras_forward", {})) + " (of the cases with a timed tf_keras row)",
        ),
        (
            "auto within 10% of the fastest implementation (train)",
            all(v is not False for v in t["auto_within_10pct"].values()),
            failing(t["auto_within_10pct"]),
        ),
    ]
    lines = [
        f"{'#' * level} Targets (default implementation, `auto`)",
        "",
        "| target | result | detail |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {_verdict(ok)} | {detail} |" for name, ok, detail in rows]
    return lines


def text(run: dict) -> str:
    """A compact plain-text table for the terminal."""
    out = []
    header = (
        f"{'case':<10} {'implementation':<20} {'fwd ms':>8} {'train ms':>9} {'vsCL fwd':>8} {'vsCL trn':>8} "
        f"{'x floor':>8} {'compile':>8} {'XLA MiB':>8}  note"
    )
    for c in run["cases"]:
        check = auto_check(c, "train")
        out.append("")
        out.append(
            f"{c['name']}: {c['case']['summary']} | floor fwd {_ms(c['floor_ms']['forward'])} ms, train "
            f"{_ms(c['floor_ms']['train'])} ms | auto -> {check['picked']}, fastest {check['fastest']}, "
            f"ratio {_ratio(check['ratio'])} ({_verdict(check['ok'])})"
        )
        out.append(header)
        for impl in _impls(c):
            fwd, train = _row(c, impl, "forward"), _row(c, impl, "train")
            out.append(
                f"{c['name']:<10} {impl:<20} {_ms(fwd and fwd['median_ms']):>8} "
                f"{_ms(train and train['median_ms']):>9} {_ratio(speedup(c, impl, 'forward')):>8} "
                f"{_ratio(speedup(c, impl, 'train')):>8} {_ratio(floor_ratio(c, impl, 'train')):>8} "
                f"{_ms(train and train['compile_ms']):>8} {_mib(train and train.get('xla_peak_bytes')):>8}  "
                f"{_note(c, impl)}"
            )
    out.append("")
    out.extend(line for line in _targets_markdown(run) if line.startswith("| ") and "---" not in line)
    return "\n".join(out)
