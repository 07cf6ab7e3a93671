"""The Pallas kernels against the float64 reference and native.py's gather-and-einsum products.

On CPU the kernels run in Pallas interpret mode (slow to compile: each case is
one jitted program holding all three kernels, on small shapes); on a GPU the
same tests run the compiled Triton kernels (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_local._src import native, pallas_layer
from flax_local._src import pallas as pallas_impl
from flax_local._src.geometry import make_geometry
from tests.reference import _source_index, reference_locally_connected

INTERPRET = pallas_impl.default_interpret()


@dataclasses.dataclass(frozen=True)
class Case:
    spatial: tuple[int, ...]
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: object
    dilation: tuple[int, ...]
    batch: int
    channels: int
    filters: int
    dtype: str = "float32"
    weight_dtype: str | None = None  # None: the input's dtype
    groups: tuple[int, int, int, int] = (1, 1, 1, 1)  # group sizes of (x, w, bias, dy); 1 is shared

    @property
    def geometry(self):
        return make_geometry(self.spatial, self.kernel_size, self.strides, self.padding, self.dilation)


CASES = {
    "1d_causal_dilated_c1": Case((9,), (3,), (1,), "causal", (2,), 1, 1, 3),
    "1d_valid_stride2_f1_float16": Case((11,), (4,), (2,), "valid", (1,), 3, 5, 1, dtype="float16"),
    "2d_same_strided_dilated": Case((7, 6), (3, 2), (2, 1), "same", (1, 2), 2, 3, 5),
    "2d_explicit_groups_shared_x": Case(
        (5, 4), (3, 3), (1, 2), ((1, 0), (2, 1)), (1, 1), 2, 5, 3, groups=(1, 2, 1, 2)
    ),
    "3d_same": Case((4, 3, 4), (2, 3, 2), (1, 1, 2), "same", (1, 1, 1), 1, 3, 2),
    "2d_bfloat16": Case((5, 4), (2, 2), (1, 1), "valid", (1, 1), 3, 3, 3, dtype="bfloat16"),
    "1d_groups_shared_w_bf16_weights": Case(
        (7,), (3,), (2,), "same", (1,), 1, 3, 2, weight_dtype="bfloat16", groups=(2, 1, 2, 1)
    ),
}


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` and back to float64: the exact values the kernels see."""
    return np.asarray(jnp.asarray(a, dtype).astype(jnp.float32), np.float64)


def _arrays(case: Case, seed: int = 0):
    """Random float64 ``x (Gx, B, R, C)``, ``w (Gw, P, K*C, F)``, ``bias (Gb, P, F)``, ``dy (Gd, B, P, F)``."""
    g = case.geometry
    rng = np.random.default_rng(seed)
    gx, gw, gb, gd = case.groups
    rows = math.prod(case.spatial)
    weight_dtype = case.weight_dtype or case.dtype
    x = _round(rng.standard_normal((gx, case.batch, rows, case.channels)), case.dtype)
    w = _round(
        rng.standard_normal((gw, g.num_positions, g.window_volume * case.channels, case.filters)),
        weight_dtype,
    )
    bias = _round(rng.standard_normal((gb, g.num_positions, case.filters)), "float32")
    dy = _round(rng.standard_normal((gd, case.batch, g.num_positions, case.filters)), case.dtype)
    return x, w, bias, dy


