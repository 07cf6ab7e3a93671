"""Where a pattern's meaning depends on where it is: a locally-connected layer against a conv net.

The task is modelled on statistical post-processing of weather forecasts on a
fixed grid ("model output statistics", downscaling): from two forecast fields
(think wind and humidity) on a 16x16 grid, predict a local quantity (think
rainfall) at every cell. How a cell responds to its neighbourhood depends on
the cell: rain forms where moist air is pushed up a slope, so the response
depends on the terrain under and around the cell, and it also changes with
latitude. The data are synthetic, so that the example runs offline and the
ground truth is known:

* a fixed world: a smooth random terrain ``h`` on the grid and a latitude ``s``
  per row; each cell's true 3x3 response is ``W0 + h[i, j] * W1 + s[i] * W2``
  (``W0``, ``W1``, ``W2`` fixed 3x3x2 stencils), plus a bias that grows with
  the terrain;
* each sample: two smooth random input fields; the target is ``softplus`` of
  each cell's response to its 3x3 neighbourhood, plus noise.

The inputs do not contain the terrain or the latitude: a model has to learn
what each place does. Two models of about the same size are trained with the
same optimizer, batches and steps, over several seeds (each seed draws new
training data, initial weights and batch order; the world and the test set
stay fixed):

* local: ``LocallyConnected2D(1, 3x3, "same", softplus)``: 4,864 parameters,
  one 3x3x2 stencil and a bias per cell;
* conv: ``Conv(32, 3x3) -> relu -> Conv(16, 3x3) -> relu -> Conv(1, 1x1) ->
  softplus``: 5,249 parameters, shared by every cell.

It prints each model's test R^2 (1 - MSE / variance of the targets) as mean
+- standard deviation over the seeds, draws the task and a comparison of the
two models, and saves the first seed's parameters as a checkpoint, which
``--restore`` evaluates without training.

Usage (from the repository root, after ``pip install -e ".[examples]"``)::

  python examples/climate_grid.py                 # 5 seeds of both models
  python examples/climate_grid.py --restore       # evaluate the saved checkpoint
  python examples/climate_grid.py --seeds 2 --epochs 10 --out /tmp/climate
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import serialization

import flax_local

GRID = (16, 16)
CHANNELS = 2
NOISE = 0.05
WORLD_SEED = 0
TEST_SEED = 10_000
CHECKPOINT = "checkpoint.msgpack"
TASK_PNG = "task.png"
COMPARISON_PNG = "comparison.png"


class LocalNet(nn.Module):
    """LocallyConnected2D(1, 3x3, "same", softplus): 4,864 parameters on a 16x16x2 grid."""

    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = flax_local.LocallyConnected2D(
            1, 3, padding="same", activation="softplus", implementation=self.implementation, name="local"
        )(x)
        return y[..., 0]


class ConvNet(nn.Module):
    """Conv(32, 3x3) -> Conv(16, 3x3) -> Conv(1, 1x1), softplus: 5,249 parameters."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(32, (3, 3), padding="SAME", name="conv1")(x))
        x = nn.relu(nn.Conv(16, (3, 3), padding="SAME", name="conv2")(x))
        return nn.softplus(nn.Conv(1, (1, 1), name="head")(x))[..., 0]


def _smooth(noise: np.ndarray, width: float) -> np.ndarray:
    """Gaussian-smooths the two grid axes (-3, -2 of ``noise``) through the FFT, to unit std."""
    frequencies = [np.fft.fftfreq(n) for n in noise.shape[-3:-1]]
    squared = frequencies[0][:, None] ** 2 + frequencies[1][None, :] ** 2
    gain = np.exp(-2 * (np.pi * width) ** 2 * squared)[:, :, None]
    field = np.fft.ifft2(np.fft.fft2(noise, axes=(-3, -2)) * gain, axes=(-3, -2)).real
    return (field - field.mean()) / field.std()


def make_world(seed: int = WORLD_SEED) -> dict[str, np.ndarray]:
    """The fixed grid: terrain, latitude, and each cell's true 3x3x2 stencil and bias."""
    rng = np.random.default_rng(seed)
    terrain = np.tanh(_smooth(rng.standard_normal((*GRID, 1)), 2.0)[..., 0])
    latitude = np.broadcast_to(np.linspace(-1, 1, GRID[0])[:, None], GRID)
    stencils = rng.standard_normal((3, 3, 3, CHANNELS)) / 3  # W0, W1, W2
    kernel = (
        stencils[0]
        + terrain[:, :, None, None, None] * stencils[1]
        + latitude[:, :, None, None, None] * stencils[2]
    )  # (H, W, 3, 3, C)
    return {"terrain": terrain, "latitude": latitude, "kernel": kernel, "bias": 0.5 * terrain}


