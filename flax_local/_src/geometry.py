"""Which input positions each output position of a local layer reads.

A ``Geometry`` is computed from static shapes at trace time. Every
implementation uses the same one, so they agree on output sizes, padding and
error messages by construction.

Output position ``o`` along a dimension reads the padded-input positions
``o * stride + j * dilation`` for kernel offsets ``j = 0 .. kernel_size - 1``;
in unpadded coordinates that is ``o * stride + j * dilation - pad_low``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from flax_local._src import arguments

INDEX_LIMIT = 2**31 - 1
"""Largest index an implementation may store in its int32 index arrays."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Static description of one local layer applied to one input size.

    Attributes:
      input_spatial: spatial shape of the (unpadded) input.
      kernel_size: window size per spatial dimension.
      strides: step between windows per spatial dimension.
      dilation: spacing of the window taps per spatial dimension.
      padding: resolved ``(low, high)`` padding per spatial dimension.
      output_spatial: number of output positions per spatial dimension.

    Example:
      >>> from flax_local.functional import geometry
      >>> g = geometry((7, 7), 3, strides=2)
      >>> g.output_spatial, g.num_positions, g.window_volume
      ((3, 3), 9, 9)
    """

    input_spatial: tuple[int, ...]
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    output_spatial: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def num_positions(self) -> int:
        return math.prod(self.output_spatial)

    @property
    def window_volume(self) -> int:
        return math.prod(self.kernel_size)

    def axis_taps(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Input coordinate read along dimension ``d`` by each (output index, kernel offset).

        Returns:
          ``(coord, inside)``, both of shape ``(output_spatial[d], kernel_size[d])``:
          the unpadded coordinate (outside ``[0, input_spatial[d])`` for taps in
          the padding) and whether it lies inside the input. A tap of the full
          window is inside exactly when it is inside along every dimension, so
          these per-axis arrays describe the layer without any array of size
          positions x window.
        """
        out = np.arange(self.output_spatial[d], dtype=np.int64)[:, None]
        taps = np.arange(self.kernel_size[d], dtype=np.int64)[None, :]
        coord = out * self.strides[d] + taps * self.dilation[d] - self.padding[d][0]
        return coord, (coord >= 0) & (coord < self.input_spatial[d])

    @property
    def num_connections(self) -> int:
        """Number of (position, window offset) taps that read the input, not padding."""
        return math.prod(int(self.axis_taps(d)[1].sum()) for d in range(self.rank))

    @property
    def reaches_padding(self) -> bool:
        """Whether any tap reads padding."""
        return self.num_connections < self.num_positions * self.window_volume

    def input_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat input index read by each (output position, kernel offset), in numpy.

        Builds two ``(num_positions, window_volume)`` host arrays: only the
        ``"dense"`` and ``"sparse"`` matrices, which hold one entry per
        connection anyway, use it. Everything else uses ``axis_taps`` or
        ``tap_rows``.

        Returns:
          ``(index, valid)``, both of shape ``(num_positions, window_volume)``.
          ``index`` is the row-major flat index into the unpadded input spatial
          shape (0 where invalid); ``valid`` is False where the tap falls into
          padding (it reads a zero).
        """
        index = np.zeros((self.num_positions, self.window_volume), np.int64)
        valid = np.ones((self.num_positions, self.window_volume), bool)
        out_grid = np.indices(self.output_spatial).reshape(self.rank, -1)
        tap_grid = np.indices(self.kernel_size).reshape(self.rank, -1)
        for d in range(self.rank):
            coord = (
                out_grid[d][:, None] * self.strides[d]
                + tap_grid[d][None, :] * self.dilation[d]
                - self.padding[d][0]
            )
            inside = (coord >= 0) & (coord < self.input_spatial[d])
            valid &= inside
            index = index * self.input_spatial[d] + np.where(inside, coord, 0)
        return np.where(valid, index, 0), valid

    def tap_rows(self, padding_row: int = 0):
        """``input_coordinates`` computed by XLA at run time, as int32 gather indices.

        Built from the per-axis vectors of ``axis_taps`` with broadcasting jnp
        ops, so tracing holds nothing of size positions x window (XLA builds
        it, or fuses it into the gather that reads it).

        Args:
          padding_row: the row given to taps in the padding.

        Returns:
          ``(rows, inside)``: int32 rows of shape ``(num_positions,
          window_volume)`` (window offsets in row-major order of
          ``kernel_size``), and the bool mask of taps inside the input, or None
          when no tap reaches the padding.

        Raises:
          ValueError: if the input has more positions than int32 indexes.
        """
        check_index_range(self)
        rank = self.rank
        rows, inside = None, None
        for d in range(rank):
            coord, inside_d = self.axis_taps(d)
            shape = [1] * (2 * rank)
            shape[d], shape[rank + d] = coord.shape
            coord = jnp.asarray(np.where(inside_d, coord, 0).astype(np.int32).reshape(shape))
            rows = coord if rows is None else rows * np.int32(self.input_spatial[d]) + coord
            if not inside_d.all():
                inside_d = jnp.asarray(inside_d.reshape(shape))
                inside = inside_d if inside is None else inside & inside_d
        full, flat = (*self.output_spatial, *self.kernel_size), (self.num_positions, self.window_volume)
        rows = jnp.broadcast_to(rows, full)
        if inside is None:
            # The barrier makes XLA materialise the small index array once,
            # instead of recomputing it for every element the gather copies.
            return lax.optimization_barrier(rows.reshape(flat)), None
        inside = jnp.broadcast_to(inside, full)
        rows = jnp.where(inside, rows, np.int32(padding_row))
        return lax.optimization_barrier((rows.reshape(flat), inside.reshape(flat)))


def check_index_range(geometry: Geometry) -> None:
    """Raises unless every input position can be indexed by an int32.

    Raises:
      ValueError: if ``prod(input_spatial) > 2**31 - 1``.
    """
    size = math.prod(geometry.input_spatial)
    if size > INDEX_LIMIT:
        raise ValueError(
            f"x has {size} spatial positions (spatial shape {geometry.input_spatial}), more than "
            f"the 2**31 - 1 that the implementations' int32 indices can address; split the input."
        )


def resolve_padding(
    padding: str | tuple[tuple[int, int], ...],
    input_spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[tuple[int, int], ...]:
    """Turns a validated padding (name or pairs) into explicit (low, high) pairs.

    ``"same"`` has the TF/lax meaning: output size ``ceil(input / stride)``, the
    total padding split with ``low = total // 2``. ``"causal"`` pads
    ``dilation * (kernel_size - 1)`` on the left only.
    """
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return tuple((0, 0) for _ in input_spatial)
    if padding == "causal":
        return ((dilation[0] * (kernel_size[0] - 1), 0),)
    pairs = []
    for size, k, s, d in zip(input_spatial, kernel_size, strides, dilation):
        out = -(-size // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def make_geometry(
    input_spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    padding: str | tuple[tuple[int, int], ...],
    dilation: tuple[int, ...],
) -> Geometry:
    """Resolves padding and output size, raising if no window fits the input."""
    pads = resolve_padding(padding, input_spatial, kernel_size, strides, dilation)
    output = []
    for size, k, s, d, (low, high) in zip(input_spatial, kernel_size, strides, dilation, pads):
        span = d * (k - 1) + 1
        padded = size + low + high
        output.append((padded - span) // s + 1 if padded >= span else 0)
    if any(o < 1 for o in output):
        raise ValueError(
            f"input spatial shape {input_spatial} is too small for kernel_size={kernel_size} "
            f"with dilation_rate={dilation} and padding={padding!r} (resolved to {pads}): "
            f"the output would have shape {tuple(output)}; every output size must be >= 1."
        )
    return Geometry(
        input_spatial=tuple(input_spatial),
        kernel_size=kernel_size,
        strides=strides,
        dilation=dilation,
        padding=pads,
        output_spatial=tuple(output),
    )


def smallest_input_for(
    output_spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    padding: str | tuple[tuple[int, int], ...],
    dilation: tuple[int, ...],
) -> tuple[int, ...] | None:
    """The smallest input spatial shape that yields ``output_spatial``, if any.

    Used only to write a helpful error when an input does not match the size
    that a layer's parameters were made for.
    """
    found = []
    for d in range(len(output_spatial)):
        for size in range(1, output_spatial[d] * strides[d] + dilation[d] * kernel_size[d] + 4):
            pads = resolve_padding(
                padding if isinstance(padding, str) else (padding[d],),
                (size,),
                (kernel_size[d],),
                (strides[d],),
                (dilation[d],),
            )[0]
            span = dilation[d] * (kernel_size[d] - 1) + 1
            padded = size + pads[0] + pads[1]
            if padded >= span and (padded - span) // strides[d] + 1 == output_spatial[d]:
                found.append(size)
                break
        else:
            return None
    return tuple(found)


def check_geometry_arguments(
    rank: int, kernel_size, strides, padding, dilation_rate
) -> tuple[tuple[int, ...], tuple[int, ...], str | tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Validates the window arguments for a layer of spatial ``rank``."""
    return (
        arguments.to_tuple(kernel_size, rank, "kernel_size"),
        arguments.to_tuple(strides, rank, "strides"),
        arguments.check_padding(padding, rank),
        arguments.to_tuple(dilation_rate, rank, "dilation_rate"),
    )
