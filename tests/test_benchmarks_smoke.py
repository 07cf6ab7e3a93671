"""Smoke test of the benchmark command: it runs and writes valid JSON.

Never asserts speed: CI machines are shared and timings are noise there.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_writes_json(tmp_path):
    out_json, out_md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--no-tf",
            "--cases",
            "tiny2d",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    run = json.loads(out_json.read_text())
    assert run["config"]["quick"] is True
    assert run["ceilings"]["matmul_gflops"]["float32"] > 0
    from flax_local._src import native_build

    if native_build.is_available():
        kernels = native_build.vector_path()
        assert run["machine"]["native_kernels"] == kernels
        assert f"native kernels built for {kernels}" in out_md.read_text()
    else:
        assert run["machine"]["native_kernels"].startswith("unavailable: ")
    for key in ("copy_gbps", "copy_fresh_gbps"):  # the best of the start and end measurements
        assert run["ceilings"][key] == max(run["ceilings_start"][key], run["ceilings_end"][key])
    (case,) = run["cases"]
    assert case["name"] == "tiny2d"
    timed = {(r["impl"], r["mode"]) for r in case["results"] if "median_ms" in r}
    for impl in ("flax_local:patches", "flax_local:auto", "ConvLocal"):
        assert (impl, "forward") in timed and (impl, "train") in timed, timed
    for row in case["results"]:
        if "median_ms" in row:
            assert row["median_ms"] > 0 and len(row["times_ms"]) >= 10
            assert row["compile_ms"] > 0
    assert "targets" in run and "train_speedup" in run["targets"]
    assert out_md.read_text().startswith("# flax_local benchmark results")
    for impl in ("flax_local:patches", "flax_local:auto", "ConvLocal"):
        rows = [r for r in case["results"] if r["impl"] == impl and "median_ms" in r]
        assert all(r["timed_in_turns"] for r in rows), rows
        # The default row alone is timed again back to back, as many calls.
        for row in rows:
            steady = row.get("back_to_back")
            assert (steady is not None) == (impl == "flax_local:auto"), row
            if steady:
                assert len(steady["times_ms"]) == len(row["times_ms"]) and steady["median_ms"] > 0
    ratio = run["targets"]["train_floor_ratio_2d_back_to_back"]["tiny2d"]
    auto_train = next(
        r for r in case["results"] if r["impl"] == "flax_local:auto" and r.get("mode") == "train"
    )
    assert ratio == auto_train["back_to_back"]["median_ms"] / case["floor_ms"]["train"]
    assert "same, back to back" in out_md.read_text()
    assert run["ceilings"]["call_ms"] == min(run["ceilings_start"]["call_ms"], run["ceilings_end"]["call_ms"])
    assert run["ceilings"]["call_ms"] > 0 and "a trivial jitted call" in out_md.read_text()
    assert auto_train["system_ms"] >= 0 and auto_train["back_to_back"]["system_ms"] >= 0
    assert "Time in the OS kernel (default training step)" in out_md.read_text()
    # A matmul timed in turns with the training steps; its row is the case's probe, not a result.
    probe = case["matmul_in_turns"]
    assert probe["size"] == run["ceilings"]["matmul_size"] and probe["gflops"] > 0, probe
    from benchmarks.run import _set_moment_floor

    again = {**case, "matmul_in_turns": dict(probe)}
    _set_moment_floor(again, run["ceilings"])  # its floor is of the run's final ceilings, as floor_ms
    assert again["matmul_in_turns"]["floor_ms"] == probe["floor_ms"] > 0
    assert all(not row["impl"].startswith("machine:") for row in case["results"])
    assert "The floor at each case's own moment" in out_md.read_text()
    # The command re-ran itself with glibc keeping freed memory (--malloc reuse, the default).
    from benchmarks import allocator

    assert run["config"]["malloc"] == "reuse"
    assert run["machine"]["reuses_freed_memory"] == (allocator.glibc_version() is not None)
    assert {"transparent_hugepages", "free_page_reporting"} <= set(run["machine"])


def test_another_machines_run_renders_as_its_own_section(tmp_path):
    """``--also``: a GPU run's JSON becomes a section with the same tables, headings one level down."""
    from benchmarks import run as run_module

    cpu = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    gpu = json.loads(json.dumps(cpu))
    gpu["machine"].update(backend="gpu", accelerator="Some GPU")
    gpu["ceilings"].update(copy_fresh_gbps=None, copy_mib=1024, call_ms=0.0621)
    gpu["cases"] = gpu["cases"][:1]
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    out = tmp_path / "RESULTS.md"
    run_module.main(
        ["--render", str(tmp_path / "cpu.json"), "--also", str(tmp_path / "gpu.json"), "--markdown", str(out)]
    )
    text = out.read_text()
    main_part, gpu_part = text.split("\n## GPU: Some GPU\n")
    assert "## Targets" in main_part and "### Targets" not in main_part
    assert "### Targets" in gpu_part and "### All rows" in gpu_part and "\n## " not in gpu_part
    # One copy ceiling: an accelerator's allocator maps no fresh buffers.
    assert f"copy {gpu['ceilings']['copy_gbps']} GB/s (1024 MiB);" in gpu_part
    assert "0.0621 ms" in gpu_part and "backend gpu; Some GPU" in gpu_part
    assert gpu_part.count("| " + gpu["cases"][0]["name"] + " |") >= 2  # per-case and all-rows tables


