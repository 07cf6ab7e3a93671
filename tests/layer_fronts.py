"""Builds a layer on either front end (linen or NNX) from the same arguments.

Every behavioural test of the layers takes a ``front`` and calls ``build``, so
the linen and NNX modules are held to one list of checks and cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

import flax_local
from flax_local import nnx as local_nnx

FRONTS = ("linen", "nnx")
_LINEN = {
    None: flax_local.LocallyConnected,
    1: flax_local.LocallyConnected1D,
    2: flax_local.LocallyConnected2D,
    3: flax_local.LocallyConnected3D,
}
_NNX = {
    None: local_nnx.LocallyConnected,
    1: local_nnx.LocallyConnected1D,
    2: local_nnx.LocallyConnected2D,
    3: local_nnx.LocallyConnected3D,
}


class Built(NamedTuple):
    """A built layer, seen the same way whatever its front end.

    Attributes:
      params: ``{"kernel": ..., "bias": ...}`` (no bias when ``use_bias=False``),
        unboxed arrays.
      apply: ``(params, x) -> y``.
      penalty: ``(params, x) -> float32`` total regularization after a forward
        pass on ``x`` (kernel, bias and activity penalties).
      constrain: ``(params) -> params`` projected onto the declared constraints
        (``enforce_constraints`` for linen, ``apply_constraints`` for NNX).
      layer: the linen module or the NNX module itself.
      raw: what the front end made (linen: the variables; NNX: the module's state).
    """

    params: dict
    apply: Callable[[dict, jax.Array], jax.Array]
    penalty: Callable[[dict, jax.Array], jax.Array]
    constrain: Callable[[dict], dict]
    layer: Any
    raw: Any


def split_shape(shape: tuple[int, ...], rank: int, data_format: str) -> tuple[int, tuple[int, ...]]:
    """``(channels, spatial)`` of an input shape."""
    if data_format == "channels_first":
        return shape[-rank - 1], tuple(shape[-rank:])
    return shape[-1], tuple(shape[-rank - 1 : -1])


def construct(front: str, rank: int | None, input_shape: tuple[int, ...], seed: int = 0, **kwargs: Any):
    """The module alone (NNX: with its parameters, made at construction)."""
    if front == "linen":
        return _LINEN[rank](**kwargs)
    kwargs = dict(kwargs)
    filters, kernel_size = kwargs.pop("filters"), kwargs.pop("kernel_size")
    spatial_rank = rank if rank is not None else len(np.atleast_1d(kernel_size))
    channels, spatial = split_shape(input_shape, spatial_rank, kwargs.get("data_format", "channels_last"))
    return _NNX[rank](channels, filters, kernel_size, input_shape=spatial, rngs=nnx.Rngs(seed), **kwargs)


def build(front: str, rank: int | None, input_shape: tuple[int, ...], seed: int = 0, **kwargs: Any) -> Built:
    """Builds the layer on ``front`` and returns a ``Built``."""
    layer = construct(front, rank, input_shape, seed, **kwargs)
    if front == "linen":
        x = jnp.zeros(input_shape, jnp.float32)
        variables = layer.init(jax.random.key(seed), x)
        params = dict(nn.unbox(variables["params"]))

        def apply(params, x):
            return layer.apply({"params": params}, x)

        def penalty(params, x):
            _, state = layer.apply({"params": params}, x, mutable=["losses"])
            return flax_local.regularization_loss(state)

        def constrain(params):
            tx = flax_local.constraints.enforce_constraints(layer, x)
            zeros = jax.tree.map(jnp.zeros_like, params)
            updates, _ = tx.update(zeros, tx.init(params), params)
            return jax.tree.map(lambda p, u: p + u, params, updates)

        return Built(params, apply, penalty, constrain, layer, variables)

    graphdef, state = nnx.split(layer)
    params = dict(nnx.to_pure_dict(nnx.state(layer, nnx.Param)))

    def merged(params):
        copy = jax.tree.map(lambda v: v, state)
        nnx.replace_by_pure_dict(copy, {**nnx.to_pure_dict(copy), **params})
        return nnx.merge(graphdef, copy)

    def apply(params, x):
        return merged(params)(x)

    def penalty(params, x):
        module = merged(params)
        module(x)
        return local_nnx.regularization_loss(module)

    def constrain(params):
        module = merged(params)
        local_nnx.apply_constraints(module)
        return nnx.to_pure_dict(nnx.state(module, nnx.Param))

    return Built(params, apply, penalty, constrain, layer, state)
