"""The functional core against the float64 reference, lax and flax's ConvLocal.

Every implementation is compared with ``tests.reference`` over a seeded random
sample of layer configurations; a kernel shared by all positions is compared
with ``lax.conv_general_dilated``; unshared kernels with ``flax.linen.ConvLocal``.
Then the transformations: jit, grad (numerical checks in float64), vmap over
inputs and over parameter sets, and bfloat16.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax
from jax.test_util import check_grads

from flax_local._src import registry
from flax_local._src.geometry import make_geometry
from flax_local.functional import choose_implementation, locally_connected, output_shape
from tests.reference import (
    reference_locally_connected,
    reference_output_spatial,
    reference_taps,
    resolve_padding,
)

# Every entry of the implementation registry, and "auto".
EXPLICIT_IMPLEMENTATIONS = registry.NAMES
IMPLEMENTATIONS = (*EXPLICIT_IMPLEMENTATIONS, "auto")
HIGHEST = lax.Precision.HIGHEST
TOL = dict(rtol=1e-5, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class Config:
    """One layer configuration and the shapes of its input."""

    input_spatial: tuple[int, ...]
    kernel_size: tuple[int, ...]
    strides: int | tuple[int, ...]
    dilation: int | tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    data_format: str
    batch_shape: tuple[int, ...]
    channels: int
    filters: int
    use_bias: bool

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def padding_pairs(self) -> tuple[tuple[int, int], ...]:
        return resolve_padding(
            self.padding, self.input_spatial, self.kernel_size, self.strides, self.dilation
        )

    @property
    def output_spatial(self) -> tuple[int, ...]:
        return reference_output_spatial(
            self.input_spatial, self.kernel_size, self.strides, self.padding_pairs, self.dilation
        )

    @property
    def x_shape(self) -> tuple[int, ...]:
        if self.data_format.lower() == "channels_first":
            return (*self.batch_shape, self.channels, *self.input_spatial)
        return (*self.batch_shape, *self.input_spatial, self.channels)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return (*self.output_spatial, *self.kernel_size, self.channels, self.filters)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (*self.output_spatial, self.filters)

    def per_dimension(self, value) -> tuple[int, ...]:
        return (value,) * self.rank if isinstance(value, int) else tuple(value)

    def layer_kwargs(self) -> dict:
        """Keyword arguments of ``locally_connected`` (without implementation)."""
        return dict(
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation,
            data_format=self.data_format,
        )

    def reference_kwargs(self) -> dict:
        return dict(
            strides=self.strides, padding=self.padding, dilation=self.dilation, data_format=self.data_format
        )

    def arrays(self, seed: int, dtype=np.float32):
        """Random normal ``x``, ``kernel`` and ``bias`` (None without bias)."""
        rng = np.random.default_rng(1000 + seed)
        x = rng.normal(size=self.x_shape).astype(dtype)
        kernel = rng.normal(size=self.kernel_shape).astype(dtype)
        bias = rng.normal(size=self.bias_shape).astype(dtype) if self.use_bias else None
        return x, kernel, bias


def _maybe_int(values: tuple[int, ...], rng) -> int | tuple[int, ...]:
    """An int where all entries agree and a coin says so: both spellings get used."""
    if len(set(values)) == 1 and rng.integers(2):
        return values[0]
    return values


def sample_config(seed: int) -> Config:
    """A random valid configuration; categorical features cycle with ``seed``."""
    rng = np.random.default_rng(seed)
    rank = 1 + seed % 3
    kinds = ["valid", "same", "explicit"] + (["causal"] if rank == 1 else [])
    kind = kinds[(seed // 3) % len(kinds)]
    size_range = {1: (5, 13), 2: (4, 9), 3: (3, 7)}[rank]
    while True:
        input_spatial = tuple(int(s) for s in rng.integers(*size_range, rank))
        kernel_size = tuple(int(k) for k in rng.integers(1, 4, rank))
        strides = tuple(int(s) for s in rng.integers(1, 4, rank))
        dilation = tuple(int(d) for d in rng.integers(1, 3, rank))
        if kind == "explicit":
            padding = tuple((int(lo), int(hi)) for lo, hi in rng.integers(-2, 3, (rank, 2)))
        else:  # names are case-insensitive: use several spellings
            padding = str(rng.choice([kind, kind.upper(), kind.capitalize()]))
        pairs = resolve_padding(padding, input_spatial, kernel_size, strides, dilation)
        if min(reference_output_spatial(input_spatial, kernel_size, strides, pairs, dilation)) >= 1:
            break
    return Config(
        input_spatial=input_spatial,
        kernel_size=kernel_size,
        strides=_maybe_int(strides, rng),
        dilation=_maybe_int(dilation, rng),
        padding=padding,
        data_format=["channels_last", "channels_first"][(seed // 2) % 2],
        batch_shape=tuple(int(b) for b in rng.integers(1, 4, (seed // 5) % 3)),
        channels=int(rng.integers(1, 4)),
        filters=int(rng.integers(1, 4)),
        use_bias=bool((seed // 7) % 2 == 0),
    )


SEEDS = range(40)
CONFIGS = {seed: sample_config(seed) for seed in SEEDS}


def _id(seed: int) -> str:
    c = CONFIGS[seed]
    padding = c.padding if isinstance(c.padding, str) else "explicit"
    return f"{seed}-{c.rank}d-{padding}-{c.data_format[9:]}-b{len(c.batch_shape)}"


def _apply(config: Config, x, kernel, bias, implementation, **kwargs):
    """``locally_connected`` under jit with the configuration's arguments."""
    return _apply_all(config, x, kernel, bias, (implementation,), **kwargs)[implementation]