def _float64_products(case: Case, x, w, bias, dy):
    """``y``, ``dw``, ``db``, ``dx`` in float64, from the definition (tests/reference.py)."""
    g = case.geometry
    groups = max(case.groups)
    batch, positions, window = case.batch, g.num_positions, g.window_volume
    kernel_size, out = g.kernel_size, g.output_spatial
    ys, dws, dbs, dxs = [], [], [], []
    for i in range(groups):
        xi, wi, bi, dyi = (a[i % a.shape[0]] for a in (x, w, bias, dy))
        xs = xi.reshape(batch, *case.spatial, case.channels)
        kernel = wi.reshape(*out, *kernel_size, case.channels, case.filters)
        ys.append(
            reference_locally_connected(
                xs, kernel, bi.reshape(*out, case.filters), case.strides, case.padding, case.dilation
            ).reshape(batch, positions, case.filters)
        )
        dw = np.zeros((positions, window, case.channels, case.filters))
        dx = np.zeros_like(xs)
        for p, position in enumerate(itertools.product(*map(range, out))):
            for j, offset in enumerate(itertools.product(*map(range, kernel_size))):
                source = _source_index(position, offset, g.strides, g.dilation, g.padding, case.spatial)
                if source is None:
                    continue
                dw[p, j] = xs[(slice(None), *source)].T @ dyi[:, p]
                dx[(slice(None), *source)] += dyi[:, p] @ kernel[(*position, *offset)].T
        dws.append(dw.reshape(positions, window * case.channels, case.filters))
        dbs.append(dyi.sum(axis=0))
        dxs.append(dx.reshape(batch, -1, case.channels))
    return np.stack(ys), np.stack(dws), np.stack(dbs), np.stack(dxs)


def _close(actual, expected, tolerance: float, what: str) -> None:
    actual = np.asarray(jnp.asarray(actual).astype(jnp.float32), np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), what
    error = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)
    assert error <= tolerance, f"{what}: relative error {error:.2e} > {tolerance:.0e}"


@pytest.mark.parametrize("name", list(CASES))
def test_three_products_match_the_references(name):
    case = CASES[name]
    g = case.geometry
    x64, w64, b64, dy64 = _arrays(case)
    weight_dtype = jnp.dtype(case.weight_dtype or case.dtype)
    x, dy = jnp.asarray(x64, case.dtype), jnp.asarray(dy64, case.dtype)
    w, bias = jnp.asarray(w64, weight_dtype), jnp.asarray(b64, jnp.float32)
    grad_dtype = jnp.bfloat16 if weight_dtype == jnp.bfloat16 else jnp.float32
    options = dict(geometry=g, interpret=INTERPRET)

    @jax.jit
    def run(x, w, bias, dy):
        ours = (
            pallas_impl.forward(x, w, bias, has_bias=True, **options),
            *pallas_impl.kernel_grad(x, dy, weight_dtype=grad_dtype, **options),
            pallas_impl.input_grad(dy, w, **options),
        )
        # native.py's products take float32 x, dy and float32 or bfloat16 weights.
        xf, dyf = x.astype(jnp.float32), dy.astype(jnp.float32)
        wf = w if w.dtype == jnp.bfloat16 else w.astype(jnp.float32)
        theirs = (
            native._forward_reference(xf, wf, bias, geometry=g, has_bias=True),
            *native._kernel_grad_reference(xf, dyf, geometry=g, weight_dtype=grad_dtype),
            native._input_grad_reference(dyf, wf, geometry=g),
        )
        return ours, theirs

    ours, theirs = run(x, w, bias, dy)
    expected = _float64_products(case, x64, w64, b64, dy64)
    gx, gw, gb, gd = case.groups
    shapes = [
        (max(gx, gw, gb), case.batch, g.num_positions, case.filters),
        (max(gx, gd), g.num_positions, g.window_volume * case.channels, case.filters),
        (max(gx, gd), g.num_positions, case.filters),
        (max(gd, gw), case.batch, math.prod(case.spatial), case.channels),
    ]
    dtypes = [jnp.float32, grad_dtype, jnp.float32, jnp.float32]
    # Products of rounded inputs are exact in float32: only the float32 sums
    # differ, except a bfloat16 kernel gradient, rounded as it is written.
    dw_tolerance = 1e-2 if grad_dtype == jnp.bfloat16 else 1e-5
    for what, a, b, e, shape, dtype in zip(("y", "dw", "db", "dx"), ours, theirs, expected, shapes, dtypes):
        assert a.shape == shape and a.dtype == dtype, (what, a.shape, a.dtype, shape, dtype)
        e = e[: shape[0]]  # a product of shared operands only: the same in every group
        tolerance = dw_tolerance if what == "dw" else 1e-5
        _close(a, e, tolerance, f"{name} {what} vs float64")
        _close(a, np.asarray(b.astype(jnp.float32), np.float64), tolerance, f"{name} {what} vs native.py")


