"""Flax NNX transposed locally-connected layers: ``LocallyConnected{1,2,3}DTranspose``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx
from jax import lax

from flax_local._src import arguments
from flax_local._src.activations import Activation
from flax_local._src.constraints import Constraint
from flax_local._src.initializers import Initializer
from flax_local._src.layers import core
from flax_local._src.layers.nnx import LocallyConnected
from flax_local._src.layers.transpose import TRANSPOSE
from flax_local._src.regularizers import Regularizer


class _LocallyConnectedTranspose(LocallyConnected):
    """The transposed family on NNX: ``LocallyConnected``'s arguments plus ``output_padding``."""

    op: ClassVar[core.LocalOp] = TRANSPOSE

    def __init__(
        self,
        in_features: int,
        filters: int,
        kernel_size: int | Sequence[int],
        *,
        input_shape: Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: arguments.PaddingLike = "valid",
        output_padding: int | Sequence[int] | None = None,
        data_format: str = "channels_last",
        dilation_rate: int | Sequence[int] = 1,
        activation: str | Activation | None = None,
        use_bias: bool = True,
        kernel_initializer: str | Initializer = "glorot_uniform",
        bias_initializer: str | Initializer = "zeros",
        kernel_regularizer: str | Regularizer | None = None,
        bias_regularizer: str | Regularizer | None = None,
        activity_regularizer: str | Regularizer | None = None,
        kernel_constraint: str | Constraint | None = None,
        bias_constraint: str | Constraint | None = None,
        implementation: str | int = "auto",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: lax.PrecisionLike = None,
        max_matrix_bytes: int | None = None,
        logical_partitioning: bool = False,
        rngs: nnx.Rngs,
    ):
        self._output_padding = output_padding  # read by _layer_options during __init__
        super().__init__(
            in_features,
            filters,
            kernel_size,
            input_shape=input_shape,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            implementation=implementation,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            max_matrix_bytes=max_matrix_bytes,
            logical_partitioning=logical_partitioning,
            rngs=rngs,
        )

    def _layer_options(self) -> tuple[tuple[str, Any], ...]:
        return (("output_padding", self._output_padding),)

    @property
    def output_padding(self) -> tuple[int, ...] | None:
        """The validated ``output_padding``: None or one int per spatial dimension."""
        return self.config.option("output_padding")


class LocallyConnected1DTranspose(_LocallyConnectedTranspose):
    """A 1D transposed locally-connected layer on ``flax.nnx`` (``Conv1DTranspose`` with unshared weights).

    Inputs ``(*batch, steps, C)`` (or ``(*batch, C, steps)``) with ``steps ==
    input_shape[0]`` and ``C == in_features``; kernel ``(steps, k, filters,
    C)``; bias ``(out_steps, filters)``.

    Arguments and behaviour as ``flax_local.nnx.LocallyConnected2DTranspose``, which describes each; for rank 1:

    Args:
      input_shape: the inputs' spatial shape, ``(steps,)`` (no batch, no channels).
      kernel_size: the window size, an int or a sequence of one int.
      strides: an int or a sequence of one int.
      padding: ``"valid"`` or ``"same"``, as Keras's ``Conv1DTranspose``.
      output_padding: None, or an int or a sequence of one int, each smaller than the stride.
      dilation_rate: an int or a sequence of one int.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> layer = local_nnx.LocallyConnected1DTranspose(6, 4, 3, input_shape=(8,), strides=2,
      ...                                               rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer.bias.shape
      ((8, 3, 4, 6), (17, 4))
      >>> layer(jnp.ones((2, 8, 6))).shape
      (2, 17, 4)
    """

    spatial_rank: ClassVar[int | None] = 1