def _apply_all(config: Config, x, kernel, bias, implementations, **kwargs) -> dict:
    """Several implementations in one jit (one compilation: the suite runs on 2 cores)."""

    def fn(x, kernel, bias):
        return [
            locally_connected(
                x, kernel, bias, implementation=impl, precision=HIGHEST, **config.layer_kwargs(), **kwargs
            )
            for impl in implementations
        ]

    return dict(zip(implementations, jax.jit(fn)(x, kernel, bias)))


def test_sample_covers_every_feature():
    """The sample exercises each feature the suite promises (guards the sampler)."""
    configs = list(CONFIGS.values())

    def has(predicate):
        return any(predicate(c) for c in configs)

    for rank in (1, 2, 3):
        assert has(lambda c, r=rank: c.rank == r)
    for name in ("valid", "same", "causal"):
        assert has(lambda c, n=name: isinstance(c.padding, str) and c.padding.lower() == n)
    assert has(lambda c: isinstance(c.padding, str) and c.padding != c.padding.lower())
    assert has(lambda c: not isinstance(c.padding, str) and min(min(p) for p in c.padding) < 0)
    assert has(lambda c: not isinstance(c.padding, str) and max(max(p) for p in c.padding) > 0)
    assert has(lambda c: min(c.per_dimension(c.strides)) > 1 and min(c.per_dimension(c.dilation)) > 1)
    assert has(lambda c: c.rank > 1 and c.per_dimension(c.strides)[0] != c.per_dimension(c.strides)[1])
    assert has(lambda c: isinstance(c.strides, int)) and has(lambda c: not isinstance(c.strides, int))
    for fmt in ("channels_last", "channels_first"):
        assert has(lambda c, f=fmt: c.data_format == f)
    for n in (0, 1, 2):
        assert has(lambda c, n=n: len(c.batch_shape) == n)
    assert has(lambda c: c.use_bias) and has(lambda c: not c.use_bias)
    assert has(lambda c: max(c.kernel_size) > 1 and c.channels > 1 and c.filters > 1)
    # "same" with a stride that does not divide the size: padding is split unevenly.
    assert has(lambda c: isinstance(c.padding, str) and any(lo != hi for lo, hi in c.padding_pairs))


@pytest.mark.parametrize("seed", SEEDS, ids=_id)
def test_matches_float64_reference(seed):
    config = CONFIGS[seed]
    x, kernel, bias = config.arrays(seed)
    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    expected_shape = (
        (*config.batch_shape, *config.output_spatial, config.filters)
        if config.data_format == "channels_last"
        else (*config.batch_shape, config.filters, *config.output_spatial)
    )
    assert expected.shape == expected_shape
    for implementation, y in _apply_all(config, x, kernel, bias, EXPLICIT_IMPLEMENTATIONS).items():
        assert y.dtype == jnp.float32, implementation
        np.testing.assert_allclose(y, expected, **TOL, err_msg=implementation)


