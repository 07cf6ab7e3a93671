"""Times tf_keras's LocallyConnected1D/2D on one case; run in its own process.

Usage: ``python benchmarks/tf_keras_worker.py '<json>'`` with the JSON of
``{"case": Case.to_json(), "repeats": int, "max_matrix_bytes": int,
"slow_limit_s": float}``. Prints one JSON line: a list of result rows. This
file imports neither jax nor flax_local, so any Python with ``tensorflow`` and
``tf_keras`` can run it (``--tf-python``). Timing only: the weights are random,
not the JAX contenders'.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _skip(implementation: int, case: dict, spec: dict) -> str | None:
    """Why tf_keras cannot (or should not) run this case with ``implementation``."""
    rank = len(case["spatial"])
    if rank > 2:
        return "tf_keras has no LocallyConnected3D"
    if any(d != 1 for d in case["dilation"]):
        return "tf_keras LocallyConnected has no dilation_rate"
    if case["padding"] != "valid" and implementation == 1:
        return 'implementation=1 supports only padding="valid"'
    if implementation in (2, 3):
        positions = math.prod(case["output_spatial"])
        inputs = math.prod(case["spatial"])
        item = 2 if case["dtype"] == "bfloat16" else 4
        c, f = case["channels"], case["filters"]
        size = inputs * c * positions * f * item  # the mask and kernel are this large
        if implementation == 3:
            size = positions * math.prod(case["kernel_size"]) * c * f * (item + 16)
        if size > spec["max_matrix_bytes"]:
            return f"matrix {size / 2**20:.0f} MiB > limit {spec['max_matrix_bytes'] / 2**20:.0f} MiB"
    return None


def _time(fn, x, repeats: int, slow_limit_s: float) -> dict:
    rss_before, peak = _rss(), [_rss()]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            value = _rss()
            if value is not None and peak[0] is not None and value > peak[0]:
                peak[0] = value
            stop.wait(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        start = time.perf_counter()
        fn(x)  # traces and builds the graph
        compile_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        fn(x)
        first = time.perf_counter() - start
        if first > slow_limit_s:
            return {"skipped": f"first call took {first:.1f} s > {slow_limit_s} s"}
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn(x)
            _ = [o.numpy() for o in _flatten(out)]
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        stop.set()
        thread.join()
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "times_ms": [round(t, 4) for t in times],
        "compile_ms": compile_ms,
        "rss_peak_delta_bytes": None if rss_before is None else peak[0] - rss_before,
    }


def _flatten(out):
    if isinstance(out, (list, tuple)):
        return [leaf for item in out for leaf in _flatten(item)]
    return [out]


def _emit(rows: list[dict], row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def main(spec: dict) -> list[dict]:
    import tensorflow as tf
    import tf_keras

    case = spec["case"]
    rank = len(case["spatial"])
    dtype = case["dtype"]
    rows = []
    for implementation in (1, 2, 3):
        name = f"tf_keras:impl{implementation}"
        reason = _skip(implementation, case, spec)
        if reason:
            _emit(rows, {"impl": name, "skipped": reason})
            continue
        cls = tf_keras.layers.LocallyConnected1D if rank == 1 else tf_keras.layers.LocallyConnected2D
        kernel_size = case["kernel_size"][0] if rank == 1 else tuple(case["kernel_size"])
        strides = case["strides"][0] if rank == 1 else tuple(case["strides"])
        try:
            layer = cls(
                case["filters"],
                kernel_size,
                strides=strides,
                padding=case["padding"],
                data_format=case["data_format"],
                implementation=implementation,
                dtype=dtype,
            )
            shape = [case["batch"], *case["spatial"], case["channels"]]
            if case["data_format"] == "channels_first":
                shape = [case["batch"], case["channels"], *case["spatial"]]
            x = tf.random.normal(shape, dtype=tf.float32)
            x = tf.cast(x, dtype)
            layer.build(x.shape)

            @tf.function
            def forward(x, layer=layer):
                return layer(x)

            @tf.function
            def train(x, layer=layer):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x)
                    loss = tf.reduce_mean(tf.square(tf.cast(y, tf.float32)))
                grads = tape.gradient(loss, [*layer.trainable_variables, x])
                return loss, grads

            for mode, fn in (("forward", forward), ("train", train)):
                result = _time(fn, x, spec["repeats"], spec["slow_limit_s"])
                _emit(rows, {"impl": name, "mode": mode, **result})
        except Exception as e:  # noqa: BLE001 - report, don't crash the whole run
            _emit(rows, {"impl": name, "skipped": f"error: {type(e).__name__}: {str(e)[:200]}"})
    return rows


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
