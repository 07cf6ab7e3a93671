"""Every bad argument of the functional core raises a ValueError at trace time.

Each case is run three ways: eagerly, under ``jax.jit`` (traced arrays) and
under ``jax.eval_shape`` (tracing only: nothing is compiled or run, so the
error cannot come from XLA). The ``match`` patterns require the argument's name
and the value received, so a message that loses either fails the test.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import numpy as np
import pytest

from flax_local._src import registry
from flax_local.functional import locally_connected, output_shape

RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


# A valid 2D layer: 8x8 input, 3 channels, 3x3 window, 6x6 positions, 4 filters.
X = _normal(2, 8, 8, 3)
KERNEL = _normal(6, 6, 3, 3, 3, 4)
BIAS = _normal(6, 6, 4)
# A valid 1D layer: 10 steps, 2 channels, window 3, 8 positions, 2 filters.
X1 = _normal(2, 10, 2)
KERNEL1 = _normal(8, 3, 2, 2)


def case(match, x=X, kernel=KERNEL, bias=BIAS, **kwargs):
    return (x, kernel, bias, kwargs, match)


CASES = {
    # --- shapes ---
    "x-rank-too-small": case(r"x must have rank >= 3 .*got shape \(8, 3\)", x=_normal(8, 3)),
    "x-rank-too-small-channels-first": case(
        r"x must have rank >= 3 .*got shape \(3, 8\)", x=_normal(3, 8), data_format="channels_first"
    ),
    "kernel-odd-rank": case(
        r"kernel must have shape .*got shape \(6, 3, 3, 4, 1\)", kernel=_normal(6, 3, 3, 4, 1)
    ),
    "kernel-rank-2": case(r"kernel must have shape .*got shape \(3, 4\)", kernel=_normal(3, 4), bias=None),
    "kernel-scalar": case(r"kernel must have shape .*got shape \(\)", kernel=np.float32(1.0), bias=None),
    "channels-mismatch": case(r"x has 2 channels .*in_channels=3", x=_normal(2, 8, 8, 2)),
    "channels-mismatch-channels-first": case(
        r"x has 2 channels \(channels_first, shape \(2, 2, 8, 8\)\).*in_channels=3",
        x=_normal(2, 2, 8, 8),
        data_format="channels_first",
    ),
    "channels-first-input-read-as-channels-last": case(
        r"x has 8 channels .*in_channels=3", x=_normal(2, 3, 8, 8)
    ),
    "kernel-positions-mismatch": case(
        r"kernel has \(5, 5\) output positions \(kernel shape \(5, 5, 3, 3, 3, 4\)\).*"
        r"spatial shape \(8, 8\) gives \(6, 6\)",
        kernel=_normal(5, 5, 3, 3, 3, 4),
        bias=None,
    ),
    "kernel-positions-mismatch-strided": case(
        r"kernel has \(6, 6\) output positions.*spatial shape \(8, 8\) gives \(3, 3\).*strides=\(2, 2\)",
        strides=2,
        bias=None,
    ),
    "kernel-positions-mismatch-same": case(
        r"kernel has \(6, 6\) output positions.*spatial shape \(8, 8\) gives \(8, 8\).*padding='same'",
        padding="same",
        bias=None,
    ),
    "bias-positions-only": case(r"bias must have shape .*\(6, 6, 4\), got \(6, 6\)", bias=_normal(6, 6)),
    "bias-filters-only": case(r"bias must have shape .*\(6, 6, 4\), got \(4,\)", bias=_normal(4)),
    "bias-wrong-filters": case(r"bias must have shape .*\(6, 6, 4\), got \(6, 6, 5\)", bias=_normal(6, 6, 5)),
    "bias-flat-positions": case(r"bias must have shape .*\(6, 6, 4\), got \(36, 4\)", bias=_normal(36, 4)),
    "input-smaller-than-window": case(
        r"input spatial shape \(2, 2\) is too small for kernel_size=\(3, 3\)",
        x=_normal(2, 2, 2, 3),
        kernel=_normal(1, 1, 3, 3, 3, 4),
        bias=None,
    ),
    "input-smaller-than-dilated-window": case(
        r"input spatial shape \(10,\) is too small for kernel_size=\(3,\) with dilation_rate=\(5,\)",
        x=X1,
        kernel=KERNEL1,
        bias=None,
        dilation_rate=5,
    ),
    "negative-padding-crops-everything": case(
        r"input spatial shape \(10,\) is too small .*padding=\(\(-4, -4\),\)",
        x=X1,
        kernel=KERNEL1,
        bias=None,
        padding=((-4, -4),),
    ),
    # --- padding ---
    "padding-unknown-name": case(r"padding must be one of .*got 'full'", padding="full"),
    "padding-none": case(r"padding must be .*got None", padding=None),
    "padding-int": case(r"padding must be .*got 1\b", padding=1),
    "padding-too-few-pairs": case(r"padding must be .*got \(\(1, 1\),\)", padding=((1, 1),)),
    "padding-too-many-pairs": case(
        r"padding must be .*got \(\(0, 0\), \(0, 0\), \(0, 0\)\)", padding=((0, 0), (0, 0), (0, 0))
    ),
    "padding-triple": case(r"padding must be .*got \(\(1, 1, 1\), \(0, 0\)\)", padding=((1, 1, 1), (0, 0))),
    "padding-float": case(r"padding must be .*got \(\(1\.5, 0\), \(0, 0\)\)", padding=((1.5, 0), (0, 0))),
    "causal-2d": case(r"padding='causal' is only defined for 1 spatial dimension.*has 2", padding="causal"),
    "causal-2d-upper-case": case(r"padding='causal'.*1 spatial dimension.*has 2", padding="CAUSAL"),
    "causal-3d": case(
        r"padding='causal'.*1 spatial dimension.*has 3",
        x=_normal(5, 5, 5, 1),
        kernel=_normal(5, 5, 5, 1, 1, 1, 1, 1),
        bias=None,
        padding="causal",
    ),
    # --- names ---
    "data-format-unknown": case(r"data_format must be one of .*got 'NHWC'", data_format="NHWC"),
    "data-format-none": case(r"data_format must be one of .*got None", data_format=None),
    "implementation-unknown": case(r"implementation must be one of .*got 'fast'", implementation="fast"),
    "implementation-zero": case(r"implementation must be one of .*got 0\b", implementation=0),
    "implementation-four": case(r"implementation must be one of .*got 4\b", implementation=4),
    "implementation-bool": case(r"implementation must be one of .*got True", implementation=True),
    "implementation-none": case(r"implementation must be one of .*got None", implementation=None),
    "precision-unknown": case(r"(?s)[Pp]recision.*got ultra", precision="ultra"),
    # --- strides and dilation ---
    "strides-zero": case(r"strides must be >= 1 in every dimension, got \(0, 0\)", strides=0),
    "strides-negative": case(r"strides must be >= 1 .*got \(1, -1\)", strides=(1, -1)),
    "dilation-zero": case(r"dilation_rate must be >= 1 .*got \(0, 0\)", dilation_rate=0),
    "dilation-negative": case(r"dilation_rate must be >= 1 .*got \(-2, 1\)", dilation_rate=(-2, 1)),
    "strides-too-long": case(r"strides must have 2 entries .*got \(1, 2, 3\)", strides=(1, 2, 3)),
    "strides-too-short": case(r"strides must have 2 entries .*got \(2,\)", strides=(2,)),
    "dilation-too-long": case(
        r"dilation_rate must have 2 entries .*got \(1, 1, 1\)", dilation_rate=[1, 1, 1]
    ),
    "strides-float": case(r"strides must be an int or a sequence of 2 ints, got 1\.5", strides=1.5),
    "strides-bool": case(r"strides must be an int .*got True", strides=True),
    "strides-string": case(r"strides must be an int .*got '2'", strides="2"),
    "dilation-float-entry": case(r"dilation_rate must be an int .*got \(1, 2\.0\)", dilation_rate=(1, 2.0)),
    # --- max_matrix_bytes of the wrong type (today a TypeError from a comparison) ---
    "max-matrix-bytes-string": case(
        r"max_matrix_bytes.*'1024'", implementation="dense", max_matrix_bytes="1024"
    ),
}


def _call(mode, x, kernel, bias, kwargs):
    fn = functools.partial(locally_connected, **kwargs)
    if mode == "eager":
        return fn(x, kernel, bias)
    if mode == "jit":
        return jax.jit(fn)(x, kernel, bias)
    return jax.eval_shape(fn, x, kernel, bias)


@pytest.mark.parametrize("mode", ["eager", "jit", "eval_shape"])
@pytest.mark.parametrize("name", list(CASES))
def test_bad_argument_raises_value_error(name, mode):
    x, kernel, bias, kwargs, match = CASES[name]
    with pytest.raises(ValueError, match=match):
        _call(mode, x, kernel, bias, kwargs)


@pytest.mark.parametrize(
    "name", ["padding-unknown-name", "strides-zero", "causal-2d", "input-smaller-than-window"]
)
def test_output_shape_raises_the_same_errors(name):
    x, kernel, _, kwargs, match = CASES[name]
    rank = (np.ndim(kernel) - 2) // 2
    with pytest.raises(ValueError, match=match):
        output_shape(x.shape[1 : rank + 1], kernel.shape[rank : 2 * rank], **kwargs)


def test_output_shape_rejects_wrong_kernel_size():
    with pytest.raises(ValueError, match=r"kernel_size must have 2 entries .*got \(3, 3, 3\)"):
        output_shape((8, 8), (3, 3, 3))
    with pytest.raises(ValueError, match=r"kernel_size must be >= 1 .*got \(0, 0\)"):
        output_shape((8, 8), 0)


def test_valid_baseline_does_not_raise():
    """The shared arrays are valid, so each case above fails for its own reason."""
    y = jax.jit(locally_connected)(X, KERNEL, BIAS)
    assert y.shape == (2, 6, 6, 4)
    expected_00 = np.einsum("bijc,ijcf->bf", X[:, :3, :3], KERNEL[0, 0]) + BIAS[0, 0]
    np.testing.assert_allclose(y[:, 0, 0], expected_00, rtol=1e-4, atol=1e-4)
    y1 = jax.jit(locally_connected)(X1, KERNEL1)
    expected_1 = np.einsum("bjc,jcf->bf", X1[:, 2:5], KERNEL1[2])
    np.testing.assert_allclose(y1[:, 2], expected_1, rtol=1e-4, atol=1e-4)


def _dense_bytes(input_spatial, channels, output_spatial, filters, itemsize=4):
    """The dense matrix maps every input element to every output element."""
    return math.prod(input_spatial) * channels * math.prod(output_spatial) * filters * itemsize


def _sparse_bytes_1d(size, kernel_size, positions, channels, filters, itemsize=4, batch=2):
    """Peak of "sparse" per stored entry (valid padding): its value, three products per
    example (a training step), and two int32 indices on the host and in the program."""
    return positions * kernel_size * channels * filters * (itemsize * (3 * batch + 1) + 16)


@pytest.mark.parametrize("mode", ["eager", "jit", "eval_shape"])
@pytest.mark.parametrize(
    "implementation",
    [entry.name for entry in registry.IMPLEMENTATIONS if entry.matrix_bytes is not None]
    + [alias for alias, name in registry.keras_aliases().items() if registry.get(name).matrix_bytes],
)
def test_max_matrix_bytes_too_small(implementation, mode):
    name = registry.get(implementation).name
    assert name in ("dense", "sparse"), "a new matrix-building implementation needs its expected size here"
    if name == "dense":
        needed = _dense_bytes((8, 8), 3, (6, 6), 4)
    else:  # positions * window * C * F * (value + 3 products per example of 2 + 2 int32 indices twice)
        needed = 36 * 9 * 3 * 4 * (4 * 7 + 16)
    match = rf"implementation='{name}' would build a .*MiB matrix \({needed} bytes\), over max_matrix_bytes=1000\b"
    kwargs = dict(implementation=implementation, max_matrix_bytes=1000)
    with pytest.raises(ValueError, match=match):
        _call(mode, X, KERNEL, BIAS, kwargs)


def test_max_matrix_bytes_message_reports_mebibytes():
    x, kernel = _normal(1, 64, 64, 2), np.zeros((62, 62, 3, 3, 2, 2), np.float32)
    needed = _dense_bytes((64, 64), 2, (62, 62), 2)
    mib = f"{needed / 2**20:.1f}"
    with pytest.raises(
        ValueError, match=rf"{re.escape(mib)} MiB matrix \({needed} bytes\).*max_matrix_bytes=1048576\b"
    ):
        jax.eval_shape(
            functools.partial(locally_connected, implementation="dense", max_matrix_bytes=2**20), x, kernel
        )
    sparse_needed = _sparse_bytes_1d(10, 3, 8, 2, 2)
    with pytest.raises(
        ValueError, match=rf"\({sparse_needed} bytes\), over max_matrix_bytes={sparse_needed - 1}\b"
    ):
        jax.eval_shape(
            functools.partial(locally_connected, implementation="sparse", max_matrix_bytes=sparse_needed - 1),
            X1,
            KERNEL1,
        )
