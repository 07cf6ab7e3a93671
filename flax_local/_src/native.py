"""The ``"native"`` implementation: fused C++ kernels on CPU, as JAX primitives.

The layer is three products, each a small matrix product per output position
whose rows are gathered from the input on the fly (``native_kernels/locally_connected.cc``):

* ``forward(x, w, bias)``: ``y[g, b, p, f] = bias[g, p, f] + sum_k x[g, b,
  row(p, k), c(k)] * w[g, p, k, f]``;
* ``kernel_grad(x, dy)``: ``(dw, db)``, the transpose of ``forward`` in ``(w, bias)``;
* ``input_grad(dy, w)``: ``dx``, the transpose of ``forward`` in ``x``.

Shapes: ``x (G, B, R, C)`` with ``R`` the flattened input positions, ``w (G,
P, K * C, F)``, ``bias (G, P, F)``, ``y (G, B, P, F)``; the group axis ``G`` is
what ``vmap`` adds, and an operand whose group size is 1 is shared by every
group (the kernels then treat groups as more batch rows where they can).
Padding never exists in memory: taps in it have row -1 and are skipped.

The three are bilinear and closed under differentiation: each one's JVP is
made of the others, and so is each one's transpose. So ``jit``, ``grad``,
``jvp``, ``vmap`` and every higher order of them work, with every derivative
running through the same fused kernels (no patches array in memory, no fold:
a position's window is gathered into cache, or read in place). The CPU lowering calls the FFI targets built by
``native_build``; other platforms, and every lowering for ``jax.export``,
use a gather-and-einsum formulation of the same products, so a program using
them still runs anywhere and exports to a portable artifact.

The kernels compute in float32 with fused multiply-adds; ``precision`` has no
effect. The weights ``w`` (and so ``dw``) may be float32 or bfloat16: bfloat16
weights are widened in cache position by position and their gradient rounded
to bfloat16 as it is written, so a bfloat16 layer never holds a float32 copy
of its kernel. Other operands are float32 (float16 layers are converted
around the kernels).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from flax_local._src import native_build
from flax_local._src.geometry import Geometry

SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def supports_dtype(dtype) -> bool:
    """Whether the native kernels take layers of ``dtype`` (computed in float32)."""
    return jnp.dtype(dtype) in [jnp.dtype(d) for d in SUPPORTED_DTYPES]


def tap_rows(geometry: Geometry) -> np.ndarray:
    """Input row read by each (position, window offset), -1 for padding: int32 ``(P, window_volume)``.

    A host copy of what the lowerings compute at run time (``_rows``), for tests.
    """
    return np.asarray(_rows(geometry))


def _rows(geometry: Geometry) -> jax.Array:
    """``tap_rows`` as jnp ops of per-axis vectors: nothing of size positions x window at trace time."""
    return geometry.tap_rows(padding_row=-1)[0]


def _group_count(*shapes) -> int:
    sizes = {shape[0] for shape in shapes} - {1}
    if len(sizes) > 1:
        raise ValueError(f"group sizes must be 1 or equal, got shapes {shapes}")
    return sizes.pop() if sizes else 1


def _fit_groups(value: jax.Array, groups: int) -> jax.Array:
    """Sums (for a shared operand's cotangent) or broadcasts ``value``'s group axis to ``groups``."""
    if value.shape[0] == groups:
        return value
    if groups == 1:
        return value.sum(axis=0, keepdims=True, dtype=jnp.float32).astype(value.dtype)
    return jnp.broadcast_to(value, (groups, *value.shape[1:]))


def _is_zero(tangent) -> bool:
    return type(tangent) is ad.Zero


def _dtype(operand):
    """The dtype of a primal operand, known or (in a transpose rule) undefined."""
    return operand.aval.dtype if ad.is_undefined_primal(operand) else operand.dtype


# ----------------------------------------------------------------------------
# Primitives and their shapes
# ----------------------------------------------------------------------------

forward_p = Primitive("flax_local_forward")
kernel_grad_p = Primitive("flax_local_kernel_grad")
kernel_grad_p.multiple_results = True
input_grad_p = Primitive("flax_local_input_grad")


def forward(x, w, bias, geometry: Geometry):
    """``y (G, B, P, F)`` from ``x (G, B, R, C)``, ``w (G, P, K*C, F)`` and ``bias (G, P, F)`` or None."""
    operands = (x, w) if bias is None else (x, w, bias)
    return forward_p.bind(*operands, geometry=geometry, has_bias=bias is not None)


def kernel_grad(x, dy, geometry: Geometry, weight_dtype=jnp.float32):
    """``(dw (G, P, K*C, F), db (G, P, F))`` from ``x (G, B, R, C)`` and ``dy (G, B, P, F)``.

    ``dw`` has ``weight_dtype`` (float32 or bfloat16, the weights' dtype); ``db`` is float32.
    """
    return kernel_grad_p.bind(x, dy, geometry=geometry, weight_dtype=jnp.dtype(weight_dtype))


def input_grad(dy, w, geometry: Geometry):
    """``dx (G, B, R, C)`` from ``dy (G, B, P, F)`` and ``w (G, P, K*C, F)``."""
    return input_grad_p.bind(dy, w, geometry=geometry)


_WEIGHT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def _check_weight_dtype(dtype) -> None:
    if jnp.dtype(dtype) not in _WEIGHT_DTYPES:
        raise TypeError(f"the native kernels take float32 or bfloat16 weights, got {jnp.dtype(dtype)}")


def _forward_abstract(x, w, *bias, geometry, has_bias):
    _check_weight_dtype(w.dtype)
    groups = _group_count(x.shape, w.shape, *(b.shape for b in bias))
    return jax.core.ShapedArray((groups, x.shape[1], w.shape[1], w.shape[3]), jnp.float32)


def _kernel_grad_abstract(x, dy, *, geometry, weight_dtype):
    _check_weight_dtype(weight_dtype)
    groups = _group_count(x.shape, dy.shape)
    positions, filters = dy.shape[2], dy.shape[3]
    return (
        jax.core.ShapedArray((groups, positions, geometry.window_volume * x.shape[3], filters), weight_dtype),
        jax.core.ShapedArray((groups, positions, filters), jnp.float32),
    )


def _input_grad_abstract(dy, w, *, geometry):
    _check_weight_dtype(w.dtype)
    groups = _group_count(dy.shape, w.shape)
    channels = w.shape[2] // geometry.window_volume
    rows = int(np.prod(geometry.input_spatial))
    return jax.core.ShapedArray((groups, dy.shape[1], rows, channels), jnp.float32)


forward_p.def_abstract_eval(_forward_abstract)
kernel_grad_p.def_abstract_eval(_kernel_grad_abstract)
input_grad_p.def_abstract_eval(_input_grad_abstract)


@functools.lru_cache(maxsize=256)
def _compiled(primitive: Primitive, params: tuple):
    return jax.jit(lambda *args: primitive.bind(*args, **dict(params)))


def _eager(primitive: Primitive):
    """Eager evaluation: the primitive compiled alone (cached per parameters)."""
    return lambda *args, **params: _compiled(primitive, tuple(sorted(params.items())))(*args)


for _primitive in (forward_p, kernel_grad_p, input_grad_p):
    _primitive.def_impl(_eager(_primitive))

# ----------------------------------------------------------------------------
# Lowerings: the FFI kernels on CPU, gather + einsum elsewhere
# ----------------------------------------------------------------------------


def _target(name: str, weight_dtype) -> str:
    """The FFI target of kernel ``name`` for weights of ``weight_dtype``."""
    return f"flax_local_{name}_bf16" if jnp.dtype(weight_dtype) == jnp.bfloat16 else f"flax_local_{name}"


def _forward_cpu(x, w, *bias, geometry, has_bias):
    out = _forward_abstract(x, w, *bias, geometry=geometry, has_bias=has_bias)
    if not has_bias:
        bias = (jnp.zeros((1, w.shape[1], w.shape[3]), jnp.float32),)
    call = jax.ffi.ffi_call(_target("forward", w.dtype), jax.ShapeDtypeStruct(out.shape, out.dtype))
    return call(x, w, bias[0], _rows(geometry))


def _kernel_grad_cpu(x, dy, *, geometry, weight_dtype):
    abstract = _kernel_grad_abstract(x, dy, geometry=geometry, weight_dtype=weight_dtype)
    outs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in abstract]
    return jax.ffi.ffi_call(_target("kernel_grad", weight_dtype), outs)(x, dy, _rows(geometry))


def _input_grad_cpu(dy, w, *, geometry):
    out = _input_grad_abstract(dy, w, geometry=geometry)
    call = jax.ffi.ffi_call(_target("input_grad", w.dtype), jax.ShapeDtypeStruct(out.shape, out.dtype))
    return call(dy, w, _rows(geometry))


def _reference_patches(x, geometry: Geometry):
    """``(Gx, B, P, K*C)`` windows of ``x (Gx, B, R, C)``, zero in the padding."""
    rows, inside = geometry.tap_rows()
    patches = jnp.take(x, rows, axis=2)  # (Gx, B, P, K, C)
    if inside is not None:
        patches = jnp.where(inside[..., None], patches, 0.0)
    # Sizes spelled out: with an empty batch a -1 would divide by zero.
    return patches.reshape(*patches.shape[:3], rows.shape[1] * x.shape[-1])


def _reference_weights(w, geometry: Geometry):
    """``w (G, P, K*C, F)`` in float32, zero at taps in the padding (so an ``inf`` there adds 0, not NaN)."""
    w = w.astype(jnp.float32)
    _, inside = geometry.tap_rows()
    if inside is None:
        return w
    groups, positions, k_total, filters = w.shape
    w = w.reshape(groups, positions, geometry.window_volume, k_total // geometry.window_volume, filters)
    w = jnp.where(inside[None, :, :, None, None], w, 0.0)
    return w.reshape(groups, positions, k_total, filters)


_HIGHEST = jax.lax.Precision.HIGHEST


def _forward_reference(x, w, *bias, geometry, has_bias):
    groups = _group_count(x.shape, w.shape, *(b.shape for b in bias))
    patches = _fit_groups(_reference_patches(x, geometry), groups)
    w = _fit_groups(_reference_weights(w, geometry), groups)
    y = jnp.einsum("gbpk,gpkf->gbpf", patches, w, precision=_HIGHEST)
    return y + bias[0][:, None] if has_bias else y


def _kernel_grad_reference(x, dy, *, geometry, weight_dtype):
    groups = _group_count(x.shape, dy.shape)
    patches = _fit_groups(_reference_patches(x, geometry), groups)
    dy = _fit_groups(dy, groups)
    dw = jnp.einsum("gbpk,gbpf->gpkf", patches, dy, precision=_HIGHEST)
    return [dw.astype(weight_dtype), dy.sum(axis=1)]


def _input_grad_reference(dy, w, *, geometry):
    out = _input_grad_abstract(dy, w, geometry=geometry)
    groups, batch, input_rows, channels = out.shape
    d_patches = jnp.einsum(
        "gbpf,gpkf->gbpk",
        _fit_groups(dy, groups),
        _fit_groups(w.astype(jnp.float32), groups),
        precision=_HIGHEST,
    )
    rows, inside = geometry.tap_rows()
    d_patches = d_patches.reshape(groups, batch, *rows.shape, channels)
    if inside is not None:
        d_patches = jnp.where(inside[..., None], d_patches, 0.0)
    dx = jnp.zeros((groups, batch, input_rows, channels), jnp.float32)
    return dx.at[:, :, rows].add(d_patches)


def _cpu_lowering(kernel_fn, reference_fn, multiple_results: bool):
    """The FFI call, or the portable reference when lowering for ``jax.export``.

    An exported artifact must not hold custom calls without a compatibility
    guarantee (jax refuses to serialize them), so an export gets the
    gather-and-einsum formulation: the same numbers, runnable anywhere.
    """
    kernel_rule = mlir.lower_fun(kernel_fn, multiple_results=multiple_results)
    reference_rule = mlir.lower_fun(reference_fn, multiple_results=multiple_results)

    def rule(ctx, *args, **params):
        if ctx.module_context.lowering_parameters.for_export:
            return reference_rule(ctx, *args, **params)
        return kernel_rule(ctx, *args, **params)

    return rule


mlir.register_lowering(forward_p, mlir.lower_fun(_forward_reference, multiple_results=False))
mlir.register_lowering(kernel_grad_p, mlir.lower_fun(_kernel_grad_reference, multiple_results=True))
mlir.register_lowering(input_grad_p, mlir.lower_fun(_input_grad_reference, multiple_results=False))
mlir.register_lowering(forward_p, _cpu_lowering(_forward_cpu, _forward_reference, False), platform="cpu")
mlir.register_lowering(
    kernel_grad_p, _cpu_lowering(_kernel_grad_cpu, _kernel_grad_reference, True), platform="cpu"
)
mlir.register_lowering(
    input_grad_p, _cpu_lowering(_input_grad_cpu, _input_grad_reference, False), platform="cpu"
)

# ----------------------------------------------------------------------------
# Differentiation: each product's JVP and transpose are the other products
# ----------------------------------------------------------------------------


def _forward_jvp(primals, tangents, *, geometry, has_bias):
    x, w, *bias = primals
    x_dot, w_dot, *bias_dot = tangents
    y = forward_p.bind(*primals, geometry=geometry, has_bias=has_bias)
    bias_dot = bias_dot[0] if has_bias and not _is_zero(bias_dot[0]) else None
    terms = []
    if not _is_zero(x_dot):
        terms.append(forward(x_dot, w, None, geometry))
    if not _is_zero(w_dot):
        terms.append(forward(x, w_dot, bias_dot, geometry))
    elif bias_dot is not None:
        terms.append(bias_dot[:, None])
    if not terms:
        return y, jnp.zeros_like(y)
    return y, jnp.broadcast_to(functools.reduce(jnp.add, terms), y.shape)


def _forward_transpose(ct, x, w, *bias, geometry, has_bias):
    if ad.is_undefined_primal(x) and (ad.is_undefined_primal(w) or has_bias):
        raise ValueError("flax_local_forward is not linear in x and (w, bias) together")
    if _is_zero(ct):
        return [ad.Zero(a.aval) if ad.is_undefined_primal(a) else None for a in (x, w, *bias)]
    if ad.is_undefined_primal(x):
        return [_fit_groups(input_grad(ct, w, geometry), x.aval.shape[0]), None]
    dw, db = kernel_grad(x, ct, geometry, _dtype(w))
    result = [None, _fit_groups(dw, w.aval.shape[0]) if ad.is_undefined_primal(w) else None]
    if has_bias:
        result.append(_fit_groups(db, bias[0].aval.shape[0]) if ad.is_undefined_primal(bias[0]) else None)
    return result


def _kernel_grad_jvp(primals, tangents, *, geometry, weight_dtype):
    x, dy = primals
    x_dot, dy_dot = tangents
    dw, db = kernel_grad(x, dy, geometry, weight_dtype)
    dw_terms, db_dot = [], jnp.zeros_like(db)
    if not _is_zero(x_dot):
        dw_terms.append(kernel_grad(x_dot, dy, geometry, weight_dtype)[0])
    if not _is_zero(dy_dot):
        dw_from_dy, db_dot = kernel_grad(x, dy_dot, geometry, weight_dtype)
        dw_terms.append(dw_from_dy)
    dw_dot = functools.reduce(jnp.add, dw_terms) if dw_terms else jnp.zeros_like(dw)
    return [dw, db], [jnp.broadcast_to(dw_dot, dw.shape), jnp.broadcast_to(db_dot, db.shape)]


def _kernel_grad_transpose(cts, x, dy, *, geometry, weight_dtype):
    ct_dw, ct_db = cts
    result = [None, None]
    if ad.is_undefined_primal(x) and not _is_zero(ct_dw):
        result[0] = _fit_groups(input_grad(dy, ct_dw, geometry), x.aval.shape[0])
    if ad.is_undefined_primal(dy):
        if _is_zero(ct_dw) and _is_zero(ct_db):
            result[1] = ad.Zero(dy.aval)
        else:
            groups, batch = dy.aval.shape[:2]
            if _is_zero(ct_dw):
                ct_dy = jnp.broadcast_to(ct_db[:, None], (ct_db.shape[0], batch, *ct_db.shape[1:]))
            else:
                ct_dy = forward(x, ct_dw, None if _is_zero(ct_db) else ct_db, geometry)
            result[1] = _fit_groups(ct_dy, groups)
    if ad.is_undefined_primal(x) and result[0] is None:
        result[0] = ad.Zero(x.aval)
    return result


def _input_grad_jvp(primals, tangents, *, geometry):
    dy, w = primals
    dy_dot, w_dot = tangents
    dx = input_grad(dy, w, geometry)
    terms = []
    if not _is_zero(dy_dot):
        terms.append(input_grad(dy_dot, w, geometry))
    if not _is_zero(w_dot):
        terms.append(input_grad(dy, w_dot, geometry))
    if not terms:
        return dx, jnp.zeros_like(dx)
    return dx, jnp.broadcast_to(functools.reduce(jnp.add, terms), dx.shape)


def _input_grad_transpose(ct, dy, w, *, geometry):
    if ad.is_undefined_primal(dy) and ad.is_undefined_primal(w):
        raise ValueError("flax_local_input_grad is not linear in dy and w together")
    if _is_zero(ct):
        return [ad.Zero(a.aval) if ad.is_undefined_primal(a) else None for a in (dy, w)]
    if ad.is_undefined_primal(dy):
        return [_fit_groups(forward(ct, w, None, geometry), dy.aval.shape[0]), None]
    return [None, _fit_groups(kernel_grad(ct, dy, geometry, w.aval.dtype)[0], w.aval.shape[0])]


ad.primitive_jvps[forward_p] = _forward_jvp
ad.primitive_jvps[kernel_grad_p] = _kernel_grad_jvp
ad.primitive_jvps[input_grad_p] = _input_grad_jvp
ad.primitive_transposes[forward_p] = _forward_transpose
ad.primitive_transposes[kernel_grad_p] = _kernel_grad_transpose
ad.primitive_transposes[input_grad_p] = _input_grad_transpose

# ----------------------------------------------------------------------------
# Batching: a vmapped axis joins the group axis
# ----------------------------------------------------------------------------


def _batch_into_groups(primitive, args, dims, **params):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    groups = _group_count(*(a.shape if d is None else a.shape[1:] for a, d in zip(moved, dims)))
    operands = []
    for a, d in zip(moved, dims):
        if d is None and a.shape[0] == 1:
            operands.append(a)  # shared by every group, old and new
            continue
        if d is None:
            a = a[None]
        a = jnp.broadcast_to(a, (size, groups, *a.shape[2:]))
        operands.append(a.reshape(size * groups, *a.shape[2:]))
    out = primitive.bind(*operands, **params)
    if primitive.multiple_results:
        return [o.reshape(size, groups, *o.shape[1:]) for o in out], [0] * len(out)
    return out.reshape(size, groups, *out.shape[1:]), 0


for _primitive in (forward_p, kernel_grad_p, input_grad_p):  # noqa: B007
    batching.primitive_batchers[_primitive] = functools.partial(_batch_into_groups, _primitive)

# ----------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------


def apply_native(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    geometry: Geometry,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """Applies the layer to channels-last ``x`` of shape ``(batch, *spatial, C)`` with the native kernels.

    Args:
      x: the input, ``(batch, *input_spatial, C)``, float32, bfloat16 or float16.
      kernel: ``(*output_spatial, *kernel_size, C, filters)``, same dtype as x.
      bias: ``(*output_spatial, filters)`` or None, same dtype as x.
      geometry: the layer's geometry for this input size.
      precision: ignored (the registry's common signature): the kernels always
        multiply in full float32.

    Returns:
      Array of shape ``(batch, *output_spatial, filters)`` in x's dtype.

    Raises:
      ValueError: for a dtype the kernels do not support (float64, integers).
      NativeUnavailableError: when the kernels were not installed or cannot load here.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local._src.geometry import make_geometry
      >>> from flax_local._src.native import apply_native
      >>> from flax_local._src.native_build import is_available
      >>> g = make_geometry((6, 6), (3, 3), (1, 1), "valid", (1, 1))
      >>> x, kernel = jnp.ones((2, 6, 6, 3)), jnp.ones((4, 4, 3, 3, 3, 5))
      >>> apply_native(x, kernel, None, g).shape if is_available() else (2, 4, 4, 5)
      (2, 4, 4, 5)
    """
    del precision
    dtype = jnp.dtype(x.dtype)
    if not supports_dtype(dtype):
        raise ValueError(
            f"implementation='native' computes in float32 and accepts float32, bfloat16 or "
            f"float16 inputs, got {dtype}; use implementation='patches' for other dtypes."
        )
    if jax.default_backend() == "cpu":
        native_build.ensure_loaded()
    batch, channels, filters = x.shape[0], x.shape[-1], kernel.shape[-1]
    positions = geometry.num_positions
    # bfloat16 weights go to the kernels as they are (no float32 copy).
    weight_dtype = jnp.bfloat16 if kernel.dtype == jnp.bfloat16 else jnp.float32
    y = forward(
        x.astype(jnp.float32).reshape(1, batch, int(np.prod(geometry.input_spatial)), channels),
        kernel.astype(weight_dtype).reshape(1, positions, geometry.window_volume * channels, filters),
        None if bias is None else bias.astype(jnp.float32).reshape(1, positions, filters),
        geometry,
    )
    return y.reshape(batch, *geometry.output_spatial, filters).astype(dtype)
