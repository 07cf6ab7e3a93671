"""Every behavioural check of the layers, run against both front ends (linen and NNX).

The two front ends bind one layer core; each test here takes ``front`` and
builds its layer through ``tests/layer_fronts.py``, so a check added for one
front end holds the other to it too.
"""

import dataclasses
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import flax_local
from flax_local import constraints
from flax_local._src.layers import core
from tests.layer_fronts import FRONTS, build, construct
from tests.reference import reference_locally_connected

# (rank, layer kwargs, input shape): strides, padding modes, dilation, both data formats, 1-3D.
CASES = {
    "1d_causal_dilated": (1, dict(filters=4, kernel_size=3, padding="causal", dilation_rate=2), (2, 9, 3)),
    "2d_same_strided_cf": (
        2,
        dict(filters=5, kernel_size=(3, 2), strides=(2, 1), padding="same", data_format="channels_first"),
        (3, 2, 7, 6),
    ),
    "2d_explicit_padding": (2, dict(filters=3, kernel_size=2, padding=((1, 0), (0, 2))), (2, 5, 4, 2)),
    "3d_no_bias": (3, dict(filters=3, kernel_size=2, use_bias=False), (2, 4, 3, 4, 2)),
    "nd_from_kernel_size": (None, dict(filters=2, kernel_size=(2, 3)), (2, 5, 6, 3)),
}


