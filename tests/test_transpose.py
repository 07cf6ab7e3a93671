"""``locally_connected_transpose`` and Keras's transposed-layer sizes.

The transpose is checked against the float64 reference (``tests.reference``)
in two ways: the adjoint identity ``<F(x), y> == <x, T(y)>`` with the
reference forward ``F``, and elementwise against the reference's own
transpose, the matrix of ``F`` built column by column from basis inputs. Then
against ``jax.vjp`` of our forward pass, ``check_grads``, the gradient
oracles (``d/dy <T(y), c> = F(c)``), ``vmap``, the primitives ``"native"``
lowers to, sharding by position (8 CPU devices, in a subprocess), Keras's
output-size formula and the errors.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from flax_local.functional import (
    locally_connected,
    locally_connected_transpose,
    transpose_geometry,
    transpose_output_shape,
)
from tests.reference import reference_locally_connected, reference_output_spatial, resolve_padding
from tests.test_functional import Config, sample_config

IMPLEMENTATIONS = ("native", "patches", "dense", "sparse", "auto")
HIGHEST = lax.Precision.HIGHEST
TOL = dict(rtol=1e-5, atol=1e-5)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEEDS = range(30)
CONFIGS = {seed: sample_config(seed) for seed in SEEDS}


def _id(seed: int) -> str:
    c = CONFIGS[seed]
    padding = c.padding if isinstance(c.padding, str) else "explicit"
    return f"{seed}-{c.rank}d-{padding}-{c.data_format[9:]}-b{len(c.batch_shape)}"


def _y_shape(config: Config) -> tuple[int, ...]:
    if config.data_format == "channels_first":
        return (*config.batch_shape, config.filters, *config.output_spatial)
    return (*config.batch_shape, *config.output_spatial, config.filters)


def _arrays(config: Config, seed: int, dtype=np.float32):
    """Random ``x`` (forward input), ``kernel``, ``y`` (forward output shape) and the transpose's bias."""
    x, kernel, _ = config.arrays(seed, dtype)
    rng = np.random.default_rng(2000 + seed)
    y = rng.normal(size=_y_shape(config)).astype(dtype)
    bias = (
        rng.normal(size=(*config.input_spatial, config.channels)).astype(dtype) if config.use_bias else None
    )
    return x, kernel, y, bias


def _transpose_kwargs(config: Config) -> dict:
    return dict(spatial_shape=config.input_spatial, **config.layer_kwargs())


def _all_transposes(config: Config, kernel, y, bias, implementations=IMPLEMENTATIONS) -> dict:
    """Every implementation in one jit (one compilation: the suite runs on 2 cores)."""

    def fn(y, kernel, bias):
        return [
            locally_connected_transpose(
                y, kernel, bias, implementation=impl, precision=HIGHEST, **_transpose_kwargs(config)
            )
            for impl in implementations
        ]

    return dict(zip(implementations, jax.jit(fn)(y, kernel, bias)))


def reference_transpose(config: Config, kernel, y, bias) -> np.ndarray:
    """The float64 transpose: the reference forward's matrix, built from basis inputs, transposed."""
    batch = len(config.batch_shape)
    x_single = config.x_shape[batch:]
    size = math.prod(x_single)
    basis = np.eye(size).reshape(size, *x_single)
    matrix = reference_locally_connected(basis, kernel, None, **config.reference_kwargs()).reshape(size, -1)
    y_flat = np.asarray(y, np.float64).reshape(-1, matrix.shape[1])
    x = (y_flat @ matrix.T).reshape(*config.batch_shape, *x_single)
    if bias is not None:
        bias = np.asarray(bias, np.float64)
        x = x + (np.moveaxis(bias, -1, 0) if config.data_format == "channels_first" else bias)
    return x


def test_sample_covers_every_feature():
    """The seeds used here exercise every rank, padding kind, data format and batch rank."""
    configs = list(CONFIGS.values())
    for rank in (1, 2, 3):
        assert any(c.rank == rank for c in configs)
    for name in ("valid", "same", "causal"):
        assert any(isinstance(c.padding, str) and c.padding.lower() == name for c in configs)
    assert any(not isinstance(c.padding, str) for c in configs)
    assert any(min(c.per_dimension(c.strides)) > 1 for c in configs)
    assert any(min(c.per_dimension(c.dilation)) > 1 for c in configs)
    for fmt in ("channels_last", "channels_first"):
        assert any(c.data_format == fmt for c in configs)
    for n in (0, 1, 2):
        assert any(len(c.batch_shape) == n for c in configs)
    assert any(c.use_bias for c in configs) and any(not c.use_bias for c in configs)


