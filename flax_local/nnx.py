"""Locally-connected layers on ``flax.nnx``.

NNX modules create their parameters at construction, so they take the input
channels (``in_features``) and the input's spatial shape (``input_shape``)
there; everything else matches the linen modules ``flax_local.LocallyConnected*``.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from flax_local import nnx as local_nnx
  >>> layer = local_nnx.LocallyConnected2D(3, 8, kernel_size=3, input_shape=(12, 12), rngs=nnx.Rngs(0))
  >>> layer(jnp.ones((4, 12, 12, 3))).shape
  (4, 10, 10, 8)
"""

from flax_local._src.layers.nnx import LocallyConnected as LocallyConnected
from flax_local._src.layers.nnx import LocallyConnected1D as LocallyConnected1D
from flax_local._src.layers.nnx import LocallyConnected2D as LocallyConnected2D
from flax_local._src.layers.nnx import LocallyConnected3D as LocallyConnected3D
from flax_local._src.layers.nnx import RegularizationLoss as RegularizationLoss
from flax_local._src.layers.nnx import apply_constraints as apply_constraints
from flax_local._src.layers.nnx import regularization_loss as regularization_loss
from flax_local._src.layers.nnx_transpose import LocallyConnected1DTranspose as LocallyConnected1DTranspose
from flax_local._src.layers.nnx_transpose import LocallyConnected2DTranspose as LocallyConnected2DTranspose
from flax_local._src.layers.nnx_transpose import LocallyConnected3DTranspose as LocallyConnected3DTranspose

__all__ = [
    "LocallyConnected",
    "LocallyConnected1D",
    "LocallyConnected1DTranspose",
    "LocallyConnected2D",
    "LocallyConnected2DTranspose",
    "LocallyConnected3D",
    "LocallyConnected3DTranspose",
    "RegularizationLoss",
    "apply_constraints",
    "regularization_loss",
]
