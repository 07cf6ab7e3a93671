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
