"""Flax NNX modules: thin wrappers over ``locally_connected``.

NNX modules create their parameters eagerly in ``__init__``, and a
locally-connected layer's parameter shapes depend on the input's spatial size,
so these modules take ``in_features`` (the input channels) and ``input_shape``
(the input's spatial shape) at construction. Everything else matches the linen
modules: argument names and defaults, parameter layout, per-position
initializers, error messages, sharding, and the numbers computed, because both
bind the same layer core (``core.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import meta
from jax import lax

from flax_local._src import arguments
from flax_local._src.activations import Activation
from flax_local._src.constraints import Constraint
from flax_local._src.initializers import Initializer
from flax_local._src.layers import core
from flax_local._src.regularizers import Regularizer


class RegularizationLoss(nnx.Variable):
    """The variable type holding a layer's last activity penalty.

    It is not an ``nnx.Param``, so ``nnx.Optimizer(model, tx, wrt=nnx.Param)``
    and ``nnx.grad`` leave it alone; filter on it to read the penalties, e.g.
    ``nnx.state(model, RegularizationLoss)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local.nnx import LocallyConnected1D, RegularizationLoss
      >>> layer = LocallyConnected1D(2, 3, 3, input_shape=(6,), activity_regularizer="l1",
      ...                            rngs=nnx.Rngs(0))
      >>> _ = layer(jnp.ones((1, 6, 2)))
      >>> [type(v).__name__ for v in jax.tree_util.tree_leaves(
      ...     nnx.state(layer, RegularizationLoss), is_leaf=lambda v: isinstance(v, nnx.Variable))]
      ['RegularizationLoss']
    """


class LocallyConnected(nnx.Module):
    """An N-D locally-connected layer on ``flax.nnx``: a convolution with unshared weights.

    The NNX twin of ``flax_local.LocallyConnected``: the same arguments,
    defaults, parameter layout and numbers, plus what an eager NNX module needs
    to create its parameters at construction: ``in_features`` (the input
    channels), ``input_shape`` (the input's *spatial* shape, without batch or
    channels) and ``rngs``. The spatial rank is ``len(kernel_size)``;
    ``LocallyConnected1D/2D/3D`` fix it and accept an int ``kernel_size``.

    Parameters (``nnx.Param``): ``kernel`` of shape ``(*output_spatial,
    *kernel_size, in_features, filters)`` and ``bias`` of shape
    ``(*output_spatial, filters)`` (None when ``use_bias=False``), whatever
    ``data_format`` and ``implementation``. Initializers see one position's
    block and are applied to each position independently, as in the linen
    modules.

    Regularizers and constraints: ``regularization_loss()`` returns the kernel
    and bias penalties of the current parameters plus the activity penalty of
    the last call (stored in ``activity_loss``, a ``RegularizationLoss``
    variable, only when ``activity_regularizer`` is set; divided by the batch
    size as in tf_keras). Add it to the loss inside the function you
    differentiate. ``apply_constraints()`` projects the parameters in place;
    call it after each optimizer update. ``flax_local.nnx.regularization_loss``
    and ``flax_local.nnx.apply_constraints`` do the same for every layer of a
    whole model.

    Args:
      in_features: number of input channels.
      filters: number of output channels.
      kernel_size: window size, one int per spatial dimension.
      input_shape: the spatial shape of the inputs the layer will accept, one
        int per spatial dimension (no batch, no channels).
      strides: step between windows, an int or one per spatial dimension.
      padding: ``"valid"``, ``"same"``, ``"causal"`` (1D) or ``(low, high)``
        pairs; see ``flax_local.functional.locally_connected``.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      dilation_rate: spacing of the window taps, an int or one per dimension.
      activation: None, a callable, or a Keras activation name.
      use_bias: whether to add a per-position bias.
      kernel_initializer: a jax initializer or a Keras name, for one position;
        ``nnx.with_partitioning(init, sharding)`` is accepted, with
        ``sharding`` for the whole kernel.
      bias_initializer: a jax initializer or a Keras name, for one position.
      kernel_regularizer: None, a callable ``array -> scalar`` or a name
        ("l1", "l2", "l1_l2"); see ``regularization_loss``.
      bias_regularizer: as ``kernel_regularizer``, for the bias.
      activity_regularizer: as ``kernel_regularizer``, applied to the output
        and divided by the batch size (tf_keras's convention).
      kernel_constraint: None, a callable or a name; see ``apply_constraints``.
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
      logical_partitioning: if True, annotate ``kernel`` and ``bias`` with the
        logical axis names of the linen modules (``local_pos_<d>``, ...; the
        ``out_sharding`` metadata ``nnx.get_partition_spec`` reads) so that
        ``flax_local.sharding.nnx_shardings`` and logical-axis rules can shard
        them. An ``"auto"`` implementation then means ``"patches"``.
      rngs: the ``nnx.Rngs`` whose ``params`` stream initializes the weights.

    Raises:
      ValueError: for any argument that does not fit, naming it and the value
        received.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> layer = local_nnx.LocallyConnected(
      ...     3, 4, kernel_size=(2, 2, 2), input_shape=(5, 5, 5), rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer.bias.shape
      ((4, 4, 4, 2, 2, 2, 3, 4), (4, 4, 4, 4))
      >>> layer(jnp.ones((2, 5, 5, 5, 3))).shape
      (2, 4, 4, 4, 4)
    """

    spatial_rank: ClassVar[int | None] = None
    op: ClassVar[core.LocalOp] = core.FORWARD

    def __init__(
        self,
        in_features: int,
        filters: int,
        kernel_size: int | Sequence[int],
        *,
        input_shape: Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: arguments.PaddingLike = "valid",
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
        name = type(self).__name__
        rank = core.layer_rank(name, self.spatial_rank, kernel_size)
        in_features = arguments.check_positive(in_features, "in_features")
        config = core.configure(
            name,
            rank,
            filters=filters,
            kernel_size=kernel_size,
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
            op=self.op,
            options=self._layer_options(),
        )
        self.config = config
        self.in_features = in_features
        self.input_shape = arguments.to_tuple(input_shape, rank, "input_shape")
        op = self.op
        self.output_shape = op.output_spatial(config, self.input_shape)
        kernel_shape = op.kernel_shape(config, self.input_shape, in_features)
        bias_shape = op.bias_shape(config, self.input_shape)
        core.check_param_size(
            config, {"kernel": kernel_shape, **({"bias": bias_shape} if config.use_bias else {})}
        )
        kernel_init, bias_init = core.initializers(config, op)
        self.kernel = _param(
            config, kernel_init(rngs.params(), kernel_shape, config.param_dtype), op.kernel_axis_names(config)
        )
        if config.use_bias:
            self.bias = _param(
                config, bias_init(rngs.params(), bias_shape, config.param_dtype), op.bias_axis_names(config)
            )
        else:
            self.bias = nnx.data(None)
        if config.activity_regularizer is not None:
            self.activity_loss = RegularizationLoss(jnp.zeros((), jnp.float32))
        else:
            self.activity_loss = nnx.data(None)

    def _layer_options(self) -> tuple[tuple[str, Any], ...]:
        """A layer family's own arguments for ``op.validate`` (none here).

        A subclass stores its extra arguments before calling ``__init__`` and
        returns them here.
        """
        return ()

    # The arguments, read from the validated configuration.
    filters = property(lambda self: self.config.filters)
    kernel_size = property(lambda self: self.config.kernel_size)
    strides = property(lambda self: self.config.strides)
    padding = property(lambda self: self.config.padding)
    dilation_rate = property(lambda self: self.config.dilation_rate)
    data_format = property(lambda self: self.config.data_format)
    implementation = property(lambda self: self.config.implementation)
    activation = property(lambda self: self.config.activation)
    use_bias = property(lambda self: self.config.use_bias)
    kernel_regularizer = property(lambda self: self.config.kernel_regularizer)
    bias_regularizer = property(lambda self: self.config.bias_regularizer)
    activity_regularizer = property(lambda self: self.config.activity_regularizer)
    kernel_constraint = property(lambda self: self.config.kernel_constraint)
    bias_constraint = property(lambda self: self.config.bias_constraint)
    dtype = property(lambda self: self.config.dtype)
    param_dtype = property(lambda self: self.config.param_dtype)
    precision = property(lambda self: self.config.precision)
    max_matrix_bytes = property(lambda self: self.config.max_matrix_bytes)
    logical_partitioning = property(lambda self: self.config.logical_partitioning)

    @property
    def rank(self) -> int:
        """The number of spatial dimensions."""
        return self.config.rank

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the layer.

        Args:
          inputs: ``(*batch, *input_shape, in_features)`` (channels_last) or
            ``(*batch, in_features, *input_shape)`` (channels_first); any number
            of batch dimensions.

        Returns:
          ``(*batch, *output_shape, filters)`` or ``(*batch, filters,
          *output_shape)``.

        Raises:
          ValueError: when the inputs' rank, spatial shape or channels differ
            from those the layer was built for.
        """
        config = self.config
        inputs = jnp.asarray(inputs)
        split = core.split_input(config, inputs.shape)
        kernel = self.kernel[...]
        core.check_kernel_shape(
            config, self.op, kernel.shape, split, made_for=(self.input_shape, self.in_features)
        )
        bias = None if self.bias is None else self.bias[...]
        y = core.forward(config, self.op, inputs, kernel, bias)
        if self.activity_loss is not None:
            self.activity_loss[...] = core.activity_penalty(config, y, split.num_batch)
        return y

    def regularization_loss(self) -> jax.Array:
        """The kernel and bias penalties, plus the last call's activity penalty.

        Call it after the forward pass, inside the function you differentiate,
        so that the activity penalty is the one of that pass.

        Returns:
          A float32 scalar (0 when no regularizer is set).

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> from flax_local import nnx as local_nnx
          >>> layer = local_nnx.LocallyConnected1D(
          ...     2, 4, 3, input_shape=(8,), kernel_regularizer="l2", rngs=nnx.Rngs(0))
          >>> total = 0.01 * jnp.sum(layer.kernel[...] ** 2)
          >>> bool(jnp.allclose(layer.regularization_loss(), total))
          True
        """
        bias = None if self.bias is None else self.bias[...]
        total = jnp.zeros((), jnp.float32)
        for penalty in core.weight_penalties(self.config, self.kernel[...], bias).values():
            total = total + penalty
        if self.activity_loss is not None:
            total = total + self.activity_loss[...]
        return total

    def apply_constraints(self) -> None:
        """Projects ``kernel`` and ``bias`` in place onto their constraints.

        Norm constraints act per output unit (position, filter), as in
        ``flax_local.constraints``; on the bias each element is a unit. The
        units are found from the layer's rank, so kernels stacked by
        ``nnx.vmap`` or ``nnx.scan`` (any number of times) are constrained per
        unit too. Call it after every optimizer update (Keras applies
        constraints after each step).

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> from flax_local import nnx as local_nnx
          >>> layer = local_nnx.LocallyConnected1D(
          ...     2, 4, 3, input_shape=(8,), kernel_constraint="non_neg", rngs=nnx.Rngs(0))
          >>> layer.apply_constraints()
          >>> bool((layer.kernel[...] >= 0).all())
          True
        """
        bias = None if self.bias is None else self.bias[...]
        kernel, bias = core.constrain(self.config, self.op, self.kernel[...], bias)
        if self.config.kernel_constraint is not None:
            self.kernel[...] = kernel
        if self.config.bias_constraint is not None and bias is not None:
            self.bias[...] = bias


def _param(config: core.LayerConfig, value: Any, names: tuple[str, ...]) -> nnx.Param:
    """An ``nnx.Param`` holding ``value``, with its sharding annotation if it has one.

    ``value`` is what the initializer returned: an array, the
    ``VariableMetadata`` of ``nnx.with_partitioning`` (kept as flax keeps it)
    or a linen partitioning box (its names become ``out_sharding``). With
    ``logical_partitioning=True`` the logical names are annotated without
    eager sharding: they need rules (``flax_local.sharding.nnx_shardings``) to
    become mesh axes.
    """
    if isinstance(value, nnx.VariableMetadata):
        if config.logical_partitioning:
            raise ValueError(_BOTH_PARTITIONINGS)
        return nnx.Param(value)
    if isinstance(value, meta.AxisMetadata):
        if config.logical_partitioning:
            raise ValueError(_BOTH_PARTITIONINGS)
        return nnx.Param(value.unbox(), out_sharding=tuple(value.names), eager_sharding=False)
    if config.logical_partitioning:
        return nnx.Param(value, out_sharding=names, eager_sharding=False)
    return nnx.Param(value)


_BOTH_PARTITIONINGS = (
    "logical_partitioning=True names the parameters' axes itself, but an initializer already returns a "
    "partitioned value; pass one or the other."
)


class LocallyConnected1D(LocallyConnected):
    """A 1D locally-connected layer on ``flax.nnx`` (Keras's ``LocallyConnected1D``).

    Inputs ``(*batch, steps, C)`` (or ``(*batch, C, steps)``) with ``steps ==
    input_shape[0]`` and ``C == in_features``; kernel ``(out_steps, k, C,
    filters)``; bias ``(out_steps, filters)``.

    Arguments as ``flax_local.nnx.LocallyConnected``, which describes each; for rank 1:

    Args:
      input_shape: the inputs' spatial shape, ``(steps,)`` (no batch, no channels).
      kernel_size: the window size, an int or a sequence of one int.
      strides: an int or a sequence of one int.
      padding: ``"valid"``, ``"same"``, ``"causal"``, or a sequence of one ``(low, high)`` pair.
      dilation_rate: an int or a sequence of one int.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> layer = local_nnx.LocallyConnected1D(32, 64, 3, input_shape=(10,), rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer.bias.shape
      ((8, 3, 32, 64), (8, 64))
      >>> layer(jnp.ones((2, 10, 32))).shape
      (2, 8, 64)
    """

    spatial_rank: ClassVar[int | None] = 1


class LocallyConnected2D(LocallyConnected):
    """A 2D locally-connected layer on ``flax.nnx`` (Keras's ``LocallyConnected2D``).

    Inputs ``(*batch, H, W, C)`` (or ``(*batch, C, H, W)``) with ``(H, W) ==
    input_shape`` and ``C == in_features``; kernel ``(oH, oW, kH, kW, C,
    filters)``; bias ``(oH, oW, filters)``.

    Arguments as ``flax_local.nnx.LocallyConnected``, which describes each; for rank 2:

    Args:
      input_shape: the inputs' spatial shape, ``(H, W)`` (no batch, no channels).
      kernel_size: the window size, an int (for every dimension) or 2 ints.
      strides: an int (for every dimension) or 2 ints.
      padding: ``"valid"``, ``"same"``, or a sequence of 2 ``(low, high)`` pairs.
      dilation_rate: an int (for every dimension) or 2 ints.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> layer = local_nnx.LocallyConnected2D(3, 64, 3, input_shape=(32, 32), rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer.bias.shape
      ((30, 30, 3, 3, 3, 64), (30, 30, 64))
      >>> layer(jnp.ones((1, 32, 32, 3))).shape
      (1, 30, 30, 64)
    """

    spatial_rank: ClassVar[int | None] = 2


class LocallyConnected3D(LocallyConnected):
    """A 3D locally-connected layer on ``flax.nnx`` (volumes: medical images, climate grids).

    Inputs ``(*batch, D, H, W, C)`` (or ``(*batch, C, D, H, W)``) with ``(D, H,
    W) == input_shape`` and ``C == in_features``; kernel ``(oD, oH, oW, kD, kH,
    kW, C, filters)``; bias ``(oD, oH, oW, filters)``.

    Arguments as ``flax_local.nnx.LocallyConnected``, which describes each; for rank 3:

    Args:
      input_shape: the inputs' spatial shape, ``(D, H, W)`` (no batch, no channels).
      kernel_size: the window size, an int (for every dimension) or 3 ints.
      strides: an int (for every dimension) or 3 ints.
      padding: ``"valid"``, ``"same"``, or a sequence of 3 ``(low, high)`` pairs.
      dilation_rate: an int (for every dimension) or 3 ints.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> layer = local_nnx.LocallyConnected3D(
      ...     2, 4, 2, input_shape=(6, 6, 6), strides=2, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((1, 6, 6, 6, 2))).shape
      (1, 3, 3, 3, 4)
    """

    spatial_rank: ClassVar[int | None] = 3


def _layers(model: nnx.Module) -> list[LocallyConnected]:
    """Every flax_local NNX layer in ``model`` (``model`` itself included), once each."""
    return [node for _, node in nnx.iter_graph(model) if isinstance(node, LocallyConnected)]


def regularization_loss(model: nnx.Module) -> jax.Array:
    """Sums ``regularization_loss()`` over every flax_local NNX layer in ``model``.

    The NNX counterpart of ``flax_local.regularization_loss``: kernel and bias
    penalties of the current parameters plus each layer's activity penalty from
    its last call. Call it inside the loss function, after the forward pass.

    Args:
      model: any ``nnx.Module`` (or a layer itself).

    Returns:
      A float32 scalar (0 when there are no penalties). Jit-able and
      differentiable.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> class Model(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.local = local_nnx.LocallyConnected1D(
      ...             2, 4, 3, input_shape=(8,), activity_regularizer="l1", rngs=rngs)
      ...         self.head = nnx.Linear(24, 1, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.head(self.local(x).reshape(x.shape[0], -1))
      >>> model = Model(nnx.Rngs(0))
      >>> y = model(jnp.ones((5, 8, 2)))
      >>> bool(local_nnx.regularization_loss(model) > 0)
      True
    """
    total = jnp.zeros((), jnp.float32)
    for layer in _layers(model):
        total = total + layer.regularization_loss()
    return total


def apply_constraints(model: nnx.Module) -> None:
    """Projects, in place, every constrained parameter of every flax_local NNX layer.

    The NNX counterpart of ``flax_local.constraints.enforce_constraints``: call
    it right after ``optimizer.update(model, grads)`` (inside the same
    ``nnx.jit`` step if you like).

    Args:
      model: any ``nnx.Module`` (or a layer itself).

    Example:
      >>> from flax import nnx
      >>> from flax_local import nnx as local_nnx
      >>> layer = local_nnx.LocallyConnected1D(
      ...     2, 4, 3, input_shape=(8,), kernel_constraint="unit_norm", rngs=nnx.Rngs(0))
      >>> local_nnx.apply_constraints(layer)
      >>> norms = (layer.kernel[...] ** 2).sum(axis=(1, 2)) ** 0.5
      >>> bool(abs(norms - 1).max() < 1e-5)
      True
    """
    for layer in _layers(model):
        layer.apply_constraints()
