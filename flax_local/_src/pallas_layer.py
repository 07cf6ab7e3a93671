"""The ``"pallas"`` layer: the Pallas kernels as three primitives closed under differentiation.

The primitives mirror ``native.py``'s (same operands and shapes, same rules):

* ``forward(x, w, bias)``: ``y (G, B, P, F)``;
* ``kernel_grad(x, dy)``: ``(dw, db)``, the transpose of ``forward`` in ``(w, bias)``;
* ``input_grad(dy, w)``: ``dx``, the transpose of ``forward`` in ``x``;

each one's JVP and transpose are made of the others, so ``jit``, ``grad``,
``jvp``, every higher order and ``vmap`` (a vmapped axis joins the group axis,
``native._batch_into_groups``) run through the fused kernels. Unlike the
native ones they keep the layer's dtype (float32, bfloat16 or float16) from
end to end: operands are read as they are, products accumulate in float32 and
outputs are written in the layer's dtype. Each lowers to ``pallas.py``'s
kernels, compiled by Triton on GPU or in Pallas interpret mode (the static
``interpret`` parameter, chosen by ``apply_pallas`` from the backend).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from flax_local._src import pallas
from flax_local._src.geometry import Geometry
from flax_local._src.native import _batch_into_groups, _dtype, _fit_groups, _group_count, _is_zero

forward_p = Primitive("flax_local_pallas_forward")
kernel_grad_p = Primitive("flax_local_pallas_kernel_grad")
kernel_grad_p.multiple_results = True
input_grad_p = Primitive("flax_local_pallas_input_grad")


def forward(x, w, bias, geometry: Geometry, precision=None, interpret: bool = False):
    """``y (G, B, P, F)`` in x's dtype from ``x (G, B, R, C)``, ``w (G, P, K*C, F)``, ``bias (G, P, F)`` or None."""
    operands = (x, w) if bias is None else (x, w, bias)
    return forward_p.bind(
        *operands, geometry=geometry, has_bias=bias is not None, precision=precision, interpret=interpret
    )


def kernel_grad(x, dy, geometry: Geometry, weight_dtype, precision=None, interpret: bool = False):
    """``(dw (G, P, K*C, F), db (G, P, F))``, both in ``weight_dtype``, from ``x`` and ``dy (G, B, P, F)``."""
    return kernel_grad_p.bind(
        x,
        dy,
        geometry=geometry,
        weight_dtype=jnp.dtype(weight_dtype),
        precision=precision,
        interpret=interpret,
    )


def input_grad(dy, w, geometry: Geometry, precision=None, interpret: bool = False):
    """``dx (G, B, R, C)`` in dy's dtype from ``dy (G, B, P, F)`` and ``w (G, P, K*C, F)``."""
    return input_grad_p.bind(dy, w, geometry=geometry, precision=precision, interpret=interpret)


def _forward_abstract(x, w, *bias, geometry, has_bias, precision, interpret):
    groups = _group_count(x.shape, w.shape, *(b.shape for b in bias))
    return jax.core.ShapedArray((groups, x.shape[1], w.shape[1], w.shape[3]), x.dtype)


def _kernel_grad_abstract(x, dy, *, geometry, weight_dtype, precision, interpret):
    groups = _group_count(x.shape, dy.shape)
    positions, filters = dy.shape[2], dy.shape[3]
    return (
        jax.core.ShapedArray((groups, positions, geometry.window_volume * x.shape[3], filters), weight_dtype),
        jax.core.ShapedArray((groups, positions, filters), weight_dtype),
    )


def _input_grad_abstract(dy, w, *, geometry, precision, interpret):
    groups = _group_count(dy.shape, w.shape)
    channels = w.shape[2] // geometry.window_volume
    return jax.core.ShapedArray((groups, dy.shape[1], math.prod(geometry.input_spatial), channels), dy.dtype)


forward_p.def_abstract_eval(_forward_abstract)
kernel_grad_p.def_abstract_eval(_kernel_grad_abstract)
input_grad_p.def_abstract_eval(_input_grad_abstract)


@functools.lru_cache(maxsize=256)
def _compiled(primitive: Primitive, params: tuple):
    return jax.jit(lambda *args: primitive.bind(*args, **dict(params)))


def _eager(primitive: Primitive):
    """Eager evaluation: the primitive compiled alone (cached per parameters)."""
    return lambda *args, **params: _compiled(primitive, tuple(sorted(params.items(), key=lambda kv: kv[0])))(
        *args
    )


for _primitive in (forward_p, kernel_grad_p, input_grad_p):
    _primitive.def_impl(_eager(_primitive))


def _forward_lowering(x, w, *bias, geometry, has_bias, precision, interpret):
    return pallas.forward(
        x,
        w,
        *bias,
        geometry=geometry,
        has_bias=has_bias,
        interpret=interpret,
        precision=precision,
        out_dtype=x.dtype,
    )


