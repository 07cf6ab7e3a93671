"""Edge cases of the functional core that once gave wrong numbers, crashes or huge memory.

Each test here failed before its fix (issue 24's item number in the test's
docstring) and runs every implementation in the registry, under ``jax.jit``.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flax_local._src import registry
from flax_local._src.dense import sparse_matrix_bytes
from flax_local._src.geometry import make_geometry
from flax_local.functional import locally_connected
from tests.reference import reference_locally_connected

NAMES = registry.NAMES
HIGHEST = lax.Precision.HIGHEST
RNG = np.random.default_rng(24)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _layer(implementation, **kwargs):
    return functools.partial(locally_connected, implementation=implementation, precision=HIGHEST, **kwargs)


@pytest.mark.parametrize("implementation", NAMES)
def test_non_finite_kernel_at_a_padded_tap_contributes_zero(implementation):
    """Item 6: a padded tap adds exactly 0, even where the kernel holds inf or NaN there."""
    x = _normal(2, 5, 6, 3)
    kernel = _normal(5, 6, 3, 3, 3, 4)
    bias = _normal(5, 6, 4)
    expected = reference_locally_connected(x, kernel, bias, padding=((1, 1), (1, 1)))
    # Position (0, 0) reads padding at window row 0 and column 0; (4, 5) at row 2 and column 2.
    kernel[0, 0, 0, 0] = np.inf
    kernel[0, 0, 1, 0, 2] = np.nan
    kernel[4, 5, 2, 2] = -np.inf
    layer = _layer(implementation, padding="same")
    y = jax.jit(layer)(x, kernel, bias)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # The derivatives see the same zero: forward mode reads the kernel with the input's tangent.
    _, y_dot = jax.jit(lambda x: jax.jvp(lambda x: layer(x, kernel, bias), (x,), (jnp.ones_like(x),)))(x)
    assert np.isfinite(np.asarray(y_dot)).all()
    d_x = jax.jit(jax.grad(lambda x: jnp.sum(layer(x, kernel, bias))))(x)
    assert np.isfinite(np.asarray(d_x)).all()


def test_input_positions_beyond_int32_raise():
    """Item 7: an input with >= 2**31 positions would wrap the int32 row indices."""
    # 2**16 x (2**15 + 1) positions; the one window reads the last of them.
    spatial = (2**16, 2**15 + 1)
    padding = ((-(spatial[0] - 1), 0), (-(spatial[1] - 1), 0))
    x = jax.ShapeDtypeStruct((1, *spatial, 1), jnp.float32)
    kernel = jax.ShapeDtypeStruct((1, 1, 1, 1, 1, 1), jnp.float32)
    for implementation in (*NAMES, "auto"):
        with pytest.raises(ValueError, match=r"2147549184 spatial positions .*2\*\*31 - 1"):
            jax.eval_shape(_layer(implementation, padding=padding, max_matrix_bytes=1 << 62), x, kernel)


@pytest.mark.parametrize("implementation", NAMES)
def test_empty_batch_forward_and_gradients(implementation):
    """Item 9: batch size 0 gives an empty output and zero parameter gradients."""
    x = np.zeros((0, 7, 6, 3), np.float32)
    kernel, bias = _normal(4, 3, 2, 3, 3, 5), _normal(4, 3, 5)
    layer = _layer(implementation, strides=(2, 2), padding="same", dilation_rate=(1, 2))
    y = jax.jit(layer)(x, kernel, bias)
    assert y.shape == (0, 4, 3, 5)

    def loss(x, kernel, bias):
        return jnp.sum(layer(x, kernel, bias) ** 2)

    d_x, d_kernel, d_bias = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, kernel, bias)
    assert d_x.shape == x.shape
    np.testing.assert_array_equal(d_kernel, np.zeros_like(kernel))
    np.testing.assert_array_equal(d_bias, np.zeros_like(bias))
    # Several batch axes, one of them empty.
    assert jax.jit(layer)(np.zeros((3, 0, 7, 6, 3), np.float32), kernel, bias).shape == (3, 0, 4, 3, 5)


_TRACE_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, jax, jax.numpy as jnp
    import flax_local
    from flax_local._src import registry
    from flax_local.functional import locally_connected

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux

    x, key = jnp.zeros((1, 16, 16, 1)), jax.random.key(0)
    jax.eval_shape(flax_local.LocallyConnected2D(1, 7).init, key, x)  # warm up imports and caches
    before = peak()
    n = 1024
    big = jax.ShapeDtypeStruct((1, n, n, 1), jnp.float32)
    jax.eval_shape(flax_local.LocallyConnected2D(1, 7).init, key, big)
    kernel = jax.ShapeDtypeStruct((n - 6, n - 6, 7, 7, 1, 1), jnp.float32)
    for name in registry.NAMES:
        if registry.get(name).matrix_bytes is None:  # the others refuse by size, before building
            jax.eval_shape(lambda x, k: locally_connected(x, k, implementation=name), big, kernel)
            jax.eval_shape(
                jax.grad(lambda x, k: locally_connected(x, k, implementation=name).sum(), argnums=(0, 1)),
                big,
                kernel,
            )
    print(peak() - before)
    """
)


