"""The three Pallas kernels of the ``"pallas"`` implementation, on prepared operands.

Each kernel reads its windows straight from ``x`` (or ``dy``) with computed
row indices, so no patch array ever exists. The callers (``pallas.py``) hand
them operands already laid out as the kernels need, with every block dimension
a power of two of at least 16 (Triton's tensors and ``dot`` need that):

* ``x (Gx, Bp, Rp, Cp)``: the input zero-padded in space (``Rp`` rows of the
  padded grid, flattened row-major), batch padded to a multiple of the batch
  block, channels to ``Cp``;
* ``w (Gw, P, K, Cp, Fp)``: the kernel with its window and channel axes split;
* ``dy (Gd, Bp, P, Fp)`` and ``bias (Gb, P, Fp)``.

A group size of 1 is shared by every group (read at group 0). Output position
``p`` has output coordinates ``o`` (row-major in ``Layout.out``); its window
offset ``j`` (row-major in ``Layout.kernel``) reads padded row
``sum_d (o_d * stride_d + j_d * dilation_d) * pitch_d``.

Programs and what they read:

* forward: grid ``(batch blocks, position runs, G)``; a program loops over a
  run of neighbouring positions, and for each one over the window offsets (the
  inner, software-pipelined loop): ``(BB, Cp)`` rows of x times that
  position's ``(Cp, Fp)`` weights, summed in float32, plus the bias, written
  once as ``(BB, Fp)``. Batch blocks vary fastest, so the programs sharing a
  position's weights run together and the weights come from memory once;
  neighbouring positions reread x rows from cache.
* kernel gradient: grid ``(offset groups, position runs, G)``; a program holds
  the ``(Cp, Fp)`` float32 sums of a group of offsets of one position and loops
  over batch blocks (the pipelined loop): it loads the position's ``dy`` block
  once for all its offsets and, for each offset, the ``(BB, Cp)`` x rows,
  adding ``x_rows^T @ dy``. The bias gradient (a batch sum of ``dy``) rides
  along in the first offset group.
* input gradient: grid ``(batch blocks, input-row runs, G)``; a program loops
  over a run of input rows and, for each, over the window offsets (pipelined):
  the output position whose window puts offset ``j`` on that row (if any:
  strides leave gaps, edges fall outside) contributes ``dy (BB, Fp) @ w^T (Fp,
  Cp)``. It is a gather: every row is written once, no atomics, deterministic.

``Blocks.reuse`` selects variants of the forward pass and the input gradient
whose run lies along the last spatial axis: each row of x (or dy) a program
loads serves every (position, last-axis offset) pair that uses it, about
``k`` times fewer loads, at the cost of the whole run's sums in registers.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static index arithmetic of one geometry on the padded input grid.

    Attributes:
      padded: padded input spatial shape (rows ``Rp = prod(padded)``).
      unpadded: input spatial shape.
      low: low padding per dimension (may be negative: a crop).
      out: output spatial shape.
      kernel: window size per dimension.
      strides: window step per dimension.
      dilation: tap spacing per dimension.
    """

    padded: tuple[int, ...]
    unpadded: tuple[int, ...]
    low: tuple[int, ...]
    out: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def window(self) -> int:
        return math.prod(self.kernel)

    @property
    def positions(self) -> int:
        return math.prod(self.out)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile sizes and launch settings of one kernel call.

    Attributes:
      batch: batch rows per block (a power of two, at least 16).
      run: positions (forward, kernel gradient) or input rows (input gradient)
        per program, visited in a loop.
      offsets: window offsets per program (kernel gradient only; divides the window).
      num_warps: warps per program (GPU).
      num_stages: software-pipelining depth of the program's inner loop (GPU).
      reuse: a program's run lies along the last spatial axis and each row it
        loads serves every pair (position or input column, last-axis offset)
        that uses it, instead of one load per pair (``_forward_reuse_kernel``,
        ``_input_grad_reuse_kernel``; the input gradient's needs a last stride of 1).
    """

    batch: int
    run: int
    offsets: int = 1
    num_warps: int = 4
    num_stages: int = 2
    reuse: bool = False


def _unflatten(index, sizes: tuple[int, ...]) -> list:
    """Row-major coordinates of a flat ``index`` (a traced int32 scalar) in ``sizes``."""
    coords = []
    for size in reversed(sizes):
        coords.append(lax.rem(index, jnp.int32(size)))
        index = lax.div(index, jnp.int32(size))
    return coords[::-1]


def _pitches(sizes: tuple[int, ...]) -> list[int]:
    return [math.prod(sizes[d + 1 :]) for d in range(len(sizes))]


def _window_start(layout: Layout, p):
    """Padded row of offset 0 of position ``p``."""
    pitch = _pitches(layout.padded)
    coords = _unflatten(p, layout.out)
    return sum(c * (s * q) for c, s, q in zip(coords, layout.strides, pitch))


def _offset_row(layout: Layout, j):
    """Row distance of window offset ``j`` (static int or traced) from offset 0."""
    pitch = _pitches(layout.padded)
    if isinstance(j, int):
        coords = [
            (j // math.prod(layout.kernel[d + 1 :])) % layout.kernel[d] for d in range(len(layout.kernel))
        ]
    else:
        coords = _unflatten(j, layout.kernel)
    return sum(c * (d * q) for c, d, q in zip(coords, layout.dilation, pitch))


def _padded_dims(layout: Layout) -> list[int]:
    """The dimensions where some window reaches padding."""
    return [
        d
        for d in range(len(layout.kernel))
        if layout.low[d] > 0 or layout.padded[d] - layout.unpadded[d] - layout.low[d] > 0
    ]


def _inside(layout: Layout, dims, padded_coords):
    """Whether padded coordinates ``padded_coords[d]`` (for ``d`` in ``dims``) are all in the real input.

    None when ``dims`` is empty (no tap reaches padding). A tap in the padding
    reads a zero of x but must add exactly 0 whatever the kernel holds there
    (an inf or NaN weight times 0 is NaN), so its product is dropped.
    """
    inside = None
    for d, q in zip(dims, padded_coords):
        here = (q >= layout.low[d]) & (q < layout.low[d] + layout.unpadded[d])
        inside = here if inside is None else inside & here
    return inside


def _dot(a, b, contract: tuple[int, int], precision):
    """``a @ b`` contracting axis ``contract[0]`` of a with ``contract[1]`` of b, in float32."""
    if a.dtype != b.dtype:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return lax.dot_general(
        a,
        b,
        (((contract[0],), (contract[1],)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
    )


def _run_count(first, run: int, total: int):
    """Items of the run starting at ``first``: ``run``, fewer for the last program."""
    return jnp.minimum(jnp.int32(run), jnp.int32(total) - first)


def _group(index, size: int):
    return index if size > 1 else 0


def _params(blocks: Blocks):
    return plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------


def _forward_kernel(x_ref, w_ref, *refs, layout, blocks, has_bias, precision):
    b_ref, y_ref = refs if has_bias else (None, refs[0])
    g, first = pl.program_id(2), pl.program_id(1) * blocks.run  # read outside loops (interpret mode)
    batch = pl.ds(pl.program_id(0) * blocks.batch, blocks.batch)
    gx, gw = _group(g, x_ref.shape[0]), _group(g, w_ref.shape[0])
    fp = w_ref.shape[-1]

    padded_dims = _padded_dims(layout)

    def position(i, carry):
        p = first + i
        start = _window_start(layout, p)
        coords = _unflatten(p, layout.out)

        def offset(j, acc):  # the pipelined loop: each step loads (BB, Cp) rows and (Cp, Fp) weights
            rows = x_ref[gx, batch, start + _offset_row(layout, j), :]
            total = acc + _dot(rows, w_ref[gw, p, j], (1, 0), precision)
            if not padded_dims:
                return total
            taps = _unflatten(j, layout.kernel)
            inside = _inside(
                layout,
                padded_dims,
                [coords[d] * layout.strides[d] + taps[d] * layout.dilation[d] for d in padded_dims],
            )
            return jnp.where(inside, total, acc)

        acc = lax.fori_loop(0, layout.window, offset, jnp.zeros((blocks.batch, fp), jnp.float32))
        if has_bias:
            acc += b_ref[_group(g, b_ref.shape[0]), p, :].astype(jnp.float32)[None, :]
        y_ref[g, batch, p, :] = acc.astype(y_ref.dtype)
        return carry

    lax.fori_loop(0, _run_count(first, blocks.run, layout.positions), position, 0)


def _forward_reuse_kernel(x_ref, w_ref, *refs, layout, blocks, has_bias, precision):
    """The forward pass with input rows shared along the last axis.

    A program computes ``run`` neighbouring positions of one output row (along
    the last spatial axis). For each offset of the other axes (the pipelined
    loop) it loads each input row of the run's span once and multiplies it into
    every position whose window reads it at some last-axis offset: ``run + (k -
    1) * dilation`` loads (stride 1) instead of ``run * k``. The sums of the
    whole run stay in registers. A run past the row's end reads clamped,
    in-bounds rows and weights and stores only its real positions.
    """
    b_ref, y_ref = refs if has_bias else (None, refs[0])
    g, segment_index = pl.program_id(2), pl.program_id(1)
    batch = pl.ds(pl.program_id(0) * blocks.batch, blocks.batch)
    gx, gw = _group(g, x_ref.shape[0]), _group(g, w_ref.shape[0])
    fp = w_ref.shape[-1]
    last, k_last = layout.out[-1], layout.kernel[-1]
    stride, dilation, width = layout.strides[-1], layout.dilation[-1], layout.padded[-1]
    segments = -(-last // blocks.run)
    row = lax.div(segment_index, jnp.int32(segments))
    o_first = lax.rem(segment_index, jnp.int32(segments)) * blocks.run
    p_first = row * last + o_first
    count = jnp.minimum(jnp.int32(blocks.run), jnp.int32(last) - o_first)
    # Padded row of the run's first column with last-axis offset 0, other offsets 0.
    pitch = _pitches(layout.padded)
    outer = _unflatten(row, layout.out[:-1]) if len(layout.out) > 1 else []
    start = sum(c * (s * q) for c, s, q in zip(outer, layout.strides, pitch))
    column0 = o_first * stride
    # Static: for each column u of the span, the (position i, last-axis offset t) pairs reading it.
    readers: dict[int, list[tuple[int, int]]] = {}
    for i in range(blocks.run):
        for t in range(k_last):
            readers.setdefault(i * stride + t * dilation, []).append((i, t))
    positions = [jnp.minimum(p_first + i, layout.positions - 1) for i in range(blocks.run)]
    outer_kernel = layout.kernel[:-1]

    padded_dims = _padded_dims(layout)
    outer_padded = [d for d in padded_dims if d < len(outer_kernel)]
    last_padded = [len(outer_kernel)] if len(outer_kernel) in padded_dims else []

    def outer_offset(j, sums):
        taps = _unflatten(j, outer_kernel) if outer_kernel else []
        shift = sum(t * (d * q) for t, d, q in zip(taps, layout.dilation, pitch))
        outer_inside = _inside(
            layout,
            outer_padded,
            [outer[d] * layout.strides[d] + taps[d] * layout.dilation[d] for d in outer_padded],
        )
        sums = list(sums)
        for u, pairs in sorted(readers.items()):
            column = jnp.minimum(column0 + u, width - 1)
            rows = x_ref[gx, batch, start + shift + column, :]
            inside = _inside(layout, last_padded, [column0 + u])
            if outer_inside is not None:
                inside = outer_inside if inside is None else inside & outer_inside
            for i, t in pairs:
                total = sums[i] + _dot(rows, w_ref[gw, positions[i], j * k_last + t], (1, 0), precision)
                sums[i] = total if inside is None else jnp.where(inside, total, sums[i])
        return tuple(sums)

    zeros = tuple(jnp.zeros((blocks.batch, fp), jnp.float32) for _ in range(blocks.run))
    sums = lax.fori_loop(0, math.prod(outer_kernel), outer_offset, zeros)
    for i, acc in enumerate(sums):
        if has_bias:
            acc = acc + b_ref[_group(g, b_ref.shape[0]), positions[i], :].astype(jnp.float32)[None, :]

        @pl.when(i < count)
        def _(i=i, acc=acc):  # traced at once: the defaults only satisfy the linter
            y_ref[g, batch, p_first + i, :] = acc.astype(y_ref.dtype)


def forward_call(x, w, bias, *, layout: Layout, blocks: Blocks, out_dtype, precision, interpret: bool):
    """``y (G, Bp, P, Fp)`` of prepared operands (module docstring)."""
    groups = max(x.shape[0], w.shape[0], 1 if bias is None else bias.shape[0])
    batch, fp = x.shape[1], w.shape[-1]
    if blocks.reuse:
        runs = math.prod(layout.out[:-1]) * pl.cdiv(layout.out[-1], blocks.run)
        body = _forward_reuse_kernel
    else:
        runs = pl.cdiv(layout.positions, blocks.run)
        body = _forward_kernel
    grid = (batch // blocks.batch, runs, groups)
    kernel = functools.partial(
        body, layout=layout, blocks=blocks, has_bias=bias is not None, precision=precision
    )
    operands = (x, w) if bias is None else (x, w, bias)
    return pl.pallas_call(
        kernel,
        grid=grid,
        out_shape=jax.ShapeDtypeStruct((groups, batch, layout.positions, fp), out_dtype),
        compiler_params=_params(blocks),
        interpret=interpret,
        name="flax_local_forward",
    )(*operands)


# ----------------------------------------------------------------------------
# Kernel gradient
# ----------------------------------------------------------------------------


def _kernel_grad_kernel(x_ref, dy_ref, dw_ref, db_ref, *, layout, blocks, precision):
    g, group, run_start = pl.program_id(2), pl.program_id(0), pl.program_id(1) * blocks.run
    gx, gd = _group(g, x_ref.shape[0]), _group(g, dy_ref.shape[0])
    cp, fp = x_ref.shape[-1], dy_ref.shape[-1]
    batch_blocks = x_ref.shape[1] // blocks.batch
    first = group * blocks.offsets
    shifts = [_offset_row(layout, first + t) for t in range(blocks.offsets)]

    def position(i, carry):
        p = run_start + i
        start = _window_start(layout, p)

        def batch_block(b, sums):
            batch = pl.ds(b * blocks.batch, blocks.batch)
            dy = dy_ref[gd, batch, p, :]
            dw = [
                acc + _dot(x_ref[gx, batch, start + shift, :], dy, (0, 0), precision)
                for acc, shift in zip(sums[0], shifts)
            ]
            return dw, sums[1] + jnp.sum(dy.astype(jnp.float32), axis=0)

        zeros = ([jnp.zeros((cp, fp), jnp.float32) for _ in shifts], jnp.zeros((fp,), jnp.float32))
        dw, db = lax.fori_loop(0, batch_blocks, batch_block, zeros)
        for t, acc in enumerate(dw):
            dw_ref[g, p, first + t] = acc.astype(dw_ref.dtype)

        @pl.when(group == 0)
        def _():
            db_ref[g, p, :] = db

        return carry

    lax.fori_loop(0, _run_count(run_start, blocks.run, layout.positions), position, 0)


def kernel_grad_call(x, dy, *, layout: Layout, blocks: Blocks, weight_dtype, precision, interpret: bool):
    """``dw (G, P, K, Cp, Fp)`` and ``db (G, P, Fp)`` of prepared operands."""
    groups = max(x.shape[0], dy.shape[0])
    cp, fp = x.shape[-1], dy.shape[-1]
    positions, window = layout.positions, layout.window
    grid = (window // blocks.offsets, pl.cdiv(positions, blocks.run), groups)
    kernel = functools.partial(_kernel_grad_kernel, layout=layout, blocks=blocks, precision=precision)
    return pl.pallas_call(
        kernel,
        grid=grid,
        out_shape=(
            jax.ShapeDtypeStruct((groups, positions, window, cp, fp), weight_dtype),
            jax.ShapeDtypeStruct((groups, positions, fp), jnp.float32),
        ),
        compiler_params=_params(blocks),
        interpret=interpret,
        name="flax_local_kernel_grad",
    )(x, dy)


# ----------------------------------------------------------------------------
# Input gradient
# ----------------------------------------------------------------------------


def _input_grad_kernel(dy_ref, w_ref, dx_ref, *, layout, blocks, precision):
    g, first = pl.program_id(2), pl.program_id(1) * blocks.run
    batch = pl.ds(pl.program_id(0) * blocks.batch, blocks.batch)
    gd, gw = _group(g, dy_ref.shape[0]), _group(g, w_ref.shape[0])
    cp = w_ref.shape[-2]
    rows = math.prod(layout.unpadded)
    out_pitch = _pitches(layout.out)

    def input_row(i, carry):
        r = first + i
        coords = _unflatten(r, layout.unpadded)

        def offset(j, acc):
            valid, p = True, 0
            for d, (c, t) in enumerate(zip(coords, _unflatten(j, layout.kernel))):
                # The output coordinate o with o * stride + t * dilation - low == c, if any;
                # where none, a clamped in-bounds position is read and its product dropped.
                q = c + layout.low[d] - t * layout.dilation[d]
                o = lax.div(q, jnp.int32(layout.strides[d]))
                valid = valid & (q >= 0) & (o < layout.out[d])
                if layout.strides[d] > 1:
                    valid = valid & (lax.rem(q, jnp.int32(layout.strides[d])) == 0)
                p = p + jnp.clip(o, 0, layout.out[d] - 1) * out_pitch[d]
            term = _dot(dy_ref[gd, batch, p, :], w_ref[gw, p, j], (1, 1), precision)
            return jnp.where(valid, acc + term, acc)

        acc = lax.fori_loop(0, layout.window, offset, jnp.zeros((blocks.batch, cp), jnp.float32))
        dx_ref[g, batch, r, :] = acc.astype(dx_ref.dtype)
        return carry

    lax.fori_loop(0, _run_count(first, blocks.run, rows), input_row, 0)


def _input_grad_reuse_kernel(dy_ref, w_ref, dx_ref, *, layout, blocks, precision):
    """The input gradient with ``dy`` rows shared along the last axis (last stride 1).

    A program computes ``run`` neighbouring input columns of one input row.
    For each offset of the other axes (the pipelined loop) it loads the
    ``run + (k - 1) * dilation`` rows of dy that the run's columns receive from
    once each (masked to zero where no output position exists) and multiplies
    each into every (column, last-axis offset) pair that it feeds.
    """
    g, segment_index = pl.program_id(2), pl.program_id(1)
    batch = pl.ds(pl.program_id(0) * blocks.batch, blocks.batch)
    gd, gw = _group(g, dy_ref.shape[0]), _group(g, w_ref.shape[0])
    cp = w_ref.shape[-2]
    width, k_last = layout.unpadded[-1], layout.kernel[-1]
    dilation, out_last = layout.dilation[-1], layout.out[-1]
    segments = -(-width // blocks.run)
    row = lax.div(segment_index, jnp.int32(segments))
    c_first = lax.rem(segment_index, jnp.int32(segments)) * blocks.run
    r_first = row * width + c_first
    count = jnp.minimum(jnp.int32(blocks.run), jnp.int32(width) - c_first)
    outer = _unflatten(row, layout.unpadded[:-1]) if len(layout.unpadded) > 1 else []
    out_pitch = _pitches(layout.out)
    span = (k_last - 1) * dilation
    o_first = c_first + layout.low[-1] - span  # output column of the first dy row of the span
    # Static: for each dy row u of the span, the (input column i, last-axis offset t) pairs it feeds.
    feeds: dict[int, list[tuple[int, int]]] = {}
    for i in range(blocks.run):
        for t in range(k_last):
            feeds.setdefault(i - t * dilation + span, []).append((i, t))
    outer_kernel = layout.kernel[:-1]

    def outer_offset(j, sums):
        valid, p_outer = True, 0
        taps = _unflatten(j, outer_kernel) if outer_kernel else []
        for d, (c, t) in enumerate(zip(outer, taps)):
            q = c + layout.low[d] - t * layout.dilation[d]
            o = lax.div(q, jnp.int32(layout.strides[d]))
            valid = valid & (q >= 0) & (o < layout.out[d])
            if layout.strides[d] > 1:
                valid = valid & (lax.rem(q, jnp.int32(layout.strides[d])) == 0)
            p_outer = p_outer + jnp.clip(o, 0, layout.out[d] - 1) * out_pitch[d]
        sums = list(sums)
        for u, pairs in sorted(feeds.items()):
            o_last = o_first + u
            p = p_outer + jnp.clip(o_last, 0, out_last - 1)
            present = valid & (o_last >= 0) & (o_last < out_last)
            rows = dy_ref[gd, batch, p, :]
            rows = jnp.where(present, rows, jnp.zeros_like(rows))
            for i, t in pairs:
                sums[i] = sums[i] + _dot(rows, w_ref[gw, p, j * k_last + t], (1, 1), precision)
        return tuple(sums)

    zeros = tuple(jnp.zeros((blocks.batch, cp), jnp.float32) for _ in range(blocks.run))
    sums = lax.fori_loop(0, math.prod(outer_kernel), outer_offset, zeros)
    for i, acc in enumerate(sums):

        @pl.when(i < count)
        def _(i=i, acc=acc):  # traced at once: the defaults only satisfy the linter
            dx_ref[g, batch, r_first + i, :] = acc.astype(dx_ref.dtype)


def input_grad_call(dy, w, *, layout: Layout, blocks: Blocks, out_dtype, precision, interpret: bool):
    """``dx (G, Bp, R, Cp)`` (unpadded rows) of prepared operands."""
    groups = max(dy.shape[0], w.shape[0])
    batch, cp = dy.shape[1], w.shape[-2]
    rows = math.prod(layout.unpadded)
    if blocks.reuse and layout.strides[-1] != 1:
        raise ValueError(
            f"Blocks(reuse=True) for the input gradient needs a last stride of 1, got {layout.strides}"
        )
    if blocks.reuse:
        runs = math.prod(layout.unpadded[:-1]) * pl.cdiv(layout.unpadded[-1], blocks.run)
        body = _input_grad_reuse_kernel
    else:
        runs = pl.cdiv(rows, blocks.run)
        body = _input_grad_kernel
    grid = (batch // blocks.batch, runs, groups)
    kernel = functools.partial(body, layout=layout, blocks=blocks, precision=precision)
    return pl.pallas_call(
        kernel,
        grid=grid,
        out_shape=jax.ShapeDtypeStruct((groups, batch, rows, cp), out_dtype),
        compiler_params=_params(blocks),
        interpret=interpret,
        name="flax_local_input_grad",
    )(dy, w)
