"""``locally_connected_transpose``: the adjoint of ``locally_connected``, and Keras's transposed shapes.

The transposed layer maps ``y`` of the forward layer's output shape back to
its input shape with the same kernel: for every ``x`` and ``y``,
``<locally_connected(x, K), y> == <x, locally_connected_transpose(y, K,
spatial_shape=x_spatial)>``. Each implementation computes it as the input
gradient of its own forward pass, so it shares that pass's memory and speed
profile:

* ``"native"``: the fused input-gradient kernel, the transpose of the forward
  primitive; its derivatives are the forward and kernel-gradient kernels
  (``native.py``), so the three primitives stay closed under differentiation;
* ``"patches"``: the reverse-mode pass of its ``custom_jvp``, one product per
  position then a fold made of interior pads; differentiating that gives
  strided slices and products again (chosen over a scatter-add or a gathered
  fold: ``benchmarks/EXPERIMENTS.md``, "The patches transpose");
* ``"dense"`` and ``"sparse"``: the transposed matrix product.

``transpose_output_shape`` and ``transpose_geometry`` give the sizes of a
Keras-style transposed layer (``Conv2DTranspose``'s ``padding`` and
``output_padding``) and the forward geometry it is the transpose of.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from flax_local._src import arguments, registry
from flax_local._src import geometry as geometry_lib
from flax_local._src.auto import choose_implementation
from flax_local._src.dense import DEFAULT_MAX_MATRIX_BYTES
from flax_local._src.locally_connected import checked_entry, kernel_rank, split_operand
from flax_local._src.patches import apply_patches


def locally_connected_transpose(
    y: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    spatial_shape: arguments.IntOrSequence,
    strides: arguments.IntOrSequence = 1,
    padding: arguments.PaddingLike = "valid",
    dilation_rate: arguments.IntOrSequence = 1,
    data_format: str = "channels_last",
    implementation: str | int = "auto",
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """Applies the transpose of a locally-connected layer (an unshared-weight transposed convolution).

    It is the adjoint of ``locally_connected`` with the same kernel and
    geometry: ``x[..., i, c] = bias[i, c] + sum_{o, j, f} y[..., o, f] *
    kernel[o, j, c, f]`` over the output positions ``o`` and window offsets
    ``j`` whose tap ``o * strides + j * dilation_rate - pad_low`` is ``i``.
    The kernel keeps the forward layer's layout, so an encoder's kernel can be
    tied to a decoder without reshaping:

    * ``kernel``: ``(*y_spatial, *kernel_size, out_channels, y_channels)``,
      the kernel of the forward layer from ``spatial_shape`` to ``y``;
    * ``bias``: ``(*spatial_shape, out_channels)``.

    Args:
      y: input of shape ``(*batch, *y_spatial, y_channels)`` for
        ``"channels_last"`` or ``(*batch, y_channels, *y_spatial)`` for
        ``"channels_first"``, any number of leading batch dimensions.
      kernel: the weights, in the layout above.
      bias: optional bias, in the layout above.
      spatial_shape: the result's spatial shape: an input shape of the
        forward layer whose output has ``y``'s spatial shape (with strides
        several do; ``transpose_output_shape`` gives Keras's choice).
      strides: the forward layer's strides, as in ``locally_connected``.
      padding: the forward layer's padding (``"valid"``, ``"same"``,
        ``"causal"`` or ``(low, high)`` pairs), resolved for ``spatial_shape``.
      dilation_rate: the forward layer's dilation, as in ``locally_connected``.
      data_format: ``"channels_last"`` or ``"channels_first"``, for ``y`` and
        the result.
      implementation: ``"native"``, ``"patches"``, ``"dense"``, ``"sparse"``
        or ``"auto"`` (Keras's 1, 2, 3 alias the middle three); ``"auto"``
        picks what it would pick for the forward layer.
      precision: passed to the matrix products (``jax.lax.Precision``).

    Returns:
      ``(*batch, *spatial_shape, out_channels)`` for ``"channels_last"`` or
      ``(*batch, out_channels, *spatial_shape)`` for ``"channels_first"``.

    Raises:
      ValueError: at trace time, for any argument or shape that does not fit,
        e.g. a ``spatial_shape`` whose forward output is not ``y``'s.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_local.functional import locally_connected, locally_connected_transpose
      >>> kernel = jnp.ones((8, 8, 3, 3, 3, 16))          # 10x10x3 -> 8x8x16, 3x3 windows
      >>> y = locally_connected(jnp.ones((4, 10, 10, 3)), kernel)
      >>> y.shape
      (4, 8, 8, 16)
      >>> locally_connected_transpose(y, kernel, spatial_shape=(10, 10)).shape  # the same kernel back
      (4, 10, 10, 3)
    """
    kernel = jnp.asarray(kernel)
    y = jnp.asarray(y)
    rank, kernel_size = kernel_rank(kernel, "(*y_spatial, *kernel_size, out_channels, y_channels)")
    _, strides_t, padding_v, dilation_t = geometry_lib.check_geometry_arguments(
        rank, kernel_size, strides, padding, dilation_rate
    )
    data_format = arguments.check_data_format(data_format)
    implementation = arguments.check_implementation(implementation)
    arguments.check_precision(precision)
    spatial = arguments.to_tuple(spatial_shape, rank, "spatial_shape")
    batch_shape, y_channels, y_spatial = split_operand(y, "y", rank, data_format)
    channels_first = data_format == "channels_first"
    if y_channels != kernel.shape[-1]:
        raise ValueError(
            f"y has {y_channels} channels ({data_format}, shape {y.shape}) but the kernel "
            f"expects y_channels={kernel.shape[-1]} (its last axis; kernel shape {kernel.shape})."
        )
    if tuple(kernel.shape[:rank]) != y_spatial:
        raise ValueError(
            f"kernel has {tuple(kernel.shape[:rank])} positions (kernel shape {kernel.shape}) "
            f"but y has spatial shape {y_spatial} (y shape {y.shape}); they must be equal."
        )
    geometry = _forward_geometry(spatial, y_spatial, kernel_size, strides_t, padding_v, dilation_t, padding)
    out_channels = kernel.shape[-2]
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (*spatial, out_channels):
            raise ValueError(
                f"bias must have shape (*spatial_shape, out_channels) = {(*spatial, out_channels)}, "
                f"got {bias.shape}."
            )
    dtype = jnp.result_type(y, kernel, *([] if bias is None else [bias]))
    arguments.check_floating_dtype(
        dtype, "locally_connected_transpose", y=y, kernel=kernel, **({} if bias is None else {"bias": bias})
    )
    y, kernel = y.astype(dtype), kernel.astype(dtype)
    if implementation == "auto":
        implementation = choose_implementation(geometry, out_channels, y_channels, dtype)
    y = y.reshape(math.prod(batch_shape), *y.shape[len(batch_shape) :])
    if channels_first:
        y = jnp.moveaxis(y, 1, -1)
    entry = checked_entry(
        implementation, geometry, out_channels, y_channels, dtype, y.shape[0], DEFAULT_MAX_MATRIX_BYTES
    )
    if entry.name == "patches":
        x = _transpose_patches(y, kernel, geometry, _hashable(precision))
    else:
        x = _transpose_linear(y, kernel, geometry, entry.apply, precision)
    if bias is not None:
        x = x + bias.astype(dtype)[None]
    if channels_first:
        x = jnp.moveaxis(x, -1, 1)
    return x.reshape(*batch_shape, *x.shape[1:])


def _forward_geometry(
    spatial: tuple[int, ...],
    y_spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    padding: str | tuple[tuple[int, int], ...],
    dilation: tuple[int, ...],
    padding_arg: arguments.PaddingLike,
) -> geometry_lib.Geometry:
    """The forward layer from ``spatial`` to ``y_spatial``, or a ValueError naming both."""
    arguments_text = f"strides={strides}, padding={padding_arg!r}, dilation_rate={dilation}"
    try:
        geometry = geometry_lib.make_geometry(spatial, kernel_size, strides, padding, dilation)
        produced = geometry.output_spatial
    except ValueError:
        geometry, produced = None, "no output"
    if geometry is None or produced != y_spatial:
        smallest = geometry_lib.smallest_input_for(y_spatial, kernel_size, strides, padding, dilation)
        hint = f" The smallest spatial_shape that does is {smallest}." if smallest is not None else ""
        raise ValueError(
            f"spatial_shape={spatial} does not fit y of spatial shape {y_spatial}: the forward layer "
            f"(kernel_size={kernel_size}, {arguments_text}) maps {spatial} to {produced}, "
            f"not to {y_spatial}.{hint}"
        )
    return geometry


def _transpose_linear(
    y: jax.Array,
    kernel: jax.Array,
    geometry: geometry_lib.Geometry,
    apply: registry.ApplyFn,
    precision: lax.PrecisionLike,
) -> jax.Array:
    """The transpose of an implementation's forward pass in its input (``jax.linear_transpose``).

    For ``"native"`` and ``"pallas"`` this is their input-gradient kernel, so
    the three primitives stay closed under differentiation.

    Args:
      y: ``(batch, *output_spatial, y_channels)``, channels-last.
      kernel: ``(*output_spatial, *kernel_size, out_channels, y_channels)``.
      geometry: the forward layer's geometry.
      apply: the implementation's ``apply`` (registry contract).
      precision: passed to the matrix products.

    Returns:
      ``(batch, *input_spatial, out_channels)`` in y's dtype.
    """
    x = jax.ShapeDtypeStruct((y.shape[0], *geometry.input_spatial, kernel.shape[-2]), y.dtype)
    (result,) = jax.linear_transpose(lambda x: apply(x, kernel, None, geometry, precision), x)(y)
    return result


@functools.partial(jax.jit, static_argnums=(2, 3))
def _transpose_patches(
    y: jax.Array, kernel: jax.Array, geometry: geometry_lib.Geometry, precision: lax.PrecisionLike
) -> jax.Array:
    """The reverse-mode pass of ``"patches"`` in its input (channels-last, one batch axis).

    ``jax.vjp`` runs the ``custom_jvp`` rule, whose transposed tangent is the
    fold of pads; ``jax.linear_transpose`` would transpose the primal's gather
    into a scatter-add instead. The forward pass it evaluates at zeros to get
    there is dead code, removed by XLA: hence the ``jit``.
    """
    zeros = jnp.zeros((y.shape[0], *geometry.input_spatial, kernel.shape[-2]), y.dtype)
    _, pullback = jax.vjp(lambda x: apply_patches(x, kernel, None, geometry, precision), zeros)
    (result,) = pullback(y)
    return result


def _hashable(precision: lax.PrecisionLike):
    """``precision`` as a static (hashable) jit argument."""
    if isinstance(precision, list):
        return tuple(precision)
    return precision


# ----------------------------------------------------------------------------
# Keras's transposed-layer sizes
# ----------------------------------------------------------------------------


def _transpose_arguments(input_spatial, kernel_size, strides, padding, output_padding, dilation_rate):
    """Validated ``(input_spatial, kernel_size, strides, padding, output_padding, dilation)``."""
    if not isinstance(input_spatial, Sequence) or not 1 <= len(input_spatial) <= 3:
        raise ValueError(
            f"input_spatial must be a sequence of 1, 2 or 3 sizes (no batch, no channels), "
            f"got {input_spatial!r}."
        )
    rank = len(input_spatial)
    sizes = arguments.to_tuple(tuple(input_spatial), rank, "input_spatial")
    kernel_t, strides_t, padding_v, dilation_t = geometry_lib.check_geometry_arguments(
        rank, kernel_size, strides, padding, dilation_rate
    )
    if padding_v not in ("valid", "same"):
        raise ValueError(
            f"padding of a transposed layer must be 'valid' or 'same' (as Keras's Conv*DTranspose), "
            f"got {padding!r}."
        )
    if output_padding is not None:
        output_padding = arguments.to_tuple(output_padding, rank, "output_padding", minimum=0)
        if any(p >= s for p, s in zip(output_padding, strides_t)):
            raise ValueError(
                f"output_padding must be smaller than strides in every dimension (as in Keras), "
                f"got output_padding={output_padding} with strides={strides_t}."
            )
    return sizes, kernel_t, strides_t, padding_v, output_padding, dilation_t


def transpose_output_shape(
    input_spatial: Sequence[int],
    kernel_size: arguments.IntOrSequence,
    *,
    strides: arguments.IntOrSequence = 1,
    padding: str = "valid",
    output_padding: arguments.IntOrSequence | None = None,
    dilation_rate: arguments.IntOrSequence = 1,
) -> tuple[int, ...]:
    """Spatial shape of a transposed layer's output, as Keras's ``Conv{1,2,3}DTranspose`` computes it.

    Per dimension, with ``n`` the input size, ``s`` the stride and ``k' =
    dilation * (kernel_size - 1) + 1`` the dilated window (tf_keras
    ``conv_utils.deconv_output_length``):

    * ``output_padding`` None: ``n * s + max(k' - s, 0)`` for ``"valid"``,
      ``n * s`` for ``"same"``;
    * else ``(n - 1) * s + k' - 2 * pad + output_padding``, with ``pad = 0``
      for ``"valid"`` and ``k' // 2`` for ``"same"``.

    Args:
      input_spatial: the transposed layer's input spatial shape.
      kernel_size: window size, an int or one per spatial dimension.
      strides: an int or one per spatial dimension.
      padding: ``"valid"`` or ``"same"`` (case-insensitive).
      output_padding: None, or an int or one per dimension, each in ``[0,
        stride)``: extra size on the high side.
      dilation_rate: an int or one per spatial dimension.

    Returns:
      The output spatial shape. ``transpose_geometry`` checks that the
      forward layer maps it back to ``input_spatial`` (not always so for
      ``"same"`` with an even dilated window and ``output_padding`` 0).

    Raises:
      ValueError: for a bad argument, e.g. ``output_padding >= strides``.

    Example:
      >>> from flax_local.functional import transpose_output_shape
      >>> transpose_output_shape((8, 8), 3, strides=2)
      (17, 17)
      >>> transpose_output_shape((8, 8), 3, strides=2, padding="same", output_padding=(0, 1))
      (15, 16)
    """
    sizes, kernel_t, strides_t, padding_v, output_padding, dilation_t = _transpose_arguments(
        input_spatial, kernel_size, strides, padding, output_padding, dilation_rate
    )
    shape = []
    for d, (n, k, s, dil) in enumerate(zip(sizes, kernel_t, strides_t, dilation_t)):
        window = dil * (k - 1) + 1
        if output_padding is None:
            shape.append(n * s + max(window - s, 0) if padding_v == "valid" else n * s)
        else:
            pad = 0 if padding_v == "valid" else window // 2
            shape.append((n - 1) * s + window - 2 * pad + output_padding[d])
    return tuple(shape)


def transpose_geometry(
    input_spatial: Sequence[int],
    kernel_size: arguments.IntOrSequence,
    *,
    strides: arguments.IntOrSequence = 1,
    padding: str = "valid",
    output_padding: arguments.IntOrSequence | None = None,
    dilation_rate: arguments.IntOrSequence = 1,
) -> geometry_lib.Geometry:
    """The forward layer that a Keras-style transposed layer is the transpose of.

    A transposed layer (as tf_keras's ``Conv2DTranspose``, i.e. the gradient
    of a convolution) maps ``input_spatial`` to ``transpose_output_shape(...)``;
    the forward layer goes back, from that shape with the same ``padding``
    resolved for it, to ``input_spatial``. Pass ``geometry.input_spatial`` as
    ``spatial_shape`` and ``geometry.padding`` (explicit pairs) as ``padding``
    to ``locally_connected_transpose``.

    Args:
      input_spatial: the transposed layer's input spatial shape.
      kernel_size: window size, an int or one per spatial dimension.
      strides: an int or one per spatial dimension.
      padding: ``"valid"`` or ``"same"`` (case-insensitive).
      output_padding: None, or an int or one per dimension, each in ``[0, stride)``.
      dilation_rate: an int or one per spatial dimension.

    Returns:
      The forward ``Geometry``: ``input_spatial`` is the transposed layer's
      output shape, ``output_spatial`` its input shape, ``padding`` resolved.

    Raises:
      ValueError: for a bad argument, ``output_padding >= strides``, or an
        ``output_padding`` whose output shape the forward layer does not map
        back to ``input_spatial`` (``"same"``, even dilated window, 0).

    Example:
      >>> from flax_local.functional import transpose_geometry
      >>> g = transpose_geometry((8, 8), 3, strides=2, padding="same", output_padding=1)
      >>> g.input_spatial, g.padding, g.output_spatial
      ((16, 16), ((0, 1), (0, 1)), (8, 8))
    """
    sizes, kernel_t, strides_t, padding_v, output_padding_t, dilation_t = _transpose_arguments(
        input_spatial, kernel_size, strides, padding, output_padding, dilation_rate
    )
    shape = transpose_output_shape(
        sizes,
        kernel_t,
        strides=strides_t,
        padding=padding_v,
        output_padding=output_padding_t,
        dilation_rate=dilation_t,
    )
    geometry = None
    if min(shape) >= 1:
        try:
            geometry = geometry_lib.make_geometry(shape, kernel_t, strides_t, padding_v, dilation_t)
        except ValueError:
            geometry = None
    if geometry is None or geometry.output_spatial != sizes:
        back = "no output" if geometry is None else geometry.output_spatial
        raise ValueError(
            f"output_padding={output_padding_t} does not fit input spatial shape {sizes} with "
            f"padding={padding!r}, kernel_size={kernel_t}, strides={strides_t}, "
            f"dilation_rate={dilation_t}: the output would have spatial shape {shape}, which the "
            f"forward layer maps to {back}, not back to {sizes}. With padding='same' and an even "
            f"dilated window, output_padding must be >= 1 (so strides >= 2)."
        )
    return geometry