def _kernel_grad_lowering(x, dy, *, geometry, weight_dtype, precision, interpret):
    dw, db = pallas.kernel_grad(
        x, dy, geometry=geometry, weight_dtype=weight_dtype, interpret=interpret, precision=precision
    )
    return [dw, db.astype(weight_dtype)]


def _input_grad_lowering(dy, w, *, geometry, precision, interpret):
    return pallas.input_grad(
        dy, w, geometry=geometry, interpret=interpret, precision=precision, out_dtype=dy.dtype
    )


mlir.register_lowering(forward_p, mlir.lower_fun(_forward_lowering, multiple_results=False))
mlir.register_lowering(kernel_grad_p, mlir.lower_fun(_kernel_grad_lowering, multiple_results=True))
mlir.register_lowering(input_grad_p, mlir.lower_fun(_input_grad_lowering, multiple_results=False))

# ----------------------------------------------------------------------------
# Differentiation: each product's JVP and transpose are the other products
# ----------------------------------------------------------------------------


def _forward_jvp(primals, tangents, *, geometry, has_bias, precision, interpret):
    x, w, *bias = primals
    x_dot, w_dot, *bias_dot = tangents
    options = dict(precision=precision, interpret=interpret)
    y = forward_p.bind(*primals, geometry=geometry, has_bias=has_bias, **options)
    bias_dot = bias_dot[0] if has_bias and not _is_zero(bias_dot[0]) else None
    terms = []
    if not _is_zero(x_dot):
        terms.append(forward(x_dot, w, None, geometry, **options))
    if not _is_zero(w_dot):
        terms.append(forward(x, w_dot, bias_dot, geometry, **options))
    elif bias_dot is not None:
        terms.append(bias_dot[:, None].astype(y.dtype))
    if not terms:
        return y, jnp.zeros_like(y)
    return y, jnp.broadcast_to(functools.reduce(jnp.add, terms), y.shape)


def _forward_transpose(ct, x, w, *bias, geometry, has_bias, precision, interpret):
    if ad.is_undefined_primal(x) and (ad.is_undefined_primal(w) or has_bias):
        raise ValueError("flax_local_pallas_forward is not linear in x and (w, bias) together")
    if _is_zero(ct):
        return [ad.Zero(a.aval) if ad.is_undefined_primal(a) else None for a in (x, w, *bias)]
    options = dict(precision=precision, interpret=interpret)
    if ad.is_undefined_primal(x):
        return [_fit_groups(input_grad(ct, w, geometry, **options), x.aval.shape[0]), None]
    dw, db = kernel_grad(x, ct, geometry, _dtype(w), **options)
    result = [None, _fit_groups(dw, w.aval.shape[0]) if ad.is_undefined_primal(w) else None]
    if has_bias:
        b = bias[0]
        result.append(
            _fit_groups(db.astype(b.aval.dtype), b.aval.shape[0]) if ad.is_undefined_primal(b) else None
        )
    return result


def _kernel_grad_jvp(primals, tangents, *, geometry, weight_dtype, precision, interpret):
    x, dy = primals
    x_dot, dy_dot = tangents
    options = dict(precision=precision, interpret=interpret)
    dw, db = kernel_grad(x, dy, geometry, weight_dtype, **options)
    dw_terms, db_dot = [], jnp.zeros_like(db)
    if not _is_zero(x_dot):
        dw_terms.append(kernel_grad(x_dot, dy, geometry, weight_dtype, **options)[0])
    if not _is_zero(dy_dot):
        dw_from_dy, db_dot = kernel_grad(x, dy_dot, geometry, weight_dtype, **options)
        dw_terms.append(dw_from_dy)
    dw_dot = functools.reduce(jnp.add, dw_terms) if dw_terms else jnp.zeros_like(dw)
    return [dw, db], [jnp.broadcast_to(dw_dot, dw.shape), jnp.broadcast_to(db_dot, db.shape)]


def _kernel_grad_transpose(cts, x, dy, *, geometry, weight_dtype, precision, interpret):
    ct_dw, ct_db = cts
    options = dict(precision=precision, interpret=interpret)
    result = [None, None]
    if ad.is_undefined_primal(x) and not _is_zero(ct_dw):
        result[0] = _fit_groups(input_grad(dy, ct_dw.astype(dy.dtype), geometry, **options), x.aval.shape[0])
    if ad.is_undefined_primal(dy):
        if _is_zero(ct_dw) and _is_zero(ct_db):
            result[1] = ad.Zero(dy.aval)
        else:
            groups, batch = dy.aval.shape[:2]
            if _is_zero(ct_dw):
                ct_dy = jnp.broadcast_to(ct_db[:, None], (ct_db.shape[0], batch, *ct_db.shape[1:]))
            else:
                bias = None if _is_zero(ct_db) else ct_db.astype(x.dtype)
                ct_dy = forward(x, ct_dw.astype(x.dtype), bias, geometry, **options)
            result[1] = _fit_groups(ct_dy.astype(dy.aval.dtype), groups)
    if ad.is_undefined_primal(x) and result[0] is None:
        result[0] = ad.Zero(x.aval)
    return result