def test_tracing_a_large_layer_needs_no_positions_by_window_arrays():
    """Item 11: tracing held int64 (positions, window) index arrays: 1.7 GiB for this 1024x1024 layer.

    The kernel (1018**2 * 49 float32, 194 MiB) is never built under ``eval_shape``.
    """
    result = subprocess.run(
        [sys.executable, "-c", _TRACE_MEMORY_SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    growth = float(result.stdout.split()[-1])
    assert growth < 100, f"tracing grew the peak RSS by {growth:.0f} MiB"


@pytest.mark.parametrize("batch", [1, 8])
def test_sparse_size_guard_counts_the_peak(batch):
    """Item 12: "sparse" allocates its matrix, indices and (batch, entries) products.

    The guard counted only values and indices: at batch 8, a ninth of a
    training step's peak. It must count at least what the compiled forward
    pass and training step hold.
    """
    geometry = make_geometry((20, 20), (3, 3), (1, 1), "valid", (1, 1))
    x = jax.ShapeDtypeStruct((batch, 20, 20, 4), jnp.float32)
    kernel = jax.ShapeDtypeStruct((18, 18, 3, 3, 4, 4), jnp.float32)
    layer = _layer("sparse", max_matrix_bytes=1 << 40)
    entries = geometry.num_connections * 4 * 4
    guard = sparse_matrix_bytes(geometry, 4, 4, 4, batch)
    for fn in (layer, jax.grad(lambda x, k: jnp.sum(layer(x, k) ** 2), argnums=(0, 1))):
        memory = jax.jit(fn).lower(x, kernel).compile().memory_analysis()
        # Temporaries plus the indices, which XLA holds as a constant of the program.
        held = memory.temp_size_in_bytes + entries * 8
        assert guard >= held
    with pytest.raises(ValueError, match=rf"\({guard} bytes\), over max_matrix_bytes={guard - 1}\b"):
        jax.eval_shape(_layer("sparse", max_matrix_bytes=guard - 1), x, kernel)


def _export_round_trip(fn, *args):
    exported = jax.export.export(jax.jit(fn))(*args)
    # serialize() needs flatbuffers (the test extra installs it).
    return jax.export.deserialize(exported.serialize()).call(*args)


@pytest.mark.parametrize("implementation", [*NAMES, "auto"])
def test_export_round_trips(implementation):
    """Item 13: ``jax.export`` refused the native kernels' custom calls; exports are portable now."""
    x, kernel, bias = _normal(2, 7, 6, 3), _normal(7, 6, 3, 3, 3, 4), _normal(7, 6, 4)
    layer = _layer(implementation, padding="same")

    def loss(x, kernel, bias):
        return jnp.sum(layer(x, kernel, bias) ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    np.testing.assert_allclose(
        _export_round_trip(layer, x, kernel, bias), jax.jit(layer)(x, kernel, bias), rtol=1e-5, atol=1e-5
    )
    for got, want in zip(_export_round_trip(grad, x, kernel, bias), jax.jit(grad)(x, kernel, bias)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("implementation", [*NAMES, "auto"])
@pytest.mark.parametrize("dtype", [np.bool_, np.int32, np.uint8])
def test_non_floating_operands_raise(implementation, dtype):
    """Item 16: bool operands gave a TypeError from "sparse"'s add; every implementation names the dtypes."""
    x, kernel = _normal(2, 6, 3).astype(dtype), _normal(4, 3, 3, 2).astype(dtype)
    with pytest.raises(ValueError, match=rf"floating point.*x {np.dtype(dtype)}, kernel {np.dtype(dtype)}"):
        jax.jit(_layer(implementation))(x, kernel)


@pytest.mark.parametrize("implementation", NAMES)
def test_nan_input_reach(implementation):
    """Documented behaviour: a NaN input stays in its windows, except under "dense" (its whole example)."""
    x = _normal(2, 8, 3)
    x[0, 0, 1] = np.nan
    y = np.asarray(jax.jit(_layer(implementation))(x, _normal(6, 3, 3, 2)))
    assert np.isfinite(y[1]).all()
    if implementation == "dense":
        assert np.isnan(y[0]).all()
    else:
        assert np.isnan(y[0, 0]).all() and np.isfinite(y[0, 1:]).all()


def test_auto_never_picks_dense_on_cpu():
    """The "Also" item: on CPU "auto" takes a NaN-local implementation even where "dense" fits."""
    from flax_local.functional import choose_implementation

    geometry = make_geometry((4,), (3,), (1,), "same", (1,))
    for native in (True, False):
        assert choose_implementation(geometry, 2, 2, jnp.float32, "cpu", native=native) != "dense"
    assert choose_implementation(geometry, 2, 2, jnp.float32, "gpu") == "dense"
