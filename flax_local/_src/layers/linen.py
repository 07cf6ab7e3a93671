"""Flax linen modules: thin wrappers over ``locally_connected``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype
from jax import lax

from flax_local._src import arguments
from flax_local._src import geometry as geometry_lib
from flax_local._src import sharding as sharding_lib
from flax_local._src.activations import Activation, get_activation
from flax_local._src.constraints import Constraint, get_constraint
from flax_local._src.initializers import Initializer, get_initializer, per_position
from flax_local._src.locally_connected import locally_connected
from flax_local._src.regularizers import Regularizer, get_regularizer


class LocallyConnected(nn.Module):
    """An N-D locally-connected layer: a convolution whose weights are not shared.

    Every output position has its own filter bank. The spatial rank is
    ``len(kernel_size)``; ``LocallyConnected1D/2D/3D`` fix it and accept an int
    ``kernel_size``. Parameters: ``kernel`` of shape ``(*output_spatial,
    *kernel_size, in_channels, filters)`` (in 2D ``kernel[i, j]`` is an HWIO
    conv kernel for position (i, j)) and ``bias`` of shape ``(*output_spatial,
    filters)``, whatever ``data_format`` and ``implementation``. The parameter
    shapes depend on the input's spatial size, so a layer accepts only the
    input size it was initialized with.

    Initializers see one position's block (``(*kernel_size, in_channels,
    filters)`` for the kernel, ``(filters,)`` for the bias) and are applied to
    each position independently, so fans are those of a Conv layer with the
    same kernel (tf_keras and ``flax.linen.ConvLocal`` count the positions in).

    Attributes:
      filters: number of output channels.
      kernel_size: window size, one int per spatial dimension.
      strides: step between windows, an int or one per spatial dimension.
      padding: ``"valid"``, ``"same"``, ``"causal"`` (1D) or ``(low, high)``
        pairs; see ``flax_local.functional.locally_connected``.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      dilation_rate: spacing of the window taps, an int or one per dimension.
      activation: None, a callable, or a Keras activation name.
      use_bias: whether to add a per-position bias.
      kernel_initializer: a jax initializer or a Keras name, for one position.
      bias_initializer: a jax initializer or a Keras name, for one position.
      kernel_regularizer: None, a callable ``array -> scalar`` or a name
        ("l1", "l2", "l1_l2"); sown into the ``"losses"`` collection.
      bias_regularizer: as ``kernel_regularizer``, for the bias.
      activity_regularizer: as ``kernel_regularizer``, applied to the output
        and divided by the batch size (tf_keras's convention).
      kernel_constraint: None, a callable or a name; enforced by
        ``flax_local.constraints.enforce_constraints`` after each update.
      bias_constraint: as ``kernel_constraint``, for the bias.
      implementation: ``"auto"``, ``"native"``, ``"patches"``, ``"dense"``,
        ``"sparse"`` (or Keras's 1, 2, 3 for the last three). All compute the
        same numbers from the same params.
      dtype: the computation dtype (default: inferred from inputs and params).
      param_dtype: the dtype of the parameters.
      precision: numerical precision of the matrix products.
      max_matrix_bytes: limit for the matrix ``"dense"``/``"sparse"`` build
        (default 1 GiB).
      logical_partitioning: if True, box ``kernel`` and ``bias`` in
        ``nn.Partitioned`` metadata naming their axes (``local_pos_<d>``,
        ``local_window_<d>``, ``local_in``, ``local_filters``; see
        ``flax_local.sharding``) so flax logical-axis rules can shard them.
        ``init`` then returns boxes: read shapes through ``nn.unbox``. An
        ``"auto"`` implementation then means ``"patches"``, the one XLA
        partitions by output position.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local import LocallyConnected
      >>> layer = LocallyConnected(filters=2, kernel_size=(3, 3, 3))  # 3D from the kernel
      >>> x = jnp.ones((5, 5, 5, 1))                                   # no batch dimension
      >>> variables = layer.init(jax.random.key(0), x)
      >>> jax.tree_util.tree_map(jnp.shape, variables["params"])
      {'bias': (3, 3, 3, 2), 'kernel': (3, 3, 3, 3, 3, 3, 1, 2)}
    """

    filters: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: arguments.PaddingLike = "valid"
    data_format: str = "channels_last"
    dilation_rate: int | Sequence[int] = 1
    activation: str | Activation | None = None
    use_bias: bool = True
    kernel_initializer: str | Initializer = "glorot_uniform"
    bias_initializer: str | Initializer = "zeros"
    kernel_regularizer: str | Regularizer | None = None
    bias_regularizer: str | Regularizer | None = None
    activity_regularizer: str | Regularizer | None = None
    kernel_constraint: str | Constraint | None = None
    bias_constraint: str | Constraint | None = None
    implementation: str | int = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: lax.PrecisionLike = None
    max_matrix_bytes: int | None = None
    logical_partitioning: bool = False

    spatial_rank: ClassVar[int | None] = None

    @property
    def rank(self) -> int:
        """The number of spatial dimensions."""
        if self.spatial_rank is not None:
            return self.spatial_rank
        if isinstance(self.kernel_size, int) or not isinstance(self.kernel_size, Sequence):
            raise ValueError(
                "LocallyConnected needs kernel_size as a sequence (one int per spatial dimension) "
                f"to know its rank, got {self.kernel_size!r}; or use LocallyConnected1D/2D/3D."
            )
        return len(self.kernel_size)

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the layer.

        Args:
          inputs: ``(*batch, *spatial, C)`` (channels_last) or ``(*batch, C,
            *spatial)`` (channels_first); any number of batch dimensions.

        Returns:
          ``(*batch, *output_spatial, filters)`` or ``(*batch, filters,
          *output_spatial)``.
        """
        name = type(self).__name__
        rank = self.rank
        filters = arguments.check_positive(self.filters, "filters")
        kernel_size, strides, padding, dilation = geometry_lib.check_geometry_arguments(
            rank, self.kernel_size, self.strides, self.padding, self.dilation_rate
        )
        data_format = arguments.check_data_format(self.data_format)
        implementation = arguments.check_implementation(self.implementation)
        if implementation == "auto" and self.logical_partitioning:
            # "patches" partitions by position; "dense" builds its matrix whole
            # and XLA can only replicate "native"'s custom calls.
            implementation = "patches"
        activation = get_activation(self.activation)
        kernel_init = get_initializer(self.kernel_initializer, "kernel_initializer")
        bias_init = get_initializer(self.bias_initializer, "bias_initializer")
        regularizers = {
            "kernel": get_regularizer(self.kernel_regularizer, "kernel_regularizer"),
            "bias": get_regularizer(self.bias_regularizer, "bias_regularizer"),
            "activity": get_regularizer(self.activity_regularizer, "activity_regularizer"),
        }
        get_constraint(self.kernel_constraint, "kernel_constraint")
        get_constraint(self.bias_constraint, "bias_constraint")

        inputs = jnp.asarray(inputs)
        if inputs.ndim < rank + 1:
            layout = (
                "(*batch, *spatial, channels)"
                if data_format == "channels_last"
                else "(*batch, channels, *spatial)"
            )
            raise ValueError(
                f"{name} needs inputs of rank >= {rank + 1}, {layout} with {rank} spatial "
                f"dimension(s), but got inputs of shape {inputs.shape}."
            )
        if data_format == "channels_last":
            spatial, channels = tuple(inputs.shape[-rank - 1 : -1]), inputs.shape[-1]
        else:
            spatial, channels = tuple(inputs.shape[-rank:]), inputs.shape[-rank - 1]
        geometry = geometry_lib.make_geometry(spatial, kernel_size, strides, padding, dilation)
        out = geometry.output_spatial

        kernel_init, bias_init = per_position(kernel_init, rank), per_position(bias_init, rank)
        if self.logical_partitioning:
            kernel_init = nn.with_logical_partitioning(kernel_init, sharding_lib.kernel_axis_names(rank))
            bias_init = nn.with_logical_partitioning(bias_init, sharding_lib.bias_axis_names(rank))
        expected = (*out, *kernel_size, channels, filters)
        if self.has_variable("params", "kernel"):
            # Checked before self.param, which would raise flax's generic shape error.
            found = tuple(jnp.shape(nn.unbox(self.get_variable("params", "kernel"))))
            if found != expected:
                made_for = geometry_lib.smallest_input_for(
                    found[:rank], kernel_size, strides, padding, dilation
                )
                raise ValueError(
                    f"{name} got inputs of spatial shape {spatial} with {channels} channels, which "
                    f"needs a kernel of shape {expected}, but its kernel has shape {found} "
                    f"(made for inputs of spatial shape {made_for} with {found[-2]} channels). "
                    "A locally-connected layer only accepts the input size it was initialized with."
                )
        kernel = self.param("kernel", kernel_init, expected, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", bias_init, (*out, filters), self.param_dtype)
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)

        compute = functools.partial(
            locally_connected,
            strides=strides,
            padding=padding,
            dilation_rate=dilation,
            data_format=data_format,
            implementation=implementation,
            precision=self.precision,
            max_matrix_bytes=self.max_matrix_bytes,
        )
        y = sharding_lib.call_on_any_mesh(
            compute, inputs, kernel, bias, rank=rank, channels_first=data_format == "channels_first"
        )
        if activation is not None:
            y = activation(y)
        # Not during init: the penalties would land in the returned variables and
        # be appended to again by every apply that is given them.
        if self.is_mutable_collection("losses") and not self.is_initializing():
            self._sow_regularization(regularizers, kernel, bias, y, inputs.ndim - rank - 1)
        return y

    def _sow_regularization(
        self,
        regularizers: dict[str, Regularizer | None],
        kernel: jax.Array,
        bias: jax.Array | None,
        outputs: jax.Array,
        num_batch_axes: int,
    ) -> None:
        """Sows each penalty into ``"losses"`` under ``<term>_regularization``."""
        if regularizers["kernel"] is not None:
            self.sow("losses", "kernel_regularization", regularizers["kernel"](kernel))
        if regularizers["bias"] is not None and bias is not None:
            self.sow("losses", "bias_regularization", regularizers["bias"](bias))
        if regularizers["activity"] is not None:
            batch_size = 1
            for size in outputs.shape[:num_batch_axes]:
                batch_size *= size
            self.sow("losses", "activity_regularization", regularizers["activity"](outputs) / batch_size)


class LocallyConnected1D(LocallyConnected):
    """A 1D locally-connected layer (Keras's ``LocallyConnected1D``).

    Inputs ``(*batch, steps, C)`` (or ``(*batch, C, steps)``); kernel
    ``(out_steps, k, C, filters)``; bias ``(out_steps, filters)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local import LocallyConnected1D
      >>> layer = LocallyConnected1D(filters=64, kernel_size=3)
      >>> x = jnp.ones((2, 10, 32))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> jax.tree_util.tree_map(jnp.shape, variables["params"])
      {'bias': (8, 64), 'kernel': (8, 3, 32, 64)}
      >>> layer.apply(variables, x).shape
      (2, 8, 64)
    """

    spatial_rank: ClassVar[int | None] = 1


class LocallyConnected2D(LocallyConnected):
    """A 2D locally-connected layer (Keras's ``LocallyConnected2D``).

    Inputs ``(*batch, H, W, C)`` (or ``(*batch, C, H, W)``); kernel ``(oH, oW,
    kH, kW, C, filters)``; bias ``(oH, oW, filters)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local import LocallyConnected2D
      >>> layer = LocallyConnected2D(filters=64, kernel_size=(3, 3))
      >>> x = jnp.ones((1, 32, 32, 3))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> jax.tree_util.tree_map(jnp.shape, variables["params"])
      {'bias': (30, 30, 64), 'kernel': (30, 30, 3, 3, 3, 64)}
    """

    spatial_rank: ClassVar[int | None] = 2


class LocallyConnected3D(LocallyConnected):
    """A 3D locally-connected layer (volumes: medical images, climate grids).

    Inputs ``(*batch, D, H, W, C)`` (or ``(*batch, C, D, H, W)``); kernel
    ``(oD, oH, oW, kD, kH, kW, C, filters)``; bias ``(oD, oH, oW, filters)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax_local import LocallyConnected3D
      >>> layer = LocallyConnected3D(filters=4, kernel_size=2, strides=2)
      >>> x = jnp.ones((1, 6, 6, 6, 2))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> layer.apply(variables, x).shape
      (1, 3, 3, 3, 4)
    """

    spatial_rank: ClassVar[int | None] = 3