@pytest.mark.parametrize("seed", SEEDS, ids=_id)
def test_adjoint_of_float64_reference(seed):
    """``<F(x), y> == <x, T(y)>`` with the reference F, and T elementwise against F's matrix."""
    config = CONFIGS[seed]
    x, kernel, y, bias = _arrays(config, seed)
    forward = reference_locally_connected(x, kernel, None, **config.reference_kwargs())
    lhs = float(np.vdot(forward, np.asarray(y, np.float64)))
    expected = reference_transpose(config, kernel, y, bias)
    for implementation, result in _all_transposes(config, kernel, y, None).items():
        assert result.shape == x.shape and result.dtype == jnp.float32, implementation
        ours = np.asarray(result, np.float64)
        scale = float(np.abs(np.asarray(x, np.float64)).ravel() @ np.abs(ours).ravel())
        assert abs(lhs - float(np.vdot(np.asarray(x, np.float64), ours))) <= 1e-5 * scale, implementation
        if bias is None:
            np.testing.assert_allclose(ours, expected, **TOL, err_msg=implementation)
    if bias is not None:
        for implementation, result in _all_transposes(config, kernel, y, bias).items():
            np.testing.assert_allclose(result, expected, **TOL, err_msg=implementation)


@pytest.mark.parametrize("seed", SEEDS[::3], ids=_id)
def test_equals_vjp_of_forward(seed):
    """Elementwise the input gradient of ``locally_connected`` with the same implementation."""
    config = CONFIGS[seed]
    x, kernel, y, _ = _arrays(config, seed)

    def both(x, kernel, y):
        out = {}
        for impl in IMPLEMENTATIONS:
            forward = functools.partial(
                locally_connected,
                kernel=kernel,
                implementation=impl,
                precision=HIGHEST,
                **config.layer_kwargs(),
            )
            out[impl] = (
                jax.vjp(forward, x)[1](y)[0],
                locally_connected_transpose(
                    y, kernel, implementation=impl, precision=HIGHEST, **_transpose_kwargs(config)
                ),
            )
        return out

    for impl, (expected, got) in jax.jit(both)(x, kernel, y).items():
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=impl)


def test_eager_matches_jit():
    config = CONFIGS[4]
    x, kernel, y, bias = _arrays(config, 4)
    jitted = _all_transposes(config, kernel, y, bias)
    for impl in IMPLEMENTATIONS:
        eager = locally_connected_transpose(
            y, kernel, bias, implementation=impl, precision=HIGHEST, **_transpose_kwargs(config)
        )
        np.testing.assert_allclose(eager, jitted[impl], rtol=1e-6, atol=1e-6, err_msg=impl)


# --- derivatives -----------------------------------------------------------------

GRAD_CONFIGS = {
    "1d-causal-dilated": Config((7,), (3,), 1, 2, "causal", "channels_last", (2,), 2, 2, True),
    "2d-same-strided-dilated": Config(
        (5, 6), (2, 3), (2, 1), (1, 2), "same", "channels_first", (2,), 2, 2, True
    ),
    "3d-explicit-negative": Config(
        (4, 3, 4), (2, 1, 2), 1, (1, 1, 2), ((1, -1), (0, 1), (-1, 1)), "channels_last", (), 2, 1, True
    ),
}
GRAD_CASES = [
    *(("2d-same-strided-dilated", impl, 1) for impl in ("patches", "dense", "sparse")),
    ("1d-causal-dilated", "patches", 2),
    ("1d-causal-dilated", "dense", 2),
    ("3d-explicit-negative", "patches", 1),
]


def _grad_function(config: Config, implementation: str):
    return jax.jit(
        functools.partial(
            locally_connected_transpose,
            implementation=implementation,
            precision=HIGHEST,
            **_transpose_kwargs(config),
        )
    )


@pytest.mark.parametrize("name, implementation, order", GRAD_CASES)
def test_check_grads_float64(name, implementation, order):
    """Forward and reverse derivatives w.r.t. y, kernel and bias against finite differences."""
    config = GRAD_CONFIGS[name]
    with jax.enable_x64(True):
        _, kernel, y, bias = (jnp.asarray(a, jnp.float64) for a in _arrays(config, 7, np.float64))
        fn = _grad_function(config, implementation)
        assert fn(y, kernel, bias).dtype == jnp.float64
        check_grads(fn, (y, kernel, bias), order=order, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["2d-same-strided-dilated", "1d-causal-dilated"])
