"""Scaling of a position-sharded locally-connected training step over 1, 2, 4, 8 devices.

Usage::

    python -m benchmarks.scaling              # both tables, a few minutes on 2 CPU cores
    python -m benchmarks.scaling --quick      # smaller problem, fewer repeats
    python -m benchmarks.scaling --devices 1 2 4 8 --repeats 10

One training step (forward, backward, Adam update) of two ``LocallyConnected2D``
layers whose kernels are sharded by output row over the ``model`` mesh axis,
jitted with in/out shardings from ``flax_local.sharding.state_shardings``.

* Strong scaling: one fixed global problem split over n devices, as a mesh
  ``(data=1, model=n)`` (positions only) and, for n >= 4, ``(data=2,
  model=n/2)`` (batch and positions). Ideal: memory and time per device / n.
* Weak scaling: the image grows with n (``n`` times the rows, so n times the
  kernel) on ``(1, n)``; each device keeps the same share. Ideal: flat.

Per device, from the compiled step (``compiled.memory_analysis()``): the peak
XLA plans (arguments + outputs - donated aliases + temporaries), and the
largest all-gather in the HLO next to the smallest kernel (a gathered kernel
would show as an all-gather at least that large). Step time is the median of
``--repeats`` steps after a warm-up.

On CPU the devices are simulated (``--xla_force_host_platform_device_count``):
they share the same cores, so the times measure the partitioning overhead,
not a speed-up; the memory columns are what each device would hold.
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import flax_local  # noqa: E402
from flax_local import sharding  # noqa: E402

_ALL_GATHER = re.compile(r"=\s*\(?\w+\[([\d,]*)\][^=]*\ball-gather(?:-start)?\(")


@dataclasses.dataclass(frozen=True)
class Problem:
    batch: int
    rows: int
    cols: int
    channels: int
    filters: int


class Net(nn.Module):
    filters: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = flax_local.LocallyConnected2D(
            self.filters, 3, padding="same", activation="relu", logical_partitioning=True
        )(x)
        return flax_local.LocallyConnected2D(self.filters, 3, padding="same", logical_partitioning=True)(x)


@dataclasses.dataclass
class Row:
    scaling: str
    devices: int
    mesh: str
    problem: Problem
    kernel_mib: float
    kernel_per_device_mib: float
    peak_mib: float
    largest_gather: int
    smallest_kernel: int
    step_ms: float


def _mesh(data: int, model: int) -> jax.sharding.Mesh:
    devices = np.asarray(jax.devices()[: data * model]).reshape(data, model)
    return jax.sharding.Mesh(devices, ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def measure(problem: Problem, data: int, model: int, repeats: int, scaling: str) -> Row:
    mesh = _mesh(data, model)
    net = Net(problem.filters)
    optimizer = optax.adam(1e-3)
    shape = (problem.batch, problem.rows, problem.cols, problem.channels)
    example = jax.ShapeDtypeStruct(shape, jnp.float32)
    shardings = sharding.state_shardings(mesh, net, optimizer, example, rules=sharding.logical_axis_rules())
    batch = NamedSharding(mesh, P("data"))

    def init(key):
        return nn.unbox(net.init(key, jnp.zeros(shape, jnp.float32)))["params"]

    params = jax.jit(init, out_shardings=shardings.params)(jax.random.key(0))
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal(shape).astype(np.float32), batch)
    y = jax.device_put(rng.standard_normal((*shape[:3], problem.filters)).astype(np.float32), batch)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((net.apply({"params": p}, x) - y) ** 2))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(
        step,
        in_shardings=(shardings.params, shardings.opt_state, batch, batch),
        out_shardings=(shardings.params, shardings.opt_state, None),
        donate_argnums=(0, 1),
    )
    compiled = step.lower(params, opt_state, x, y).compile()
    memory = compiled.memory_analysis()
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    gathers = [
        int(np.prod([int(d) for d in m.group(1).split(",") if d]))
        for m in _ALL_GATHER.finditer(compiled.as_text())
    ]
    kernels = [
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(path[-1])
    ]
    kernel_bytes = sum(k.nbytes for k in kernels)
    per_device = sum(k.addressable_shards[0].data.nbytes for k in kernels)

    params, opt_state, loss = compiled(params, opt_state, x, y)  # warm-up
    loss.block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return Row(
        scaling=scaling,
        devices=data * model,
        mesh=f"{data}x{model}",
        problem=problem,
        kernel_mib=kernel_bytes / 2**20,
        kernel_per_device_mib=per_device / 2**20,
        peak_mib=peak / 2**20,
        largest_gather=max(gathers, default=0),
        smallest_kernel=min(k.size for k in kernels),
        step_ms=statistics.median(times) * 1e3,
    )


def table(rows: list[Row]) -> str:
    header = (
        f"{'scaling':8s} {'devices':>7s} {'mesh':>5s} {'input (B,H,W,C)':>18s} {'kernels MiB':>11s} "
        f"{'per dev MiB':>11s} {'peak/dev MiB':>12s} {'gather/kernel':>13s} {'step ms':>9s} {'vs 1 dev':>8s}"
    )
    lines = [header, "-" * len(header)]
    base = {}
    for row in rows:
        p = row.problem
        base.setdefault(row.scaling, row)
        first = base[row.scaling]
        lines.append(
            f"{row.scaling:8s} {row.devices:7d} {row.mesh:>5s} "
            f"{str((p.batch, p.rows, p.cols, p.channels)):>18s} {row.kernel_mib:11.2f} "
            f"{row.kernel_per_device_mib:11.2f} {row.peak_mib:12.2f} "
            f"{row.largest_gather / row.smallest_kernel:13.3f} {row.step_ms:9.1f} "
            f"{row.step_ms / first.step_ms:7.2f}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smaller problem and 3 repeats")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    available = jax.device_count()
    counts = [n for n in args.devices if n <= available]
    platform = jax.devices()[0].platform
    strong = (
        Problem(batch=8, rows=16, cols=16, channels=16, filters=16)
        if args.quick
        else Problem(batch=16, rows=32, cols=32, channels=32, filters=32)
    )
    weak_rows = 4 if args.quick else 8  # rows per device

    print(f"flax_local sharding scaling: {available} {platform} devices, jax {jax.__version__}")
    if platform == "cpu":
        print(
            "NOTE: CPU devices are simulated and share the same cores: step times measure the\n"
            "partitioning overhead, not a speed-up. Memory per device is what each device would hold."
        )
    print(
        "Two LocallyConnected2D(3x3, same) layers, Adam; kernels sharded by output row over 'model'.\n"
        "peak/dev: XLA's planned peak per device (arguments + outputs - donated + temporaries);\n"
        "gather/kernel: largest all-gather in the step's HLO / smallest kernel (< 1: no kernel gathered).\n"
    )
    rows = []
    for n in counts:
        rows.append(measure(strong, 1, n, repeats, "strong"))
    for n in counts:
        if n >= 4:
            rows.append(measure(strong, 2, n // 2, repeats, "strong"))
    for n in counts:
        weak = dataclasses.replace(strong, rows=weak_rows * n)
        rows.append(measure(weak, 1, n, repeats, "weak"))
    print(table(rows))


if __name__ == "__main__":
    main()
