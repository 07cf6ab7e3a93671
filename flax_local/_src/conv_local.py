"""Converting ``flax.linen.ConvLocal`` modules and parameters to flax_local layers.

``ConvLocal`` stores its kernel as ``(*output_spatial, prod(kernel_size) * C, F)``
with each position's patch flattened channel-major, ``(C, *kernel_size)``, as
``jax.lax.conv_general_dilated_local`` reads it. flax_local stores each
position's block as a conv kernel, ``(*output_spatial, *kernel_size, C, F)``.
The bias layout, ``(*output_spatial, F)``, is the same in both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_local._src.layers import linen

_BY_RANK = {1: linen.LocallyConnected1D, 2: linen.LocallyConnected2D, 3: linen.LocallyConnected3D}


def conv_local_kernel(kernel: jax.Array, kernel_size: Sequence[int]) -> jax.Array:
    """Reorders a ``flax.linen.ConvLocal`` kernel into flax_local's layout.

    Args:
      kernel: a ``ConvLocal`` kernel of shape ``(*output_spatial,
        prod(kernel_size) * in_channels, filters)``.
      kernel_size: the ``ConvLocal``'s window, one int per spatial dimension.

    Returns:
      The same weights as ``(*output_spatial, *kernel_size, in_channels,
      filters)``, the kernel of a ``flax_local.LocallyConnected`` layer.

    Raises:
      ValueError: if ``kernel``'s rank or patch size does not fit ``kernel_size``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local import conv_local_kernel
      >>> kernel = jnp.zeros((6, 6, 3 * 3 * 2, 4))  # ConvLocal, 3x3 window, 2 channels
      >>> conv_local_kernel(kernel, (3, 3)).shape
      (6, 6, 3, 3, 2, 4)
    """
    kernel_size = tuple(int(k) for k in kernel_size)
    rank = len(kernel_size)
    if rank == 0 or min(kernel_size) < 1:
        raise ValueError(f"conv_local_kernel needs kernel_size of positive ints, got {kernel_size!r}.")
    kernel = jnp.asarray(kernel)
    window = math.prod(kernel_size)
    if kernel.ndim != rank + 2 or kernel.shape[-2] % window:
        raise ValueError(
            f"conv_local_kernel needs a ConvLocal kernel of shape (*output_spatial, prod(kernel_size) * "
            f"in_channels, filters) with {rank} output spatial dimensions and a patch axis divisible by "
            f"prod(kernel_size) = {window}, got shape {kernel.shape} for kernel_size={kernel_size}."
        )
    out_spatial, channels, filters = kernel.shape[:rank], kernel.shape[-2] // window, kernel.shape[-1]
    kernel = kernel.reshape(*out_spatial, channels, *kernel_size, filters)
    return jnp.moveaxis(kernel, rank, 2 * rank)


def _tuple(value: Any, rank: int, name: str) -> tuple[int, ...]:
    if value is None:
        value = 1
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(value)
    if len(value) != rank:
        raise ValueError(f"from_conv_local needs {rank} values for ConvLocal.{name}, got {value!r}.")
    return value


def _padding(padding: Any, rank: int) -> Any:
    padding = nn.linear.canonicalize_padding(padding, rank)
    if isinstance(padding, str):
        if padding in ("CIRCULAR", "REFLECT"):
            raise ValueError(
                f"from_conv_local: flax_local pads with zeros only, got ConvLocal padding={padding!r}. Pad "
                f"the input yourself (jnp.pad with mode={'wrap' if padding == 'CIRCULAR' else 'reflect'!r} "
                "and ConvLocal's pad widths) and convert a ConvLocal with padding='VALID'."
            )
        return padding.lower()  # "same", "valid", "causal" mean the same in both
    return tuple((int(low), int(high)) for low, high in padding)


def from_conv_local(
    module: nn.ConvLocal, variables: Mapping[str, Any], **overrides: Any
) -> tuple[linen.LocallyConnected, dict[str, Any]]:
    """Converts a ``flax.linen.ConvLocal`` and its variables into a flax_local layer.

    The returned layer computes the same outputs as ``module.apply(variables,
    x)`` on the same inputs (up to float rounding): ``features``,
    ``kernel_size``, ``strides``, ``padding`` (``"SAME"``, ``"VALID"``,
    ``"CAUSAL"`` or explicit pairs), ``kernel_dilation``, ``use_bias``,
    ``dtype``, ``param_dtype`` and ``precision`` carry over, and a ``mask`` is
    multiplied into the kernel. Ranks 1-3 give ``LocallyConnected1D/2D/3D``,
    other ranks the N-D ``LocallyConnected``. The initializers do not carry
    over: re-initializing the new layer uses flax_local's per-position fans.

    Args:
      module: the ``flax.linen.ConvLocal`` to convert.
      variables: its variables, ``{"params": {"kernel": ..., "bias": ...}}``
        (as ``module.init`` returns them; boxed partitioning metadata is
        removed).
      **overrides: other arguments of the flax_local layer, e.g.
        ``implementation="patches"`` or ``activation="relu"``.

    Returns:
      ``(layer, variables)``: a ``flax_local.LocallyConnected*`` module and its
      ``{"params": {"kernel", "bias"}}`` in flax_local's layout.

    Raises:
      ValueError: if ``module`` is not a ``ConvLocal``, uses what flax_local
        has no equivalent for (``CIRCULAR`` or ``REFLECT`` padding,
        ``input_dilation`` other than 1, ``feature_group_count`` other than
        1), or if ``variables`` do not hold its parameters.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from flax import linen as nn
      >>> import flax_local
      >>> conv = nn.ConvLocal(features=4, kernel_size=(3, 3), padding="SAME")
      >>> x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
      >>> conv_variables = conv.init(jax.random.key(1), x)
      >>> layer, variables = flax_local.from_conv_local(conv, conv_variables)
      >>> type(layer).__name__, variables["params"]["kernel"].shape
      ('LocallyConnected2D', (8, 8, 3, 3, 3, 4))
      >>> np.testing.assert_allclose(layer.apply(variables, x), conv.apply(conv_variables, x),
      ...                            rtol=1e-5, atol=1e-5)
    """
    if not isinstance(module, nn.ConvLocal):
        raise ValueError(f"from_conv_local needs a flax.linen.ConvLocal module, got {type(module).__name__}.")
    ks = module.kernel_size
    kernel_size = (ks,) if isinstance(ks, int) else tuple(int(k) for k in ks)  # as ConvLocal reads it
    rank = len(kernel_size)
    if _tuple(module.input_dilation, rank, "input_dilation") != (1,) * rank:
        raise ValueError(
            f"from_conv_local: flax_local has no input dilation, got ConvLocal "
            f"input_dilation={module.input_dilation!r} (expected 1)."
        )
    if module.feature_group_count != 1:
        raise ValueError(
            f"from_conv_local: ConvLocal feature_group_count={module.feature_group_count!r} is not "
            "supported (expected 1, the only value ConvLocal itself runs)."
        )
    params = nn.unbox(variables).get("params") if isinstance(variables, Mapping) else None
    if not isinstance(params, Mapping) or "kernel" not in params:
        raise ValueError(
            "from_conv_local needs the ConvLocal's variables, {'params': {'kernel': ..., 'bias': ...}}, got "
            f"{jax.tree_util.tree_map(jnp.shape, variables)!r}."
        )
    kernel = jnp.asarray(params["kernel"])
    if module.mask is not None:
        kernel = kernel * module.mask
    new_params = {"kernel": conv_local_kernel(kernel, kernel_size)}
    if module.use_bias:
        if "bias" not in params:
            raise ValueError(
                "from_conv_local: the ConvLocal has use_bias=True but its params hold no 'bias'."
            )
        new_params["bias"] = jnp.asarray(params["bias"])
    arguments = dict(
        filters=module.features,
        kernel_size=kernel_size,
        strides=_tuple(module.strides, rank, "strides"),
        padding=_padding(module.padding, rank),
        dilation_rate=_tuple(module.kernel_dilation, rank, "kernel_dilation"),
        use_bias=module.use_bias,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        precision=module.precision,
    )
    arguments.update(overrides)
    layer_class = _BY_RANK.get(rank, linen.LocallyConnected)
    return layer_class(**arguments), {"params": new_params}