def test_check_grads_native_float32(name):
    """ "native" computes in float32: a loose tolerance, checked for both the bilinear and trilinear (VJP of VJP) maps."""
    config = GRAD_CONFIGS[name]
    _, kernel, y, bias = (jnp.asarray(a) for a in _arrays(config, 7))
    check_grads(
        _grad_function(config, "native"), (y, kernel, bias), order=2, modes=("fwd", "rev"),
        atol=2e-2, rtol=2e-2, eps=1e-2,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [2, 9, 13], ids=_id)
def test_gradients_are_the_forward_ops(seed):
    """``d/dy <T(y, K) + b, c> = F(c, K)``, ``d/dK = d/dK <F(c, K), y>``, ``d/db = sum_batch c``."""
    config = dataclasses.replace(CONFIGS[seed], use_bias=True)
    x, kernel, y, bias = _arrays(config, seed)
    cotangent = np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
    kwargs = _transpose_kwargs(config)

    def grads(y, kernel, bias, cotangent):
        out = {}
        for impl in IMPLEMENTATIONS:

            def loss(y, kernel, bias, impl=impl):
                result = locally_connected_transpose(
                    y, kernel, bias, implementation=impl, precision=HIGHEST, **kwargs
                )
                return jnp.sum(result * cotangent)

            out[impl] = jax.grad(loss, argnums=(0, 1, 2))(y, kernel, bias)
        forward = functools.partial(locally_connected, precision=HIGHEST, **config.layer_kwargs())
        expected_dy = forward(cotangent, kernel, implementation="patches")
        expected_dk = jax.grad(lambda k: jnp.sum(forward(cotangent, k, implementation="patches") * y))(kernel)
        return out, (expected_dy, expected_dk)

    got, (expected_dy, expected_dk) = jax.jit(grads)(y, kernel, bias, cotangent)
    batch = len(config.batch_shape)
    cot = np.moveaxis(cotangent, batch, -1) if config.data_format == "channels_first" else cotangent
    expected_db = cot.reshape(-1, *bias.shape).sum(0)
    for impl, (dy, dk, db) in got.items():
        np.testing.assert_allclose(dy, expected_dy, **TOL, err_msg=impl)
        np.testing.assert_allclose(dk, expected_dk, rtol=1e-5, atol=1e-4, err_msg=impl)
        np.testing.assert_allclose(db, expected_db, rtol=1e-5, atol=1e-4, err_msg=impl)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_vmap_over_y_and_over_kernels(implementation):
    config = CONFIGS[7]
    rng = np.random.default_rng(3)
    _, kernel, y, bias = _arrays(config, 7)
    ys = rng.normal(size=(3, *y.shape)).astype(np.float32)
    kernels = rng.normal(size=(3, *kernel.shape)).astype(np.float32)
    fn = functools.partial(
        locally_connected_transpose,
        implementation=implementation,
        precision=HIGHEST,
        **_transpose_kwargs(config),
    )
    over_y = jax.jit(jax.vmap(fn, in_axes=(0, None, None)))(ys, kernel, bias)
    over_k = jax.jit(jax.vmap(fn, in_axes=(None, 0, None)))(y, kernels, bias)
    for i in range(3):
        np.testing.assert_allclose(over_y[i], reference_transpose(config, kernel, ys[i], bias), **TOL)
        np.testing.assert_allclose(over_k[i], reference_transpose(config, kernels[i], y, bias), **TOL)


def _primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


