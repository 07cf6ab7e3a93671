"""Tests of the transposed layers ``LocallyConnected{1,2,3}DTranspose`` (linen and NNX).

Each behavioural test runs on both front ends. The numbers are checked
against an independent float64 reference: the transpose of the matrix of
``tests.reference.reference_locally_connected`` on the output shape that
tf_keras's ``deconv_output_length`` gives (written out again here), with
Keras's padding resolved for that shape, as ``Conv*DTranspose`` (the gradient
of a convolution) does.
"""

from __future__ import annotations

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
from flax import linen as nn
from flax import nnx

import flax_local
from flax_local import nnx as local_nnx
from flax_local.functional import locally_connected, locally_connected_transpose, transpose_geometry
from tests.reference import reference_locally_connected

FRONTS = ("linen", "nnx")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LINEN = {1: flax_local.LocallyConnected1DTranspose, 2: flax_local.LocallyConnected2DTranspose}
_LINEN[3] = flax_local.LocallyConnected3DTranspose
_NNX = {1: local_nnx.LocallyConnected1DTranspose, 2: local_nnx.LocallyConnected2DTranspose}
_NNX[3] = local_nnx.LocallyConnected3DTranspose


def _random(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _keras_length(n, k, s, padding, output_padding, d):
    """tf_keras ``conv_utils.deconv_output_length``."""
    k = k + (k - 1) * (d - 1)
    if output_padding is None:
        return n * s + max(k - s, 0) if padding == "valid" else n * s
    pad = 0 if padding == "valid" else k // 2
    return (n - 1) * s + k - 2 * pad + output_padding


def _per_dim(value, rank):
    return (value,) * rank if value is None or isinstance(value, int) else tuple(value)


def _keras_shape(spatial, kwargs):
    rank = len(spatial)
    k, s = _per_dim(kwargs["kernel_size"], rank), _per_dim(kwargs.get("strides", 1), rank)
    d, op = _per_dim(kwargs.get("dilation_rate", 1), rank), _per_dim(kwargs.get("output_padding"), rank)
    padding = kwargs.get("padding", "valid")
    return tuple(_keras_length(*args, padding, o, dd) for *args, o, dd in zip(spatial, k, s, op, d))


class Built:
    """A transposed layer on either front end, seen the same way."""

    def __init__(self, front, rank, x_shape, seed=0, **kwargs):
        channels_first = kwargs.get("data_format") == "channels_first"
        spatial = x_shape[-rank:] if channels_first else x_shape[-rank - 1 : -1]
        channels = x_shape[-rank - 1] if channels_first else x_shape[-1]
        self.front, self.spatial, self.channels = front, tuple(spatial), channels
        if front == "linen":
            self.layer = _LINEN[rank](**kwargs)
            self.variables = self.layer.init(jax.random.key(seed), jnp.zeros(x_shape))
            self.params = dict(nn.unbox(self.variables["params"]))
            return
        kwargs = dict(kwargs)
        filters, kernel_size = kwargs.pop("filters"), kwargs.pop("kernel_size")
        self.layer = _NNX[rank](
            channels, filters, kernel_size, input_shape=spatial, rngs=nnx.Rngs(seed), **kwargs
        )
        self.graphdef, self.state = nnx.split(self.layer)
        self.params = dict(nnx.to_pure_dict(nnx.state(self.layer, nnx.Param)))

    def module(self, params):
        copy = jax.tree.map(lambda v: v, self.state)
        nnx.replace_by_pure_dict(copy, {**nnx.to_pure_dict(copy), **params})
        return nnx.merge(self.graphdef, copy)

    def apply(self, params, x):
        if self.front == "linen":
            return self.layer.apply({"params": params}, x)
        return self.module(params)(x)

    def penalty(self, params, x):
        if self.front == "linen":
            _, state = self.layer.apply({"params": params}, x, mutable=["losses"])
            return flax_local.regularization_loss(state)
        module = self.module(params)
        module(x)
        return local_nnx.regularization_loss(module)

    def constrain(self, params, x):
        if self.front == "linen":
            tx = flax_local.constraints.enforce_constraints(self.layer, x)
            zeros = jax.tree.map(jnp.zeros_like, params)
            updates, _ = tx.update(zeros, tx.init(params), params)
            return jax.tree.map(lambda p, u: p + u, params, updates)
        module = self.module(params)
        local_nnx.apply_constraints(module)
        return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def reference_transpose(kernel, y, bias, out_spatial, *, strides, padding, dilation, data_format):
    """float64: the transpose of the reference forward's matrix from ``out_spatial`` to ``y``'s shape."""
    rank = len(out_spatial)
    channels = kernel.shape[-2]
    single = (*out_spatial, channels)
    size = math.prod(single)
    basis = np.eye(size).reshape(size, *single)
    matrix = reference_locally_connected(
        basis, kernel, None, strides=strides, padding=padding, dilation=dilation
    ).reshape(size, -1)
    y = np.asarray(y, np.float64)
    if data_format == "channels_first":
        y = np.moveaxis(y, -rank - 1, -1)
    batch = y.shape[: -rank - 1]
    x = (y.reshape(-1, matrix.shape[1]) @ matrix.T).reshape(*batch, *single)
    if bias is not None:
        x = x + np.asarray(bias, np.float64)
    if data_format == "channels_first":
        x = np.moveaxis(x, -1, -rank - 1)
    return x


# (rank, input shape, layer arguments): 1D/2D/3D, valid/same, strides, output_padding, dilation,
# windows smaller and larger than the stride, both data formats.
CASES = [
    (1, (2, 7, 3), dict(filters=4, kernel_size=3)),
    (1, (2, 5, 3), dict(filters=2, kernel_size=4, strides=3, output_padding=2)),
    (1, (6, 2), dict(filters=3, kernel_size=2, strides=3)),
    (1, (2, 6, 3), dict(filters=2, kernel_size=3, strides=2, padding="same", dilation_rate=2)),
    (2, (2, 4, 5, 3), dict(filters=2, kernel_size=3, strides=2, padding="same")),
    (2, (1, 4, 4, 2), dict(filters=3, kernel_size=(2, 3), strides=2, padding="same", output_padding=1)),
    (
        2,
        (2, 3, 5, 4),
        dict(filters=2, kernel_size=3, strides=(1, 2), dilation_rate=(2, 1), data_format="channels_first"),
    ),
    (2, (2, 3, 3, 2), dict(filters=2, kernel_size=3, strides=2, output_padding=(1, 0))),
    (3, (1, 2, 3, 2, 2), dict(filters=2, kernel_size=2, strides=2)),
    (
        3,
        (2, 3, 2, 2, 2),
        dict(filters=2, kernel_size=3, strides=(2, 1, 2), padding="same", output_padding=(1, 0, 0)),
    ),
]


def _case_id(case):
    rank, shape, kwargs = case
    return f"{rank}d-" + "-".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("filters",))


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_shapes_follow_keras_and_numbers_match_the_reference(front, case):
    rank, x_shape, kwargs = case
    built = Built(front, rank, x_shape, bias_initializer="random_normal", implementation="patches", **kwargs)
    out_spatial = _keras_shape(built.spatial, kwargs)
    k = _per_dim(kwargs["kernel_size"], rank)
    assert built.params["kernel"].shape == (*built.spatial, *k, kwargs["filters"], built.channels)
    assert built.params["bias"].shape == (*out_spatial, kwargs["filters"])
    x = _random(x_shape)
    y = built.apply(built.params, x)
    channels_first = kwargs.get("data_format") == "channels_first"
    batch = x_shape[: -rank - 1]
    expected_shape = (
        (*batch, kwargs["filters"], *out_spatial)
        if channels_first
        else (*batch, *out_spatial, kwargs["filters"])
    )
    assert y.shape == expected_shape
    if front == "nnx":
        assert built.layer.output_shape == out_spatial
    expected = reference_transpose(
        built.params["kernel"],
        x,
        built.params["bias"],
        out_spatial,
        strides=kwargs.get("strides", 1),
        padding=kwargs.get("padding", "valid"),
        dilation=kwargs.get("dilation_rate", 1),
        data_format=kwargs.get("data_format", "channels_last"),
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("front", FRONTS)
def test_every_implementation_is_the_functional_op_with_the_modules_params(front):
    kwargs = dict(filters=3, kernel_size=3, strides=2, padding="same", output_padding=1)
    x = _random((2, 4, 5, 2))
    geometry = transpose_geometry((4, 5), 3, strides=2, padding="same", output_padding=1)
    outputs = {}
    for impl in ("native", "patches", "dense", "sparse", "auto"):
        built = Built(front, 2, x.shape, bias_initializer="random_normal", implementation=impl, **kwargs)
        outputs[impl] = built.apply(built.params, x)
        functional = locally_connected_transpose(
            x,
            built.params["kernel"],
            built.params["bias"],
            spatial_shape=geometry.input_spatial,
            strides=2,
            padding=geometry.padding,
            implementation=impl,
        )
        np.testing.assert_allclose(outputs[impl], functional, rtol=1e-6, atol=1e-6)
    for impl, y in outputs.items():
        np.testing.assert_allclose(y, outputs["patches"], rtol=1e-4, atol=1e-4, err_msg=impl)


@pytest.mark.parametrize("front", FRONTS)
def test_jit_grad_and_vmap(front):
    built = Built(front, 1, (3, 6, 2), filters=2, kernel_size=3, strides=2, implementation="patches")
    x = _random((3, 6, 2))
    np.testing.assert_allclose(jax.jit(built.apply)(built.params, x), built.apply(built.params, x), rtol=1e-6)
    per_example = jax.vmap(built.apply, in_axes=(None, 0))(built.params, x[:, None])
    np.testing.assert_allclose(per_example[:, 0], built.apply(built.params, x), rtol=1e-6)

    target = _random((3, 13, 2), seed=5)

    def loss(params):
        return jnp.sum((built.apply(params, x) - target) ** 2)

    def functional_loss(params):
        y = locally_connected_transpose(
            x, params["kernel"], params["bias"], spatial_shape=(13,), strides=2, implementation="patches"
        )
        return jnp.sum((y - target) ** 2)

    grads, expected = jax.jit(jax.grad(loss))(built.params), jax.grad(functional_loss)(built.params)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-5, atol=1e-5)
        assert float(jnp.abs(grads[name]).max()) > 0


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize(
    ("initializer", "fan"),
    [("he_normal", "in"), ("lecun_uniform", "in"), ("glorot_uniform", "avg"), ("he_uniform", "in")],
)
def test_initializer_fans_are_those_of_a_conv_transpose_kernel(front, initializer, fan):
    """Keras's ``Conv2DTranspose`` kernel is ``(kH, kW, filters, in)``: fan_in = kH*kW*filters.

    Each position's block has that layout, so the per-position draw has those
    fans (not the forward layer's fan_in = kH*kW*in, nor fans counting positions).
    ``flax.linen.ConvTranspose(transpose_kernel=True)`` stores the same layout and
    gets the same fans; without it flax stores ``(kH, kW, in, filters)``.
    """
    filters, channels, window = 32, 3, 9
    built = Built(
        front, 2, (1, 8, 8, channels), filters=filters, kernel_size=3, kernel_initializer=initializer
    )
    kernel = np.asarray(built.params["kernel"], np.float64)
    fan_in, fan_out = window * filters, window * channels
    scale = 2.0 if initializer.startswith("he") else 1.0
    expected = scale / (fan_in if fan == "in" else (fan_in + fan_out) / 2)
    assert kernel.var() == pytest.approx(expected, rel=0.05)
    # Each position is drawn independently with the same fans.
    per_position = kernel.reshape(64, -1).var(axis=1)
    assert per_position.min() > 0.7 * expected and per_position.max() < 1.3 * expected
    # The same fans as flax's ConvTranspose kernel in Keras's layout, with the same initializer.
    flax_init = flax_local.initializers.get(initializer)
    conv = nn.ConvTranspose(filters, (3, 3), transpose_kernel=True, kernel_init=flax_init)
    flax_kernel = conv.init(jax.random.key(1), jnp.zeros((1, 40, 40, channels)))["params"]["kernel"]
    assert flax_kernel.shape == kernel.shape[2:]
    assert float(np.var(flax_kernel)) == pytest.approx(expected, rel=0.15)  # 864 draws


