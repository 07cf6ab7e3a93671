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
against its ``vjp:`` row before timing, and so are their optimized programs
(``same_program``: equal up to instruction names and source locations, in
which case the two rows' times differ by noise only).

``--patches-formulations`` times, instead, three ways to compute the
``"patches"`` transpose (``benchmarks/EXPERIMENTS.md``): ``vjp`` (the reverse
pass of its ``custom_jvp``: products, then a fold of interior pads; what the
library uses), ``scatter`` (``jax.linear_transpose`` of the forward, which
transposes the patch gather into a scatter-add) and ``gather`` (products, then
a fold that gathers, for each input row and window offset, the one patch entry
that reads it, batch-major or batch-minor).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from benchmarks import cases as cases_lib
from benchmarks import measure
from flax_local._src import native_build
from flax_local._src.geometry import Geometry, make_geometry
from flax_local._src.patches import apply_patches
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
    parser.add_argument(
        "--patches-formulations",
        action="store_true",
        help='time three formulations of the "patches" transpose instead (benchmarks/EXPERIMENTS.md)',
    )
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


def _program(compiled) -> list[str]:
    """The optimized HLO without instruction numbering, metadata or source locations, sorted."""
    text = re.sub(r", metadata=\{[^}]*\}", "", compiled.as_text())
    text = re.sub(r"(%[A-Za-z_]+)[.\d]*", r"\1", text)
    text = re.sub(r"(region_)\d+", r"\1", text)
    return sorted(
        line
        for line in text.splitlines()
        if line.strip() and "file_" not in line and not re.match(r"^\s*\d+ ", line)
    )


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
    record = {"case": case.to_json(), "results": [], "agreement": {}, "same_program": {}}
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
            record["same_program"][f"{impl}:{mode}"] = _program(
                prepared[f"transpose:{impl}"][0]["compiled"]
            ) == _program(prepared[f"vjp:{impl}"][0]["compiled"])
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
    """One table: median ms per row and mode, each transpose row's ratio to its vjp baseline."""
    lines = [
        "| case | row | forward ms | train ms | train vs vjp | same program as vjp (forward, train) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for record in records:
        times = {(r["impl"], r["mode"]): r["median_ms"] for r in record["results"]}
        names = list(dict.fromkeys(r["impl"] for r in record["results"]))
        for name in names:
            ratio = same = ""
            if name.startswith("transpose:"):
                impl = name.split(":", 1)[1]
                ratio = f"{times[('vjp:' + impl, 'train')] / times[(name, 'train')]:.2f}x"
                flags = [record["same_program"][f"{impl}:{mode}"] for mode in ("forward", "train")]
                same = ", ".join("yes" if flag else "no" for flag in flags)
            lines.append(
                f"| {record['case']['name']} ({record['case']['summary']}) | {name} | "
                f"{times[(name, 'forward')]:.3f} | {times[(name, 'train')]:.3f} | {ratio} | {same} |"
            )
    return "\n".join(lines)


def _fold_sources(geometry: Geometry) -> np.ndarray:
    """``(input rows, window)``: the flat patch entry ``p * K + k`` reading each (row, offset), else ``P * K``."""
    rows, inside = geometry.input_coordinates()
    positions, window = rows.shape
    sources = np.full((math.prod(geometry.input_spatial), window), positions * window, np.int32)
    p, k = np.nonzero(inside)
    sources[rows[p, k], k] = p * window + k  # one position per (row, offset): rows differ by the stride
    return sources


def _patches_by_scatter(y, kernel, geometry):
    x = jax.ShapeDtypeStruct((y.shape[0], *geometry.input_spatial, kernel.shape[-2]), y.dtype)
    return jax.linear_transpose(lambda x: apply_patches(x, kernel, None, geometry, None), x)(y)[0]


def _patches_by_vjp(y, kernel, geometry):
    zeros = jnp.zeros((y.shape[0], *geometry.input_spatial, kernel.shape[-2]), y.dtype)
    return jax.vjp(lambda x: apply_patches(x, kernel, None, geometry, None), zeros)[1](y)[0]


def _patches_by_gather(y, kernel, geometry, batch_minor):
    batch, channels, filters = y.shape[0], kernel.shape[-2], kernel.shape[-1]
    positions, window = geometry.num_positions, geometry.window_volume
    rows = jnp.moveaxis(y.reshape(batch, positions, filters), 0, 1)  # (P, B, F)
    weights = kernel.reshape(positions, window * channels, filters)
    sources = jnp.asarray(_fold_sources(geometry))
    if batch_minor:
        d = lax.dot_general(weights, rows, (((2,), (2,)), ((0,), (0,))))  # (P, K*C, B)
        d = d.reshape(positions * window, channels, batch)
    else:
        d = lax.dot_general(rows, weights, (((2,), (2,)), ((0,), (0,))))  # (P, B, K*C)
        d = jnp.moveaxis(d.reshape(positions, batch, window, channels), 2, 1)
        d = d.reshape(positions * window, batch, channels)
    d = jnp.concatenate([d, jnp.zeros((1, *d.shape[1:]), d.dtype)])  # the entry of taps in padding
    x = d[sources].sum(1)  # (R, C, B) or (R, B, C)
    x = jnp.transpose(x, (2, 0, 1)) if batch_minor else jnp.moveaxis(x, 1, 0)
    return x.reshape(batch, *geometry.input_spatial, channels)


PATCHES_FORMULATIONS = {
    "vjp": _patches_by_vjp,
    "scatter": _patches_by_scatter,
    "gather (batch-major)": functools.partial(_patches_by_gather, batch_minor=False),
    "gather (batch-minor)": functools.partial(_patches_by_gather, batch_minor=True),
}


def run_patches_formulations(case: cases_lib.Case, repeats: int) -> dict:
    """Times each ``PATCHES_FORMULATIONS`` entry on ``case`` (channels-last, no bias), forward and train."""
    geometry = make_geometry(case.spatial, case.kernel_size, case.strides, case.padding, case.dilation)
    y = jnp.asarray(
        np.random.default_rng(1).standard_normal((case.batch, *case.output_spatial, case.filters))
    )
    kernel = jnp.asarray(case.arrays(0)[1])
    args = (y.astype(jnp.float32), kernel)
    record = {"case": case.to_json(), "results": []}
    for mode in ("forward", "train"):
        prepared = {}
        for name, formulation in PATCHES_FORMULATIONS.items():

            def apply(y, kernel, formulation=formulation):
                return formulation(y, kernel, geometry)

            fn = (
                apply
                if mode == "forward"
                else jax.value_and_grad(
                    lambda y, k, apply=apply: jnp.mean(jnp.square(apply(y, k))), argnums=(0, 1)
                )
            )
            prepared[name] = measure.prepare(fn, args)
        reference = jax.tree.leaves(prepared["vjp"]["outputs"])
        for name, item in prepared.items():
            error = max(_relative_error(a, b) for a, b in zip(jax.tree.leaves(item["outputs"]), reference))
            if error > 1e-4:
                raise AssertionError(f"{case.name} {name} {mode}: differs from vjp by {error:.2e}")
        timings = measure.time_interleaved(
            [(p["compiled"], args) for p in prepared.values()], repeats=repeats
        )
        for name, timing in zip(prepared, timings):
            record["results"].append({"impl": name, "mode": mode, **timing})
    return record


def formulations_markdown(records: list[dict]) -> str:
    """Median ms of each formulation, forward and train."""
    lines = ["| case | formulation | forward ms | train ms |", "|---|---|---:|---:|"]
    for record in records:
        times = {(r["impl"], r["mode"]): r["median_ms"] for r in record["results"]}
        for name in PATCHES_FORMULATIONS:
            lines.append(
                f"| {record['case']['name']} ({record['case']['summary']}) | {name} | "
                f"{times[(name, 'forward')]:.3f} | {times[(name, 'train')]:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.cases or ([c.name for c in cases_lib.QUICK_CASES] if args.quick else DEFAULT_CASES)
    repeats = args.repeats or (3 if args.quick else 20)
    records = []
    started = time.time()
    run = run_patches_formulations if args.patches_formulations else run_case
    for case in cases_lib.select(cases_lib.FULL_CASES, names):
        records.append(run(case, repeats))
        print(f"{case.name}: done", file=sys.stderr, flush=True)
    table = formulations_markdown(records) if args.patches_formulations else markdown(records)
    print(table)
    if args.json:
        config = {
            "quick": args.quick,
            "repeats": repeats,
            "patches_formulations": args.patches_formulations,
            "seconds": round(time.time() - started, 1),
        }
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
