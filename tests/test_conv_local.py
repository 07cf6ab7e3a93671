"""from_conv_local: a converted flax.linen.ConvLocal computes ConvLocal's outputs.

ConvLocal is the oracle: it runs jax.lax.conv_general_dilated_local on its own
kernel layout, so a converted layer that matches it on random inputs and random
weights has read every weight from the right place.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import flax_local

CASES = [
    # (input spatial, kernel_size, strides, padding, kernel_dilation)
    ((11,), (3,), 1, "VALID", 1),
    ((12,), (4,), 2, "SAME", 1),
    ((10,), (3,), 1, "CAUSAL", 2),
    ((13,), (2,), 3, [(2, 1)], 1),
    ((9, 8), (3, 3), 1, "VALID", 1),
    ((9, 8), (3, 2), (2, 1), "SAME", 1),
    ((10, 9), (3, 3), 1, "SAME", (2, 1)),
    ((8, 7), (2, 3), 2, ((1, 0), (2, 2)), 1),
    ((8, 7), (3, 3), 1, 1, 1),  # an int padding: 1 on both sides
    ((9,), 3, 1, 2, 1),  # an int kernel_size means rank 1 in ConvLocal
    ((6, 5, 7), (3, 2, 3), 1, "VALID", 1),
    ((6, 5, 7), (2, 2, 3), (2, 1, 2), "SAME", (1, 2, 1)),
    ((4, 5, 4, 5), (2, 3, 2, 2), 1, "VALID", 1),  # rank 4: the N-D LocallyConnected
]


def _random_variables(variables, key):
    """ConvLocal's variables with every leaf random (its bias starts at zero)."""
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    )


@pytest.mark.parametrize("spatial, kernel_size, strides, padding, dilation", CASES)
def test_matches_conv_local(spatial, kernel_size, strides, padding, dilation):
    seed = len(spatial) * 100 + CASES.index((spatial, kernel_size, strides, padding, dilation))
    keys = jax.random.split(jax.random.key(seed), 3)
    conv = nn.ConvLocal(5, kernel_size, strides=strides, padding=padding, kernel_dilation=dilation)
    x = jax.random.normal(keys[0], (3, *spatial, 2))
    conv_variables = _random_variables(conv.init(keys[1], x), keys[2])
    expected = conv.apply(conv_variables, x)

    layer, variables = flax_local.from_conv_local(conv, conv_variables, implementation="patches")
    rank = len(spatial)
    expected_class = {1: "LocallyConnected1D", 2: "LocallyConnected2D", 3: "LocallyConnected3D"}
    assert type(layer).__name__ == expected_class.get(rank, "LocallyConnected")
    assert variables["params"]["bias"].shape == conv_variables["params"]["bias"].shape
    window = (kernel_size,) if isinstance(kernel_size, int) else kernel_size
    assert variables["params"]["kernel"].shape[rank : 2 * rank] == window
    np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-4, atol=1e-4)


def test_native_and_no_bias_and_mask():
    # The default implementation (native on CPU), use_bias=False, and a mask multiplied into the kernel.
    conv = nn.ConvLocal(4, (3, 3), use_bias=False, padding="SAME")
    x = jax.random.normal(jax.random.key(0), (2, 6, 7, 3))
    shape = conv.init(jax.random.key(1), x)["params"]["kernel"].shape
    mask = (jax.random.uniform(jax.random.key(2), shape) > 0.5).astype(jnp.float32)
    conv = nn.ConvLocal(4, (3, 3), use_bias=False, padding="SAME", mask=mask)
    conv_variables = _random_variables(conv.init(jax.random.key(1), x), jax.random.key(3))
    layer, variables = flax_local.from_conv_local(conv, conv_variables)
    assert set(variables["params"]) == {"kernel"} and not layer.use_bias
    np.testing.assert_allclose(layer.apply(variables, x), conv.apply(conv_variables, x), rtol=1e-4, atol=1e-4)


def test_layout_is_channel_major_patches():
    # One weight set to 1: ConvLocal's patch index c * prod(k) + flat window offset.
    kernel = np.zeros((2, 2, 3 * 2 * 4, 1), np.float32)
    kernel[1, 0, 1 * 6 + 1 * 2 + 0, 0] = 1.0  # channel 1, window offset (1, 0)
    converted = np.asarray(flax_local.conv_local_kernel(kernel, (3, 2)))
    assert converted.shape == (2, 2, 3, 2, 4, 1)
    assert np.argwhere(converted).tolist() == [[1, 0, 1, 0, 1, 0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(padding="CIRCULAR"), "zeros only.*CIRCULAR.*wrap"),
        (dict(padding="REFLECT"), "zeros only.*REFLECT"),
        (dict(input_dilation=2), "input_dilation=2"),
    ],
)
def test_unsupported_settings_raise(kwargs, match):
    conv = nn.ConvLocal(2, (3, 3), **kwargs)
    kernel = jnp.zeros((4, 4, 18, 2))
    with pytest.raises(ValueError, match=match):
        flax_local.from_conv_local(conv, {"params": {"kernel": kernel, "bias": jnp.zeros((4, 4, 2))}})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="needs a flax.linen.ConvLocal module, got Conv"):
        flax_local.from_conv_local(nn.Conv(2, (3, 3)), {"params": {}})
    with pytest.raises(ValueError, match="needs the ConvLocal's variables"):
        flax_local.from_conv_local(nn.ConvLocal(2, (3, 3)), {"kernel": jnp.zeros((4, 4, 18, 2))})
    with pytest.raises(ValueError, match=r"prod\(kernel_size\) = 9, got shape \(4, 4, 10, 2\)"):
        flax_local.conv_local_kernel(jnp.zeros((4, 4, 10, 2)), (3, 3))
    with pytest.raises(ValueError, match="2 output spatial dimensions"):
        flax_local.conv_local_kernel(jnp.zeros((4, 18, 2)), (3, 3))