def test_native_stays_in_the_native_primitives():
    """Forward is the input-gradient kernel; its derivatives are the forward and kernel-gradient ones."""
    config = GRAD_CONFIGS["2d-same-strided-dilated"]
    _, kernel, y, bias = (jnp.asarray(a) for a in _arrays(config, 1))
    fn = functools.partial(locally_connected_transpose, implementation="native", **_transpose_kwargs(config))
    products = {"dot_general", "gather", "scatter-add", "scatter", "conv_general_dilated"}
    forward = _primitives(jax.make_jaxpr(fn)(y, kernel, bias).jaxpr)
    assert "flax_local_input_grad" in forward and not forward & products, forward
    assert not {"flax_local_forward", "flax_local_kernel_grad"} & forward, forward
    loss = lambda y, kernel, bias: jnp.sum(jnp.sin(fn(y, kernel, bias)))  # noqa: E731
    backward = _primitives(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(y, kernel, bias).jaxpr)
    assert {"flax_local_forward", "flax_local_kernel_grad"} <= backward and not backward & products, backward
    hvp = _primitives(jax.make_jaxpr(lambda *a: jax.jvp(jax.grad(loss), a, a)[1])(y, kernel, bias).jaxpr)
    assert not hvp & products, hvp


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision(dtype):
    config = CONFIGS[10]
    _, kernel, y, bias = _arrays(config, 10)
    expected = reference_transpose(config, kernel, y, bias)
    y, kernel, bias = (None if a is None else jnp.asarray(a, dtype) for a in (y, kernel, bias))
    got = _all_transposes(config, kernel, y, bias, ("native", "patches", "dense"))
    scale = np.abs(expected).max()
    for impl, result in got.items():
        assert result.dtype == dtype, impl
        np.testing.assert_allclose(np.asarray(result, np.float32), expected, atol=0.05 * scale, err_msg=impl)


# --- sharding by position ------------------------------------------------------------

_SHARDING_SCRIPT = textwrap.dedent(
    """
    import os, json
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from flax_local.functional import locally_connected_transpose

    rng = np.random.default_rng(0)
    y = rng.normal(size=(8, 8, 6, 5)).astype(np.float32)             # 8x6 positions of a 3x3 layer
    kernel = rng.normal(size=(8, 6, 3, 3, 4, 5)).astype(np.float32)  # 4 out channels, 5 y channels
    bias = rng.normal(size=(17, 13, 4)).astype(np.float32)
    cot = rng.normal(size=(8, 17, 13, 4)).astype(np.float32)
    kw = dict(spatial_shape=(17, 13), strides=2, padding="valid")
    results = {}
    for impl in ("auto", "patches", "dense"):
        def loss(y, kernel, bias):
            out = locally_connected_transpose(y, kernel, bias, implementation=impl, **kw)
            return jnp.sum(out * cot), out
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        (_, plain), plain_grads = step(y, kernel, bias)
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
        with jax.set_mesh(mesh):
            ys = jax.device_put(y, NamedSharding(mesh, P("data")))
            ks = jax.device_put(kernel, NamedSharding(mesh, P("model")))
            bs = jax.device_put(bias, NamedSharding(mesh, P()))
            (_, sharded), sharded_grads = step(ys, ks, bs)
        diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
                 for a, b in zip([plain, *plain_grads], [sharded, *sharded_grads])]
        results[impl] = dict(diffs=diffs, kernel_spec=str(sharded_grads[1].sharding.spec),
                             devices=len(ks.sharding.device_set))
    print(json.dumps(results))
    """
)


def test_sharded_by_position_matches_unsharded():
    """Kernel sharded over its first position axis on 8 CPU devices: same value and gradients.

    On a mesh with ``Auto`` axes, as the functional forward pass (the layers
    wrap both in ``auto_axes`` on ``Explicit`` meshes).
    """
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", _SHARDING_SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for impl, record in results.items():
        assert record["devices"] == 8, (impl, record)
        assert max(record["diffs"]) < 1e-4, (impl, record)
    assert results["patches"]["kernel_spec"] == "P('model',)", results  # its gradient stays sharded


# --- Keras's output sizes ----------------------------------------------------------------

# (input, kernel, stride, padding, output_padding, dilation) -> output length, worked out by hand
# from tf_keras conv_utils.deconv_output_length (k' = d * (k - 1) + 1):
#   output_padding None: valid n*s + max(k' - s, 0); same n*s;
#   else (n - 1)*s + k' - 2*pad + output_padding, pad = 0 (valid) or k' // 2 (same).
KERAS_LENGTHS = [
    (5, 3, 1, "valid", None, 1, 7),
    (5, 3, 2, "valid", None, 1, 11),
    (5, 2, 3, "valid", None, 1, 15),
    (5, 5, 2, "valid", None, 1, 13),
    (4, 3, 2, "valid", None, 2, 11),
    (5, 3, 2, "same", None, 1, 10),
    (7, 4, 3, "same", None, 1, 21),
    (5, 3, 2, "valid", 1, 1, 12),
    (5, 3, 2, "valid", 0, 1, 11),
    (5, 3, 2, "same", 1, 1, 10),
    (5, 3, 2, "same", 0, 1, 9),
    (5, 4, 2, "same", 1, 1, 9),
    (5, 3, 3, "same", 2, 2, 15),
    (6, 2, 1, "valid", 0, 3, 9),
    (1, 1, 1, "valid", None, 1, 1),
    (3, 1, 4, "valid", 3, 1, 12),
]


