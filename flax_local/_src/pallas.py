"""The ``"pallas"`` implementation: fused GPU kernels for the layer and both gradients.

The three products of ``native.py`` (same operands, shapes and meaning):

* ``forward(x, w, *bias, geometry, has_bias)``: ``y (G, B, P, F)`` float32;
* ``kernel_grad(x, dy, *, geometry, weight_dtype)``: ``[dw, db]``;
* ``input_grad(dy, w, *, geometry)``: ``dx (G, B, R, C)`` float32;

with ``x (G, B, R, C)``, ``w (G, P, K*C, F)``, ``bias (G, P, F)`` and
``dy (G, B, P, F)``, where a group size of 1 is shared by every group. They
are drop-in lowerings for the native primitives (``register_gpu_lowerings``;
the primitives then supply ``jit``, ``grad``, ``jvp``, higher orders and
``vmap`` through the group axis), and ``pallas_layer.py`` makes them
primitives of their own that keep the layer's dtype (``apply_pallas``).

Each runs one Pallas kernel (``pallas_kernels.py``) that reads windows straight
from ``x`` or ``dy``: no patch array exists. Around it, XLA pads ``x`` once in
space (one copy of the input, not ``k ** d``), and pads batch and channel axes
to the kernels' block sizes (powers of two, at least 16, as Triton needs);
operands already of those sizes are passed as free reshapes. Products
accumulate in float32. float32 operands multiply in TF32 on GPU at default
precision (as XLA does) and in full float32 at ``precision="highest"`` (or
with ``jax_default_matmul_precision="highest"``); bfloat16 and float16 operands
multiply as they are.

On a backend without a Pallas GPU lowering (CPU), ``interpret=True`` runs the
same kernels in Pallas interpret mode: slow, but exact, and what the tests run.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from flax_local._src.geometry import Geometry
from flax_local._src.pallas_kernels import (
    Blocks,
    Layout,
    forward_call,
    input_grad_call,
    kernel_grad_call,
)

SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
_MIN_BLOCK = 16  # the smallest dimension Triton's dot takes
_SM_PROGRAMS = 4 * 132  # enough programs for a few waves on a large GPU (132 SMs on an H100/H200)
_SMEM_BUDGET = 160 << 10  # of the 227 KiB of shared memory a Hopper program may use


def supports_dtype(dtype) -> bool:
    """Whether the Pallas kernels take layers of ``dtype``."""
    return jnp.dtype(dtype) in [jnp.dtype(d) for d in SUPPORTED_DTYPES]


def default_interpret() -> bool:
    """Interpret mode on backends with no Pallas GPU lowering (anything but CUDA/ROCm GPUs)."""
    return jax.default_backend() != "gpu"


def _block(n: int) -> int:
    """The block size holding ``n``: a power of two, at least 16."""
    return max(_MIN_BLOCK, 1 << max(n - 1, 0).bit_length())


def layout_of(geometry: Geometry) -> Layout:
    """The kernels' static index arithmetic for ``geometry``."""
    return Layout(
        padded=tuple(n + lo + hi for n, (lo, hi) in zip(geometry.input_spatial, geometry.padding)),
        unpadded=tuple(geometry.input_spatial),
        low=tuple(lo for lo, _ in geometry.padding),
        out=tuple(geometry.output_spatial),
        kernel=tuple(geometry.kernel_size),
        strides=tuple(geometry.strides),
        dilation=tuple(geometry.dilation),
    )


