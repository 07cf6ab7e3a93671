"""Benchmarks ``locally_connected_transpose`` against the ``jax.vjp``-of-forward baseline.

Usage::

    python -m benchmarks.transpose                      # default CPU cases, table to stdout
    python -m benchmarks.transpose --cases mnist16 stride2 --json /tmp/transpose.json
    python -m benchmarks.transpose --quick              # CI smoke test, seconds

Each case of ``benchmarks/cases.py`` is read as the encoder layer whose
transpose is timed: ``y`` has the layer's output shape, the result its input
shape, the kernel is the layer's. Rows, all compiled with ``jax.jit`` and timed
in turns (one call of each per round, ``benchmarks.measure``):

* ``transpose:<impl>``: ``locally_connected_transpose(y, kernel, bias)``;
* ``vjp:<impl>``: the baseline a user would write without it, the input
  gradient of ``locally_connected(x, kernel, implementation=impl)`` taken with
  ``jax.vjp`` at zeros (XLA removes the dead forward pass), plus the bias;
* ``ConvTranspose``: ``flax.linen.ConvTranspose`` with one shared kernel of
  the same window and the same input and output channels, for scale (its
  output size follows its own padding rule and may differ by a row).

Modes: ``forward`` (the op alone) and ``train`` (value and gradient of the mean
square of the result w.r.t. ``y``, the kernel and the bias, or ConvTranspose's
parameters). The outputs and gradients of each ``transpose:`` row are checked
against its ``vjp:`` row before timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from benchmarks import cases as cases_lib
from benchmarks import measure
from flax_local._src import native_build
from flax_local.functional import locally_connected, locally_connected_transpose

DEFAULT_CASES = ["keras_doc", "mnist16", "stride2", "seq1d", "dilated"]
IMPLEMENTATIONS = ("native", "patches", "auto")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transpose", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny cases, few repeats (a smoke test)")
    parser.add_argument("--cases", nargs="+", help=f"case names (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20; 3 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    return parser.parse_args(argv)


def _data(case: cases_lib.Case):
    """``y`` (the layer's output shape), kernel and the transpose's bias, float32 on device."""
    _, kernel, _ = case.arrays(0)
    rng = np.random.default_rng(1)
    if case.data_format == "channels_first":
        y_shape = (case.batch, case.filters, *case.output_spatial)
    else:
        y_shape = (case.batch, *case.output_spatial, case.filters)
    y = rng.standard_normal(y_shape, np.float32)
    bias = rng.standard_normal((*case.spatial, case.channels), np.float32) * np.float32(0.1)
    return tuple(jnp.asarray(a, case.dtype) for a in (y, kernel, bias))


def _layer_kwargs(case: cases_lib.Case) -> dict:
    return dict(
        strides=case.strides, padding=case.padding, dilation_rate=case.dilation, data_format=case.data_format
    )


def _transpose(case, implementation):
    def apply(y, kernel, bias):
        return locally_connected_transpose(
            y, kernel, bias, spatial_shape=case.spatial, implementation=implementation, **_layer_kwargs(case)
        )

    return apply


def _vjp_baseline(case, implementation):
    def apply(y, kernel, bias):
        if case.data_format == "channels_first":
            x_shape = (case.batch, case.channels, *case.spatial)
        else:
            x_shape = (case.batch, *case.spatial, case.channels)

        def forward(x):
            return locally_connected(x, kernel, implementation=implementation, **_layer_kwargs(case))

        (x,) = jax.vjp(forward, jnp.zeros(x_shape, y.dtype))[1](y)
        if case.data_format == "channels_first":
            return x + jnp.moveaxis(bias, -1, 0)[None]
        return x + bias[None]

    return apply


def _train(apply):
    def loss(*args):
        return jnp.mean(jnp.square(apply(*args).astype(jnp.float32)))

    return jax.value_and_grad(loss, argnums=(0, 1, 2))


def _conv_transpose(case):
    """flax's ConvTranspose (one shared kernel) on channels-last y, and its train step."""
    module = nn.ConvTranspose(
        features=case.channels,
        kernel_size=case.kernel_size,
        strides=case.strides,
        padding=case.padding.upper(),
        kernel_dilation=case.dilation,
    )
    y = jnp.asarray(
        np.random.default_rng(2).standard_normal((case.batch, *case.output_spatial, case.filters))
    )
    y = y.astype(case.dtype)
    params = module.init(jax.random.key(0), y)["params"]

    def forward(params, y):
        return module.apply({"params": params}, y)

    def loss(params, y):
        return jnp.mean(jnp.square(forward(params, y).astype(jnp.float32)))

    return forward, jax.value_and_grad(loss, argnums=(0, 1)), (params, y)


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run_case(case: cases_lib.Case, repeats: int) -> dict:
    """Compiles, checks and times every row of ``case``; returns its JSON record."""
    args = _data(case)
    implementations = [i for i in IMPLEMENTATIONS if i != "native" or native_build.is_available()]
    rows = {}
    for impl in implementations:
        rows[f"transpose:{impl}"] = (_transpose(case, impl), args)
        rows[f"vjp:{impl}"] = (_vjp_baseline(case, impl), args)
    conv_forward, conv_train, conv_args = _conv_transpose(case)
    record = {"case": case.to_json(), "results": [], "agreement": {}}
    for mode in ("forward", "train"):
        prepared = {}
        for name, (apply, row_args) in rows.items():
            prepared[name] = (
                measure.prepare(apply if mode == "forward" else _train(apply), row_args),
                row_args,
            )
        conv = conv_forward if mode == "forward" else conv_train
        prepared["ConvTranspose"] = (measure.prepare(conv, conv_args), conv_args)
        for impl in implementations:
            ours = prepared[f"transpose:{impl}"][0]["outputs"]
            base = prepared[f"vjp:{impl}"][0]["outputs"]
            error = max(_relative_error(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(base)))
            record["agreement"][f"{impl}:{mode}"] = error
            if error > 1e-4:
                raise AssertionError(f"{case.name} {impl} {mode}: transpose and vjp differ by {error:.2e}")
        names = list(prepared)
        timings = measure.time_interleaved(
            [(prepared[n][0]["compiled"], prepared[n][1]) for n in names], repeats=repeats
        )
        for name, timing in zip(names, timings):
            record["results"].append(
                {"impl": name, "mode": mode, "compile_ms": prepared[name][0]["compile_ms"], **timing}
            )
    return record


def markdown(records: list[dict]) -> str:
    """One table: median ms per row and mode, and each transpose row's ratio to its vjp baseline."""
    lines = [
        "| case | row | forward ms | train ms | train vs vjp |",
        "|---|---|---:|---:|---:|",
    ]
    for record in records:
        times = {(r["impl"], r["mode"]): r["median_ms"] for r in record["results"]}
        names = list(dict.fromkeys(r["impl"] for r in record["results"]))
        for name in names:
            ratio = ""
            if name.startswith("transpose:"):
                base = times[("vjp:" + name.split(":", 1)[1], "train")]
                ratio = f"{base / times[(name, 'train')]:.2f}x"
            lines.append(
                f"| {record['case']['name']} ({record['case']['summary']}) | {name} | "
                f"{times[(name, 'forward')]:.3f} | {times[(name, 'train')]:.3f} | {ratio} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.cases or ([c.name for c in cases_lib.QUICK_CASES] if args.quick else DEFAULT_CASES)
    repeats = args.repeats or (3 if args.quick else 20)
    records = []
    started = time.time()
    for case in cases_lib.select(cases_lib.FULL_CASES, names):
        records.append(run_case(case, repeats))
        print(f"{case.name}: done", file=sys.stderr, flush=True)
    table = markdown(records)
    print(table)
    if args.json:
        config = {"quick": args.quick, "repeats": repeats, "seconds": round(time.time() - started, 1)}
        machine = {
            "backend": jax.default_backend(),
            "jax": jax.__version__,
            "native_kernels": native_build.vector_path() if native_build.is_available() else "unavailable",
        }
        with open(args.json, "w") as f:
            json.dump({"config": config, "machine": machine, "cases": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