def test_rows_shared_along_the_last_axis():
    """``Blocks(reuse=True)`` forward and input gradient: ragged runs, strides, dilation, every rank."""
    from flax_local._src.pallas_kernels import Blocks

    geometries = [
        (make_geometry((7, 6), (3, 2), (2, 1), "same", (1, 2)), 4),  # runs of 4 in rows of 6: ragged
        (make_geometry((4, 3, 5), (2, 2, 3), (1, 2, 1), "valid", (1, 1, 1)), 2),
        (make_geometry((9,), (4,), (1,), ((-1, 3),), (2,)), 3),  # dilated, a crop on the low side
    ]
    rng = np.random.default_rng(3)
    operands = []
    for g, _ in geometries:
        x = rng.standard_normal((1, 3, math.prod(g.input_spatial), 5)).astype(np.float32)
        w = rng.standard_normal((2, g.num_positions, g.window_volume * 5, 3)).astype(np.float32)
        bias = rng.standard_normal((1, g.num_positions, 3)).astype(np.float32)
        dy = rng.standard_normal((1, 3, g.num_positions, 3)).astype(np.float32)
        operands.append((x, w, bias, dy))

    @jax.jit
    def run(operands):
        out = []
        for (g, r), (x, w, bias, dy) in zip(geometries, operands):
            options = dict(geometry=g, interpret=INTERPRET, blocks=Blocks(batch=16, run=r, reuse=True))
            out.append(
                (
                    pallas_impl.forward(x, w, bias, has_bias=True, **options),
                    native._forward_reference(x, w, bias, geometry=g, has_bias=True),
                    pallas_impl.input_grad(dy, w, **options),
                    native._input_grad_reference(dy, w, geometry=g),
                )
            )
        return out

    for (g, _), (y, y_ref, dx, dx_ref) in zip(geometries, run(operands)):
        _close(y, np.asarray(y_ref, np.float64), 1e-5, f"reuse forward {g.output_spatial}")
        _close(dx, np.asarray(dx_ref, np.float64), 1e-5, f"reuse input gradient {g.input_spatial}")
    with pytest.raises(ValueError, match="needs a last stride of 1"):
        g = make_geometry((8,), (3,), (2,), "valid", (1,))
        pallas_impl.input_grad(
            jnp.ones((1, 1, 3, 2)), jnp.ones((1, 3, 6, 2)), geometry=g, blocks=Blocks(16, 2, reuse=True)
        )


def test_an_empty_batch_gives_empty_outputs_and_zero_kernel_gradients():
    g = make_geometry((5,), (3,), (1,), "valid", (1,))
    x, dy = jnp.zeros((1, 0, 5, 2)), jnp.zeros((1, 0, 3, 4))
    w = jnp.ones((1, 3, 6, 4))
    assert pallas_impl.forward(x, w, geometry=g, has_bias=False).shape == (1, 0, 3, 4)
    dw, db = pallas_impl.kernel_grad(x, dy, geometry=g, weight_dtype=jnp.float32)
    assert dw.shape == (1, 3, 6, 4) and not dw.any() and db.shape == (1, 3, 4) and not db.any()
    assert pallas_impl.input_grad(dy, w, geometry=g).shape == (1, 0, 5, 2)


def test_block_choices_are_valid_for_triton():
    for batch, positions, window, cp, fp in [
        (1, 1, 1, 16, 16),
        (128, 2116, 9, 32, 32),
        (32, 12100, 9, 64, 64),
    ]:
        for blocks in (
            pallas_impl.forward_blocks(batch, positions, cp, fp),
            pallas_impl.kernel_grad_blocks(batch, positions, window, cp, fp),
            pallas_impl.input_grad_blocks(batch, positions, cp, fp),
        ):
            assert blocks.batch >= 16 and blocks.batch & (blocks.batch - 1) == 0, blocks
            assert window % blocks.offsets == 0 and blocks.run >= 1, blocks
    assert [pallas_impl._block(n) for n in (1, 3, 16, 17, 64)] == [16, 16, 16, 32, 64]