@pytest.mark.parametrize("n, k, s, padding, output_padding, d, expected", KERAS_LENGTHS)
def test_output_shape_matches_keras_formula(n, k, s, padding, output_padding, d, expected):
    got = transpose_output_shape(
        (n,), k, strides=s, padding=padding, output_padding=output_padding, dilation_rate=d
    )
    assert got == (expected,)
    geometry = transpose_geometry(
        (n,), k, strides=s, padding=padding.upper(), output_padding=output_padding, dilation_rate=d
    )
    assert geometry.input_spatial == (expected,) and geometry.output_spatial == (n,)


def test_output_shape_per_dimension():
    shape = transpose_output_shape(
        (5, 4, 3),
        (3, 2, 1),
        strides=(2, 1, 3),
        padding="same",
        output_padding=(1, 0, 2),
        dilation_rate=(1, 2, 1),
    )
    assert shape == (10, 4, 9)
    assert transpose_output_shape((5, 4), 3, strides=2) == (11, 9)


def _sweep():
    for n, k, s, d in itertools.product(range(1, 6), range(1, 5), range(1, 4), range(1, 3)):
        for padding in ("valid", "same"):
            for output_padding in (None, *range(s)):
                yield n, k, s, d, padding, output_padding


def test_forward_geometry_gives_back_the_input_size():
    """Every Keras case: the forward layer maps the output size back, or a ValueError says why.

    Checked with the reference's own padding and size arithmetic; the only
    impossible cases are ``"same"`` with an even dilated window and
    ``output_padding`` 0, where ``(n - 1) * s`` comes back as ``n - 1`` (tf_keras 2.21's
    ``Conv1DTranspose`` fails there when called, with TensorFlow's ``AbortedError``).
    """
    impossible = 0
    for n, k, s, d, padding, output_padding in _sweep():
        kwargs = dict(strides=s, padding=padding, output_padding=output_padding, dilation_rate=d)
        (length,) = transpose_output_shape((n,), k, **kwargs)
        window = d * (k - 1) + 1
        if padding == "same" and output_padding == 0 and window % 2 == 0:
            impossible += 1
            with pytest.raises(ValueError, match=r"output_padding=\(0,\) does not fit input spatial shape"):
                transpose_geometry((n,), k, **kwargs)
            continue
        geometry = transpose_geometry((n,), k, **kwargs)
        pairs = resolve_padding(padding, (length,), k, s, d)
        assert geometry.input_spatial == (length,)
        assert geometry.padding == pairs
        assert reference_output_spatial((length,), k, s, pairs, d) == (n,), (
            n,
            k,
            s,
            d,
            padding,
            output_padding,
        )
    assert impossible > 0


def test_keras_layers_agree_where_installed():
    """Live tf_keras ``Conv{1,2}DTranspose.compute_output_shape``; skipped without tf_keras."""
    keras = pytest.importorskip("tf_keras")
    for n, k, s, d, padding, output_padding in list(_sweep())[::7]:
        if d > 1 and s > 1:
            continue  # tf_keras rejects strides > 1 with dilation > 1
        layer = keras.layers.Conv1DTranspose(
            2, k, strides=s, padding=padding, output_padding=output_padding, dilation_rate=d
        )
        expected = tuple(layer.compute_output_shape((1, n, 3)))[1:2]
        assert transpose_output_shape((n,), k, strides=s, padding=padding, output_padding=output_padding,
                                      dilation_rate=d) == expected  # fmt: skip


# --- errors -------------------------------------------------------------------------------


def _valid_call(**overrides):
    y = jnp.ones((2, 4, 4, 5))
    kernel = jnp.ones((4, 4, 3, 3, 2, 5))
    kwargs = dict(spatial_shape=(9, 9), strides=2)
    kwargs.update(overrides)
    return locally_connected_transpose(kwargs.pop("y", y), kwargs.pop("kernel", kernel), **kwargs)