@pytest.mark.parametrize("seed", SEEDS[::7], ids=_id)
def test_shared_kernel_equals_lax_conv(seed):
    """A kernel broadcast to every position is an ordinary convolution (lax is the oracle)."""
    config = CONFIGS[seed]
    rng = np.random.default_rng(seed)
    x, _, _ = config.arrays(seed)
    conv_kernel = rng.normal(size=(*config.kernel_size, config.channels, config.filters)).astype(np.float32)
    shared_bias = rng.normal(size=(config.filters,)).astype(np.float32)
    kernel = np.broadcast_to(conv_kernel, config.kernel_shape)
    bias = np.broadcast_to(shared_bias, config.bias_shape) if config.use_bias else None

    # lax wants exactly one batch dimension; its "SAME"/"VALID" are used directly.
    x_lax = x.reshape(-1, *x.shape[len(config.batch_shape) :])
    if isinstance(config.padding, str) and config.padding.lower() in ("same", "valid"):
        lax_padding = config.padding.upper()
    else:  # causal or explicit
        first = 2 if config.data_format == "channels_first" else 1
        x_lax, lax_padding = _crop_negative_padding(x_lax, config.padding_pairs, first)
    spatial = "HWD"[: config.rank]
    lhs = "N" + spatial + "C" if config.data_format == "channels_last" else "NC" + spatial
    expected = lax.conv_general_dilated(
        x_lax,
        conv_kernel,
        window_strides=config.per_dimension(config.strides),
        padding=lax_padding,
        rhs_dilation=config.per_dimension(config.dilation),
        dimension_numbers=(lhs, spatial + "IO", lhs),
        precision=HIGHEST,
    )
    if config.use_bias:
        channel_axis = -1 if config.data_format == "channels_last" else 1
        expected = expected + jnp.expand_dims(
            shared_bias, [a for a in range(expected.ndim) if a != channel_axis % expected.ndim]
        )
    expected = np.asarray(expected).reshape(*config.batch_shape, *expected.shape[1:])
    for implementation, y in _apply_all(config, x, kernel, bias, EXPLICIT_IMPLEMENTATIONS).items():
        np.testing.assert_allclose(y, expected, **TOL, err_msg=implementation)


def _crop_negative_padding(x, pairs, first):
    """Applies the negative part of ``pairs`` as a crop; returns the non-negative rest.

    ``first`` is the axis of ``x``'s first spatial dimension. On CPU (jax 0.10.2)
    ``lax.conv_general_dilated`` returns garbage (values ~1e17, uninitialised
    memory) for some negative paddings with several channels, e.g. input (2, 8,
    3), kernel (3, 3, 2), padding [(-2, 2)], "NHC"/"HIO"/"NHC"; cropping first
    keeps lax (and ConvLocal, built on it) usable as oracles.
    """
    index = [slice(None)] * x.ndim
    for axis, (low, high) in enumerate(pairs):
        size = x.shape[first + axis]
        index[first + axis] = slice(max(-low, 0), size - max(-high, 0))
    return x[tuple(index)], tuple((max(low, 0), max(high, 0)) for low, high in pairs)


def _to_flax_kernel(kernel: np.ndarray, rank: int) -> np.ndarray:
    """Ours ``(*out, *window, C, F)`` -> ConvLocal's ``(*out, C * prod(window), F)``.

    ``lax.conv_general_dilated_local`` flattens each receptive field with the
    input channel slowest and the window offsets (row-major) fastest.
    """
    out_spatial = kernel.shape[:rank]
    moved = np.moveaxis(kernel, -2, rank)  # (*out, C, *window, F)
    return moved.reshape(*out_spatial, -1, kernel.shape[-1])


@pytest.mark.parametrize("seed", SEEDS[3::7], ids=_id)
def test_matches_flax_conv_local(seed):
    config = CONFIGS[seed]
    x, kernel, bias = config.arrays(seed)
    channels_first = config.data_format == "channels_first"
    batch = len(config.batch_shape)
    # ConvLocal is channels-last only: move the channels of a channels-first input.
    x_last = np.moveaxis(x, batch, -1) if channels_first else x
    if isinstance(config.padding, str):
        flax_padding = config.padding.upper()
    else:
        x_last, flax_padding = _crop_negative_padding(x_last, config.padding, batch)
    layer = nn.ConvLocal(
        features=config.filters,
        kernel_size=config.kernel_size,
        strides=config.strides,
        padding=flax_padding,
        kernel_dilation=config.dilation,
        use_bias=config.use_bias,
        precision=HIGHEST,
    )
    params = {"kernel": _to_flax_kernel(kernel, config.rank)}
    if config.use_bias:
        params["bias"] = bias
    expected = jax.jit(layer.apply)({"params": params}, x_last)
    if channels_first:
        expected = jnp.moveaxis(expected, -1, batch)
    # The other implementations agree with "patches" in test_matches_float64_reference.
    np.testing.assert_allclose(_apply(config, x, kernel, bias, "patches"), expected, **TOL)