# ----------------------------------------------------------------------------
# apply_pallas: the layer on the pallas_layer primitives
# ----------------------------------------------------------------------------


def _layer_arrays(spatial, kernel_size, channels, filters, batch, seed=0, stack=()):
    rng = np.random.default_rng(seed)
    g = make_geometry(spatial, kernel_size, (1,) * len(spatial), "same", (1,) * len(spatial))
    x = rng.standard_normal((batch, *spatial, channels)).astype(np.float32)
    kernel = rng.standard_normal((*stack, *g.output_spatial, *kernel_size, channels, filters)).astype(
        np.float32
    )
    bias = rng.standard_normal((*stack, *g.output_spatial, filters)).astype(np.float32)
    return g, x, kernel, bias


def test_apply_pallas_value_and_gradients_under_jit():
    g, x, kernel, bias = _layer_arrays((5, 4), (3, 3), 3, 2, batch=2)
    cotangent = np.random.default_rng(1).standard_normal((2, *g.output_spatial, 2)).astype(np.float32)

    def loss(x, kernel, bias):
        y = pallas_layer.apply_pallas(x, kernel, bias, g, "highest")
        return jnp.sum(y * cotangent), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(x, kernel, bias)
    _close(y, reference_locally_connected(x, kernel, bias, padding="same"), 1e-5, "y")
    # The float64 gradients: the layer is linear in each argument.
    case = Case((5, 4), (3, 3), (1, 1), "same", (1, 1), 2, 3, 2)
    flat = (
        x.reshape(1, 2, 20, 3).astype(np.float64),
        kernel.reshape(1, g.num_positions, 27, 2).astype(np.float64),
        bias.reshape(1, g.num_positions, 2).astype(np.float64),
        cotangent.reshape(1, 2, g.num_positions, 2).astype(np.float64),
    )
    _, dw, db, dx = _float64_products(case, *flat)
    _close(grads[0], dx.reshape(x.shape), 1e-5, "dx")
    _close(grads[1], dw.reshape(kernel.shape), 1e-5, "dkernel")
    _close(grads[2], db.reshape(bias.shape), 1e-5, "dbias")


def test_apply_pallas_vmaps_over_a_stacked_kernel_and_keeps_bfloat16():
    g, x, kernels, biases = _layer_arrays((6,), (3,), 2, 3, batch=3, stack=(2,))
    ys = jax.vmap(lambda k, b: pallas_layer.apply_pallas(x, k, b, g, None))(kernels, biases)
    for i in range(2):
        _close(ys[i], reference_locally_connected(x, kernels[i], biases[i], padding="same"), 1e-5, f"y[{i}]")
    half = pallas_layer.apply_pallas(
        jnp.asarray(x, jnp.bfloat16), jnp.asarray(kernels[0], jnp.bfloat16), None, g, None
    )
    assert half.dtype == jnp.bfloat16
    expected = reference_locally_connected(
        _round(x, "bfloat16"), _round(kernels[0], "bfloat16"), padding="same"
    )
    _close(half, expected, 1e-2, "bfloat16 y")