def _random(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference(params, x, rank, kwargs):
    return reference_locally_connected(
        x,
        params["kernel"],
        params.get("bias"),
        strides=kwargs.get("strides", 1),
        padding=kwargs.get("padding", "valid"),
        dilation=kwargs.get("dilation_rate", 1),
        data_format=kwargs.get("data_format", "channels_last"),
    )


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_reference(front, case):
    rank, kwargs, shape = CASES[case]
    built = build(front, rank, shape, implementation="patches", precision="highest", **kwargs)
    x = _random(shape)
    y = jax.jit(built.apply)(built.params, x)
    np.testing.assert_allclose(y, _reference(built.params, x, rank, kwargs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_fronts_make_the_same_parameters_and_numbers(case):
    rank, kwargs, shape = CASES[case]
    kwargs = dict(kwargs, activation="tanh", kernel_regularizer="l1_l2", activity_regularizer="l2")
    linen, nnx_ = (build(front, rank, shape, implementation="patches", **kwargs) for front in FRONTS)
    assert jax.tree.map(jnp.shape, linen.params) == jax.tree.map(jnp.shape, nnx_.params)
    x = _random(shape)
    np.testing.assert_allclose(linen.apply(linen.params, x), nnx_.apply(linen.params, x), rtol=1e-6)
    np.testing.assert_allclose(linen.penalty(linen.params, x), nnx_.penalty(linen.params, x), rtol=1e-6)


@pytest.mark.parametrize("front", FRONTS)
def test_initializers_draw_each_position_with_conv_fans(front):
    built = build(front, 2, (1, 12, 12, 5), filters=7, kernel_size=3)
    kernel = np.asarray(built.params["kernel"])  # (10, 10, 3, 3, 5, 7)
    limit = math.sqrt(6 / (9 * 5 + 9 * 7))  # glorot_uniform of one (3, 3, 5, 7) conv kernel
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.95 * limit
    assert not np.allclose(kernel[0, 0], kernel[0, 1])  # a fresh draw per position


@pytest.mark.parametrize("front", FRONTS)
def test_wrong_input_size_names_both_shapes(front):
    built = build(front, 2, (1, 9, 9, 3), filters=4, kernel_size=3, strides=2)
    with pytest.raises(
        ValueError, match=r"spatial shape \(11, 9\).*kernel has shape \(4, 4, 3, 3, 3, 4\).*\(9, 9\)"
    ):
        built.apply(built.params, jnp.zeros((1, 11, 9, 3)))
    with pytest.raises(ValueError, match=r"with 2 channels.*with 3 channels"):
        built.apply(built.params, jnp.zeros((1, 9, 9, 2)))
    with pytest.raises(ValueError, match=r"needs inputs of rank >= 3.*got inputs of shape \(9, 9\)"):
        built.apply(built.params, jnp.zeros((9, 9)))


# Every argument error is raised when the layer is constructed, in both front ends.
BAD_ARGUMENTS = [  # issue 24's argument items are in test_reliability_layers.py
    (dict(filters=0), r"filters must be a positive int, got 0"),
    (dict(kernel_size=0), r"kernel_size must be >= 1 in every dimension, got \(0,\)"),
    (dict(kernel_size=(3, 3)), r"kernel_size must have 1 entries"),
    (dict(strides=-1), r"strides must be >= 1 in every dimension, got \(-1,\)"),
    (dict(dilation_rate=(1, 2)), r"dilation_rate must have 1 entries.*\(1, 2\)"),
    (dict(padding="full"), r"padding must be one of .*'full'"),
    (dict(data_format="NHWC"), r"data_format must be one of .*'NHWC'"),
    (dict(implementation=4), r"implementation must be one of .*4"),
    (dict(activation="relu7"), r"activation must be .*'relu7'"),
    (dict(kernel_initializer="glorot"), r"kernel_initializer must be a callable or one of"),
    (dict(kernel_regularizer="l3"), r"kernel_regularizer must be None"),
    (dict(kernel_constraint="max_nrom"), r"kernel_constraint must be .*'max_nrom'"),
    (dict(logical_partitioning=1), r"logical_partitioning must be True or False, got 1"),
    (dict(param_dtype=jnp.int32), r"param_dtype must be a floating dtype"),
    (dict(dtype="floaty"), r"dtype must be None or a floating dtype .*got 'floaty'"),
    (dict(max_matrix_bytes=0), r"max_matrix_bytes must be a positive int"),
]


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("kwargs, match", BAD_ARGUMENTS, ids=[str(k) for k, _ in BAD_ARGUMENTS])
def test_bad_arguments_raise_at_construction(front, kwargs, match):
    config = dict(filters=2, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        construct(front, 1, (2, 8, 3), **config)


@pytest.mark.parametrize("front", FRONTS)
def test_rank_needs_a_sequence_kernel_size(front):
    with pytest.raises(ValueError, match=r"kernel_size as a sequence.*got 3"):
        construct(front, None, (2, 8, 8, 3), filters=2, kernel_size=3)


@pytest.mark.parametrize("front", FRONTS)
def test_radial_constraint_needs_a_square_odd_window(front):
    with pytest.raises(ValueError, match=r"radial_constraint .* kernel_size=\(2, 2\)"):
        construct(front, 2, (1, 6, 6, 2), filters=2, kernel_size=2, kernel_constraint="radial_constraint")
    built = build(front, 2, (1, 6, 6, 2), filters=2, kernel_size=3, kernel_constraint="radial_constraint")
    kernel = np.asarray(built.constrain(built.params)["kernel"])
    np.testing.assert_allclose(kernel[:, :, 0, 0], kernel[:, :, 2, 1], rtol=1e-6, atol=1e-7)
    assert not np.allclose(kernel[:, :, 0, 0], kernel[:, :, 1, 1])


@pytest.mark.parametrize("front", FRONTS)
def test_constraints_project_per_unit(front):
    built = build(front, 1, (2, 8, 3), filters=4, kernel_size=3, kernel_constraint=constraints.max_norm(0.5))
    params = jax.tree.map(lambda p: 3 * p, built.params)
    kernel = np.asarray(built.constrain(params)["kernel"])
    norms = np.sqrt((kernel**2).sum(axis=(1, 2)))  # per (position, filter)
    np.testing.assert_allclose(norms, 0.5, rtol=1e-4)


_LINEN_PARTITIONING = {
    "with_partitioning": nn.with_partitioning,
    "with_logical_partitioning": nn.with_logical_partitioning,
}


@pytest.mark.parametrize("wrapper", sorted(_LINEN_PARTITIONING))
def test_linen_partitioning_initializers(wrapper):
    box = _LINEN_PARTITIONING[wrapper]
    kernel_names, bias_names = ("model", None, None, None), ("model", None)
    kwargs = dict(filters=4, kernel_size=3, kernel_initializer="he_uniform", bias_initializer="random_normal")
    x = jnp.zeros((2, 10, 3))
    plain = flax_local.LocallyConnected1D(**kwargs).init(jax.random.key(0), x)["params"]
    kwargs["kernel_initializer"] = box(flax_local.initializers.get("he_uniform"), kernel_names)
    kwargs["bias_initializer"] = box(flax_local.initializers.get("random_normal"), bias_names)
    boxed = flax_local.LocallyConnected1D(**kwargs).init(jax.random.key(0), x)["params"]
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["kernel"]) == kernel_names and tuple(specs["bias"]) == bias_names
    # The same numbers as without the box: drawn per position, with the fans of one conv kernel.
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(nn.unbox(boxed)[name], plain[name])


def test_nnx_partitioning_initializers():
    kwargs = dict(kernel_initializer="he_uniform", bias_initializer="random_normal", input_shape=(10,))
    plain = flax_local.nnx.LocallyConnected1D(3, 4, 3, rngs=nnx.Rngs(0), **kwargs)
    kwargs["kernel_initializer"] = nnx.with_partitioning(
        flax_local.initializers.get("he_uniform"), ("model", None, None, None)
    )
    kwargs["bias_initializer"] = nnx.with_partitioning(
        flax_local.initializers.get("random_normal"), ("model", None)
    )
    # nnx.with_partitioning shards at creation (flax's eager sharding), which needs a mesh.
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        boxed = flax_local.nnx.LocallyConnected1D(3, 4, 3, rngs=nnx.Rngs(0), **kwargs)
    specs = nnx.get_partition_spec(nnx.state(boxed, nnx.Param))
    assert tuple(specs["kernel"].get_value()) == ("model", None, None, None)
    assert tuple(specs["bias"].get_value()) == ("model", None)
    np.testing.assert_array_equal(boxed.kernel[...], plain.kernel[...])
    np.testing.assert_array_equal(boxed.bias[...], plain.bias[...])


@pytest.mark.parametrize("front", FRONTS)
def test_logical_partitioning_names_the_axes(front):
    layer = construct(front, 2, (2, 6, 6, 3), filters=4, kernel_size=3, logical_partitioning=True)
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    rules = flax_local.sharding.logical_axis_rules()
    if front == "linen":
        abstract = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((2, 6, 6, 3)))
        shardings = flax_local.sharding.variable_shardings(mesh, abstract, rules)["params"]
    else:
        shardings = flax_local.sharding.nnx_shardings(mesh, layer, rules)
    assert tuple(shardings["kernel"].spec) == ("model", None, None, None, None, None)
    assert tuple(shardings["bias"].spec) == ("model", None, None)


@pytest.mark.parametrize("front", FRONTS)
def test_runs_under_an_explicit_mesh(front):
    built = build(front, 2, (2, 6, 6, 3), filters=4, kernel_size=3, implementation="patches")
    x = _random((2, 6, 6, 3))
    expected = built.apply(built.params, x)
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        got = jax.jit(built.apply)(built.params, x)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_submodules_are_lazy_attributes():
    code = (
        "import sys, json, flax_local\n"
        "before = sorted(m for m in ('h5py', 'tensorflow', 'flax_local.keras', 'flax_local.nnx', "
        "'flax_local.sharding') if m in sys.modules)\n"
        "names = [flax_local.nnx.__name__, flax_local.sharding.__name__, flax_local.keras.__name__]\n"
        "print(json.dumps([before, names, 'tensorflow' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    before, names, tensorflow = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == []
    assert names == ["flax_local.nnx", "flax_local.sharding", "flax_local.keras"]
    assert not tensorflow
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flax_local.nope  # noqa: B018


# A layer family plugs into the core as a LocalOp subclass plus two thin front-end subclasses;
# this toy family (the ordinary layer, output scaled by a validated option) checks that hook set.
class _ScaledOp(core.LocalOp):
    def validate(self, config):
        scale = config.option("scale")
        if not isinstance(scale, float) or scale <= 0:
            raise ValueError(f"scale must be a positive float, got {scale!r}.")
        return config

    def compute(self, config, inputs, kernel, bias):
        return config.option("scale") * super().compute(config, inputs, kernel, bias)


class _ScaledLinen(flax_local.LocallyConnected1D):
    op = _ScaledOp()
    scale: float = 2.0

    def _layer_options(self):
        return (("scale", self.scale),)


class _ScaledNnx(flax_local.nnx.LocallyConnected1D):
    op = _ScaledOp()

    def __init__(self, *args, scale=2.0, **kwargs):
        self.scale = scale
        super().__init__(*args, **kwargs)

    def _layer_options(self):
        return (("scale", self.scale),)


def test_a_layer_family_plugs_into_the_core():
    x = _random((2, 8, 3))
    plain = build("linen", 1, (2, 8, 3), filters=4, kernel_size=3)
    linen = _ScaledLinen(4, 3)
    y_linen = linen.apply({"params": plain.params}, x)
    layer = _ScaledNnx(3, 4, 3, input_shape=(8,), rngs=nnx.Rngs(0))
    nnx.update(layer, nnx.State(plain.params))
    np.testing.assert_allclose(y_linen, 2 * plain.apply(plain.params, x), rtol=1e-6)
    np.testing.assert_allclose(layer(x), y_linen, rtol=1e-6)
    with pytest.raises(ValueError, match="scale must be a positive float, got -1.0"):
        _ScaledLinen(4, 3, scale=-1.0)
    with pytest.raises(ValueError, match="scale must be a positive float, got -1.0"):
        _ScaledNnx(3, 4, 3, input_shape=(8,), scale=-1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="takes no argument"):
        core.configure(**{**dataclasses.asdict(plain.layer.config), "options": (("scale", 1.0),)})


@pytest.mark.parametrize("front", FRONTS)
def test_logical_partitioning_and_a_partitioned_initializer_conflict(front):
    box = nn.with_partitioning if front == "linen" else nnx.with_partitioning
    init = box(flax_local.initializers.get("zeros"), ("model", None, None, None))
    with pytest.raises(ValueError, match="pass one or the other"):
        build(
            front, 1, (2, 8, 3), filters=4, kernel_size=3, kernel_initializer=init, logical_partitioning=True
        )
