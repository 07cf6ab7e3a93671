"""Train a locally-connected network on scikit-learn's 8x8 digits, next to a conv baseline.

The data are the 1,797 handwritten digits that scikit-learn ships with the
package (``sklearn.datasets.load_digits``: nothing is downloaded). Two small
networks of about the same size are trained with the same optimizer, batches
and number of steps:

* local: ``LocallyConnected2D(16, 3x3, relu)`` -> ``Dense(10)``, with a small L2
  kernel regularizer (``flax_local.regularization_loss``) and a max-norm kernel
  constraint (``flax_local.constraints.enforce_constraints``);
* conv: ``flax.linen.Conv(32, 3x3, relu)`` -> ``Dense(10)``.

It prints both test accuracies, writes two figures (the learned filters at a
few positions, and the kernel norm at every position) and a checkpoint, which
``--restore`` evaluates without training.

Usage (from the repository root, after ``pip install -e ".[examples]"``)::

  python examples/train_digits.py                  # train both, ~30 s on 2 CPU cores
  python examples/train_digits.py --restore        # evaluate the saved checkpoint
  python examples/train_digits.py --implementation dense --epochs 5 --out /tmp/digits
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

CHECKPOINT = "checkpoint.msgpack"
FILTERS_PNG = "filters.png"
NORMS_PNG = "kernel_norm.png"
# Positions whose filters are drawn: the corners and the centre of the 6x6 output grid.
SHOWN_POSITIONS = ((0, 0), (0, 5), (3, 3), (5, 0), (5, 5))


class LocalNet(nn.Module):
    """LocallyConnected2D(16, 3x3) -> Dense(10): 11,530 parameters on 8x8x1 inputs."""

    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = flax_local.LocallyConnected2D(
            filters=16,
            kernel_size=3,
            activation="relu",
            kernel_regularizer=flax_local.regularizers.l2(1e-4),
            kernel_constraint=flax_local.constraints.max_norm(2.0),
            implementation=self.implementation,
            name="local",
        )(x)
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


class ConvNet(nn.Module):
    """Conv(32, 3x3) -> Dense(10): 11,850 parameters on 8x8x1 inputs."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", name="conv")(x))
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


