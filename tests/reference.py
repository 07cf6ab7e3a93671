"""A slow, independent float64 reference for locally-connected layers.

Written from the mathematical definition only; it imports nothing from
``flax_local`` so that it can check the library rather than repeat it.

Definition (channels-last, one spatial rank ``n``): output position ``o`` (an
``n``-tuple) and filter ``f`` of the result are

    y[..., o, f] = bias[o, f]
                   + sum_{j, c} x_pad[..., o * strides + j * dilation, c] * kernel[o, j, c, f]

where ``j`` runs over every window offset in ``kernel_size`` and ``x_pad`` is
``x`` with ``low`` zeros before and ``high`` zeros after each spatial dimension
(a negative amount crops instead).

Public helpers, reusable by any test file (``from tests.reference import ...``):

* ``reference_locally_connected(x, kernel, bias=None, strides=1,
  padding="valid", dilation=1, data_format="channels_last")`` -> float64
  ``np.ndarray``.
* ``resolve_padding(padding, input_spatial, kernel_size, strides, dilation)``
  -> tuple of ``(low, high)`` pairs.
* ``reference_output_spatial(input_spatial, kernel_size, strides, padding_pairs,
  dilation)`` -> tuple of output sizes (may contain values < 1).
* ``reference_taps(input_spatial, kernel_size, strides, padding_pairs,
  dilation)`` -> number of (position, offset) pairs that read a real input
  element (not padding).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "reference_locally_connected",
    "reference_output_spatial",
    "reference_taps",
    "resolve_padding",
]


def _per_dimension(value, rank):
    """An int repeated ``rank`` times, or a sequence of ``rank`` ints, as a tuple."""
    if np.ndim(value) == 0:
        return (int(value),) * rank
    value = tuple(int(v) for v in value)
    assert len(value) == rank, (value, rank)
    return value


def resolve_padding(padding, input_spatial, kernel_size, strides, dilation):
    """Explicit ``((low, high), ...)`` pairs for a padding name or pairs.

    Args:
      padding: ``"valid"``, ``"same"``, ``"causal"`` (any case) or a sequence
        of ``(low, high)`` pairs, returned unchanged (as a tuple of tuples).
      input_spatial: the input's spatial shape.
      kernel_size, strides, dilation: ints or one int per spatial dimension.

    ``"same"``: output size ``ceil(size / stride)``; the total padding needed
    for the last window to end inside the padded input, ``max((out - 1) *
    stride + dilation * (k - 1) + 1 - size, 0)``, is split ``low = total // 2``,
    ``high = total - low``. ``"causal"``: ``dilation * (k - 1)`` zeros before,
    none after (1D only).
    """
    rank = len(input_spatial)
    kernel_size = _per_dimension(kernel_size, rank)
    strides = _per_dimension(strides, rank)
    dilation = _per_dimension(dilation, rank)
    if not isinstance(padding, str):
        pairs = tuple((int(low), int(high)) for low, high in padding)
        assert len(pairs) == rank, (padding, rank)
        return pairs
    name = padding.lower()
    if name == "valid":
        return ((0, 0),) * rank
    if name == "causal":
        assert rank == 1, "causal padding is 1D only"
        return ((dilation[0] * (kernel_size[0] - 1), 0),)
    assert name == "same", padding
    pairs = []
    for size, k, s, d in zip(input_spatial, kernel_size, strides, dilation):
        out = math.ceil(size / s)
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def reference_output_spatial(input_spatial, kernel_size, strides, padding_pairs, dilation):
    """Number of windows per dimension: ``floor((padded - span) / stride) + 1``.

    ``span = dilation * (k - 1) + 1``; the result is < 1 where no window fits.
    """
    rank = len(input_spatial)
    kernel_size = _per_dimension(kernel_size, rank)
    strides = _per_dimension(strides, rank)
    dilation = _per_dimension(dilation, rank)
    out = []
    for size, k, s, d, (low, high) in zip(input_spatial, kernel_size, strides, dilation, padding_pairs):
        padded = size + low + high
        span = d * (k - 1) + 1
        out.append((padded - span) // s + 1 if padded >= span else 0)
    return tuple(out)


def _source_index(position, offset, strides, dilation, padding_pairs, input_spatial):
    """Index into the unpadded input read by (position, offset), or None if padding."""
    index = []
    for o, j, s, d, (low, _), size in zip(position, offset, strides, dilation, padding_pairs, input_spatial):
        i = o * s + j * d - low
        if not 0 <= i < size:
            return None
        index.append(i)
    return tuple(index)


def reference_taps(input_spatial, kernel_size, strides, padding_pairs, dilation):
    """How many (output position, window offset) pairs read a real input element."""
    rank = len(input_spatial)
    kernel_size = _per_dimension(kernel_size, rank)
    strides = _per_dimension(strides, rank)
    dilation = _per_dimension(dilation, rank)
    out = reference_output_spatial(input_spatial, kernel_size, strides, padding_pairs, dilation)
    return sum(
        _source_index(o, j, strides, dilation, padding_pairs, input_spatial) is not None
        for o in itertools.product(*map(range, out))
        for j in itertools.product(*map(range, kernel_size))
    )


def reference_locally_connected(
    x, kernel, bias=None, strides=1, padding="valid", dilation=1, data_format="channels_last"
):
    """Locally-connected layer by a float64 loop over output positions and taps.

    Args:
      x: ``(*batch, *spatial, C)`` (``"channels_last"``) or ``(*batch, C,
        *spatial)`` (``"channels_first"``), any number of batch dims (even 0).
      kernel: ``(*output_spatial, *kernel_size, C, F)``; the spatial rank ``n``
        is ``(kernel.ndim - 2) // 2``.
      bias: ``None`` or ``(*output_spatial, F)``.
      strides: int or ``n`` ints.
      padding: ``"valid"``/``"same"``/``"causal"`` or ``n`` ``(low, high)``
        pairs (see ``resolve_padding``).
      dilation: int or ``n`` ints (the window's dilation rate).
      data_format: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      float64 ``np.ndarray``: ``(*batch, *output_spatial, F)`` or ``(*batch, F,
      *output_spatial)``.
    """
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    assert kernel.ndim >= 4 and kernel.ndim % 2 == 0, kernel.shape
    rank = (kernel.ndim - 2) // 2
    channels_first = data_format.lower() == "channels_first"
    assert channels_first or data_format.lower() == "channels_last", data_format
    if channels_first:
        x = np.moveaxis(x, -rank - 1, -1)
    output_spatial = kernel.shape[:rank]
    kernel_size = kernel.shape[rank : 2 * rank]
    filters = kernel.shape[-1]
    input_spatial = x.shape[-rank - 1 : -1]
    batch_shape = x.shape[: -rank - 1]
    assert x.shape[-1] == kernel.shape[-2], (x.shape, kernel.shape)
    strides = _per_dimension(strides, rank)
    dilation = _per_dimension(dilation, rank)
    pairs = resolve_padding(padding, input_spatial, kernel_size, strides, dilation)
    expected = reference_output_spatial(input_spatial, kernel_size, strides, pairs, dilation)
    assert expected == tuple(output_spatial), (expected, output_spatial)

    y = np.zeros((*batch_shape, *output_spatial, filters), np.float64)
    for position in itertools.product(*map(range, output_spatial)):
        total = np.zeros((*batch_shape, filters), np.float64)
        for offset in itertools.product(*map(range, kernel_size)):
            source = _source_index(position, offset, strides, dilation, pairs, input_spatial)
            if source is None:  # the tap reads a padding zero
                continue
            x_tap = x[(..., *source, slice(None))]  # (*batch, C)
            total += x_tap @ kernel[(*position, *offset)]  # (C, F)
        if bias is not None:
            total += np.asarray(bias, np.float64)[position]
        y[(..., *position, slice(None))] = total
    if channels_first:
        y = np.moveaxis(y, -1, -rank - 1)
    return y
