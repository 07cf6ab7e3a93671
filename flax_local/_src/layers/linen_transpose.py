"""Flax linen transposed locally-connected layers: ``LocallyConnected{1,2,3}DTranspose``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from flax_local._src.layers import core
from flax_local._src.layers.linen import LocallyConnected
from flax_local._src.layers.transpose import TRANSPOSE


class _LocallyConnectedTranspose(LocallyConnected):
    """The transposed family on linen: ``LocallyConnected``'s arguments plus ``output_padding``."""

    output_padding: int | Sequence[int] | None = None

    op: ClassVar[core.LocalOp] = TRANSPOSE

    def _layer_options(self) -> tuple[tuple[str, Any], ...]:
        return (("output_padding", self.output_padding),)


class LocallyConnected1DTranspose(_LocallyConnectedTranspose):
    """A 1D transposed locally-connected layer: Keras's ``Conv1DTranspose`` with unshared weights.

    Inputs ``(*batch, steps, C)`` (or ``(*batch, C, steps)``); kernel
    ``(steps, k, filters, C)``; bias ``(out_steps, filters)``, ``out_steps``
    as Keras computes it.

    Arguments and behaviour as ``flax_local.LocallyConnected2DTranspose``, which describes each; for rank 1:

    Attributes:
      kernel_size: the window size, an int or a sequence of one int.
      strides: an int or a sequence of one int.
      padding: ``"valid"`` or ``"same"``, as Keras's ``Conv1DTranspose``.
      output_padding: None, or an int or a sequence of one int, each smaller than the stride.
      dilation_rate: an int or a sequence of one int.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local import LocallyConnected1DTranspose
      >>> layer = LocallyConnected1DTranspose(filters=4, kernel_size=3, strides=2)
      >>> x = jnp.ones((2, 8, 6))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> jax.tree_util.tree_map(jnp.shape, variables["params"])
      {'bias': (17, 4), 'kernel': (8, 3, 4, 6)}
      >>> layer.apply(variables, x).shape
      (2, 17, 4)
    """

    spatial_rank: ClassVar[int | None] = 1


class LocallyConnected2DTranspose(_LocallyConnectedTranspose):
    """A 2D transposed locally-connected layer: Keras's ``Conv2DTranspose`` with unshared weights.

    The transpose (adjoint) of a ``LocallyConnected2D``: each input position
    has its own filter bank, which spreads that position's input over a
    window of the output. The output's spatial shape is Keras's
    ``Conv2DTranspose``'s (``flax_local.functional.transpose_output_shape``,
    ``output_padding`` included); the result is
    ``flax_local.functional.locally_connected_transpose`` of the inputs with
    the forward geometry of ``flax_local.functional.transpose_geometry``.

    Parameters: ``kernel`` of shape ``(H, W, kH, kW, filters, C)`` for inputs
    ``(*batch, H, W, C)``, the layout of the ``LocallyConnected2D`` from the
    output back to the input, so an encoder's kernel can be tied to this
    decoder as it is; ``bias`` of shape ``(oH, oW, filters)``. Each input
    position's block ``(kH, kW, filters, C)`` is initialized as a Keras
    ``Conv2DTranspose`` kernel: ``fan_in = kH * kW * filters``, ``fan_out =
    kH * kW * C``. Kernel constraints act per (input position, filter), on
    ``kernel[i, j, ..., f, :]``. With ``logical_partitioning=True`` the
    kernel's axes are named ``local_pos_<d>`` (the *input* positions),
    ``local_window_<d>``, ``local_filters``, ``local_in``; the bias's
    ``local_pos_<d>`` (the output positions) and ``local_filters``.

    The other attributes (``filters``, ``kernel_size``, ``strides``,
    ``data_format``, ``dilation_rate``, ``activation``, the initializers,
    regularizers and constraints, ``implementation``, ``dtype``,
    ``param_dtype``, ``precision``, ``logical_partitioning``) are those of
    ``flax_local.LocallyConnected2D``.

    Attributes:
      kernel_size: the window size, an int (for every dimension) or 2 ints.
      strides: the step between windows on the output, an int or 2 ints.
      padding: ``"valid"`` or ``"same"``, as Keras's ``Conv2DTranspose``.
      output_padding: None, or an int or one per spatial dimension, each
        smaller than the stride: extra output size on the high side, as in
        Keras. With ``padding="same"`` and an even dilated window it must be
        at least 1 there (or None).
      max_matrix_bytes: must be None (the transposed op uses the default
        limit of its matrix build).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local import LocallyConnected2DTranspose
      >>> layer = LocallyConnected2DTranspose(filters=3, kernel_size=3, strides=2, padding="same")
      >>> x = jnp.ones((1, 8, 8, 16))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> jax.tree_util.tree_map(jnp.shape, variables["params"])
      {'bias': (16, 16, 3), 'kernel': (8, 8, 3, 3, 3, 16)}
      >>> layer.apply(variables, x).shape
      (1, 16, 16, 3)
    """

    spatial_rank: ClassVar[int | None] = 2


class LocallyConnected3DTranspose(_LocallyConnectedTranspose):
    """A 3D transposed locally-connected layer: Keras's ``Conv3DTranspose`` with unshared weights.

    Inputs ``(*batch, D, H, W, C)`` (or ``(*batch, C, D, H, W)``); kernel
    ``(D, H, W, kD, kH, kW, filters, C)``; bias ``(oD, oH, oW, filters)``.

    Arguments and behaviour as ``flax_local.LocallyConnected2DTranspose``, which describes each; for rank 3:

    Attributes:
      kernel_size: the window size, an int (for every dimension) or 3 ints.
      strides: an int (for every dimension) or 3 ints.
      padding: ``"valid"`` or ``"same"``, as Keras's ``Conv3DTranspose``.
      output_padding: None, or an int (for every dimension) or 3 ints, each smaller than the stride.
      dilation_rate: an int (for every dimension) or 3 ints.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local import LocallyConnected3DTranspose
      >>> layer = LocallyConnected3DTranspose(filters=2, kernel_size=2, strides=2)
      >>> x = jnp.ones((1, 3, 3, 3, 4))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> layer.apply(variables, x).shape
      (1, 6, 6, 6, 2)
    """

    spatial_rank: ClassVar[int | None] = 3