def test_time_interleaved_times_each_call_in_rotating_turns():
    from benchmarks import measure

    order = []

    def recorder(name):
        def call(value):
            order.append(name)
            return value

        return call

    timings = measure.time_interleaved(
        [(recorder("a"), (1,)), (recorder("b"), (2,)), (recorder("c"), (3,))], repeats=4
    )
    assert [len(t["times_ms"]) for t in timings] == [4, 4, 4]
    assert all(t["min_ms"] <= t["median_ms"] for t in timings)
    # One call of each per round; the first of each round rotates.
    assert order == list("abcbcacababc")


def test_time_interleaved_measures_the_os_time_of_each_call():
    """Page faults on fresh memory show as OS time; a call that does nothing shows almost none."""
    import numpy as np

    from benchmarks import measure

    def fresh_pages():
        return np.ones(16 * 2**20, np.float32)  # 64 MiB: freshly mapped and written every call

    def nothing():
        return None

    faulting, idle = measure.time_interleaved([(fresh_pages, ()), (nothing, ())], repeats=5)
    assert faulting["system_ms"] > 1.0, faulting  # 16384 page faults take milliseconds
    assert 0 <= idle["system_ms"] < faulting["system_ms"] / 10, (idle, faulting)


def test_memory_management_renders_where_recorded():
    from benchmarks import report

    machine = {"transparent_hugepages": "madvise", "free_page_reporting": {"order": 9, "delay_ms": 0}}
    (line,) = report._memory_lines(machine)
    assert "transparent huge pages `madvise`" in line
    assert "in blocks of 2048 KiB and more, 0 ms after they are freed" in line
    (line,) = report._memory_lines({"transparent_hugepages": "always", "free_page_reporting": None})
    assert line == "- Memory: transparent huge pages `always`"
    assert report._memory_lines({}) == []  # runs from before these facts were recorded


REUSE_PROBE = """
import resource, threading
import numpy as np

def fresh():
    return np.ones(16 * 2**20, np.float32)  # 64 MiB, more than glibc maps per request by default

def work():
    fresh(), fresh()  # warm-up: the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        fresh()
    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)

out = []
thread = threading.Thread(target=work)  # XLA allocates from its own threads, too
thread.start()
thread.join()
print(out[0])
"""