def test_apply_pallas_forward_mode_second_order_and_vmapped_gradients():
    """jvp, forward-over-reverse and vmap of grad: every derivative runs through the three primitives."""
    g, x, kernel, bias = _layer_arrays((6,), (3,), 2, 3, batch=2)
    x_dot = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)

    def layer(x, kernel):
        return pallas_layer.apply_pallas(x, kernel, bias, g, "highest")

    def loss(x, kernel):
        return jnp.sum(jnp.sin(layer(x, kernel)))

    @jax.jit
    def run(x, kernel):
        y, y_dot = jax.jvp(lambda x: layer(x, kernel), (x,), (x_dot,))
        # d/dt of the kernel gradient along x_dot (forward over reverse).
        _, hvp = jax.jvp(lambda x: jax.grad(loss, argnums=1)(x, kernel), (x,), (x_dot,))
        per_example = jax.vmap(lambda xi: jax.grad(loss, argnums=1)(xi[None], kernel))(x)
        return y, y_dot, hvp, per_example

    y, y_dot, hvp, per_example = run(x, kernel)
    # The layer is linear in x: its tangent is the layer without bias on x_dot.
    _close(y_dot, reference_locally_connected(x_dot, kernel, padding="same"), 1e-5, "jvp")
    # The second order and the per-example gradients against the same computations through "patches".
    from flax_local._src.patches import apply_patches

    def loss_patches(x, kernel):
        return jnp.sum(jnp.sin(apply_patches(x, kernel, bias, g, "highest")))

    _, hvp_patches = jax.jvp(lambda x: jax.grad(loss_patches, argnums=1)(x, kernel), (x,), (x_dot,))
    _close(hvp, np.asarray(hvp_patches, np.float64), 1e-4, "forward over reverse")
    expected = np.stack([jax.grad(loss_patches, argnums=1)(x[i : i + 1], kernel) for i in range(2)])
    _close(per_example, expected.astype(np.float64), 1e-5, "vmap of grad")
    assert np.isfinite(np.asarray(y)).all()


def test_a_padded_tap_adds_zero_whatever_the_kernel_holds_there():
    """An inf or NaN weight at a tap in the padding: the output, its jvp and its gradient stay exact."""
    g, x, kernel, bias = _layer_arrays((5, 4), (3, 3), 3, 2, batch=2)
    expected = reference_locally_connected(x, kernel, bias, padding="same")
    kernel[0, 0, 0, 0] = np.inf  # position (0, 0) reads padding at window row 0 and column 0
    kernel[0, 0, 1, 0, 2] = np.nan
    kernel[-1, -1, 2, 2] = -np.inf

    def layer(x):
        return pallas_layer.apply_pallas(x, kernel, bias, g, "highest")

    y, y_dot = jax.jit(lambda x: jax.jvp(layer, (x,), (jnp.ones_like(x),)))(x)
    _close(y, expected, 1e-5, "y")
    assert np.isfinite(np.asarray(y_dot)).all()
    assert np.isfinite(np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(layer(x))))(x))).all()


def test_apply_pallas_rejects_unsupported_dtypes():
    g = make_geometry((4,), (3,), (1,), "valid", (1,))
    with pytest.raises(ValueError, match="implementation='pallas' accepts float32, bfloat16 or float16"):
        pallas_layer.apply_pallas(
            jnp.ones((1, 4, 2), jnp.int32), jnp.ones((2, 3, 2, 1), jnp.int32), None, g, None
        )


# ----------------------------------------------------------------------------
# The GPU lowering, checked without a GPU
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spatial, kernel_size, strides, padding, dilation, batch, channels, filters, dtype",
    [
        ((10, 10), (3, 3), (1, 1), "valid", (1, 1), 32, 16, 16, "float32"),
        ((7, 6), (3, 2), (2, 1), "same", (1, 2), 3, 3, 5, "bfloat16"),
        ((9,), (3,), (1,), "causal", (2,), 1, 1, 3, "float16"),
        ((4, 4, 4), (3, 3, 3), (1, 1, 1), "same", (1, 1, 1), 20, 8, 64, "float32"),
    ],
)
def test_the_kernels_lower_to_triton_for_cuda(
    spatial, kernel_size, strides, padding, dilation, batch, channels, filters, dtype
):
    """Exported for CUDA (no GPU needed): Pallas's Triton lowering accepts every kernel.

    It rejects what Triton cannot take (tensors whose size is not a power of
    two, unsupported operations) at this step, before any GPU compiles.
    """
    from jax import export

    g = make_geometry(spatial, kernel_size, strides, padding, dilation)
    rows, positions, window = math.prod(spatial), g.num_positions, g.window_volume
    x = jax.ShapeDtypeStruct((1, batch, rows, channels), dtype)
    w = jax.ShapeDtypeStruct((2, positions, window * channels, filters), dtype)
    bias = jax.ShapeDtypeStruct((1, positions, filters), jnp.float32)
    dy = jax.ShapeDtypeStruct((2, batch, positions, filters), dtype)
    from flax_local._src.pallas_kernels import Blocks

    reuse = Blocks(batch=16, run=4, reuse=True, num_warps=8)
    calls = [
        (
            lambda x, w, b: pallas_impl.forward(x, w, b, geometry=g, has_bias=True, precision="highest"),
            (x, w, bias),
        ),
        (lambda x, w: pallas_impl.forward(x, w, geometry=g, has_bias=False, blocks=reuse), (x, w)),
        (lambda x, dy: pallas_impl.kernel_grad(x, dy, geometry=g, weight_dtype=jnp.bfloat16), (x, dy)),
        (lambda dy, w: pallas_impl.input_grad(dy, w, geometry=g), (dy, w)),
    ]
    if strides[-1] == 1:
        calls.append((lambda dy, w: pallas_impl.input_grad(dy, w, geometry=g, blocks=reuse), (dy, w)))
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    for fn, args in calls:
        exported = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(*args)
        assert exported.mlir_module().count("xla.gpu.triton") == 1