@pytest.mark.parametrize("front", FRONTS)
def test_regularizer_losses(front):
    built = Built(
        front,
        1,
        (2, 5, 3),
        filters=2,
        kernel_size=3,
        strides=2,
        bias_initializer="random_normal",
        kernel_regularizer="l2",
        bias_regularizer="l1",
        activity_regularizer="l1",
    )
    x = _random((2, 5, 3))
    y = np.asarray(built.apply(built.params, x), np.float64)
    kernel, bias = (np.asarray(built.params[n], np.float64) for n in ("kernel", "bias"))
    expected = 0.01 * (kernel**2).sum() + 0.01 * np.abs(bias).sum() + 0.01 * np.abs(y).sum() / 2
    np.testing.assert_allclose(built.penalty(built.params, x), expected, rtol=1e-5)


@pytest.mark.parametrize("front", FRONTS)
def test_kernel_constraints_act_per_input_position_and_filter(front):
    """A unit is (kernel position, filter): its window and input channels, ``kernel[p, ..., f, :]``."""
    built = Built(
        front,
        2,
        (1, 3, 4, 5),
        filters=2,
        kernel_size=(2, 3),
        strides=2,
        kernel_constraint="unit_norm",
        bias_constraint="non_neg",
        bias_initializer="random_normal",
    )
    x = _random((1, 3, 4, 5))
    params = jax.tree.map(lambda p: 3.0 * p, built.params)
    constrained = built.constrain(params, x)
    kernel = np.asarray(constrained["kernel"], np.float64)
    norms = np.sqrt((kernel**2).sum(axis=(2, 3, 5)))  # (3, 4, filters): one per unit
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    original = np.asarray(params["kernel"], np.float64)
    scale = np.sqrt((original**2).sum(axis=(2, 3, 5), keepdims=True))
    np.testing.assert_allclose(kernel, original / scale, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(constrained["bias"], np.maximum(params["bias"], 0))


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(strides=2, output_padding=2), r"output_padding smaller than strides.*output_padding=\(2, 2\)"),
        (
            dict(strides=2, output_padding=-1),
            r"output_padding must be >= 0 in every dimension, got \(-1, -1\)",
        ),
        (dict(strides=2, output_padding=(1, 1, 1)), r"output_padding must have 2 entries.*\(1, 1, 1\)"),
        (
            dict(strides=2, output_padding="1"),
            r"output_padding must be an int or a sequence of 2 ints, got '1'",
        ),
        (
            dict(kernel_size=2, strides=2, padding="same", output_padding=0),
            r"padding='same' and an even dilated window \(2, 2\) needs output_padding >= 1.*got "
            r"output_padding=\(0, 0\)",
        ),
        (dict(padding=((1, 1), (0, 0))), r"needs padding 'valid' or 'same'"),
        (dict(max_matrix_bytes=1024), r"takes no max_matrix_bytes.*1024"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(front, kwargs, match):
    arguments = {"filters": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        Built(front, 2, (1, 4, 4, 2), **arguments)


@pytest.mark.parametrize("front", FRONTS)
def test_causal_padding_is_rejected(front):
    with pytest.raises(
        ValueError, match=r"LocallyConnected1DTranspose needs padding 'valid' or 'same'.*'causal'"
    ):
        Built(front, 1, (1, 6, 2), filters=2, kernel_size=3, padding="causal")


@pytest.mark.parametrize("front", FRONTS)
def test_an_input_of_another_size_is_rejected(front):
    built = Built(front, 2, (1, 4, 4, 2), filters=3, kernel_size=3, strides=2)
    with pytest.raises(
        ValueError, match=r"spatial shape \(5, 4\).*made for inputs of spatial shape \(4, 4\)"
    ):
        built.apply(built.params, _random((1, 5, 4, 2)))
    with pytest.raises(
        ValueError, match=r"with 3 channels.*made for inputs of spatial shape \(4, 4\) with 2"
    ):
        built.apply(built.params, _random((1, 4, 4, 3)))


@pytest.mark.parametrize("front", FRONTS)
def test_a_tied_encoder_kernel_is_the_decoders_kernel(front):
    """``LocallyConnected2D`` 8x8x3 -> 3x3x5; the transpose back to 8x8x3 takes its kernel as it is."""
    x = _random((2, 8, 8, 3))
    encoder = flax_local.LocallyConnected2D(filters=5, kernel_size=3, strides=2, use_bias=False)
    kernel = encoder.init(jax.random.key(0), x)["params"]["kernel"]
    assert kernel.shape == (3, 3, 3, 3, 3, 5)
    z = encoder.apply({"params": {"kernel": kernel}}, x)
    decoder = Built(front, 2, z.shape, filters=3, kernel_size=3, strides=2, output_padding=1, use_bias=False)
    assert decoder.params["kernel"].shape == kernel.shape  # the same shape: tie by passing it
    x_back = decoder.apply({"kernel": kernel}, z)
    assert x_back.shape == x.shape
    np.testing.assert_allclose(
        x_back, locally_connected_transpose(z, kernel, spatial_shape=(8, 8), strides=2), rtol=1e-6
    )
    # The decoder is the encoder's adjoint: <enc(x), w> == <x, dec(w)>.
    w = _random(z.shape, seed=3)
    left = np.vdot(np.asarray(locally_connected(x, kernel, strides=2), np.float64), w)
    right = np.vdot(np.asarray(x, np.float64), np.asarray(decoder.apply({"kernel": kernel}, w), np.float64))
    assert left == pytest.approx(right, rel=1e-4)


@pytest.mark.parametrize("front", FRONTS)
def test_logical_partitioning_names_the_input_positions(front):
    built = Built(front, 2, (1, 4, 4, 2), filters=3, kernel_size=3, logical_partitioning=True)
    kernel_names = (
        "local_pos_0",
        "local_pos_1",
        "local_window_0",
        "local_window_1",
        "local_filters",
        "local_in",
    )
    bias_names = ("local_pos_0", "local_pos_1", "local_filters")
    if front == "linen":
        boxed = built.variables["params"]
        assert tuple(boxed["kernel"].names) == kernel_names
        assert tuple(boxed["bias"].names) == bias_names
    else:
        assert tuple(built.layer.kernel.out_sharding) == kernel_names
        assert tuple(built.layer.bias.out_sharding) == bias_names


_SHARDING_SCRIPT = textwrap.dedent(
    """
    import os, json
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from flax import linen as nn, nnx
    from flax_local import LocallyConnected2DTranspose, nnx as local_nnx
    from flax_local.sharding import logical_axis_rules, nnx_shardings, variable_shardings
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    x = np.random.default_rng(0).normal(size=(4, 8, 6, 3)).astype(np.float32)
    mesh = jax.make_mesh((1, 4), ("data", "model"))
    rules = logical_axis_rules()
    results = {}
    layer = LocallyConnected2DTranspose(filters=2, kernel_size=3, strides=2, padding="same",
                                        logical_partitioning=True,
                                        bias_initializer="random_normal", implementation="patches")
    variables = layer.init(jax.random.key(0), x)
    plain = layer.apply(nn.unbox(variables), x)
    shardings = variable_shardings(mesh, variables, rules)
    placed = jax.device_put(nn.unbox(variables), shardings)
    sharded = jax.jit(layer.apply)(placed, x)
    results["linen"] = dict(diff=float(np.abs(np.asarray(plain) - np.asarray(sharded)).max()),
                            spec=str(placed["params"]["kernel"].sharding.spec),
                            bias_spec=str(placed["params"]["bias"].sharding.spec))
    linen_plain = plain
    explicit = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(explicit):
        xs = jax.device_put(x, NamedSharding(explicit, P("data")))
        by_rows = jax.device_put(nn.unbox(variables), variable_shardings(explicit, variables, rules))
        out = jax.jit(layer.apply)(by_rows, xs)
        replicated = jax.device_put(nn.unbox(variables), NamedSharding(explicit, P()))
        out_dp = jax.jit(layer.apply)(replicated, xs)
    results["explicit_rows"] = dict(diff=float(np.abs(np.asarray(linen_plain) - np.asarray(out)).max()),
                                    spec=str(by_rows["params"]["kernel"].sharding.spec),
                                    bias_spec=str(by_rows["params"]["bias"].sharding.spec),
                                    out_spec=str(out.sharding.spec))
    results["explicit_batch_only"] = dict(
        diff=float(np.abs(np.asarray(linen_plain) - np.asarray(out_dp)).max()),
        out_spec=str(out_dp.sharding.spec))
    model = local_nnx.LocallyConnected2DTranspose(3, 2, 3, input_shape=(8, 6), strides=2, padding="same",
                                                  logical_partitioning=True, bias_initializer="random_normal",
                                                  implementation="patches", rngs=nnx.Rngs(0))
    plain = model(x)
    nnx.update(model, jax.device_put(nnx.state(model), nnx_shardings(mesh, model, rules)))
    sharded = nnx.jit(lambda m, x: m(x))(model, x)
    results["nnx"] = dict(diff=float(np.abs(np.asarray(plain) - np.asarray(sharded)).max()),
                          spec=str(model.kernel[...].sharding.spec),
                          bias_spec=str(model.bias[...].sharding.spec))
    print(json.dumps(results))
    """
)


def test_sharded_by_input_position_matches_unsharded():
    """Kernel sharded over its first (input) position axis on 4 CPU devices, by the logical rules.

    The bias's first axis (the output rows, also ``local_pos_0``) is sharded too; with
    ``padding="same"`` and stride 2 its size, 16, divides the mesh.
    """
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", _SHARDING_SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, record in results.items():
        assert record["diff"] < 1e-5, (name, record)
    for name in ("linen", "nnx", "explicit_rows"):
        assert results[name]["spec"].startswith("P('model',"), results  # 8 input rows over the devices
        assert results[name]["bias_spec"].startswith("P('model',"), results  # 16 output rows
    # On an Explicit mesh the output is typed as sharded by batch only, whether the kernel is sharded
    # by rows (auto_axes) or replicated (the per-device data-parallel path).
    assert results["explicit_rows"]["out_spec"].startswith("P('data',"), results
    assert results["explicit_batch_only"]["out_spec"].startswith("P('data',"), results


@pytest.mark.parametrize("front", FRONTS)
def test_activation_and_the_validated_output_padding(front):
    kwargs = dict(filters=2, kernel_size=3, strides=2, output_padding=[1], bias_initializer="random_normal")
    plain = Built(front, 1, (2, 5, 3), **kwargs)
    activated = Built(front, 1, (2, 5, 3), activation="tanh", **kwargs)
    x = _random((2, 5, 3))
    np.testing.assert_allclose(
        activated.apply(plain.params, x), np.tanh(plain.apply(plain.params, x)), rtol=1e-5, atol=1e-6
    )
    assert plain.apply(plain.params, x).shape == (2, 12, 2)  # (5 - 1) * 2 + 3 + 1
    assert plain.layer.config.option("output_padding") == (1,)
    if front == "nnx":
        assert plain.layer.output_padding == (1,)