def test_valid_call_works():
    assert _valid_call().shape == (2, 9, 9, 2)
    assert _valid_call(spatial_shape=(10, 10)).shape == (2, 10, 10, 2)  # strides: two sizes fit


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            dict(spatial_shape=(11, 9)),
            r"spatial_shape=\(11, 9\) does not fit y of spatial shape \(4, 4\).*maps \(11, 9\) to \(5, 4\)"
            r".*smallest spatial_shape that does is \(9, 9\)",
        ),
        (dict(spatial_shape=(2, 2)), r"spatial_shape=\(2, 2\) does not fit y .*maps \(2, 2\) to no output"),
        (dict(spatial_shape=(9,)), r"spatial_shape must have 2 entries"),
        (dict(spatial_shape=(0, 9)), r"spatial_shape must be >= 1"),
        (dict(kernel=jnp.ones((4, 3, 3, 2, 5))), r"kernel must have shape \(\*y_spatial, \*kernel_size"),
        (dict(kernel=jnp.ones((4, 4, 3, 3, 2, 6))), r"y has 5 channels .* expects y_channels=6"),
        (dict(kernel=jnp.ones((4, 3, 3, 3, 2, 5))), r"kernel has \(4, 3\) positions .* y has spatial shape"),
        (dict(y=jnp.ones((5, 5))), r"y must have rank >= 3"),
        (
            dict(bias=jnp.ones((4, 4, 5))),
            r"bias must have shape \(\*spatial_shape, out_channels\) = \(9, 9, 2\)",
        ),
        (dict(implementation="fast"), r"implementation must be one of"),
        (dict(padding="causal"), r"padding='causal' is only defined for 1 spatial dimension"),
        (dict(strides=0), r"strides must be >= 1"),
        (dict(data_format="NHWC"), r"data_format must be one of"),
        (dict(precision="bogus"), r"precision='bogus' is not accepted"),
    ],
)
def test_errors_name_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        _valid_call(**overrides)


def test_native_rejects_float64():
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match="implementation='native' accepts layers of dtype"):
            _valid_call(y=jnp.ones((2, 4, 4, 5), jnp.float64), implementation="native")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(strides=2, output_padding=2),
            r"output_padding must be smaller than strides .*\(2, 2\).*\(2, 2\)",
        ),
        (dict(strides=1, output_padding=1), r"output_padding must be smaller than strides"),
        (dict(strides=(2, 3), output_padding=(1, 3)), r"output_padding=\(1, 3\) with strides=\(2, 3\)"),
        (dict(strides=2, output_padding=-1), r"output_padding must be >= 0"),
        (dict(output_padding=(0, 0, 0)), r"output_padding must have 2 entries"),
        (dict(padding=((1, 1), (1, 1))), r"padding of a transposed layer must be 'valid' or 'same'"),
        (dict(padding="full"), r"padding must be one of"),
        (dict(kernel_size=0), r"kernel_size must be >= 1"),
        (
            dict(kernel_size=4, strides=2, padding="same", output_padding=0),
            r"output_padding=\(0, 0\) does not fit input spatial shape \(5, 5\).*even dilated window",
        ),
    ],
)
def test_output_padding_errors(kwargs, match):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        transpose_geometry((5, 5), kwargs.pop("kernel_size"), **kwargs)


def test_output_shape_rejects_causal_padding():
    with pytest.raises(
        ValueError, match=r"padding of a transposed layer must be 'valid' or 'same' .*got 'causal'"
    ):
        transpose_output_shape((5,), 3, padding="causal")


@pytest.mark.parametrize("input_spatial", [5, (), (1, 2, 3, 4), (5, 0)])
def test_output_shape_rejects_bad_input_spatial(input_spatial):
    with pytest.raises(ValueError, match="input_spatial"):
        transpose_output_shape(input_spatial, 3)


@pytest.mark.parametrize("implementation", ["patches", "dense", "sparse", "native"])
def test_non_floating_operands_raise(implementation):
    """An integer y gave a float0 result under "patches" and "dense"; now a clear error."""
    y = jnp.ones((2, 3, 3, 4), jnp.int32)
    kernel = jnp.ones((3, 3, 3, 3, 2, 4), jnp.int32)
    with pytest.raises(ValueError, match="locally_connected_transpose computes in floating point"):
        locally_connected_transpose(y, kernel, spatial_shape=(5, 5), implementation=implementation)
