"""The layer core shared by the linen and NNX front ends.

Everything a locally-connected layer does apart from storing its parameters
lives here, so the two front ends cannot drift: argument validation
(``configure``, run once, when the layer is constructed), the split of the
input into batch, spatial and channel axes (``split_input``), the parameter
shapes and the check of the input's size against them (``LocalOp``,
``check_kernel_shape``), the memory bound on parameters (``check_param_size``),
per-position initialization (``initializers``), the penalties
(``weight_penalty``, ``activity_penalty``), the constraints (``constrain``)
and the call into the functional core on any mesh (``forward``).

A layer family is a ``LocalOp``: it says how input shapes map to parameter and
output shapes and which functional op computes the layer. ``FORWARD`` is the
ordinary locally-connected layer; another family (a transposed layer, say)
subclasses ``LocalOp``, overrides the shape rules and ``compute``, and its
linen and NNX classes set ``op`` to an instance of it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax import lax

from flax_local._src import arguments, data_parallel
from flax_local._src import geometry as geometry_lib
from flax_local._src import sharding as sharding_lib
from flax_local._src.activations import Activation, get_activation
from flax_local._src.constraints import Constraint, RadialConstraint, constrain_kernel, get_constraint
from flax_local._src.initializers import Initializer, get_initializer, per_position
from flax_local._src.locally_connected import locally_connected
from flax_local._src.regularizers import Regularizer, get_regularizer

_HALF_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """A layer's arguments, validated and in canonical form (tuples, lower-case names).

    Built once by ``configure`` when a layer is constructed; the front ends
    read only this.
    """

    name: str
    rank: int
    filters: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    dilation_rate: tuple[int, ...]
    data_format: str
    activation: Activation | None
    use_bias: bool
    kernel_initializer: Initializer
    bias_initializer: Initializer
    kernel_regularizer: Regularizer | None
    bias_regularizer: Regularizer | None
    activity_regularizer: Regularizer | None
    kernel_constraint: Constraint | None
    bias_constraint: Constraint | None
    implementation: str
    dtype: Any
    param_dtype: Any
    precision: lax.PrecisionLike
    max_matrix_bytes: int | None
    logical_partitioning: bool
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def option(self, name: str, default: Any = None) -> Any:
        """A family-specific argument (e.g. a transposed layer's ``output_padding``)."""
        return dict(self.options).get(name, default)


def layer_rank(name: str, spatial_rank: int | None, kernel_size: Any) -> int:
    """The spatial rank: fixed by the class (1D/2D/3D) or ``len(kernel_size)``."""
    if spatial_rank is not None:
        return spatial_rank
    if isinstance(kernel_size, int) or not isinstance(kernel_size, Sequence):
        raise ValueError(
            f"{name} needs kernel_size as a sequence (one int per spatial dimension) "
            f"to know its rank, got {kernel_size!r}; or use {name}1D/2D/3D."
        )
    return len(kernel_size)


def _check_bool(value: Any, argument: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{argument} must be True or False, got {value!r}.")


def _check_dtype(value: Any, argument: str, *, optional: bool) -> Any:
    if value is None and optional:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        expected = "None or a floating dtype" if optional else "a floating dtype"
        raise ValueError(f"{argument} must be {expected} (e.g. jnp.float32, 'bfloat16'), got {value!r}.")
    return value


def configure(
    name: str,
    rank: int,
    *,
    filters: Any,
    kernel_size: Any,
    strides: Any,
    padding: Any,
    data_format: Any,
    dilation_rate: Any,
    activation: Any,
    use_bias: Any,
    kernel_initializer: Any,
    bias_initializer: Any,
    kernel_regularizer: Any,
    bias_regularizer: Any,
    activity_regularizer: Any,
    kernel_constraint: Any,
    bias_constraint: Any,
    implementation: Any,
    dtype: Any,
    param_dtype: Any,
    precision: Any,
    max_matrix_bytes: Any,
    logical_partitioning: Any,
    op: LocalOp | None = None,
    options: tuple[tuple[str, Any], ...] = (),
) -> LayerConfig:
    """Validates every layer argument; raises a ``ValueError`` naming the first bad one.

    ``options`` are a family's own arguments, checked by ``op.validate``
    (``FORWARD`` has none) together with everything else.
    """
    filters = arguments.check_positive(filters, "filters")
    kernel_size, strides, padding, dilation = geometry_lib.check_geometry_arguments(
        rank, kernel_size, strides, padding, dilation_rate
    )
    data_format = arguments.check_data_format(data_format)
    implementation = arguments.check_implementation(implementation)
    logical_partitioning = _check_bool(logical_partitioning, "logical_partitioning")
    use_bias = _check_bool(use_bias, "use_bias")
    kernel_constraint = get_constraint(kernel_constraint, "kernel_constraint")
    bias_constraint_resolved = get_constraint(bias_constraint, "bias_constraint")
    if bias_constraint_resolved is not None and not use_bias:
        raise ValueError(
            f"{name} declares bias_constraint={bias_constraint!r} but use_bias=False: the "
            "constraint would be silently dropped."
        )
    if isinstance(kernel_constraint, RadialConstraint) and (
        rank != 2 or kernel_size[0] != kernel_size[1] or kernel_size[0] % 2 == 0
    ):
        raise ValueError(
            f"kernel_constraint=radial_constraint applies to a 2D layer with a square window of odd "
            f"size, but {name} has rank {rank} and kernel_size={kernel_size}."
        )
    if max_matrix_bytes is not None:
        arguments.check_positive(max_matrix_bytes, "max_matrix_bytes")
    config = LayerConfig(
        name=name,
        rank=rank,
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
        activation=get_activation(activation),
        use_bias=use_bias,
        kernel_initializer=get_initializer(kernel_initializer, "kernel_initializer"),
        bias_initializer=get_initializer(bias_initializer, "bias_initializer"),
        kernel_regularizer=get_regularizer(kernel_regularizer, "kernel_regularizer"),
        bias_regularizer=get_regularizer(bias_regularizer, "bias_regularizer"),
        activity_regularizer=get_regularizer(activity_regularizer, "activity_regularizer"),
        kernel_constraint=kernel_constraint,
        bias_constraint=bias_constraint_resolved,
        implementation=implementation,
        dtype=_check_dtype(dtype, "dtype", optional=True),
        param_dtype=_check_dtype(param_dtype, "param_dtype", optional=False),
        precision=precision,
        max_matrix_bytes=max_matrix_bytes,
        logical_partitioning=logical_partitioning,
        options=tuple(options),
    )
    return (op or FORWARD).validate(config)


class InputSplit(NamedTuple):
    """An input's shape split into batch, spatial and channel parts."""

    num_batch: int
    spatial: tuple[int, ...]
    channels: int


def split_input(config: LayerConfig, shape: tuple[int, ...]) -> InputSplit:
    """Splits an input shape; raises when it has too few dimensions."""
    rank = config.rank
    if len(shape) < rank + 1:
        layout = "(*batch, channels, *spatial)" if config.channels_first else "(*batch, *spatial, channels)"
        raise ValueError(
            f"{config.name} needs inputs of rank >= {rank + 1}, {layout} with {rank} spatial "
            f"dimension(s), but got inputs of shape {tuple(shape)}."
        )
    if config.channels_first:
        spatial, channels = tuple(shape[-rank:]), shape[-rank - 1]
    else:
        spatial, channels = tuple(shape[-rank - 1 : -1]), shape[-1]
    return InputSplit(len(shape) - rank - 1, spatial, int(channels))


class LocalOp:
    """A family of locally-connected layers: shapes, initialization fans and functional op.

    ``FORWARD`` (this class) is the ordinary layer: kernel ``(*output_spatial,
    *kernel_size, in_channels, filters)``, bias ``(*output_spatial,
    filters)``. A family with another layout subclasses it and overrides the
    methods below; the front ends and the rest of the core only call them.
    """

    def validate(self, config: LayerConfig) -> LayerConfig:
        """Checks the family's own arguments (``config.options``) at construction."""
        if config.options:
            raise ValueError(f"{config.name} takes no argument {dict(config.options)!r}.")
        return config

    def output_spatial(self, config: LayerConfig, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """The output's spatial shape for an input of spatial shape ``spatial``."""
        return geometry_lib.make_geometry(
            spatial, config.kernel_size, config.strides, config.padding, config.dilation_rate
        ).output_spatial

    def kernel_shape(self, config: LayerConfig, spatial: tuple[int, ...], channels: int) -> tuple[int, ...]:
        """``(*positions, *block)``: ``positions`` leading axes, then one position's conv kernel."""
        return (*self.output_spatial(config, spatial), *config.kernel_size, channels, config.filters)

    def bias_shape(self, config: LayerConfig, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return (*self.output_spatial(config, spatial), config.filters)

    def kernel_axis_names(self, config: LayerConfig) -> tuple[str, ...]:
        return sharding_lib.kernel_axis_names(config.rank)

    def bias_axis_names(self, config: LayerConfig) -> tuple[str, ...]:
        return sharding_lib.bias_axis_names(config.rank)

    def made_for(
        self, config: LayerConfig, kernel_shape: tuple[int, ...]
    ) -> tuple[tuple[int, ...] | None, int]:
        """The input (spatial shape, channels) a kernel of ``kernel_shape`` was made for."""
        spatial = geometry_lib.smallest_input_for(
            kernel_shape[: config.rank],
            config.kernel_size,
            config.strides,
            config.padding,
            config.dilation_rate,
        )
        return spatial, kernel_shape[-2]

    def block_initializer(self, config: LayerConfig, initializer: Initializer) -> Initializer:
        """Per-position initialization: each position's block is drawn as one conv kernel.

        The fans are those of the block (``(*kernel_size, in, out)``: Keras's
        conv fans); a family whose block has another layout overrides this.
        """
        return per_position(initializer, config.rank)

    def out_sharding(self, config: LayerConfig, kernel_spec: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
        """The mesh axes of the output's position axes and of its filters axis."""
        return kernel_spec[: config.rank], kernel_spec[-1]

    def constrain_kernel(self, config: LayerConfig, constraint: Constraint, kernel: jax.Array) -> jax.Array:
        """Projects the kernel: a unit is one (position, filter), its window and input channels."""
        return constrain_kernel(constraint, kernel, config.rank)

    def compute(
        self, config: LayerConfig, inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None
    ) -> jax.Array:
        """Calls the functional op."""
        return locally_connected(
            inputs,
            kernel,
            bias,
            strides=config.strides,
            padding=config.padding,
            dilation_rate=config.dilation_rate,
            data_format=config.data_format,
            implementation=config.implementation,
            precision=config.precision,
            max_matrix_bytes=config.max_matrix_bytes,
        )


FORWARD = LocalOp()


def _partitionable(
    config: LayerConfig, inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None
) -> LayerConfig:
    """``config`` with ``"auto"`` resolved to ``"patches"`` where the kernel may be sharded by position.

    With ``logical_partitioning`` on several devices the parameters may be split
    by position, which only ``"patches"`` partitions ("dense" builds its matrix
    whole and XLA can only replicate a custom call). Left as ``"auto"`` on one
    device, and where the types prove batch-only sharding (the layer then runs
    per device, ``data_parallel``).
    """
    if (
        config.implementation != "auto"
        or not config.logical_partitioning
        or jax.device_count() == 1
        or data_parallel.data_parallel_specs(inputs, kernel, bias, rank=config.rank) is not None
    ):
        return config
    return dataclasses.replace(config, implementation="patches")


def check_kernel_shape(
    config: LayerConfig,
    op: LocalOp,
    found: tuple[int, ...],
    split: InputSplit,
    made_for: tuple[tuple[int, ...] | None, int] | None = None,
) -> None:
    """Raises unless the kernel ``found`` fits inputs of ``split``'s size."""
    expected = op.kernel_shape(config, split.spatial, split.channels)
    if tuple(found) == expected:
        return
    spatial, channels = made_for if made_for is not None else op.made_for(config, tuple(found))
    raise ValueError(
        f"{config.name} got inputs of spatial shape {split.spatial} with {split.channels} channels, "
        f"which needs a kernel of shape {expected}, but its kernel has shape {tuple(found)} (made "
        f"for inputs of spatial shape {spatial} with {channels} channels). A locally-connected "
        "layer only accepts the input size it was initialized with."
    )


@functools.cache
def memory_limit_bytes() -> int:
    """The most parameter bytes a layer may have: the larger of the devices' and the hosts' memory.

    The devices' memory is the sum of ``bytes_limit`` over ``jax.devices()``
    where the backend reports it (GPUs, TPUs; CPUs report nothing); the hosts'
    is this host's physical RAM times ``jax.process_count()``. A parameter
    larger than both cannot exist anywhere, even sharded.
    """
    devices = 0
    for device in jax.devices():
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = None
        if stats and "bytes_limit" in stats:
            devices += int(stats["bytes_limit"])
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * jax.process_count()
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX hosts
        host = 0
    return max(devices, host)


def check_param_size(config: LayerConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raises before allocation when the parameters exceed ``memory_limit_bytes()``."""
    itemsize = jnp.dtype(config.param_dtype).itemsize
    needed = sum(math.prod(shape) for shape in shapes.values()) * itemsize
    limit = memory_limit_bytes()
    if limit and needed > limit:
        kernel = shapes["kernel"]
        raise ValueError(
            f"{config.name}'s parameters need {needed} bytes ({needed / 2**30:.1f} GiB; kernel of "
            f"shape {kernel}, {math.prod(kernel) * itemsize} bytes of "
            f"{jnp.dtype(config.param_dtype).name}), more than the {limit / 2**30:.1f} GiB of memory "
            "of all devices and hosts. Use a smaller input, kernel or filter count, or larger strides."
        )


def initializers(config: LayerConfig, op: LocalOp) -> tuple[Initializer, Initializer]:
    """The kernel and bias initializers for the whole parameters, drawn per position.

    Flax partitioning boxes (``nn.with_partitioning``,
    ``nn.with_logical_partitioning``, ``nnx.with_partitioning``) are kept: the
    values are drawn per position and the whole parameter is boxed as the
    initializer boxed its block.
    """
    return (
        op.block_initializer(config, config.kernel_initializer),
        per_position(config.bias_initializer, config.rank),
    )


def forward(
    config: LayerConfig, op: LocalOp, inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None
) -> jax.Array:
    """Promotes dtypes, runs the op on any mesh and applies the activation."""
    inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=config.dtype)
    config = _partitionable(config, inputs, kernel, bias)
    kernel_spec_rule = functools.partial(op.out_sharding, config)
    y = sharding_lib.call_on_any_mesh(
        functools.partial(op.compute, config),
        inputs,
        kernel,
        bias,
        rank=config.rank,
        channels_first=config.channels_first,
        out_sharding=kernel_spec_rule,
    )
    if config.activation is not None:
        y = config.activation(y)
    return y


def _penalty(regularizer: Regularizer, x: jax.Array) -> jax.Array:
    """``regularizer(x)`` as float32, computed from float32 values for half dtypes."""
    if x.dtype in _HALF_DTYPES:
        x = x.astype(jnp.float32)
    return jnp.asarray(regularizer(x)).astype(jnp.float32)


def weight_penalties(config: LayerConfig, kernel: jax.Array, bias: jax.Array | None) -> dict[str, jax.Array]:
    """The kernel and bias penalties present, keyed ``kernel`` and ``bias``; float32."""
    found = {}
    if config.kernel_regularizer is not None:
        found["kernel"] = _penalty(config.kernel_regularizer, kernel)
    if config.bias_regularizer is not None and bias is not None:
        found["bias"] = _penalty(config.bias_regularizer, bias)
    return found


def activity_penalty(config: LayerConfig, outputs: jax.Array, num_batch: int) -> jax.Array | None:
    """The activity penalty divided by the batch size (tf_keras); 0 for an empty batch."""
    if config.activity_regularizer is None:
        return None
    batch_size = math.prod(outputs.shape[:num_batch])
    if batch_size == 0:
        return jnp.zeros((), jnp.float32)
    return _penalty(config.activity_regularizer, outputs) / batch_size


def constrain(
    config: LayerConfig, op: LocalOp, kernel: jax.Array, bias: jax.Array | None
) -> tuple[jax.Array, jax.Array | None]:
    """The parameters projected onto their constraints (stacked leading axes allowed)."""
    if config.kernel_constraint is not None:
        kernel = op.constrain_kernel(config, config.kernel_constraint, kernel)
    if config.bias_constraint is not None and bias is not None:
        bias = config.bias_constraint(bias, axis=())
    return kernel, bias
