"""Draws docs/img/padding.png: which input positions each output position reads, per padding mode.

Run from the repository root: ``python docs/scripts/padding_figure.py``. The
windows come from ``flax_local.functional.geometry``, so the picture shows what
the library computes.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from flax_local.functional import geometry  # noqa: E402

N = 7  # input length
CASES = [
    ('"valid", k=3', dict(kernel_size=3)),
    ('"same", k=3', dict(kernel_size=3, padding="same")),
    ('"same", k=4 (extra zero high)', dict(kernel_size=4, padding="same")),
    ('"same", k=3, stride 2', dict(kernel_size=3, padding="same", strides=2)),
    ('"causal", k=3, dilation 2', dict(kernel_size=3, padding="causal", dilation_rate=2)),
    ("((2, 0),), k=3, stride 2", dict(kernel_size=3, padding=((2, 0),), strides=2)),
]
OUT = pathlib.Path(__file__).resolve().parent.parent / "img" / "padding.png"


def draw(ax, title: str, arguments: dict) -> None:
    g = geometry((N,), arguments.pop("kernel_size"), **arguments)
    (low, high), k, s, d = g.padding[0], g.kernel_size[0], g.strides[0], g.dilation[0]
    # Columns: padded input positions -low .. N-1+high; rows: output positions.
    for i in range(-low, N + high):
        padded = i < 0 or i >= N
        ax.add_patch(
            Rectangle(
                (i, -1.6), 1, 1, fc="0.85" if padded else "#9ecae1", ec="k", hatch="//" if padded else None
            )
        )
        ax.text(i + 0.5, -1.1, "0" if padded else f"x{i}", ha="center", va="center", fontsize=7)
    for o in range(g.output_spatial[0]):
        for j in range(k):
            i = o * s - low + j * d
            padded = i < 0 or i >= N
            ax.add_patch(Rectangle((i, o), 1, 1, fc="0.85" if padded else "#3182bd", ec="w"))
        ax.text(-low - 0.4, o + 0.5, f"y{o}", ha="right", va="center", fontsize=7)
    ax.set_xlim(-low - 1.4, N + high + 0.2)
    ax.set_ylim(g.output_spatial[0] + 0.2, -1.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"{title}\npadding ({low}, {high}), {g.output_spatial[0]} outputs", fontsize=9)


def main() -> None:
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.6), layout="constrained")
    for ax, (title, arguments) in zip(axes.flat, CASES):
        draw(ax, title, dict(arguments))
    fig.suptitle(
        f"Input length {N}: the top row is the padded input (grey: zeros); row y_o marks the taps output o reads"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=90)
    print(OUT)


if __name__ == "__main__":
    main()