def _run(items: int, programs_per_item: int, limit: int = 16) -> int:
    """Items per program: enough programs for a few waves, at most ``limit`` items each."""
    return max(1, min(limit, items * programs_per_item // _SM_PROGRAMS))


def _stages(stage_bytes: int) -> int:
    """Pipeline depth whose shared-memory buffers fit ``_SMEM_BUDGET`` (1 to 3)."""
    return max(1, min(3, _SMEM_BUDGET // max(stage_bytes, 1)))


def forward_blocks(
    batch: int, positions: int, cp: int, fp: int, groups: int = 1, itemsize: int = 4
) -> Blocks:
    """Default blocks of the forward kernel: a batch block as large as the float32 sums allow.

    The sums ``(BB, Fp)`` stay in registers (at most 8192 floats); each step of
    the pipelined offset loop buffers ``(BB, Cp)`` rows and ``(Cp, Fp)`` weights.
    """
    bb = max(_MIN_BLOCK, min(_block(batch), 128, 8192 // fp))
    return Blocks(
        batch=bb,
        run=_run(positions, groups * -(-batch // bb)),
        num_warps=4 if bb * fp <= 4096 else 8,
        num_stages=_stages((bb * cp + cp * fp) * itemsize),
    )


def kernel_grad_blocks(
    batch: int, positions: int, window: int, cp: int, fp: int, groups: int = 1, itemsize: int = 4
) -> Blocks:
    """Default blocks of the kernel gradient: as many offsets per program as fit in registers.

    The sums of a program's offsets, ``offsets * Cp * Fp`` floats, stay in
    registers (at most 8192); each step of the pipelined batch loop buffers
    ``(BB, Fp)`` of dy and ``(BB, Cp)`` of x per offset, at least two steps
    deep within the shared-memory budget.
    """
    bb = max(_MIN_BLOCK, min(_block(batch), 64))

    def fits(t: int) -> bool:  # the sums in registers, two pipeline stages in shared memory
        return t * cp * fp <= 8192 and 2 * (bb * fp + t * bb * cp) * itemsize <= _SMEM_BUDGET

    offsets = max(t for t in range(1, window + 1) if window % t == 0 and (t == 1 or fits(t)))
    return Blocks(
        batch=bb,
        run=_run(positions, groups * window // offsets, limit=4),
        offsets=offsets,
        num_warps=4 if offsets * cp * fp <= 4096 else 8,
        num_stages=_stages((bb * fp + offsets * bb * cp) * itemsize),
    )


def input_grad_blocks(batch: int, rows: int, cp: int, fp: int, groups: int = 1, itemsize: int = 4) -> Blocks:
    """Default blocks of the input gradient: the forward's, with the roles of C and F swapped."""
    return forward_blocks(batch, rows, fp, cp, groups, itemsize)


def _precision(precision):
    """``precision``, or the HIGHEST that ``jax_default_matmul_precision`` asks for when None."""
    if precision is None:
        default = getattr(jax.config, "jax_default_matmul_precision", None)
        if default in ("highest", "float32", "F32_F32_F32"):
            return lax.Precision.HIGHEST
        return None
    if isinstance(precision, (tuple, list)):
        precision = precision[0]
    if isinstance(precision, str):
        precision = lax.Precision(precision)
    return precision


def _pad_to(a: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
    """``a`` zero-padded at the end of each axis to ``sizes`` (no copy when already there)."""
    if tuple(a.shape) == tuple(sizes):
        return a
    return jnp.pad(a, [(0, s - n) for n, s in zip(a.shape, sizes)])


def _prepare_x(x: jax.Array, geometry: Geometry, bp: int, cp: int) -> jax.Array:
    """``(Gx, B, R, C)`` -> ``(Gx, Bp, Rp, Cp)``: one pad in space, batch and channels."""
    groups, batch, _, channels = x.shape
    x = x.reshape(groups, batch, *geometry.input_spatial, channels)
    config = [
        (0, 0, 0),
        (0, bp - batch, 0),
        *((lo, hi, 0) for lo, hi in geometry.padding),
        (0, cp - channels, 0),
    ]
    if any(c != (0, 0, 0) for c in config):
        x = lax.pad(x, jnp.zeros((), x.dtype), config)
    return x.reshape(groups, bp, -1, cp)


def _prepare_w(w: jax.Array, window: int, cp: int, fp: int) -> jax.Array:
    """``(Gw, P, K*C, F)`` -> ``(Gw, P, K, Cp, Fp)`` (a free reshape unless C or F is padded)."""
    groups, positions, _, filters = w.shape
    w = w.reshape(groups, positions, window, -1, filters)
    return _pad_to(w, (groups, positions, window, cp, fp))


_MAX_ELEMENTS = 2**31 - 1


def _check_sizes(interpret: bool, **operands) -> None:
    """Triton indexes with 32-bit element offsets: larger operands would read wrong elements."""
    if interpret:
        return
    for name, shape in operands.items():
        if math.prod(shape) > _MAX_ELEMENTS:
            raise ValueError(
                f"implementation='pallas' indexes operands with 32-bit offsets, but {name} of shape "
                f"{tuple(shape)} has {math.prod(shape)} > 2**31 - 1 elements; use implementation='patches'."
            )


def _group_count(*shapes) -> int:
    sizes = {shape[0] for shape in shapes} - {1}
    if len(sizes) > 1:
        raise ValueError(f"group sizes must be 1 or equal, got shapes {shapes}")
    return sizes.pop() if sizes else 1


def forward(
    x: jax.Array,
    w: jax.Array,
    *bias: jax.Array,
    geometry: Geometry,
    has_bias: bool,
    interpret: bool = False,
    precision: lax.PrecisionLike = None,
    out_dtype=jnp.float32,
    blocks: Blocks | None = None,
) -> jax.Array:
    """``y (G, B, P, F)`` from ``x (G, B, R, C)``, ``w (G, P, K*C, F)`` and ``bias (G, P, F)`` if has_bias.

    Args:
      x: the input, rows of the flattened input grid; float32, bfloat16 or float16.
      w: the weights, float32, bfloat16 or float16.
      *bias: the bias, present exactly when ``has_bias``.
      geometry: the layer's geometry.
      has_bias: whether ``bias`` is given.
      interpret: run in Pallas interpret mode (any backend; slow).
      precision: of the float32 products (see the module docstring).
      out_dtype: dtype of ``y`` (float32 for the primitive's lowering).
      blocks: tile sizes; None picks ``forward_blocks``'s.

    Returns:
      ``y`` of shape ``(G, B, P, F)``.
    """
    groups = _group_count(x.shape, w.shape, *(b.shape for b in bias))
    batch, channels = x.shape[1], x.shape[3]
    positions, filters, window = w.shape[1], w.shape[3], geometry.window_volume
    if batch == 0:
        return jnp.zeros((groups, 0, positions, filters), out_dtype)
    cp, fp = _block(channels), _block(filters)
    blocks = blocks or forward_blocks(batch, positions, cp, fp, groups, x.dtype.itemsize)
    bp = -(-batch // blocks.batch) * blocks.batch
    layout = layout_of(geometry)
    _check_sizes(
        interpret,
        x=(x.shape[0], bp, math.prod(layout.padded), cp),
        kernel=(w.shape[0], positions, window, cp, fp),
        y=(groups, bp, positions, fp),
    )
    y = forward_call(
        _prepare_x(x, geometry, bp, cp),
        _prepare_w(w, window, cp, fp),
        _pad_to(bias[0], (bias[0].shape[0], positions, fp)) if has_bias else None,
        layout=layout,
        blocks=blocks,
        out_dtype=out_dtype,
        precision=_precision(precision),
        interpret=interpret,
    )
    return y[:, :batch, :, :filters] if (bp, fp) != (batch, filters) else y


def kernel_grad(
    x: jax.Array,
    dy: jax.Array,
    *,
    geometry: Geometry,
    weight_dtype,
    interpret: bool = False,
    precision: lax.PrecisionLike = None,
    blocks: Blocks | None = None,
) -> list[jax.Array]:
    """``[dw (G, P, K*C, F), db (G, P, F)]`` from ``x (G, B, R, C)`` and ``dy (G, B, P, F)``.

    ``dw`` has ``weight_dtype``, ``db`` float32; both are sums over the batch in
    float32. Other arguments as ``forward``'s (``blocks`` from ``kernel_grad_blocks``).
    """
    groups = _group_count(x.shape, dy.shape)
    batch, channels = x.shape[1], x.shape[3]
    positions, filters, window = dy.shape[2], dy.shape[3], geometry.window_volume
    weight_dtype = jnp.dtype(weight_dtype)
    if batch == 0:
        return [
            jnp.zeros((groups, positions, window * channels, filters), weight_dtype),
            jnp.zeros((groups, positions, filters), jnp.float32),
        ]
    cp, fp = _block(channels), _block(filters)
    blocks = blocks or kernel_grad_blocks(batch, positions, window, cp, fp, groups, x.dtype.itemsize)
    bp = -(-batch // blocks.batch) * blocks.batch
    layout = layout_of(geometry)
    _check_sizes(
        interpret,
        x=(x.shape[0], bp, math.prod(layout.padded), cp),
        kernel=(groups, positions, window, cp, fp),
        dy=(dy.shape[0], bp, positions, fp),
    )
    dw, db = kernel_grad_call(
        _prepare_x(x, geometry, bp, cp),
        _pad_to(dy, (dy.shape[0], bp, positions, fp)),
        layout=layout,
        blocks=blocks,
        weight_dtype=weight_dtype,
        precision=_precision(precision),
        interpret=interpret,
    )
    if (cp, fp) != (channels, filters):
        dw, db = dw[..., :channels, :filters], db[..., :filters]
    return [dw.reshape(groups, positions, window * channels, filters), db]


def input_grad(
    dy: jax.Array,
    w: jax.Array,
    *,
    geometry: Geometry,
    interpret: bool = False,
    precision: lax.PrecisionLike = None,
    out_dtype=jnp.float32,
    blocks: Blocks | None = None,
) -> jax.Array:
    """``dx (G, B, R, C)`` from ``dy (G, B, P, F)`` and ``w (G, P, K*C, F)``.

    Other arguments as ``forward``'s (``blocks`` from ``input_grad_blocks``).
    """
    groups = _group_count(dy.shape, w.shape)
    batch, positions, filters = dy.shape[1:]
    window = geometry.window_volume
    channels = w.shape[2] // window
    rows = math.prod(geometry.input_spatial)
    if batch == 0:
        return jnp.zeros((groups, 0, rows, channels), out_dtype)
    cp, fp = _block(channels), _block(filters)
    blocks = blocks or input_grad_blocks(batch, rows, cp, fp, groups, dy.dtype.itemsize)
    bp = -(-batch // blocks.batch) * blocks.batch
    _check_sizes(
        interpret,
        dy=(dy.shape[0], bp, positions, fp),
        kernel=(w.shape[0], positions, window, cp, fp),
        dx=(groups, bp, rows, cp),
    )
    dx = input_grad_call(
        _pad_to(dy, (dy.shape[0], bp, positions, fp)),
        _prepare_w(w, window, cp, fp),
        layout=layout_of(geometry),
        blocks=blocks,
        out_dtype=out_dtype,
        precision=_precision(precision),
        interpret=interpret,
    )
    return dx[:, :batch, :, :channels] if (bp, cp) != (batch, channels) else dx


def register_gpu_lowerings(platform: str = "cuda") -> None:
    """Makes the three kernels the lowering of ``native.py``'s primitives on ``platform``.

    The primitives then run the Pallas kernels under ``jit`` on that platform,
    with their own ``grad``, ``jvp``, higher-order and ``vmap`` rules (each a
    product of the others, ``vmap`` through the group axis). Products take the
    default precision (TF32 for float32 on GPU), or full float32 under
    ``jax_default_matmul_precision="highest"``. Calling it again is harmless.

    Args:
      platform: the MLIR platform (``"cuda"``; Pallas's Triton lowering also
        serves ``"rocm"``, untested here).
    """
    from jax.interpreters import mlir

    from flax_local._src import native

    rules = (
        (native.forward_p, forward, False),
        (native.kernel_grad_p, kernel_grad, True),
        (native.input_grad_p, input_grad, False),
    )
    for primitive, fn, multiple in rules:
        lowering = mlir.lower_fun(functools.partial(fn, interpret=False), multiple_results=multiple)
        mlir.register_lowering(primitive, lowering, platform=platform)
