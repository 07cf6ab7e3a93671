"""The benchmark cases: layer configurations and the input sizes they run on."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from flax_local.functional import output_shape


@dataclasses.dataclass(frozen=True)
class Case:
    """One locally-connected layer applied to one batch of inputs.

    Attributes:
      name: short identifier (used in tables, JSON and ``--cases``).
      description: what the case stands for.
      batch: batch size.
      spatial: input spatial shape; its length is the spatial rank.
      channels: input channels.
      filters: output channels.
      kernel_size: window size per spatial dimension.
      strides: step between windows per spatial dimension.
      dilation: spacing of the window taps per spatial dimension.
      padding: ``"valid"`` or ``"same"``.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      dtype: ``"float32"`` or ``"bfloat16"`` (inputs, parameters and compute).
    """

    name: str
    description: str
    batch: int
    spatial: tuple[int, ...]
    channels: int
    filters: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    dilation: tuple[int, ...] | None = None
    padding: str = "valid"
    data_format: str = "channels_last"
    dtype: str = "float32"

    def __post_init__(self):
        ones = (1,) * len(self.spatial)
        if self.strides is None:
            object.__setattr__(self, "strides", ones)
        if self.dilation is None:
            object.__setattr__(self, "dilation", ones)

    @property
    def rank(self) -> int:
        return len(self.spatial)

    @property
    def output_spatial(self) -> tuple[int, ...]:
        return output_shape(
            self.spatial,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation,
        )

    @property
    def positions(self) -> int:
        return math.prod(self.output_spatial)

    @property
    def window(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.data_format == "channels_first":
            return (self.batch, self.channels, *self.spatial)
        return (self.batch, *self.spatial, self.channels)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return (*self.output_spatial, *self.kernel_size, self.channels, self.filters)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (*self.output_spatial, self.filters)

    def summary(self) -> str:
        """A one-line shape summary, e.g. ``B32 32x32x3 -> 64 k3``."""
        spatial = "x".join(map(str, self.spatial))
        parts = [f"B{self.batch} {spatial}x{self.channels} -> {self.filters} k{_one(self.kernel_size)}"]
        if any(s != 1 for s in self.strides):
            parts.append(f"s{_one(self.strides)}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"d{_one(self.dilation)}")
        if self.padding != "valid":
            parts.append(self.padding)
        if self.data_format == "channels_first":
            parts.append("NC...")
        if self.dtype != "float32":
            parts.append(self.dtype)
        return " ".join(parts)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(output_spatial=self.output_spatial, summary=self.summary())
        return out

    def arrays(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random float32 ``x``, ``kernel`` and ``bias`` (numpy; cast by the runners)."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.input_shape, np.float32)
        fan_in = self.window * self.channels
        kernel = rng.standard_normal(self.kernel_shape, np.float32) / np.float32(math.sqrt(fan_in))
        bias = rng.standard_normal(self.bias_shape, np.float32) * np.float32(0.1)
        return x, kernel, bias


def _one(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


FULL_CASES = [
    # The five cases of the performance issue.
    Case("keras_doc", "Keras docs example", 32, (32, 32), 3, 64, (3, 3)),
    Case("mnist16", "28x28 feature map, 16 channels", 32, (28, 28), 16, 32, (3, 3)),
    Case("big56", "56x56 feature map, 32 channels", 16, (56, 56), 32, 32, (3, 3)),
    Case("seq1d", "1D sequence", 64, (128,), 64, 64, (3,)),
    Case("stride2", "28x28, stride 2", 32, (28, 28), 16, 32, (3, 3), strides=(2, 2)),
    # Coverage: window size, long 1D, dilation, 3D, layout, dtype, size.
    Case("k5", "5x5 window", 32, (28, 28), 16, 32, (5, 5)),
    Case("long1d", "long 1D sequence (genomics-like)", 8, (4096,), 16, 16, (5,)),
    Case(
        "dilated", "dilation 2, same padding", 32, (28, 28), 16, 32, (3, 3), dilation=(2, 2), padding="same"
    ),
    Case("vol3d", "3D volume", 8, (16, 16, 16), 8, 8, (3, 3, 3)),
    Case("nchw", "channels_first input", 32, (28, 28), 16, 32, (3, 3), data_format="channels_first"),
    Case("bf16", "bfloat16", 32, (28, 28), 16, 32, (3, 3), dtype="bfloat16"),
    Case("large", "large: the one-matrix implementations do not fit", 8, (96, 96), 32, 32, (3, 3)),
]
"""The cases of a full run."""

QUICK_CASES = [
    Case("tiny2d", "tiny 2D smoke case", 4, (10, 10), 3, 4, (3, 3)),
    Case("tiny1d", "tiny 1D smoke case", 4, (16,), 3, 4, (3,), strides=(2,)),
]
"""The cases of ``--quick`` (a CI smoke test: seconds, not a measurement)."""


GPU_CASES = [
    # The cases of the GPU issue (#25), at training batch sizes.
    Case("face48", "48x48 feature map, 32 channels", 128, (48, 48), 32, 32, (3, 3)),
    Case("face48_bf16", "48x48 feature map, bfloat16", 128, (48, 48), 32, 32, (3, 3), dtype="bfloat16"),
    Case("mid28", "28x28 feature map, 64 channels", 256, (28, 28), 64, 64, (3, 3)),
    Case("big112", "112x112 feature map, 64 channels (1.8 GB kernel)", 32, (112, 112), 64, 64, (3, 3)),
    Case("seq1024", "1D sequence, window 9", 128, (1024,), 16, 32, (9,)),
    Case("vol16", "3D volume", 64, (16, 16, 16), 16, 16, (3, 3, 3)),
]
"""The cases of the GPU benchmark (``benchmarks.gpu_run``)."""

GPU_QUICK_CASES = [
    Case("gpu_tiny2d", "tiny 2D smoke case, same padding", 3, (6, 5), 3, 5, (3, 3), padding="same"),
    Case("gpu_tiny1d", "tiny 1D smoke case, bfloat16", 2, (12,), 4, 3, (3,), strides=(2,), dtype="bfloat16"),
]
"""The cases of ``benchmarks.gpu_run --quick`` (a CPU smoke test in interpret mode)."""


def select(cases: list[Case], names: list[str] | None) -> list[Case]:
    """The cases named in ``names`` (all if None), in the order of ``cases``.

    Raises:
      ValueError: for an unknown name.
    """
    if not names:
        return list(cases)
    known = {c.name: c for c in [*FULL_CASES, *QUICK_CASES, *GPU_CASES, *GPU_QUICK_CASES]}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]