def test_flax_kernel_mapping_is_not_trivially_symmetric():
    """The ConvLocal comparison can fail: a wrong flattening order gives other numbers."""
    config = dataclasses.replace(CONFIGS[1], use_bias=False)
    assert max(config.kernel_size) > 1 and config.channels > 1
    x, kernel, _ = config.arrays(1)
    layer = nn.ConvLocal(
        features=config.filters,
        kernel_size=config.kernel_size,
        strides=config.strides,
        padding=config.padding.upper() if isinstance(config.padding, str) else config.padding,
        kernel_dilation=config.dilation,
        use_bias=False,
        precision=HIGHEST,
    )
    out_spatial = kernel.shape[: config.rank]
    wrong = kernel.reshape(*out_spatial, -1, config.filters)  # window slowest, channels fastest
    batch = len(config.batch_shape)
    x_last = np.moveaxis(x, batch, -1) if config.data_format == "channels_first" else x
    apply = jax.jit(layer.apply)
    y_wrong = apply({"params": {"kernel": wrong}}, x_last)
    y_right = apply({"params": {"kernel": _to_flax_kernel(kernel, config.rank)}}, x_last)
    assert not np.allclose(y_wrong, y_right, **TOL)


@pytest.mark.parametrize("seed", [10], ids=_id)
def test_jit_matches_eager_and_reference(seed):
    config = CONFIGS[seed]
    x, kernel, bias = config.arrays(seed)
    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    jitted = _apply_all(config, x, kernel, bias, EXPLICIT_IMPLEMENTATIONS)
    for implementation in EXPLICIT_IMPLEMENTATIONS:
        eager = locally_connected(
            x, kernel, bias, implementation=implementation, precision=HIGHEST, **config.layer_kwargs()
        )
        np.testing.assert_allclose(eager, expected, **TOL, err_msg=implementation)
        np.testing.assert_allclose(
            jitted[implementation], eager, rtol=1e-6, atol=1e-6, err_msg=implementation
        )


def test_jit_with_static_arguments():
    config = CONFIGS[4]
    x, kernel, bias = config.arrays(4)
    fn = jax.jit(
        locally_connected,
        static_argnames=("strides", "padding", "dilation_rate", "data_format", "implementation", "precision"),
    )
    y = fn(x, kernel, bias, implementation="patches", precision=HIGHEST, **config.layer_kwargs())
    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    np.testing.assert_allclose(y, expected, **TOL)


# --- gradients -------------------------------------------------------------------

GRAD_CONFIGS = {
    "1d-causal-dilated": Config((7,), (3,), 1, 2, "causal", "channels_last", (2,), 2, 2, True),
    "2d-same-strided-dilated": Config(
        (5, 6), (2, 3), (2, 1), (1, 2), "same", "channels_first", (2,), 2, 2, True
    ),
    "3d-explicit-negative": Config(
        (4, 3, 4), (2, 1, 2), 1, (1, 1, 2), ((1, -1), (0, 1), (-1, 1)), "channels_last", (), 2, 1, True
    ),
}
# (config, implementation, order): every float64 implementation to first order
# on the richest geometry; second order where the derivative rules are
# hand-written ("patches"); kept few because each costs seconds on 2 cores.
# "native" computes in float32 only: tests/test_native.py checks its
# derivatives against these float64 ones.
GRAD_CASES = [
    *(
        ("2d-same-strided-dilated", impl, 1)
        for impl in EXPLICIT_IMPLEMENTATIONS
        if registry.get(impl).supports_dtype(np.float64)
    ),
    ("1d-causal-dilated", "patches", 2),
    ("3d-explicit-negative", "patches", 1),
]