def test_as_the_native_primitives_gpu_lowering_a_training_step_runs_three_kernels():
    """``register_gpu_lowerings``: jit(grad) of the primitives exports for CUDA as Triton calls only."""
    from jax import export

    pallas_impl.register_gpu_lowerings()
    g = make_geometry((8, 8), (3, 3), (1, 1), "same", (1, 1))
    x = jax.ShapeDtypeStruct((2, 4, 64, 3), jnp.float32)  # two groups: a vmapped axis
    w = jax.ShapeDtypeStruct((2, 64, 27, 5), jnp.float32)
    bias = jax.ShapeDtypeStruct((1, 64, 5), jnp.float32)  # shared by both groups

    def loss(x, w, bias):
        return jnp.sum(jnp.square(native.forward(x, w, bias, g)))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    module = export.export(step, platforms=["cuda"], disabled_checks=checks)(x, w, bias).mlir_module()
    # forward, kernel gradient, input gradient; no gather of windows.
    assert module.count("xla.gpu.triton") == 3, module.count("xla.gpu.triton")
    assert "stablehlo.gather" not in module


def test_operands_past_32_bit_offsets_are_refused_before_compiling():
    g = make_geometry((4096, 4096), (3, 3), (1, 1), "same", (1, 1))
    x = jax.ShapeDtypeStruct((1, 128, 4096 * 4096, 1), jnp.float32)  # 2**31 elements once padded
    w = jax.ShapeDtypeStruct((1, g.num_positions, 9, 1), jnp.float32)
    with pytest.raises(ValueError, match=r"32-bit offsets, but x of shape \(1, 128, 16793604, 16\)"):
        jax.eval_shape(lambda x, w: pallas_impl.forward(x, w, geometry=g, has_bias=False), x, w)


def test_apply_pallas_training_step_exports_for_cuda_as_three_triton_calls():
    """The benchmark's training step (bfloat16, same padding) lowers to the three kernels, no gather."""
    from jax import export

    g = make_geometry((12, 12), (3, 3), (1, 1), "same", (1, 1))
    x = jax.ShapeDtypeStruct((16, 12, 12, 8), jnp.bfloat16)
    params = {
        "kernel": jax.ShapeDtypeStruct((12, 12, 3, 3, 8, 16), jnp.bfloat16),
        "bias": jax.ShapeDtypeStruct((12, 12, 16), jnp.bfloat16),
    }

    def loss(params, x):
        y = pallas_layer.apply_pallas(x, params["kernel"], params["bias"], g, None, interpret=False)
        return jnp.mean(jnp.square(y.astype(jnp.float32)))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    module = export.export(step, platforms=["cuda"], disabled_checks=checks)(params, x).mlir_module()
    assert module.count("xla.gpu.triton") == 3 and "stablehlo.gather" not in module
