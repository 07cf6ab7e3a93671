"""Smoke test of ``python -m benchmarks.transpose``: it runs, checks agreement and writes valid JSON.

Never asserts speed: CI machines are shared and timings are noise there.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_transpose_benchmark_runs_and_writes_json(tmp_path):
    out_json = tmp_path / "transpose.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.transpose",
            "--quick",
            "--cases",
            "tiny1d",
            "--json",
            str(out_json),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    run = json.loads(out_json.read_text())
    assert run["config"]["quick"] is True
    (case,) = run["cases"]
    assert case["case"]["name"] == "tiny1d"
    timed = {(r["impl"], r["mode"]) for r in case["results"]}
    for row in ("transpose:patches", "vjp:patches", "transpose:auto", "vjp:auto", "ConvTranspose"):
        assert (row, "forward") in timed and (row, "train") in timed, timed
    for row in case["results"]:
        assert row["median_ms"] > 0 and len(row["times_ms"]) == 3 and row["compile_ms"] > 0
    assert case["agreement"] and max(case["agreement"].values()) < 1e-4
    assert set(case["same_program"]) == set(case["agreement"])
    assert "| tiny1d (" in done.stdout and "transpose:auto" in done.stdout