@pytest.mark.parametrize("name, implementation, order", GRAD_CASES)
def test_check_grads_float64(name, implementation, order):
    """Forward and reverse derivatives w.r.t. x, kernel and bias against finite differences."""
    config = GRAD_CONFIGS[name]
    with jax.enable_x64(True):
        x, kernel, bias = (jnp.asarray(a, jnp.float64) for a in config.arrays(7, np.float64))
        fn = jax.jit(
            functools.partial(
                locally_connected, implementation=implementation, precision=HIGHEST, **config.layer_kwargs()
            )
        )
        assert fn(x, kernel, bias).dtype == jnp.float64
        check_grads(fn, (x, kernel, bias), order=order, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("batch_minor", [True, False], ids=["batch-minor", "batch-major"])
@pytest.mark.parametrize("name", ["2d-same-strided-dilated", "3d-explicit-negative"])
def test_patches_tangent_layouts_check_grads(name, batch_minor, monkeypatch):
    """Both layouts of the input tangent (CPU's and the accelerators') against finite differences.

    The layout is picked by backend, so each machine would test only its own:
    forced here, both run everywhere.
    """
    from flax_local._src import patches

    monkeypatch.setattr(patches, "TANGENT_BATCH_MINOR", batch_minor)
    config = GRAD_CONFIGS[name]
    with jax.enable_x64(True):
        x, kernel, bias = (jnp.asarray(a, jnp.float64) for a in config.arrays(8, np.float64))
        fn = jax.jit(
            functools.partial(
                locally_connected, implementation="patches", precision=HIGHEST, **config.layer_kwargs()
            )
        )
        check_grads(fn, (x, kernel, bias), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_patches_tangent_layout_follows_the_backend(monkeypatch):
    """None picks batch-minor on CPU only; the switch really changes the program."""
    from flax_local._src import patches

    config = GRAD_CONFIGS["2d-same-strided-dilated"]
    x, kernel, bias = (jnp.asarray(a) for a in config.arrays(8))
    fn = functools.partial(locally_connected, implementation="patches", **config.layer_kwargs())
    texts = {}
    for layout in (None, True, False):
        monkeypatch.setattr(patches, "TANGENT_BATCH_MINOR", layout)
        texts[layout] = jax.jit(jax.grad(lambda x: fn(x, kernel, bias).sum())).lower(x).as_text()
    assert texts[True] != texts[False]
    assert texts[None] == texts[jax.default_backend() == "cpu"]


@pytest.mark.parametrize("seed", [2, 9], ids=_id)
def test_implementations_give_the_same_gradients(seed):
    config = dataclasses.replace(CONFIGS[seed], use_bias=True)
    x, kernel, bias = config.arrays(seed)
    out_shape = reference_locally_connected(x, kernel, bias, **config.reference_kwargs()).shape
    cotangent = np.random.default_rng(seed).normal(size=out_shape).astype(np.float32)

    def loss(x, kernel, bias, implementation):
        y = locally_connected(
            x, kernel, bias, implementation=implementation, precision=HIGHEST, **config.layer_kwargs()
        )
        return jnp.sum(y * cotangent)

    def all_grads(x, kernel, bias):
        return {
            impl: jax.grad(loss, argnums=(0, 1, 2))(x, kernel, bias, impl)
            for impl in EXPLICIT_IMPLEMENTATIONS
        }

    grads = jax.jit(all_grads)(x, kernel, bias)
    # The bias enters linearly: its gradient is the cotangent summed over the batch.
    channels_first = config.data_format == "channels_first"
    cot = np.moveaxis(cotangent, len(config.batch_shape), -1) if channels_first else cotangent
    bias_grad = cot.reshape(-1, *config.bias_shape).sum(0)
    for impl, (gx, gk, gb) in grads.items():
        assert (gx.dtype, gk.dtype, gb.dtype) == (jnp.float32,) * 3
        np.testing.assert_allclose(gb, bias_grad, **TOL, err_msg=impl)
        np.testing.assert_allclose(gx, grads["patches"][0], **TOL, err_msg=impl)
        np.testing.assert_allclose(gk, grads["patches"][1], **TOL, err_msg=impl)
    # The kernel enters linearly too: <grad_kernel, kernel> = <cotangent, y without bias>.
    y0 = reference_locally_connected(x, kernel, None, **config.reference_kwargs())
    np.testing.assert_allclose(
        np.sum(np.asarray(grads["patches"][1], np.float64) * kernel), np.sum(y0 * cotangent), rtol=1e-4
    )
    np.testing.assert_allclose(
        np.sum(np.asarray(grads["patches"][0], np.float64) * x), np.sum(y0 * cotangent), rtol=1e-4
    )


# --- vmap ------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", EXPLICIT_IMPLEMENTATIONS)
def test_vmap_over_inputs(implementation):
    config = CONFIGS[17]  # channels_last
    x, kernel, bias = config.arrays(17)
    xs = np.random.default_rng(0).normal(size=(3, *x.shape)).astype(np.float32)
    fn = functools.partial(
        locally_connected, implementation=implementation, precision=HIGHEST, **config.layer_kwargs()
    )

    @jax.jit
    def mapped(xs, xs_axis1, kernel, bias):
        return (
            jax.vmap(fn, in_axes=(0, None, None))(xs, kernel, bias),
            # A non-leading mapped axis, put back in the same place.
            jax.vmap(fn, in_axes=(1, None, None), out_axes=1)(xs_axis1, kernel, bias),
        )

    y, y_axis1 = mapped(xs, np.moveaxis(xs, 0, 1), kernel, bias)
    expected = np.stack(
        [reference_locally_connected(xi, kernel, bias, **config.reference_kwargs()) for xi in xs]
    )
    np.testing.assert_allclose(y, expected, **TOL)
    np.testing.assert_allclose(y_axis1, np.moveaxis(expected, 0, 1), **TOL)


@pytest.mark.parametrize("implementation", EXPLICIT_IMPLEMENTATIONS)
def test_vmap_over_parameter_sets(implementation):
    config = dataclasses.replace(CONFIGS[20], use_bias=True)  # channels_first
    x, _, _ = config.arrays(20)
    rng = np.random.default_rng(1)
    kernels = rng.normal(size=(3, *config.kernel_shape)).astype(np.float32)
    biases = rng.normal(size=(3, *config.bias_shape)).astype(np.float32)
    fn = functools.partial(
        locally_connected, implementation=implementation, precision=HIGHEST, **config.layer_kwargs()
    )
    xs = rng.normal(size=(3, *x.shape)).astype(np.float32)

    @jax.jit
    def mapped(x, xs, kernels, biases):
        # One input through a stack of parameter sets; and an ensemble, one input each.
        return jax.vmap(fn, in_axes=(None, 0, 0))(x, kernels, biases), jax.vmap(fn)(xs, kernels, biases)

    y, y_both = mapped(x, xs, kernels, biases)
    expected = np.stack(
        [reference_locally_connected(x, k, b, **config.reference_kwargs()) for k, b in zip(kernels, biases)]
    )
    np.testing.assert_allclose(y, expected, **TOL)
    expected_both = np.stack(
        [
            reference_locally_connected(xi, k, b, **config.reference_kwargs())
            for xi, k, b in zip(xs, kernels, biases)
        ]
    )
    np.testing.assert_allclose(y_both, expected_both, **TOL)


# --- dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [22], ids=_id)
def test_bfloat16(seed):
    """bfloat16 inputs and parameters: bfloat16 out, close to the exact result."""
    config = dataclasses.replace(CONFIGS[seed], use_bias=True)
    x, kernel, bias = (jnp.asarray(a, jnp.bfloat16) for a in config.arrays(seed))
    ys = _apply_all(config, x, kernel, bias, IMPLEMENTATIONS)
    expected = reference_locally_connected(
        np.asarray(x, np.float64),
        np.asarray(kernel, np.float64),
        np.asarray(bias, np.float64),
        **config.reference_kwargs(),
    )
    scale = np.abs(expected).max()
    for implementation, y in ys.items():
        assert y.dtype == jnp.bfloat16, implementation
        np.testing.assert_allclose(
            np.asarray(y, np.float64), expected, rtol=2e-2, atol=2e-2 * scale, err_msg=implementation
        )


# --- implementation choice -------------------------------------------------------


AUTO_CONFIGS = {
    # A window covering most of a small 1D input: little waste, "dense" on GPU and TPU.
    "wide-window-1d": Config((6,), (3,), 1, 1, "same", "channels_last", (2,), 3, 4, True),
    # A small window on a larger 2D input: mostly zeros, "patches".
    "small-window-2d": Config((10, 10), (2, 2), 1, 1, "valid", "channels_last", (2,), 2, 3, True),
    "3d": CONFIGS[5],
    "1d-causal": CONFIGS[9],
}


@pytest.mark.parametrize("name", list(AUTO_CONFIGS))
def test_auto_returns_the_same_numbers_as_patches(name):
    config = AUTO_CONFIGS[name]
    x, kernel, bias = config.arrays(11)
    chosen = choose_implementation(_geometry(config), config.channels, config.filters, jnp.float32)
    ys = _apply_all(config, x, kernel, bias, ("auto", "patches", chosen))
    np.testing.assert_allclose(ys["auto"], ys["patches"], **TOL)
    # ... and exactly the numbers of the implementation the cost model picks.
    np.testing.assert_array_equal(ys["auto"], ys[chosen])
    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    np.testing.assert_allclose(ys["auto"], expected, **TOL)


def test_auto_respects_max_matrix_bytes():
    """ "auto" must not pick an implementation that its own limit then rejects."""
    config = AUTO_CONFIGS["wide-window-1d"]  # "auto" picks "dense" here on TPU (see below)
    geometry = _geometry(config)
    args = (geometry, config.channels, config.filters, jnp.float32, "tpu")
    assert choose_implementation(*args) == "dense"
    assert choose_implementation(*args, max_dense_bytes=64) == "patches"
    x, kernel, bias = config.arrays(12)
    y = _apply(config, x, kernel, bias, "auto", max_matrix_bytes=64)
    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    np.testing.assert_allclose(y, expected, **TOL)


def _geometry(config: Config):
    return make_geometry(
        config.input_spatial,
        config.kernel_size,
        config.per_dimension(config.strides),
        config.padding_pairs,
        config.per_dimension(config.dilation),
    )


@pytest.mark.parametrize(
    "backend, native, expected",
    [("cpu", True, {"native"}), ("cpu", False, {"patches"}), ("tpu", True, {"dense", "patches"})],
)
def test_auto_configs_cover_every_choice(backend, native, expected):
    """Never "dense" on CPU (it spreads a NaN input over its example, for no speed there)."""
    chosen = set()
    for config in AUTO_CONFIGS.values():
        geometry = _geometry(config)
        chosen.add(
            choose_implementation(
                geometry, config.channels, config.filters, jnp.float32, backend, native=native
            )
        )
    assert chosen == expected


def test_auto_never_picks_native_off_cpu_or_for_float64():
    geometry = _geometry(AUTO_CONFIGS["small-window-2d"])
    for backend in ("gpu", "tpu"):
        assert choose_implementation(geometry, 2, 3, jnp.float32, backend, native=True) == "patches"
    assert choose_implementation(geometry, 2, 3, jnp.float64, "cpu", native=True) == "patches"
    assert choose_implementation(geometry, 2, 3, jnp.bfloat16, "cpu", native=True) == "native"


def test_implementation_aliases():
    """Keras's 1, 2, 3 and any capitalisation select the named implementations."""
    config = CONFIGS[8]
    x, kernel, bias = config.arrays(8)
    aliases = {**registry.keras_aliases(), "PaTcHeS": "patches", "DENSE": "dense"}
    assert registry.keras_aliases() == {1: "patches", 2: "dense", 3: "sparse"}  # Keras's meaning
    ys = _apply_all(config, x, kernel, bias, (*aliases, *EXPLICIT_IMPLEMENTATIONS))
    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    for alias, name in aliases.items():
        np.testing.assert_array_equal(ys[alias], ys[name], err_msg=repr(alias))
        np.testing.assert_allclose(ys[alias], expected, **TOL, err_msg=repr(alias))


# --- argument spellings ----------------------------------------------------------


def test_argument_spellings_are_equivalent():
    """Upper-case names, lists and numpy ints mean the same as the canonical form."""
    config = Config((7, 6), (2, 3), (2, 1), (1, 2), ((1, 0), (-1, 2)), "channels_first", (2,), 2, 3, True)
    x, kernel, bias = config.arrays(5)

    @jax.jit
    def both(x, kernel, bias):
        canonical = locally_connected(
            x, kernel, bias, strides=(2, 1), padding=((1, 0), (-1, 2)), dilation_rate=(1, 2),
            data_format="channels_first", implementation="patches", precision=HIGHEST,
        )  # fmt: skip
        respelled = locally_connected(
            x, kernel, bias, strides=[np.int64(2), 1], padding=[[np.int32(1), 0], [-1, 2]],
            dilation_rate=(np.int64(1), 2), data_format="CHANNELS_FIRST", implementation="patches",
            precision=HIGHEST,
        )  # fmt: skip
        return canonical, respelled

    canonical, respelled = both(x, kernel, bias)
    np.testing.assert_array_equal(canonical, respelled)
    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    np.testing.assert_allclose(canonical, expected, **TOL)


def test_default_precision_is_close_to_reference():
    config = CONFIGS[13]
    x, kernel, bias = config.arrays(13)

    @jax.jit
    def apply(x, kernel, bias):
        return [
            locally_connected(x, kernel, bias, implementation=impl, **config.layer_kwargs())
            for impl in EXPLICIT_IMPLEMENTATIONS
        ]

    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    scale = np.abs(expected).max()
    for implementation, y in zip(EXPLICIT_IMPLEMENTATIONS, apply(x, kernel, bias)):
        np.testing.assert_allclose(y, expected, rtol=1e-2, atol=1e-2 * scale, err_msg=implementation)


@pytest.mark.parametrize("implementation", EXPLICIT_IMPLEMENTATIONS)
def test_empty_batch(implementation):
    """A batch of size 0 gives an empty output of the right shape."""
    config = Config((7,), (3,), 1, 1, "valid", "channels_last", (0,), 3, 2, True)
    x, kernel, bias = config.arrays(0)
    y = _apply(config, x, kernel, bias, implementation)
    assert y.shape == (0, 5, 2)


@pytest.mark.parametrize("implementation", ["native", "patches", "sparse"])
def test_non_finite_input_reaches_only_the_windows_that_read_it(implementation):
    """Padding is zero whatever the input holds next to it.

    ``"patches"`` reads input row 0 for taps in the padding and then zeroes
    them, so a NaN there (the corner below) must not leak into windows that do
    not read it (as multiplying by a 0/1 mask would let it). ``"dense"``
    multiplies every input by its matrix's zeros and spreads it everywhere
    (documented).
    """
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    bad = {0: (0, 0), 1: (6, 3)}  # example -> non-finite pixel (a corner, an edge)
    x[0, 0, 0, :] = np.nan
    x[1, 6, 3, 1] = np.inf
    kernel = rng.standard_normal((7, 7, 3, 3, 3, 4)).astype(np.float32)

    def layer(x, kernel):
        return locally_connected(x, kernel, padding="same", dilation_rate=2, implementation=implementation)

    def reads(pixel):
        # k3, dilation 2, same: window (i, j) reads rows i-2, i, i+2 and the same columns.
        taps = np.arange(-2, 3, 2)
        out = np.zeros((7, 7), bool)
        for i, j in np.ndindex(7, 7):
            out[i, j] = pixel[0] - i in taps and pixel[1] - j in taps
        return out

    y = np.asarray(layer(x, kernel))
    assert not np.isfinite(y[0][reads(bad[0])]).any()
    for example in (0, 1):
        assert np.isfinite(y[example][~reads(bad[example])]).all()
    # The kernel gradient regathers the windows in the backward pass.
    d_kernel = jax.grad(lambda k: jnp.sum(layer(x[1:], k)))(kernel)
    assert np.isfinite(np.asarray(d_kernel)[~reads(bad[1])]).all()


# --- output_shape ----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS[::3], ids=_id)
def test_output_shape_matches_reference(seed):
    config = CONFIGS[seed]
    got = output_shape(
        config.input_spatial,
        config.kernel_size,
        strides=config.strides,
        padding=config.padding,
        dilation_rate=config.dilation,
    )
    assert got == config.output_spatial
    assert min(got) >= 1


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(
    "size, kernel_size, stride, dilation", [(9, 3, 2, 2), (10, 4, 3, 1), (5, 1, 4, 3), (8, 2, 1, 3)]
)
def test_output_shape_matches_lax(size, kernel_size, stride, dilation, padding):
    expected = jax.eval_shape(
        lambda x, k: lax.conv_general_dilated(x, k, (stride,), padding.upper(), rhs_dilation=(dilation,)),
        jax.ShapeDtypeStruct((1, 1, size), jnp.float32),
        jax.ShapeDtypeStruct((1, 1, kernel_size), jnp.float32),
    ).shape[2:]
    got = output_shape((size,), kernel_size, strides=stride, padding=padding, dilation_rate=dilation)
    assert got == expected


# --- max_matrix_bytes ------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["dense", "sparse"])
def test_max_matrix_bytes_exact_limit_is_allowed(implementation):
    config = CONFIGS[6]
    x, kernel, bias = config.arrays(6)
    if implementation == "dense":
        needed = (
            math.prod(config.input_spatial)
            * config.channels
            * math.prod(config.output_spatial)
            * config.filters
            * 4
        )
    else:  # per stored (tap, channel, filter): float32 value, 3 products per example, 2 indices twice
        taps = reference_taps(
            config.input_spatial, config.kernel_size, config.strides, config.padding_pairs, config.dilation
        )
        batch = max(math.prod(config.batch_shape), 1)
        needed = taps * config.channels * config.filters * (4 * (3 * batch + 1) + 16)
    kwargs = dict(precision=HIGHEST, **config.layer_kwargs())

    @jax.jit
    def apply(x, kernel, bias):
        return (
            locally_connected(
                x, kernel, bias, implementation=implementation, max_matrix_bytes=needed, **kwargs
            ),
            # "patches" builds no matrix: the limit does not apply to it.
            locally_connected(x, kernel, bias, implementation="patches", max_matrix_bytes=1, **kwargs),
        )

    expected = reference_locally_connected(x, kernel, bias, **config.reference_kwargs())
    for y in apply(x, kernel, bias):
        np.testing.assert_allclose(y, expected, **TOL)
    with pytest.raises(ValueError, match=rf"\({needed} bytes\).*max_matrix_bytes={needed - 1}\b"):
        jax.eval_shape(
            functools.partial(
                locally_connected, implementation=implementation, max_matrix_bytes=needed - 1, **kwargs
            ),
            x,
            kernel,
            bias,
        )