class LocallyConnected2DTranspose(_LocallyConnectedTranspose):
    """A 2D transposed locally-connected layer on ``flax.nnx`` (``Conv2DTranspose`` with unshared weights).

    The NNX twin of ``flax_local.LocallyConnected2DTranspose``: the same
    arguments, parameter layout, initialization fans, constraints and numbers,
    plus ``in_features`` (the input channels), ``input_shape`` (the input's
    spatial shape) and ``rngs``, as ``flax_local.nnx.LocallyConnected2D``.
    Kernel ``(H, W, kH, kW, filters, in_features)`` for ``input_shape == (H,
    W)``: the layout of the ``LocallyConnected2D`` it transposes, so an
    encoder's kernel can be tied to it; bias ``(oH, oW, filters)`` with ``(oH,
    oW) == output_shape`` as Keras's ``Conv2DTranspose`` computes it.

    Args:
      in_features: number of input channels.
      filters: number of output channels.
      kernel_size: window size, an int or one per spatial dimension.
      input_shape: the spatial shape of the inputs the layer will accept.
      strides: step between windows on the output, an int or one per dimension.
      padding: ``"valid"`` or ``"same"``, as Keras's ``Conv2DTranspose``.
      output_padding: None, or an int or one per spatial dimension, each
        smaller than the stride: extra output size on the high side, as in
        Keras. With ``padding="same"`` and an even dilated window it must be
        at least 1 there (or None).
      data_format: ``"channels_last"`` or ``"channels_first"``.
      dilation_rate: spacing of the window taps, an int or one per dimension.
      activation: None, a callable, or a Keras activation name.
      use_bias: whether to add a per-position bias.
      kernel_initializer: an initializer for one input position's block
        ``(kH, kW, filters, in_features)``, with Keras's ``Conv2DTranspose``
        fans.
      bias_initializer: an initializer for one output position's bias.
      kernel_regularizer: see ``flax_local.nnx.LocallyConnected``.
      bias_regularizer: see ``flax_local.nnx.LocallyConnected``.
      activity_regularizer: see ``flax_local.nnx.LocallyConnected``.
      kernel_constraint: projected per (input position, filter), on
        ``kernel[i, j, ..., f, :]``; see ``apply_constraints``.
      bias_constraint: see ``flax_local.nnx.LocallyConnected``.
      implementation: ``"auto"``, ``"native"``, ``"patches"``, ``"dense"``,
        ``"sparse"``, ``"pallas"``; all compute the same numbers.
      dtype: the computation dtype (default: inferred).
      param_dtype: the dtype of the parameters.
      precision: numerical precision of the matrix products.
      max_matrix_bytes: must be None (the transposed op uses the default
        limit of its matrix build).
      logical_partitioning: if True, annotate the kernel's axes as
        ``local_pos_<d>`` (the *input* positions), ``local_window_<d>``,
        ``local_filters``, ``local_in`` and the bias's as ``local_pos_<d>``
        (the output positions), ``local_filters``.
      rngs: the ``nnx.Rngs`` whose ``params`` stream initializes the weights.

    Raises:
      ValueError: for any argument that does not fit, naming it and the value
        received.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> layer = local_nnx.LocallyConnected2DTranspose(
      ...     16, 3, 3, input_shape=(8, 8), strides=2, padding="same", rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer.bias.shape
      ((8, 8, 3, 3, 3, 16), (16, 16, 3))
      >>> layer(jnp.ones((1, 8, 8, 16))).shape
      (1, 16, 16, 3)
    """

    spatial_rank: ClassVar[int | None] = 2


class LocallyConnected3DTranspose(_LocallyConnectedTranspose):
    """A 3D transposed locally-connected layer on ``flax.nnx`` (``Conv3DTranspose`` with unshared weights).

    Inputs ``(*batch, D, H, W, C)`` (or ``(*batch, C, D, H, W)``) with ``(D,
    H, W) == input_shape`` and ``C == in_features``; kernel ``(D, H, W, kD,
    kH, kW, filters, C)``; bias ``(oD, oH, oW, filters)``.

    Arguments and behaviour as ``flax_local.nnx.LocallyConnected2DTranspose``, which describes each; for rank 3:

    Args:
      input_shape: the inputs' spatial shape, ``(D, H, W)`` (no batch, no channels).
      kernel_size: the window size, an int (for every dimension) or 3 ints.
      strides: an int (for every dimension) or 3 ints.
      padding: ``"valid"`` or ``"same"``, as Keras's ``Conv3DTranspose``.
      output_padding: None, or an int (for every dimension) or 3 ints, each smaller than the stride.
      dilation_rate: an int (for every dimension) or 3 ints.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> layer = local_nnx.LocallyConnected3DTranspose(
      ...     4, 2, 2, input_shape=(3, 3, 3), strides=2, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((1, 3, 3, 3, 4))).shape
      (1, 6, 6, 6, 2)
    """

    spatial_rank: ClassVar[int | None] = 3
