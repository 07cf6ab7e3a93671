"""Smoke test of the GPU benchmark (``benchmarks.gpu_run``, ``gpu_tune``) on CPU, in interpret mode.

Never asserts speed: it checks that the harness runs, checks agreement and
writes the JSON the GPU run will write.
"""

import json

from benchmarks import cases, gpu_run, gpu_tune
from flax_local._src.pallas_kernels import Blocks


def test_gpu_run_quick_writes_rows_that_agree(tmp_path):
    out = tmp_path / "gpu.json"
    run = gpu_run.main(["--quick", "--cases", "gpu_tiny1d", "--repeats", "2", "--json", str(out)])
    assert json.loads(out.read_text())["cases"][0]["name"] == "gpu_tiny1d"
    (case,) = run["cases"]
    for mode in ("forward", "train"):
        for impl in (gpu_run.PALLAS, gpu_run.PATCHES, gpu_run.CONVLOCAL):
            row = gpu_run._row(case, impl, mode)
            assert row is not None and row["median_ms"] > 0 and row["compile_ms"] > 0, (impl, mode)
            assert row["pipelined_ms"] > 0 and row["pipelined_calls"] >= 2, row
        assert gpu_run._row(case, gpu_run.PALLAS, mode)["agrees"] is True
    assert case["summary"]["pallas_agrees"] is True and case["summary"]["speedup_vs_patches"] > 0
    assert set(run["targets"]["met"]) >= {"never_slower_than_patches", "temp_memory_25pct"}


def test_targets_follow_the_issue():
    def entry(name, batch, kernel_bytes, floor, pallas, patches, convlocal):
        rows = [
            {"impl": impl, "mode": "train", "median_ms": ms, "compile_ms": 1.0, "xla_temp_bytes": temp}
            for impl, ms, temp in (
                (gpu_run.PALLAS, pallas, 10),
                (gpu_run.PATCHES, patches, 100),
                (gpu_run.CONVLOCAL, convlocal, 100),
            )
        ]
        e = {
            "name": name,
            "case": {"batch": batch},
            "kernel_bytes": kernel_bytes,
            "floor_ms": {"train": floor},
        }
        e["results"] = rows
        e["summary"] = gpu_run.summarize(e)
        return e

    run = {"cases": [entry("a", 128, 78e6, 0.1, 0.25, 1.0, 5.0), entry("b", 32, 1e6, 0.1, 0.2, 0.3, 3.0)]}
    t = gpu_run.targets(run)
    assert t["values"]["geomean_speedup_vs_patches_where_patches_over_4x_floor"] == 4.0  # case b: batch < 64
    assert t["met"] == {
        "speedup_3x_geomean": True,
        "never_slower_than_patches": True,
        "convlocal_6x_geomean": True,  # sqrt(20 * 15)
        "within_3x_floor": True,  # only case a's kernel is >= 32 MB: 2.5x
        "temp_memory_25pct": True,
        "compile_not_worse": True,
    }


def test_tune_variants_are_valid_and_distinct():
    default = Blocks(batch=64, run=4, offsets=3, num_warps=4, num_stages=3)
    for kernel in ("forward", "kernel_grad", "input_grad"):
        found = gpu_tune.variants(default, window=9, kernel=kernel)
        assert found[0] == default and len(set(found)) == len(found) > 5
        assert all(b.batch >= 16 and 9 % b.offsets == 0 for b in found)
        assert any(b.reuse for b in found) == (kernel != "kernel_grad")
    assert not any(b.reuse for b in gpu_tune.variants(default, window=9, kernel="input_grad", last_stride=2))
    rows = [
        {"case": "c", "kernel": "forward", "blocks": {"batch": 16}, "default": True, "median_ms": 2.0},
        {"case": "c", "kernel": "forward", "blocks": {"batch": 32}, "default": False, "median_ms": 1.0},
        {
            "case": "c",
            "kernel": "forward",
            "blocks": {"batch": 64},
            "default": False,
            "failed": "OutOfResources",
        },
    ]
    assert gpu_tune.best(rows) == {
        "c/forward": {"default_ms": 2.0, "best_ms": 1.0, "best_blocks": {"batch": 32}}
    }
    assert {c.name for c in cases.select(cases.GPU_CASES, None)} >= {
        "face48",
        "face48_bf16",
        "seq1024",
        "vol16",
    }