def sample(world: dict[str, np.ndarray], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples: inputs ``(n, H, W, C)`` and targets ``(n, H, W)``, computed in numpy."""
    rng = np.random.default_rng(seed)
    x = _smooth(rng.standard_normal((n, *GRID, CHANNELS)), 1.0)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # "same" for a 3x3 window
    response = world["bias"] + sum(
        np.einsum("nijc,ijc->nij", padded[:, a : a + GRID[0], b : b + GRID[1]], world["kernel"][:, :, a, b])
        for a in range(3)
        for b in range(3)
    )
    y = np.logaddexp(0.0, response) + NOISE * rng.standard_normal(response.shape)
    return x.astype(np.float32), y.astype(np.float32)


def r2(prediction: np.ndarray, y: np.ndarray, axis: Any = None) -> np.ndarray:
    """Coefficient of determination, 1 - MSE / variance of ``y`` (over ``axis``)."""
    return 1 - ((prediction - y) ** 2).mean(axis=axis) / y.var(axis=axis)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation):
    """A jitted Adam step on the squared error (one per model, reused by every seed)."""

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def train(
    model: nn.Module,
    tx: optax.GradientTransformation,
    train_step: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    progress: Any,
) -> Any:
    """Trains ``model`` from a fresh ``seed``-ed init; returns its params."""
    params = model.init(jax.random.key(seed), x[:batch_size])["params"]
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed + 1)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for step in range(len(y) // batch_size):
            batch = order[step * batch_size : (step + 1) * batch_size]
            params, opt_state, loss = train_step(params, opt_state, x[batch], y[batch])
        progress.update(1)
        progress.set_postfix(loss=f"{float(loss):.4f}")
    return params


def count_params(params: Any) -> int:
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))


def save_checkpoint(path: str, seed: int, local_params: Any, conv_params: Any) -> None:
    state = {"seed": seed, "local": local_params, "conv": conv_params}
    with open(path, "wb") as f:
        f.write(serialization.to_bytes(state))


def load_checkpoint(path: str, local_model: nn.Module, conv_model: nn.Module) -> tuple[int, Any, Any]:
    """Reads a checkpoint and checks it against the models' parameter shapes."""
    with open(path, "rb") as f:
        state = serialization.msgpack_restore(f.read())
    example = jnp.zeros((1, *GRID, CHANNELS), jnp.float32)
    restored = []
    for model, key in ((local_model, "local"), (conv_model, "conv")):
        template = jax.eval_shape(model.init, jax.random.key(0), example)["params"]
        params = serialization.from_state_dict(template, state[key])
        shapes = jax.tree_util.tree_map(jnp.shape, params)
        if shapes != jax.tree_util.tree_map(jnp.shape, template):
            raise ValueError(f"checkpoint {path} holds {key} params of shapes {shapes}, not the model's.")
        restored.append(jax.tree_util.tree_map(jnp.asarray, params))
    return int(state["seed"]), restored[0], restored[1]


def plot(
    out: str,
    world: dict[str, np.ndarray],
    x_test: np.ndarray,
    y_test: np.ndarray,
    predictions: dict[str, np.ndarray],
    scores: dict[str, list[float]],
) -> list[str]:
    """Writes the task figure and the comparison figure into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strength = np.sqrt((world["kernel"] ** 2).sum(axis=(2, 3, 4)))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3), layout="constrained")
    panels = [
        ("terrain h (not an input)", world["terrain"], "terrain"),
        ("strength of each cell's\ntrue 3x3 response", strength, "viridis"),
        ("input field 1, test sample 0", x_test[0, :, :, 0], "RdBu_r"),
        ("target, test sample 0", y_test[0], "Blues"),
    ]
    for ax, (title, image, cmap) in zip(axes, panels):
        fig.colorbar(ax.imshow(image, cmap=cmap), ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("The task: each grid cell responds to its 3x3 neighbourhood in its own way")
    task_path = os.path.join(out, TASK_PNG)
    fig.savefig(task_path, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 6, figsize=(19, 3.4), layout="constrained")
    names = {"local": "locally-connected", "conv": "conv baseline"}
    for ax, name in zip(axes[:2], ("local", "conv")):
        per_cell = r2(predictions[name], y_test, axis=0)
        fig.colorbar(ax.imshow(per_cell, cmap="magma", vmin=0, vmax=1), ax=ax, shrink=0.8)
        ax.set_title(f"{names[name]}: test R² per cell", fontsize=10)
    limit = float(max(y_test[0].max(), *(p[0].max() for p in predictions.values())))
    samples = [("target", y_test[0]), ("local", predictions["local"][0]), ("conv", predictions["conv"][0])]
    for ax, (title, image) in zip(axes[2:5], samples):
        ax.imshow(image, cmap="Blues", vmin=0, vmax=limit)
        ax.set_title(f"{title}, test sample 0", fontsize=10)
    for ax in axes[:5]:
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[5]
    for position, name in enumerate(("local", "conv")):
        values = scores[name]
        ax.bar(position, np.mean(values), yerr=np.std(values), color=("C0", "C1")[position], capsize=6)
        ax.plot(np.full(len(values), position), values, "k.", ms=5)
    ax.set_xticks([0, 1], [names["local"], names["conv"]])
    ax.set_ylim(0, 1)
    ax.set_title(f"test R² over {len(scores['local'])} seeds (mean ± std)", fontsize=10)
    fig.suptitle("Locally-connected against conv: about the same number of parameters, the same training")
    comparison_path = os.path.join(out, COMPARISON_PNG)
    fig.savefig(comparison_path, dpi=100)
    plt.close(fig)
    return [task_path, comparison_path]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="training runs per model (default 5)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--train-size", type=int, default=1024, help="training samples per seed")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="Adam's initial learning rate")
    parser.add_argument(
        "--implementation",
        default="auto",
        choices=["auto", "native", "patches", "dense", "sparse"],
        help="the LocallyConnected2D implementation (all give the same numbers)",
    )
    parser.add_argument("--out", default=os.path.join("out", "climate_grid"), help="output folder")
    parser.add_argument(
        "--restore", action="store_true", help=f"evaluate <out>/{CHECKPOINT} instead of training"
    )
    args = parser.parse_args(argv)
    if min(args.seeds, args.epochs, args.batch_size) < 1 or args.train_size < args.batch_size:
        parser.error("--seeds, --epochs and --batch-size must be >= 1, and --train-size >= --batch-size")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the example; returns the scores and the paths it wrote."""
    from tqdm import tqdm

    args = parse_args(argv)
    start = time.perf_counter()
    models = {"local": LocalNet(implementation=args.implementation), "conv": ConvNet()}
    world = make_world()
    x_test, y_test = sample(world, 512, TEST_SEED)
    checkpoint = os.path.join(args.out, CHECKPOINT)
    scores: dict[str, list[float]] = {"local": [], "conv": []}
    first: dict[str, Any] = {}
    if args.restore:
        seed, first["local"], first["conv"] = load_checkpoint(checkpoint, models["local"], models["conv"])
        print(f"restored {checkpoint} (trained with seed {seed})")
    else:
        print(
            f"grid {GRID[0]}x{GRID[1]}, {CHANNELS} input fields; {args.train_size} training and "
            f"{len(y_test)} test samples; {args.seeds} seeds"
        )
        total_steps = args.epochs * (args.train_size // args.batch_size)
        tx = optax.adam(optax.cosine_decay_schedule(args.learning_rate, total_steps))
        steps = {name: make_train_step(model, tx) for name, model in models.items()}
        progress = tqdm(total=2 * args.seeds * args.epochs, unit="epoch", file=sys.stderr)
        for seed in range(args.seeds):
            x_train, y_train = sample(world, args.train_size, seed)
            for name, model in models.items():
                progress.set_description(f"seed {seed} {name:>5}")
                params = train(
                    model,
                    tx,
                    steps[name],
                    x_train,
                    y_train,
                    seed=seed,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    progress=progress,
                )
                prediction = np.asarray(model.apply({"params": params}, x_test))
                scores[name].append(float(r2(prediction, y_test)))
                first.setdefault(name, params)
        progress.close()
        os.makedirs(args.out, exist_ok=True)
        save_checkpoint(checkpoint, 0, first["local"], first["conv"])
        print(f"checkpoint: {checkpoint}")

    predictions = {
        name: np.asarray(model.apply({"params": first[name]}, x_test)) for name, model in models.items()
    }
    if args.restore:
        scores = {name: [float(r2(prediction, y_test))] for name, prediction in predictions.items()}
    for name, label in (("local", "locally-connected"), ("conv", "conv baseline    ")):
        values = np.array(scores[name])
        print(
            f"{label} test R2: {values.mean():.3f} +- {values.std():.3f} over {len(values)} seed(s) "
            f"({count_params(first[name]):,} params)"
        )
    print(f"best possible (noise only): {1 - NOISE**2 / float(y_test.var()):.3f}")
    os.makedirs(args.out, exist_ok=True)
    figures = plot(args.out, world, x_test, y_test, predictions, scores)
    for path in figures:
        print(f"figure: {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {"scores": scores, "checkpoint": checkpoint, "figures": figures}


if __name__ == "__main__":
    main()
