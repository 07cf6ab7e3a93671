"""tf_keras LocallyConnected1D/2D weight layouts, converted with numpy only.

flax_local stores one layout for every ``data_format`` and implementation:
kernel ``(*out_spatial, *kernel_size, in_channels, filters)`` and bias
``(*out_spatial, filters)``. tf_keras stores three kernel layouts, one per
``implementation``, measured against tf_keras 2.21 (see
``tests/keras_golden/generate.py``). With ``P = prod(out_spatial)``, ``K =
prod(kernel_size)``, ``N = prod(in_spatial)``, ``C`` input channels and ``F``
filters, positions and taps flattened row-major:

* ``implementation=1``: ``(P, K * C, F)``; row ``p`` holds position ``p``'s
  patch flattened as ``(*kernel_size, C)`` for ``channels_last`` but as ``(C,
  *kernel_size)`` for ``channels_first`` (Keras slices the input in its own
  layout). Only ``padding="valid"``.
* ``implementation=2``: a dense matrix ``(*in_spatial, C, *out_spatial, F)``
  for ``channels_last``, ``(C, *in_spatial, F, *out_spatial)`` for
  ``channels_first``, multiplied by a 0/1 connectivity mask before use, so the
  entries outside the mask are junk that Keras ignores (and so do we).
* ``implementation=3``: a flat vector of the ``nnz`` connected weights, in the
  order of the sorted pairs ``(out_index, in_index)``, where ``out_index`` is
  the row-major index of ``(*out_spatial, f)`` (``channels_last``) or ``(f,
  *out_spatial)`` (``channels_first``), and ``in_index`` that of ``(*in_spatial,
  c)`` or ``(c, *in_spatial)``.

The bias has shape ``(*out_spatial, F)`` in every case, but for
``channels_first`` Keras adds ``bias.reshape(F, *out_spatial)`` (a reshape,
not a transpose) to the ``(F, *out_spatial)`` output, so its stored array is
that reshape's inverse, not ``(*out_spatial, F)`` in the usual sense.

Keras's ``padding="same"`` (implementations 2 and 3) is not TF's SAME: the
window of output ``o`` starts at input ``o * stride - kernel_size // 2`` and
the output has ``ceil(size / stride)`` positions. ``keras_padding`` gives the
explicit ``(low, high)`` pairs that compute exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from flax_local import functional
from flax_local._src import arguments

IMPLEMENTATIONS = (1, 2, 3)


def _check_padding_name(padding: str) -> str:
    name = padding.lower() if isinstance(padding, str) else padding
    if name not in ("valid", "same"):
        raise ValueError(f"Keras LocallyConnected padding must be 'valid' or 'same', got {padding!r}.")
    return name


def keras_output_shape(
    input_spatial: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    padding: str,
) -> tuple[int, ...]:
    """Output spatial shape of a tf_keras LocallyConnected layer.

    Args:
      input_spatial: the input's spatial shape.
      kernel_size: one int per spatial dimension.
      strides: one int per spatial dimension.
      padding: ``"valid"`` or ``"same"``.

    Returns:
      ``ceil((size - k + 1) / s)`` per dimension for ``"valid"``,
      ``ceil(size / s)`` for ``"same"``.

    Example:
      >>> keras_output_shape((7, 6), (3, 2), (2, 2), "same")
      (4, 3)
    """
    padding = _check_padding_name(padding)
    out = []
    for n, k, s in zip(input_spatial, kernel_size, strides, strict=True):
        length = n if padding == "same" else n - k + 1
        out.append((length + s - 1) // s)
    if any(o < 1 for o in out):
        raise ValueError(
            f"input spatial shape {tuple(input_spatial)} is too small for kernel_size="
            f"{tuple(kernel_size)}, strides={tuple(strides)}, padding={padding!r}: output "
            f"shape {tuple(out)}."
        )
    return tuple(out)


def keras_padding(
    input_spatial: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    padding: str,
) -> tuple[tuple[int, int], ...]:
    """Explicit ``(low, high)`` pairs that reproduce a Keras LocallyConnected padding.

    ``"valid"`` is ``(0, 0)``. Keras's ``"same"`` starts the window of output
    ``o`` at ``o * s - k // 2`` and has ``ceil(n / s)`` outputs, so ``low = k //
    2`` and ``high`` is the smallest non-negative value giving that many
    outputs. It differs from TF's SAME (``low = total // 2``) for even kernels
    and for strides > 1.

    Args:
      input_spatial: the input's spatial shape.
      kernel_size: one int per spatial dimension.
      strides: one int per spatial dimension.
      padding: ``"valid"`` or ``"same"``.

    Returns:
      One ``(low, high)`` pair per spatial dimension, for
      ``flax_local.functional.locally_connected(..., padding=pairs)``.

    Example:
      >>> keras_padding((6, 6), (2, 3), (1, 2), "same")
      ((1, 0), (1, 0))
    """
    padding = _check_padding_name(padding)
    out = keras_output_shape(input_spatial, kernel_size, strides, padding)
    if padding == "valid":
        return tuple((0, 0) for _ in input_spatial)
    pairs = []
    for n, k, s, o in zip(input_spatial, kernel_size, strides, out, strict=True):
        low = k // 2
        pairs.append((low, max(0, (o - 1) * s + k - n - low)))
    return tuple(pairs)


class KerasLayout:
    """Geometry of one tf_keras LocallyConnected layer applied to one input shape.

    Args:
      input_shape: the input shape without batch, in ``data_format``:
        ``(*spatial, C)`` or ``(C, *spatial)``.
      filters: number of output channels.
      kernel_size: an int or one per spatial dimension.
      strides: an int or one per spatial dimension.
      padding: Keras's ``"valid"`` or ``"same"``.
      data_format: ``"channels_last"`` or ``"channels_first"``.

    Example:
      >>> layout = KerasLayout((5, 4, 2), filters=3, kernel_size=2)
      >>> layout.out_spatial, layout.kernel_shape(1), layout.kernel_shape(2)
      ((4, 3), (12, 8, 3), (5, 4, 2, 4, 3, 3))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str = "channels_last",
    ):
        data_format = arguments.check_data_format(data_format)
        if not isinstance(input_shape, Sequence) or len(input_shape) < 2:
            raise ValueError(f"input_shape must be (*spatial, C) or (C, *spatial), got {input_shape!r}.")
        rank = len(input_shape) - 1
        input_shape = arguments.to_tuple(input_shape, rank + 1, "input_shape")
        self.rank = rank
        self.data_format = data_format
        if data_format == "channels_last":
            self.in_spatial, self.in_channels = input_shape[:-1], input_shape[-1]
        else:
            self.in_spatial, self.in_channels = input_shape[1:], input_shape[0]
        self.filters = arguments.check_positive(filters, "filters")
        self.kernel_size = arguments.to_tuple(kernel_size, rank, "kernel_size")
        self.strides = arguments.to_tuple(strides, rank, "strides")
        self.padding = _check_padding_name(padding)
        self.out_spatial = keras_output_shape(self.in_spatial, self.kernel_size, self.strides, self.padding)
        self.pads = keras_padding(self.in_spatial, self.kernel_size, self.strides, self.padding)
        # Keras's windows are flax_local's with these explicit pads: the same coordinates.
        geometry = functional.geometry(
            self.in_spatial, self.kernel_size, strides=self.strides, padding=self.pads
        )
        self.index, self.valid = (np.asarray(a) for a in geometry.input_coordinates())

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    @property
    def num_positions(self) -> int:
        return math.prod(self.out_spatial)

    @property
    def window_volume(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def num_inputs(self) -> int:
        return math.prod(self.in_spatial)

    def our_kernel_shape(self) -> tuple[int, ...]:
        """flax_local's kernel shape ``(*out_spatial, *kernel_size, C, F)``."""
        return (*self.out_spatial, *self.kernel_size, self.in_channels, self.filters)

    def our_bias_shape(self) -> tuple[int, ...]:
        """flax_local's (and Keras's) bias shape ``(*out_spatial, F)``."""
        return (*self.out_spatial, self.filters)

    def kernel_shape(self, implementation: int) -> tuple[int, ...]:
        """The shape of Keras's kernel for ``implementation`` 1, 2 or 3."""
        implementation = check_keras_implementation(implementation, self.padding)
        c, f = self.in_channels, self.filters
        if implementation == 1:
            return (self.num_positions, self.window_volume * c, f)
        if implementation == 2:
            if self.channels_first:
                return (c, *self.in_spatial, f, *self.out_spatial)
            return (*self.in_spatial, c, *self.out_spatial, f)
        return (int(self.valid.sum()) * c * f,)

    def _sparse_order(self) -> tuple[np.ndarray, np.ndarray]:
        """For implementation 3: flat indices into our ``(P, K, C, F)`` kernel of
        Keras's vector entries, in Keras's order, and that vector's length."""
        c, f, p_count, n = self.in_channels, self.filters, self.num_positions, self.num_inputs
        p, j = np.nonzero(self.valid)  # connected (position, tap) pairs
        i = self.index[p, j]
        # Broadcast to (pairs, C, F).
        p3, j3, i3 = p[:, None, None], j[:, None, None], i[:, None, None]
        cc = np.arange(c)[None, :, None]
        ff = np.arange(f)[None, None, :]
        if self.channels_first:
            out_index = ff * p_count + p3
            in_index = cc * n + i3
        else:
            out_index = p3 * f + ff
            in_index = i3 * c + cc
        ours = ((p3 * self.window_volume + j3) * c + cc) * f + ff
        out_index, in_index, ours = np.broadcast_arrays(out_index, in_index, ours)
        order = np.lexsort((in_index.ravel(), out_index.ravel()))
        return ours.ravel()[order], order

    # Kernel conversions ---------------------------------------------------

    def kernel_from_keras(self, kernel: np.ndarray, implementation: int) -> np.ndarray:
        """Keras's kernel for ``implementation`` to flax_local's layout.

        Taps that fall into padding (``padding="same"``) get zeros: they
        multiply zeros anyway. Junk outside implementation 2's mask is dropped.
        """
        implementation = check_keras_implementation(implementation, self.padding)
        kernel = np.asarray(kernel)
        expected = self.kernel_shape(implementation)
        if kernel.shape != expected:
            raise ValueError(
                f"Keras implementation={implementation} kernel for input spatial shape "
                f"{self.in_spatial} with {self.in_channels} channels ({self.data_format}), "
                f"kernel_size={self.kernel_size}, strides={self.strides}, padding={self.padding!r}, "
                f"filters={self.filters} must have shape {expected}, got {kernel.shape}."
            )
        c, f, p_count, k = self.in_channels, self.filters, self.num_positions, self.window_volume
        if implementation == 1:
            if self.channels_first:
                ours = kernel.reshape(p_count, c, k, f).transpose(0, 2, 1, 3)
            else:
                ours = kernel.reshape(p_count, k, c, f)
        elif implementation == 2:
            positions = np.arange(p_count)[:, None]
            if self.channels_first:
                dense = kernel.reshape(c, self.num_inputs, f, p_count)
                ours = dense[:, self.index, :, positions]  # (P, K, C, F)
            else:
                dense = kernel.reshape(self.num_inputs, c, p_count, f)
                ours = dense[self.index, :, positions, :]  # (P, K, C, F)
            ours = np.where(self.valid[:, :, None, None], ours, np.zeros((), kernel.dtype))
        else:
            flat_ours, _ = self._sparse_order()
            ours = np.zeros(p_count * k * c * f, kernel.dtype)
            ours[flat_ours] = kernel
        return np.ascontiguousarray(ours.reshape(self.our_kernel_shape()))

    def kernel_to_keras(self, kernel: np.ndarray, implementation: int) -> np.ndarray:
        """flax_local's kernel to Keras's layout for ``implementation``.

        Implementation 2's entries outside the connectivity mask are zeros.
        Our taps that read padding are dropped (Keras has no such weights).
        """
        implementation = check_keras_implementation(implementation, self.padding)
        kernel = np.asarray(kernel)
        if kernel.shape != self.our_kernel_shape():
            raise ValueError(f"kernel must have shape {self.our_kernel_shape()}, got {kernel.shape}.")
        c, f, p_count, k = self.in_channels, self.filters, self.num_positions, self.window_volume
        ours = kernel.reshape(p_count, k, c, f)
        if implementation == 1:
            if self.channels_first:
                keras = ours.transpose(0, 2, 1, 3)
            else:
                keras = ours
            return np.ascontiguousarray(keras.reshape(self.kernel_shape(1)))
        if implementation == 2:
            p, j = np.nonzero(self.valid)
            i = self.index[p, j]
            if self.channels_first:
                dense = np.zeros((c, self.num_inputs, f, p_count), kernel.dtype)
                dense[:, i, :, p] = ours[p, j]  # (pairs, C, F)
            else:
                dense = np.zeros((self.num_inputs, c, p_count, f), kernel.dtype)
                dense[i, :, p, :] = ours[p, j]
            return dense.reshape(self.kernel_shape(2))
        flat_ours, _ = self._sparse_order()
        return np.ascontiguousarray(kernel.reshape(-1)[flat_ours])

    def mask(self) -> np.ndarray:
        """Implementation 2's connectivity as a bool array of Keras's kernel shape."""
        p, j = np.nonzero(self.valid)
        i = self.index[p, j]
        c, f, p_count = self.in_channels, self.filters, self.num_positions
        if self.channels_first:
            mask = np.zeros((c, self.num_inputs, f, p_count), bool)
            mask[:, i, :, p] = True
        else:
            mask = np.zeros((self.num_inputs, c, p_count, f), bool)
            mask[i, :, p, :] = True
        return mask.reshape(self.kernel_shape(2))

    # Bias conversions -----------------------------------------------------

    def bias_from_keras(self, bias: np.ndarray) -> np.ndarray:
        """Keras's stored bias to flax_local's ``(*out_spatial, F)``."""
        bias = np.asarray(bias)
        if bias.shape != self.our_bias_shape():
            raise ValueError(f"Keras bias must have shape {self.our_bias_shape()}, got {bias.shape}.")
        if self.channels_first:
            return np.ascontiguousarray(np.moveaxis(bias.reshape(self.filters, *self.out_spatial), 0, -1))
        return bias

    def bias_to_keras(self, bias: np.ndarray) -> np.ndarray:
        """flax_local's bias to the array Keras stores (see the module doc)."""
        bias = np.asarray(bias)
        if bias.shape != self.our_bias_shape():
            raise ValueError(f"bias must have shape {self.our_bias_shape()}, got {bias.shape}.")
        if self.channels_first:
            return np.ascontiguousarray(np.moveaxis(bias, -1, 0).reshape(self.our_bias_shape()))
        return bias


def check_keras_implementation(implementation: int, padding: str = "valid") -> int:
    """Validates a Keras ``implementation`` (1, 2, 3) against ``padding``."""
    if isinstance(implementation, bool) or implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Keras implementation must be 1, 2 or 3, got {implementation!r}.")
    if implementation == 1 and padding != "valid":
        raise ValueError(
            f"Keras LocallyConnected implementation=1 supports only padding='valid', got {padding!r}; "
            "use implementation 2 or 3."
        )
    return int(implementation)


def infer_input_shape(
    kernel_shape: Sequence[int],
    *,
    implementation: int,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    padding: str,
    data_format: str,
) -> tuple[int, ...] | None:
    """The input shape (no batch) that a Keras kernel shape implies, if unique.

    Implementation 2's kernel holds the input shape. Implementation 1's holds
    the number of output positions, which fixes the input only in 1D with
    stride 1. Implementation 3's is a flat vector. Returns None when the
    weights do not determine the input shape.

    Example:
      >>> infer_input_shape((8, 6, 4), implementation=1, kernel_size=(3,), strides=(1,),
      ...                   padding="valid", data_format="channels_last")
      (10, 2)
    """
    kernel_shape = tuple(int(v) for v in kernel_shape)
    rank = len(kernel_size)
    if implementation == 2 and len(kernel_shape) == 2 * rank + 2:
        # (*in_spatial, C, *out_spatial, F) or (C, *in_spatial, F, *out_spatial).
        return kernel_shape[: rank + 1]
    if implementation == 1 and rank == 1 and tuple(strides) == (1,) and padding == "valid":
        positions, patch, _ = kernel_shape
        k = kernel_size[0]
        if patch % k:
            return None
        length, channels = positions + k - 1, patch // k
        return (length, channels) if data_format == "channels_last" else (channels, length)
    return None