def test_reuse_tunables_keep_large_buffers_out_of_the_os():
    """With REUSE_TUNABLES a thread's 64 MiB buffers come back from the heap: no page faults.

    Counts the page faults themselves (exact): the OS time they cost is
    accounted in scheduler ticks, and one tick landing in the reused
    buffers' calls once made them look a fifth as costly as fresh ones.
    """
    import pytest

    from benchmarks import allocator

    if allocator.glibc_version() is None:
        pytest.skip("GLIBC_TUNABLES needs glibc")
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    faults = {}
    for name, env in (("default", plain), ("reuse", allocator.environment_with_reuse(plain))):
        done = subprocess.run(
            [sys.executable, "-c", REUSE_PROBE], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        faults[name] = float(done.stdout.split()[-1])
    # A fresh 64 MiB mapping faults once per page: 16384 4 KiB pages, or about
    # 32 huge ones (numpy asks for huge pages on large arrays).
    assert faults["default"] >= 16, faults
    assert faults["reuse"] < faults["default"] / 10, faults


def test_allocator_renders_what_the_run_used():
    from benchmarks import allocator, report

    facts = {"transparent_hugepages": "madvise", "free_page_reporting": None}
    reuse = {"libc": "glibc 2.36", "glibc_tunables": allocator.REUSE_TUNABLES, "reuses_freed_memory": True}
    (line,) = report._memory_lines({**facts, **reuse})
    assert f"glibc 2.36 with `GLIBC_TUNABLES={allocator.REUSE_TUNABLES}` (`--malloc reuse`)" in line
    plain = {"libc": "glibc 2.36", "glibc_tunables": "", "reuses_freed_memory": False}
    (line,) = report._memory_lines({**facts, **plain})
    assert "glibc 2.36's malloc as configured (`--malloc default`): every buffer over 32 MiB" in line
    (line,) = report._memory_lines(
        {**facts, "libc": None, "glibc_tunables": "", "reuses_freed_memory": False}
    )
    assert line.endswith("C library not glibc (its allocator as it comes)")
    cpu = {"backend": "cpu", "cpu": "AMD EPYC"}
    assert report._machine_title({**cpu, **reuse}) == "CPU: AMD EPYC"
    assert report._machine_title({**cpu, **plain}).endswith("glibc's malloc as it comes (`--malloc default`)")
    assert report._machine_title(cpu) == "CPU: AMD EPYC"  # runs from before the allocator was recorded
    assert allocator.reuses_freed_memory(allocator.environment_with_reuse({}))
    assert not allocator.reuses_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"})
    assert allocator.environment_without_reuse({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1", "A": "b"}) == {
        "A": "b"
    }


def test_compile_time_is_the_fastest_of_fresh_compilations():
    import jax.numpy as jnp

    from benchmarks import measure
    from benchmarks.report import _compile_method

    traces = []

    def fn(x):
        traces.append(1)  # runs once per trace
        return jnp.sin(x) * 2.0

    x = jnp.arange(4.0)
    result = measure.prepare(fn, (x,), warmup=1, compile_repeats=3)
    assert len(traces) == 3  # each compilation traced fn again: nothing was reused
    assert len(result["compile_ms_all"]) == 3
    assert result["compile_ms"] == min(result["compile_ms_all"]) > 0
    assert jnp.allclose(result["outputs"], jnp.sin(x) * 2.0)
    assert "fastest of 3" in _compile_method({"compile_repeats": 3})
    assert "once" in _compile_method({})  # results written before compile_repeats existed


def test_ceilings_are_the_best_of_each_measurement():
    from benchmarks.machine import best_ceilings

    start = {"matmul_gflops": {"float32": 199.0, "bfloat16": 160.0}, "matmul_size": 1024, "copy_gbps": 15.7}
    end = {"matmul_gflops": {"float32": 287.0, "bfloat16": 150.0}, "matmul_size": 1024, "copy_gbps": 37.9}
    assert best_ceilings(start, end) == {
        "matmul_gflops": {"float32": 287.0, "bfloat16": 160.0},
        "matmul_size": 1024,
        "copy_gbps": 37.9,
    }
    assert best_ceilings(start) == start
    # The trivial call's time is a time: its best is the lowest; sizes pass through.
    timed = [{**m, "call_ms": ms, "copy_mib": 16} for m, ms in ((start, 0.05), (end, 0.02))]
    assert best_ceilings(*timed)["call_ms"] == 0.02 and best_ceilings(*timed)["copy_mib"] == 16


def test_a_tf_keras_worker_that_dies_leaves_a_row_saying_so(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from benchmarks import cases, run

    worker = tmp_path / "worker.py"
    worker.write_text(
        "import json, os, sys\n"
        "print(json.dumps({'impl': 'tf_keras:impl1', 'mode': 'forward', 'median_ms': 1.0}), flush=True)\n"
        "print('MemoryError: out of memory', file=sys.stderr, flush=True)\n"
        "os._exit(1)\n"
    )
    monkeypatch.setattr(run, "WORKER", str(worker))
    args = SimpleNamespace(
        tf_python=sys.executable, repeats=10, max_matrix_mib=512, slow_limit_s=10.0, tf_timeout_s=60
    )
    rows = run.run_tf(cases.QUICK_CASES[0], args)
    assert [r["impl"] for r in rows] == ["tf_keras:impl1", "tf_keras"]
    assert rows[0]["median_ms"] == 1.0
    assert "exit code 1" in rows[1]["skipped"] and "out of memory" in rows[1]["skipped"]


def test_fast_rows_get_more_rounds_within_the_time_budget():
    from benchmarks.measure import rounds_for
    from benchmarks.report import _calls

    assert rounds_for(10, round_ms=20.0, min_time_s=1.0, max_rounds=200) == 50
    assert rounds_for(10, round_ms=1.0, min_time_s=1.0, max_rounds=200) == 200  # capped
    assert rounds_for(10, round_ms=500.0, min_time_s=1.0, max_rounds=200) == 10  # slow: the least
    assert rounds_for(10, round_ms=1.0, min_time_s=0.0, max_rounds=200) == 10  # no budget (--quick)
    assert rounds_for(10, round_ms=1.0, min_time_s=1.0, max_rounds=5) == 10  # never below repeats
    assert _calls({"repeats": 10}) == "10 timed calls"
    assert "at least 10 timed calls" in _calls({"repeats": 10, "min_time_s": 1.0, "max_repeats": 200})


def test_a_target_with_no_case_to_check_is_not_reported_met():
    from benchmarks.report import _all_met, _verdict

    assert _verdict(_all_met({})) == "n/a"
    assert _verdict(_all_met({"a": True, "b": True})) == "met"
    assert _verdict(_all_met({"a": True, "b": False})) == "MISSED"


def test_rows_timed_in_turns():
    from benchmarks.run import _timed_in_turns

    assert _timed_in_turns("ConvLocal", warmup_ms=1000.0, reference_ms=1.0)
    assert _timed_in_turns("flax_local:auto", warmup_ms=1000.0, reference_ms=1.0)
    assert _timed_in_turns("flax_local:dense", warmup_ms=4.0, reference_ms=1.0)
    assert not _timed_in_turns("flax_local:sparse", warmup_ms=6.0, reference_ms=1.0)


def test_reference_row_is_prepared_first_whatever_the_order():
    from types import SimpleNamespace

    from benchmarks.run import _reference_first

    named = [
        SimpleNamespace(name=n)
        for n in ("flax_local:sparse", "flax_local:auto", "flax_local:patches", "ConvLocal")
    ]
    assert [c.name for c in _reference_first(named)] == [
        "flax_local:patches",
        "flax_local:sparse",
        "flax_local:auto",
        "ConvLocal",
    ]
    without = named[:2] + named[3:]
    assert _reference_first(without) == without


def test_tf_keras_target_compares_against_every_tf_row():
    from benchmarks.report import _beats_tf_keras

    def case(name, ours_ms, tf_ms):
        rows = [
            {"impl": "flax_local:auto", "mode": "train", "median_ms": ours_ms, "compile_ms": 1.0},
            {"impl": "ConvLocal", "mode": "train", "median_ms": 10.0, "compile_ms": 1.0},
        ]
        rows += [
            {"impl": f"tf_keras:impl{i}", "mode": "train", "median_ms": t} for i, t in enumerate(tf_ms, 1)
        ]
        rows.append({"impl": "tf_keras:impl3", "skipped": "too big"})
        return {"name": name, "results": rows}

    cases = [case("fast", 1.0, [5.0, 2.0]), case("slow", 3.0, [5.0, 2.0]), case("no_tf", 1.0, [])]
    assert _beats_tf_keras(cases, "train") == {"fast": True, "slow": False}
    assert _beats_tf_keras(cases, "forward") == {}


def test_benchmark_docstring_examples_run():
    """The benchmark modules sit outside pytest's doctest paths; their examples run here."""
    import doctest

    from benchmarks import allocator, machine, measure

    for module in (allocator, machine, measure):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, (module.__name__, result)


def test_malloc_default_runs_without_the_reuse_settings_even_when_started_with_them(tmp_path):
    import pytest

    from benchmarks import allocator

    if allocator.glibc_version() is None:
        pytest.skip("GLIBC_TUNABLES needs glibc")
    out_json = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--no-tf", "--malloc", "default"]
        + ["--cases", "tiny1d", "--repeats", "2", "--json", str(out_json)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=allocator.environment_with_reuse({**os.environ, "JAX_PLATFORMS": "cpu"}),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    facts = json.loads(out_json.read_text())["machine"]
    assert facts["reuses_freed_memory"] is False, facts
    assert not set(facts["glibc_tunables"].split(":")) & set(allocator.REUSE_TUNABLES.split(":")), facts


def test_floor_from_the_matmul_timed_in_turns():
    """Compute-bound: the floor scales with the matmul of the moment; memory-bound: it does not."""
    from benchmarks import report
    from benchmarks.run import _set_moment_floor

    ceilings = {"matmul_gflops": {"float32": 200.0}, "copy_gbps": 10.0}

    def case(flops, nbytes, gflops):
        entry = {
            "case": {"dtype": "float32"},
            "costs": {"train": {"flops": flops, "bytes": nbytes}},
            "results": [{"impl": report.DEFAULT, "mode": "train", "median_ms": 6.0}],
            "matmul_in_turns": {"size": 1024, "median_ms": 1.0, "gflops": gflops},
        }
        _set_moment_floor(entry, ceilings)
        return entry

    # 1e9 flops at 100 GFLOP/s: a 10 ms floor (bytes: 1 ms at 10 GB/s) -> 6 ms is 0.6x.
    assert report.floor_ratio_matmul_in_turns(case(1e9, 1e7, 100.0), report.DEFAULT) == 0.6
    # The machine at half speed in the case's turns: a 20 ms floor.
    assert report.floor_ratio_matmul_in_turns(case(1e9, 1e7, 50.0), report.DEFAULT) == 0.3
    # Memory-bound (1e9 bytes at 10 GB/s: 100 ms), whatever the matmul.
    assert report.floor_ratio_matmul_in_turns(case(1e6, 1e9, 50.0), report.DEFAULT) == 0.06
    no_probe = {**case(1e9, 1e7, 100.0), "matmul_in_turns": None}
    _set_moment_floor(no_probe, ceilings)
    assert report.floor_ratio_matmul_in_turns(no_probe, report.DEFAULT) is None
