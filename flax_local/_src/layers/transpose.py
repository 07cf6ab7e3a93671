"""The transposed layer family: ``TransposeOp``, the shapes and op of ``LocallyConnected*DTranspose``.

A transposed layer is ``locally_connected_transpose`` with a forward geometry
chosen as Keras's ``Conv{1,2,3}DTranspose`` chooses it
(``transpose_output_shape``, ``transpose_geometry``). Its kernel has the
layout of the forward layer it transposes, ``(*input_spatial, *kernel_size,
filters, in_channels)``, so a ``LocallyConnected*D`` encoder's kernel is a
decoder's kernel as it is; the bias is ``(*output_spatial, filters)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from flax_local._src import arguments
from flax_local._src import sharding as sharding_lib
from flax_local._src.constraints import Constraint, constrain_kernel
from flax_local._src.layers.core import LayerConfig, LocalOp, split_input
from flax_local._src.transpose import locally_connected_transpose, transpose_geometry, transpose_output_shape


class TransposeOp(LocalOp):
    """The shape rules, initialization fans and op of a transposed locally-connected layer.

    Kernel ``(*input_spatial, *kernel_size, filters, in_channels)``: the
    leading axes index the layer's *input* positions (the output positions of
    the forward layer it is the transpose of). Each position's block ``(*kernel_size,
    filters, in_channels)`` is laid out as a Keras ``Conv*DTranspose`` kernel,
    so the per-position initializers see Keras's ``ConvTranspose`` fans:
    ``fan_in = prod(kernel_size) * filters``, ``fan_out = prod(kernel_size) *
    in_channels`` (``flax.linen.ConvTranspose`` stores ``(*kernel_size, in,
    out)`` and so swaps the two; Keras's initializer names follow Keras).
    """

    def validate(self, config: LayerConfig) -> LayerConfig:
        """Checks ``padding`` ("valid"/"same", as Keras) and ``output_padding``; rejects other options."""
        options = dict(config.options)
        output_padding = options.pop("output_padding", None)
        if options:
            raise ValueError(f"{config.name} takes no argument {options!r}.")
        if config.padding not in ("valid", "same"):
            raise ValueError(
                f"{config.name} needs padding 'valid' or 'same' (as Keras's Conv{config.rank}DTranspose), "
                f"got padding={config.padding!r}."
            )
        if config.max_matrix_bytes is not None:
            raise ValueError(
                f"{config.name} takes no max_matrix_bytes (the transposed op uses the default limit "
                f"of its matrix build), got max_matrix_bytes={config.max_matrix_bytes!r}."
            )
        if output_padding is not None:
            output_padding = arguments.to_tuple(output_padding, config.rank, "output_padding", minimum=0)
            if any(p >= s for p, s in zip(output_padding, config.strides)):
                raise ValueError(
                    f"{config.name} needs output_padding smaller than strides in every dimension (as "
                    f"Keras), got output_padding={output_padding} with strides={config.strides}."
                )
            windows = tuple(d * (k - 1) + 1 for k, d in zip(config.kernel_size, config.dilation_rate))
            if config.padding == "same" and any(
                w % 2 == 0 and p == 0 for w, p in zip(windows, output_padding)
            ):
                # Then the output is one short of any size the forward layer maps back to the input.
                raise ValueError(
                    f"{config.name} with padding='same' and an even dilated window {windows} needs "
                    f"output_padding >= 1 in those dimensions (so strides >= 2) or output_padding=None, "
                    f"got output_padding={output_padding} with strides={config.strides}."
                )
        return dataclasses.replace(config, options=(("output_padding", output_padding),))

    def _geometry(self, config: LayerConfig, spatial: tuple[int, ...]):
        return transpose_geometry(
            spatial,
            config.kernel_size,
            strides=config.strides,
            padding=config.padding,
            output_padding=config.option("output_padding"),
            dilation_rate=config.dilation_rate,
        )

    def output_spatial(self, config: LayerConfig, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """Keras's ``Conv*DTranspose`` output shape (``transpose_output_shape``)."""
        return transpose_output_shape(
            spatial,
            config.kernel_size,
            strides=config.strides,
            padding=config.padding,
            output_padding=config.option("output_padding"),
            dilation_rate=config.dilation_rate,
        )

    def kernel_shape(self, config: LayerConfig, spatial: tuple[int, ...], channels: int) -> tuple[int, ...]:
        return (*spatial, *config.kernel_size, config.filters, channels)

    def kernel_axis_names(self, config: LayerConfig) -> tuple[str, ...]:
        """``local_pos_<d>`` (input positions), ``local_window_<d>``, ``local_filters``, ``local_in``."""
        names = sharding_lib.kernel_axis_names(config.rank)
        return (*names[:-2], names[-1], names[-2])

    def made_for(
        self, config: LayerConfig, kernel_shape: tuple[int, ...]
    ) -> tuple[tuple[int, ...] | None, int]:
        return tuple(kernel_shape[: config.rank]), kernel_shape[-1]

    def out_sharding(self, config: LayerConfig, kernel_spec: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
        """The output positions are not the kernel's: left to XLA; the filters follow the kernel's."""
        return (None,) * config.rank, kernel_spec[-2]

    def constrain_kernel(self, config: LayerConfig, constraint: Constraint, kernel: jax.Array) -> jax.Array:
        """A unit is one (kernel position, filter): its window and input channels, as in the forward layer."""
        swapped = kernel.swapaxes(-1, -2)
        return constrain_kernel(constraint, swapped, config.rank).swapaxes(-1, -2)

    def compute(
        self, config: LayerConfig, inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None
    ) -> jax.Array:
        geometry = self._geometry(config, split_input(config, inputs.shape).spatial)
        return locally_connected_transpose(
            inputs,
            kernel,
            bias,
            spatial_shape=geometry.input_spatial,
            strides=config.strides,
            padding=geometry.padding,
            dilation_rate=config.dilation_rate,
            data_format=config.data_format,
            implementation=config.implementation,
            precision=config.precision,
        )


TRANSPOSE = TransposeOp()
