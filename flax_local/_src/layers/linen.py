"""Flax linen modules: the layer core (``core.py``) bound to linen's params and ``sow``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import meta
from jax import lax

from flax_local._src import arguments
from flax_local._src.activations import Activation
from flax_local._src.constraints import Constraint
from flax_local._src.initializers import Initializer
from flax_local._src.layers import core
from flax_local._src.regularizers import Regularizer


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
      kernel_initializer: a jax initializer or a Keras name, for one position;
        ``nn.with_partitioning(init, names)`` and
        ``nn.with_logical_partitioning(init, names)`` are accepted, with
        ``names`` for the whole kernel.
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
        ``"sparse"``, ``"pallas"`` (or Keras's 1, 2, 3 for ``"patches"``,
        ``"dense"``, ``"sparse"``). All compute the same numbers from the
        same params.
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

    Every argument is checked when the module is constructed; a bad one
    raises a ``ValueError`` naming it.

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
    op: ClassVar[core.LocalOp] = core.FORWARD

    def __post_init__(self) -> None:
        # Validated once, at construction, as the NNX modules are; kept for __call__.
        object.__setattr__(self, "_config", self._configure())
        super().__post_init__()

    def _configure(self) -> core.LayerConfig:
        name = type(self).__name__
        return core.configure(
            name,
            core.layer_rank(name, self.spatial_rank, self.kernel_size),
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            activity_regularizer=self.activity_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            implementation=self.implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            max_matrix_bytes=self.max_matrix_bytes,
            logical_partitioning=self.logical_partitioning,
            op=self.op,
            options=self._layer_options(),
        )

    def _layer_options(self) -> tuple[tuple[str, Any], ...]:
        """A layer family's own arguments for ``op.validate`` (none here); subclasses override it."""
        return ()

    @property
    def config(self) -> core.LayerConfig:
        """The validated arguments (tuples, canonical names, resolved callables)."""
        return self._config  # type: ignore[attr-defined]

    @property
    def rank(self) -> int:
        """The number of spatial dimensions."""
        return self.config.rank

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the layer.

        Args:
          inputs: ``(*batch, *spatial, C)`` (channels_last) or ``(*batch, C,
            *spatial)`` (channels_first); any number of batch dimensions.

        Returns:
          ``(*batch, *output_spatial, filters)`` or ``(*batch, filters,
          *output_spatial)``.

        Raises:
          ValueError: when the inputs' rank does not fit, or their size differs
            from the one the parameters were made for.
        """
        config, op = self.config, self.op
        inputs = jnp.asarray(inputs)
        split = core.split_input(config, inputs.shape)
        kernel_shape = op.kernel_shape(config, split.spatial, split.channels)
        bias_shape = op.bias_shape(config, split.spatial)
        if self.has_variable("params", "kernel"):
            # Checked before self.param, which would raise flax's generic shape error.
            found = tuple(jnp.shape(nn.unbox(self.get_variable("params", "kernel"))))
            core.check_kernel_shape(config, op, found, split)
        else:
            shapes = {"kernel": kernel_shape, **({"bias": bias_shape} if config.use_bias else {})}
            core.check_param_size(config, shapes)
        kernel_init, bias_init = core.initializers(config, op)
        if config.logical_partitioning:
            kernel_init = _logically_partitioned(kernel_init, op.kernel_axis_names(config), "kernel")
            bias_init = _logically_partitioned(bias_init, op.bias_axis_names(config), "bias")
        kernel = self.param("kernel", kernel_init, kernel_shape, config.param_dtype)
        bias = self.param("bias", bias_init, bias_shape, config.param_dtype) if config.use_bias else None
        y = core.forward(config, op, inputs, kernel, bias)
        # Not during init: the penalties would land in the returned variables and
        # be appended to again by every apply that is given them.
        if self.is_mutable_collection("losses") and not self.is_initializing():
            # On the parameters as stored (param_dtype), as the NNX modules do.
            for term, penalty in core.weight_penalties(config, kernel, bias).items():
                self.sow("losses", f"{term}_regularization", penalty)
            activity = core.activity_penalty(config, y, split.num_batch)
            if activity is not None:
                self.sow("losses", "activity_regularization", activity)
        return y


def _logically_partitioned(init: Initializer, names: tuple[str, ...], what: str) -> Initializer:
    """Boxes ``init``'s result as ``nn.with_logical_partitioning`` does."""

    def boxed(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> Any:
        value = init(key, shape, dtype)
        if isinstance(value, meta.AxisMetadata):
            raise ValueError(
                f"logical_partitioning=True names the {what}'s axes itself, but the {what} initializer "
                f"already returns a partitioned box ({type(value).__name__}); pass one or the other."
            )
        return nn.LogicallyPartitioned(value, names)

    return boxed


class LocallyConnected1D(LocallyConnected):
    """A 1D locally-connected layer (Keras's ``LocallyConnected1D``).

    Inputs ``(*batch, steps, C)`` (or ``(*batch, C, steps)``); kernel
    ``(out_steps, k, C, filters)``; bias ``(out_steps, filters)``.

    Arguments as ``flax_local.LocallyConnected``, which describes each; for rank 1:

    Attributes:
      kernel_size: the window size, an int or a sequence of one int.
      strides: an int or a sequence of one int.
      padding: ``"valid"``, ``"same"``, ``"causal"``, or a sequence of one ``(low, high)`` pair.
      dilation_rate: an int or a sequence of one int.

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

    Arguments as ``flax_local.LocallyConnected``, which describes each; for rank 2:

    Attributes:
      kernel_size: the window size, an int (for every dimension) or 2 ints.
      strides: an int (for every dimension) or 2 ints.
      padding: ``"valid"``, ``"same"``, or a sequence of 2 ``(low, high)`` pairs.
      dilation_rate: an int (for every dimension) or 2 ints.

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

    Arguments as ``flax_local.LocallyConnected``, which describes each; for rank 3:

    Attributes:
      kernel_size: the window size, an int (for every dimension) or 3 ints.
      strides: an int (for every dimension) or 3 ints.
      padding: ``"valid"``, ``"same"``, or a sequence of 3 ``(low, high)`` pairs.
      dilation_rate: an int (for every dimension) or 3 ints.

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
