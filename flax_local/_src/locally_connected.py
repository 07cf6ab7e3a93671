"""``locally_connected``: the pure function every layer calls."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from flax_local._src import arguments, data_parallel, registry
from flax_local._src import geometry as geometry_lib
from flax_local._src.auto import choose_implementation
from flax_local._src.dense import DEFAULT_MAX_MATRIX_BYTES, check_size


def locally_connected(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: arguments.IntOrSequence = 1,
    padding: arguments.PaddingLike = "valid",
    dilation_rate: arguments.IntOrSequence = 1,
    data_format: str = "channels_last",
    implementation: str | int = "auto",
    precision: lax.PrecisionLike = None,
    max_matrix_bytes: int | None = None,
) -> jax.Array:
    """Applies a locally-connected layer: a convolution with unshared weights.

    Output position ``o`` (a tuple of spatial indices) is

    ``y[..., o, f] = bias[o, f] + sum_{j, c} x_padded[..., o * strides + j *
    dilation_rate, c] * kernel[o, j, c, f]``

    where ``j`` runs over the window offsets. Parameter layout, the same for
    every ``data_format`` and implementation:

    * ``kernel``: ``(*output_spatial, *kernel_size, in_channels, filters)``; in
      2D, ``kernel[i, j]`` is an ordinary HWIO conv kernel for position (i, j).
    * ``bias``: ``(*output_spatial, filters)``.

    The spatial rank ``n`` is read from the kernel (``kernel.ndim == 2 * n +
    2``), and so is ``kernel_size``.

    Args:
      x: input of shape ``(*batch, *spatial, C)`` for ``"channels_last"`` or
        ``(*batch, C, *spatial)`` for ``"channels_first"``, with any number of
        leading batch dimensions (including none).
      kernel: the weights, in the layout above.
      bias: optional bias, in the layout above.
      strides: step between windows: an int or one int per spatial dimension.
      padding: ``"valid"``; ``"same"`` (TF/lax meaning: output size
        ``ceil(size / stride)``, total padding split ``low = total // 2``);
        ``"causal"`` (1D only: ``dilation * (k - 1)`` zeros on the left); or a
        sequence of ``(low, high)`` int pairs, one per spatial dimension
        (negative values crop). Strings are case-insensitive.
      dilation_rate: spacing between window taps: an int or one per dimension.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      implementation: ``"auto"`` or a name in the registry
        (``flax_local._src.registry``): ``"native"``, ``"pallas"``,
        ``"patches"``, ``"dense"``, ``"sparse"`` (Keras's ``1``, ``2``, ``3``
        are aliases of ``"patches"``, ``"dense"``, ``"sparse"``). All give the
        same numbers on finite inputs, and exactly zero for taps that read
        padding; the documentation's "Choosing an implementation" page says
        when each is fastest. ``"native"`` (fused C++ kernels, CPU, float32
        arithmetic) is what ``"auto"`` picks on a CPU; ``"pallas"`` (fused GPU
        kernels; Pallas interpret mode elsewhere, slow) is only used when asked
        for. A NaN or ``inf`` input reaches only
        the outputs whose windows read it, except under ``"dense"``, where it
        makes every output of its example NaN (``"auto"`` picks ``"dense"``
        only for small layers on GPU and TPU).
      precision: passed to the matrix products (``jax.lax.Precision``);
        ``"native"`` always multiplies in full float32.
      max_matrix_bytes: the most bytes ``"dense"`` or ``"sparse"`` may
        allocate for their matrix (for ``"sparse"``, a training step's peak:
        values, int32 indices and the ``(batch, entries)`` products) before raising
        (default ``DEFAULT_MAX_MATRIX_BYTES``, 1 GiB).

    Returns:
      ``(*batch, *output_spatial, filters)`` for ``"channels_last"`` or
      ``(*batch, filters, *output_spatial)`` for ``"channels_first"``.

    Raises:
      ValueError: at trace time, for any argument or shape that does not fit,
        non-floating operands (bool, integer), or an input with more than
        ``2**31 - 1`` spatial positions (the implementations index in int32).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local.functional import locally_connected
      >>> x = jnp.ones((4, 10, 10, 3))                    # NHWC
      >>> kernel = jnp.ones((8, 8, 3, 3, 3, 16))          # 8x8 positions, 3x3 window
      >>> locally_connected(x, kernel).shape
      (4, 8, 8, 16)
    """
    kernel = jnp.asarray(kernel)
    x = jnp.asarray(x)
    rank, kernel_size = kernel_rank(kernel, "(*output_spatial, *kernel_size, in_channels, filters)")
    _, strides_t, padding_v, dilation_t = geometry_lib.check_geometry_arguments(
        rank, kernel_size, strides, padding, dilation_rate
    )
    data_format = arguments.check_data_format(data_format)
    implementation = arguments.check_implementation(implementation)
    arguments.check_precision(precision)
    if max_matrix_bytes is not None:
        arguments.check_positive(max_matrix_bytes, "max_matrix_bytes")
    batch_shape, channels, spatial = split_operand(x, "x", rank, data_format)
    channels_first = data_format == "channels_first"
    if channels != kernel.shape[-2]:
        raise ValueError(
            f"x has {channels} channels ({data_format}, shape {x.shape}) but the kernel "
            f"expects in_channels={kernel.shape[-2]} (kernel shape {kernel.shape})."
        )
    geometry = geometry_lib.make_geometry(tuple(spatial), kernel_size, strides_t, padding_v, dilation_t)
    filters = kernel.shape[-1]
    if tuple(kernel.shape[:rank]) != geometry.output_spatial:
        raise ValueError(
            f"kernel has {tuple(kernel.shape[:rank])} output positions (kernel shape "
            f"{kernel.shape}) but x of spatial shape {tuple(spatial)} gives "
            f"{geometry.output_spatial} with strides={strides_t}, padding={padding!r}, "
            f"dilation_rate={dilation_t}."
        )
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (*geometry.output_spatial, filters):
            raise ValueError(
                f"bias must have shape (*output_spatial, filters) = "
                f"{(*geometry.output_spatial, filters)}, got {bias.shape}."
            )
    dtype = jnp.result_type(x, kernel, *([] if bias is None else [bias]))
    arguments.check_floating_dtype(dtype, x=x, kernel=kernel, **({} if bias is None else {"bias": bias}))
    geometry_lib.check_index_range(geometry)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    bias = None if bias is None else bias.astype(dtype)

    # Batch-only sharding on an Explicit mesh: each device computes its share (data_parallel).
    compute = functools.partial(
        locally_connected,
        strides=strides_t,
        padding=padding_v,
        dilation_rate=dilation_t,
        data_format=data_format,
        implementation=implementation,
        precision=precision,
        max_matrix_bytes=max_matrix_bytes,
    )
    y = data_parallel.run_data_parallel(compute, x, kernel, bias, rank=rank)
    if y is not None:
        return y

    limit = DEFAULT_MAX_MATRIX_BYTES if max_matrix_bytes is None else max_matrix_bytes
    if implementation == "auto":
        # Never picks a "dense" matrix that the caller's own limit would reject.
        implementation = choose_implementation(geometry, channels, filters, dtype, max_dense_bytes=limit)
    batch = math.prod(batch_shape)
    entry = checked_entry(implementation, geometry, channels, filters, dtype, batch, limit)
    x = x.reshape(batch, *x.shape[len(batch_shape) :])
    if channels_first:
        x = jnp.moveaxis(x, 1, -1)
    y = entry.apply(x, kernel, bias, geometry, precision)
    if channels_first:
        y = jnp.moveaxis(y, -1, 1)
    return y.reshape(*batch_shape, *y.shape[1:])


def kernel_rank(kernel: jax.Array, layout: str) -> tuple[int, tuple[int, ...]]:
    """The spatial rank and ``kernel_size`` of a kernel laid out as ``layout``, or a ValueError."""
    if kernel.ndim < 4 or kernel.ndim % 2:
        raise ValueError(
            f"kernel must have shape {layout}, i.e. rank 4, 6 or 8 for 1, 2 or 3 spatial "
            f"dimensions, got shape {kernel.shape}."
        )
    rank = (kernel.ndim - 2) // 2
    return rank, tuple(kernel.shape[rank : 2 * rank])


def split_operand(
    operand: jax.Array, name: str, rank: int, data_format: str
) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    """``(batch_shape, channels, spatial)`` of an operand in ``data_format``, or a ValueError."""
    if operand.ndim < rank + 1:
        raise ValueError(
            f"{name} must have rank >= {rank + 1} (optional batch dimensions, {rank} spatial "
            f"dimension(s) and channels) for a kernel of {rank} spatial dimension(s), "
            f"got shape {operand.shape}."
        )
    batch_shape = tuple(operand.shape[: operand.ndim - rank - 1])
    if data_format == "channels_first":
        return batch_shape, operand.shape[len(batch_shape)], tuple(operand.shape[len(batch_shape) + 1 :])
    return batch_shape, operand.shape[-1], tuple(operand.shape[len(batch_shape) : -1])


def checked_entry(
    implementation: str,
    geometry: geometry_lib.Geometry,
    channels: int,
    filters: int,
    dtype: jnp.dtype,
    batch: int,
    limit: int,
) -> registry.Implementation:
    """The registry entry of ``implementation``, once it is known to accept this layer.

    Raises:
      ValueError: for a dtype the entry does not take, or a structure larger than ``limit`` bytes.
    """
    entry = registry.get(implementation)
    if not entry.supports_dtype(dtype):
        raise ValueError(
            f"implementation={entry.name!r} accepts layers of dtype "
            f"{', '.join(str(d) for d in entry.dtypes or ())}, got {jnp.dtype(dtype)}; use "
            f"implementation='patches' for other dtypes."
        )
    if entry.matrix_bytes is not None:
        itemsize = jnp.dtype(dtype).itemsize
        check_size(entry.name, entry.matrix_bytes(geometry, channels, filters, itemsize, batch), limit)
    return entry


def geometry(
    input_spatial: tuple[int, ...],
    kernel_size: arguments.IntOrSequence,
    *,
    strides: arguments.IntOrSequence = 1,
    padding: arguments.PaddingLike = "valid",
    dilation_rate: arguments.IntOrSequence = 1,
) -> geometry_lib.Geometry:
    """Which input positions every output position reads, from static shapes.

    Args:
      input_spatial: the input's spatial shape (no batch, no channels).
      kernel_size: window size, an int or one per spatial dimension.
      strides: as in ``locally_connected``.
      padding: as in ``locally_connected``.
      dilation_rate: as in ``locally_connected``.

    Returns:
      A ``Geometry`` with the resolved ``(low, high)`` padding and the output
      spatial shape, as every implementation uses it.

    Raises:
      ValueError: for a bad argument or an input too small for the window.

    Example:
      >>> from flax_local.functional import geometry
      >>> g = geometry((10,), 3, padding="causal", dilation_rate=2)
      >>> g.padding, g.output_spatial
      (((4, 0),), (10,))
    """
    rank = len(input_spatial)
    ks, st, pad, dil = geometry_lib.check_geometry_arguments(
        rank, kernel_size, strides, padding, dilation_rate
    )
    return geometry_lib.make_geometry(tuple(input_spatial), ks, st, pad, dil)


def output_shape(
    input_spatial: tuple[int, ...],
    kernel_size: arguments.IntOrSequence,
    *,
    strides: arguments.IntOrSequence = 1,
    padding: arguments.PaddingLike = "valid",
    dilation_rate: arguments.IntOrSequence = 1,
) -> tuple[int, ...]:
    """Number of output positions per spatial dimension.

    Args:
      input_spatial: the input's spatial shape (no batch, no channels).
      kernel_size: window size, an int or one per spatial dimension.
      strides: as in ``locally_connected``.
      padding: as in ``locally_connected``.
      dilation_rate: as in ``locally_connected``.

    Returns:
      The output spatial shape: the leading axes of the kernel.

    Example:
      >>> from flax_local.functional import output_shape
      >>> output_shape((32, 32), 3, strides=2, padding="same")
      (16, 16)
    """
    return geometry(
        input_spatial, kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate
    ).output_spatial