def _input_grad_jvp(primals, tangents, *, geometry, precision, interpret):
    dy, w = primals
    dy_dot, w_dot = tangents
    options = dict(precision=precision, interpret=interpret)
    dx = input_grad(dy, w, geometry, **options)
    terms = []
    if not _is_zero(dy_dot):
        terms.append(input_grad(dy_dot, w, geometry, **options))
    if not _is_zero(w_dot):
        terms.append(input_grad(dy, w_dot, geometry, **options))
    if not terms:
        return dx, jnp.zeros_like(dx)
    return dx, jnp.broadcast_to(functools.reduce(jnp.add, terms), dx.shape)


def _input_grad_transpose(ct, dy, w, *, geometry, precision, interpret):
    if ad.is_undefined_primal(dy) and ad.is_undefined_primal(w):
        raise ValueError("flax_local_pallas_input_grad is not linear in dy and w together")
    if _is_zero(ct):
        return [ad.Zero(a.aval) if ad.is_undefined_primal(a) else None for a in (dy, w)]
    options = dict(precision=precision, interpret=interpret)
    if ad.is_undefined_primal(dy):
        return [
            _fit_groups(forward(ct, w.astype(ct.dtype), None, geometry, **options), dy.aval.shape[0]),
            None,
        ]
    dw = kernel_grad(ct, dy.astype(ct.dtype), geometry, w.aval.dtype, **options)[0]
    return [None, _fit_groups(dw, w.aval.shape[0])]


ad.primitive_jvps[forward_p] = _forward_jvp
ad.primitive_jvps[kernel_grad_p] = _kernel_grad_jvp
ad.primitive_jvps[input_grad_p] = _input_grad_jvp
ad.primitive_transposes[forward_p] = _forward_transpose
ad.primitive_transposes[kernel_grad_p] = _kernel_grad_transpose
ad.primitive_transposes[input_grad_p] = _input_grad_transpose

for _primitive in (forward_p, kernel_grad_p, input_grad_p):  # noqa: B007
    batching.primitive_batchers[_primitive] = functools.partial(_batch_into_groups, _primitive)

# ----------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------


def apply_pallas(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    geometry: Geometry,
    precision: lax.PrecisionLike,
    *,
    interpret: bool | None = None,
) -> jax.Array:
    """Applies the layer to channels-last ``x`` of shape ``(batch, *spatial, C)`` with the Pallas kernels.

    Every derivative (``grad``, ``jvp``, any order) and ``vmap`` runs through
    the same three kernels (module docstring).

    Args:
      x: the input, ``(batch, *input_spatial, C)``, float32, bfloat16 or float16.
      kernel: ``(*output_spatial, *kernel_size, C, filters)``, same dtype as x.
      bias: ``(*output_spatial, filters)`` or None, same dtype as x.
      geometry: the layer's geometry for this input size.
      precision: of the float32 products (TF32 on GPU at default precision).
      interpret: run the kernels in Pallas interpret mode; None means
        ``pallas.default_interpret()`` (interpret on any backend but GPU).

    Returns:
      Array of shape ``(batch, *output_spatial, filters)`` in x's dtype.

    Raises:
      ValueError: for a dtype the kernels do not support (float64, integers).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local._src.geometry import make_geometry
      >>> from flax_local._src.pallas_layer import apply_pallas
      >>> g = make_geometry((6, 6), (3, 3), (1, 1), "valid", (1, 1))
      >>> x, kernel = jnp.ones((2, 6, 6, 3)), jnp.ones((4, 4, 3, 3, 3, 5))
      >>> apply_pallas(x, kernel, None, g, None).shape
      (2, 4, 4, 5)
    """
    dtype = jnp.dtype(x.dtype)
    if not pallas.supports_dtype(dtype):
        raise ValueError(
            f"implementation='pallas' accepts float32, bfloat16 or float16 inputs, got {dtype}; "
            f"use implementation='patches' for other dtypes."
        )
    if interpret is None:
        interpret = pallas.default_interpret()
    batch, channels, filters = x.shape[0], x.shape[-1], kernel.shape[-1]
    positions = geometry.num_positions
    y = forward(
        x.reshape(1, batch, math.prod(geometry.input_spatial), channels),
        kernel.astype(dtype).reshape(1, positions, geometry.window_volume * channels, filters),
        None if bias is None else bias.astype(dtype).reshape(1, positions, filters),
        geometry,
        _hashable(precision),
        interpret,
    )
    return y.reshape(batch, *geometry.output_spatial, filters)


def _hashable(precision: lax.PrecisionLike):
    if isinstance(precision, list):
        return tuple(precision)
    return precision