def load_data(seed: int, test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """The digits as ``(N, 8, 8, 1)`` float32 in [0, 1], split by a seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = int(round(test_fraction * len(labels)))
    test, train = order[:num_test], order[num_test:]
    return images[train], labels[train], images[test], labels[test]


def make_train_step(model: nn.Module, tx: optax.GradientTransformation):
    """A jitted step: cross-entropy plus the layers' regularization loss, then the update."""

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(params):
            logits, state = model.apply({"params": params}, x, mutable=["losses"])
            cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return cross_entropy + flax_local.regularization_loss(state), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        # enforce_constraints is last in the chain: it projects params + updates.
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
        return params, opt_state, loss, accuracy

    return train_step


def make_evaluate(model: nn.Module):
    @jax.jit
    def evaluate(params, x, y):
        logits = model.apply({"params": params}, x)
        return jnp.mean(jnp.argmax(logits, axis=-1) == y)

    return evaluate


def train(
    name: str,
    model: nn.Module,
    data: tuple[np.ndarray, ...],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
) -> Any:
    """Trains ``model`` with Adam; returns its params. Incomplete last batches are dropped."""
    from tqdm import tqdm

    x_train, y_train, _, _ = data
    params = model.init(jax.random.key(seed), x_train[:batch_size])["params"]
    tx = optax.chain(
        optax.adam(learning_rate),
        flax_local.constraints.enforce_constraints(model, x_train[:batch_size]),
    )
    opt_state = tx.init(params)
    train_step = make_train_step(model, tx)
    rng = np.random.default_rng(seed + 1)
    steps = len(y_train) // batch_size
    progress = tqdm(range(epochs), desc=f"{name:>5}", unit="epoch", file=sys.stderr)
    for _ in progress:
        order = rng.permutation(len(y_train))
        losses, accuracies = [], []
        for step in range(steps):
            batch = order[step * batch_size : (step + 1) * batch_size]
            params, opt_state, loss, accuracy = train_step(params, opt_state, x_train[batch], y_train[batch])
            losses.append(loss)
            accuracies.append(accuracy)
        progress.set_postfix(loss=f"{float(np.mean(losses)):.4f}", acc=f"{float(np.mean(accuracies)):.3f}")
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
    example = jnp.zeros((1, 8, 8, 1), jnp.float32)
    restored = []
    for model, key in ((local_model, "local"), (conv_model, "conv")):
        template = jax.eval_shape(model.init, jax.random.key(0), example)["params"]
        params = serialization.from_state_dict(template, state[key])
        shapes = jax.tree_util.tree_map(jnp.shape, params)
        if shapes != jax.tree_util.tree_map(jnp.shape, template):
            raise ValueError(f"checkpoint {path} holds {key} params of shapes {shapes}, not the model's.")
        restored.append(jax.tree_util.tree_map(jnp.asarray, params))
    return int(state["seed"]), restored[0], restored[1]


def _tile(filters: np.ndarray, columns: int) -> np.ndarray:
    """``(k, k, n)`` filters as one image of ``columns`` per row, 1-pixel NaN gaps."""
    k, _, n = filters.shape
    rows = -(-n // columns)
    mosaic = np.full((rows * (k + 1) - 1, columns * (k + 1) - 1), np.nan)
    for f in range(n):
        r, c = divmod(f, columns)
        mosaic[r * (k + 1) : r * (k + 1) + k, c * (k + 1) : c * (k + 1) + k] = filters[:, :, f]
    return mosaic


def plot(out: str, local_params: Any, conv_params: Any, mean_image: np.ndarray) -> list[str]:
    """Writes the two figures into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernel = np.asarray(local_params["local"]["kernel"])  # (6, 6, 3, 3, 1, 16)
    conv_kernel = np.asarray(conv_params["conv"]["kernel"])  # (3, 3, 1, 32)
    panels = [(f"position {p}", kernel[p][:, :, 0, :]) for p in SHOWN_POSITIONS]
    panels.append(("conv (shared)\nfirst 16 filters", conv_kernel[:, :, 0, :16]))

    colormap = plt.get_cmap("RdBu_r").with_extremes(bad="0.55")  # grey gaps between filters
    # One colour scale for the local layer's positions, so that they compare; one for the conv.
    local_limit = float(np.abs(kernel).max()) or 1.0
    conv_limit = float(np.abs(conv_kernel).max()) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), layout="constrained")
    for index, (ax, (title, filters)) in enumerate(zip(axes, panels)):
        limit = conv_limit if index == len(panels) - 1 else local_limit
        image = ax.imshow(_tile(filters, 4), cmap=colormap, vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= len(panels) - 2:
            fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle("Learned 3x3 filters: each output position of the local layer has its own 16")
    filters_path = os.path.join(out, FILTERS_PNG)
    fig.savefig(filters_path, dpi=100)
    plt.close(fig)

    norms = np.sqrt((kernel**2).sum(axis=(2, 3, 4, 5)))  # one number per output position
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.6), layout="constrained")
    image = left.imshow(mean_image[:, :, 0], cmap="gray_r")
    left.set_title("mean training image (8x8)")
    fig.colorbar(image, ax=left, shrink=0.8)
    image = right.imshow(norms, cmap="viridis")
    right.set_title("kernel norm per output position (6x6)\n(position (i, j) sees pixels i..i+2, j..j+2)")
    for (i, j), value in np.ndenumerate(norms):
        right.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(image, ax=right, shrink=0.8)
    norms_path = os.path.join(out, NORMS_PNG)
    fig.savefig(norms_path, dpi=100)
    plt.close(fig)
    return [filters_path, norms_path]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the init and the shuffling")
    parser.add_argument(
        "--implementation",
        default="auto",
        choices=["auto", "native", "patches", "dense", "sparse"],
        help="the LocallyConnected2D implementation (all give the same numbers)",
    )
    parser.add_argument("--out", default=os.path.join("out", "digits"), help="output folder")
    parser.add_argument(
        "--restore", action="store_true", help=f"evaluate <out>/{CHECKPOINT} instead of training"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the example; returns the accuracies and the paths it wrote."""
    args = parse_args(argv)
    start = time.perf_counter()
    local_model, conv_model = LocalNet(implementation=args.implementation), ConvNet()
    checkpoint = os.path.join(args.out, CHECKPOINT)
    if args.restore:
        seed, local_params, conv_params = load_checkpoint(checkpoint, local_model, conv_model)
        print(f"restored {checkpoint} (trained with --seed {seed})")
    else:
        seed = args.seed
    data = load_data(seed)
    x_train, y_train, x_test, y_test = data
    if not args.restore:
        print(f"digits: {len(y_train)} training and {len(y_test)} test images of 8x8 pixels")
        settings = dict(
            seed=seed, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate
        )
        local_params = train("local", local_model, data, **settings)
        conv_params = train("conv", conv_model, data, **settings)
        os.makedirs(args.out, exist_ok=True)
        save_checkpoint(checkpoint, seed, local_params, conv_params)
        print(f"checkpoint: {checkpoint}")

    local_accuracy = float(make_evaluate(local_model)(local_params, x_test, y_test))
    conv_accuracy = float(make_evaluate(conv_model)(conv_params, x_test, y_test))
    print(
        f"locally-connected test accuracy: {local_accuracy:.4f} ({count_params(local_params):,} params, "
        f"implementation={args.implementation!r})"
    )
    print(f"conv baseline     test accuracy: {conv_accuracy:.4f} ({count_params(conv_params):,} params)")

    os.makedirs(args.out, exist_ok=True)
    figures = plot(args.out, local_params, conv_params, x_train.mean(axis=0))
    for path in figures:
        print(f"figure: {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {
        "local_accuracy": local_accuracy,
        "conv_accuracy": conv_accuracy,
        "checkpoint": checkpoint,
        "figures": figures,
        "seed": seed,
    }


if __name__ == "__main__":
    main()
