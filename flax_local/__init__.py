"""flax_local: locally-connected layers (unshared-weight convolutions) for JAX and Flax.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import flax_local
  >>> layer = flax_local.LocallyConnected2D(filters=8, kernel_size=3)
  >>> x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  >>> variables = layer.init(jax.random.key(1), x)
  >>> layer.apply(variables, x).shape
  (4, 10, 10, 8)
"""

from flax_local import constraints as constraints
from flax_local import functional as functional
from flax_local import initializers as initializers
from flax_local import regularizers as regularizers
from flax_local._src.linen import LocallyConnected as LocallyConnected
from flax_local._src.linen import LocallyConnected1D as LocallyConnected1D
from flax_local._src.linen import LocallyConnected2D as LocallyConnected2D
from flax_local._src.linen import LocallyConnected3D as LocallyConnected3D
from flax_local._src.native_build import NativeKernels as NativeKernels
from flax_local._src.native_build import NativeKernelsUnavailableWarning as NativeKernelsUnavailableWarning
from flax_local._src.native_build import native_kernels as native_kernels
from flax_local._src.regularizers import regularization_loss as regularization_loss

__version__ = "0.1.0"

__all__ = [
    "LocallyConnected",
    "LocallyConnected1D",
    "LocallyConnected2D",
    "LocallyConnected3D",
    "NativeKernels",
    "NativeKernelsUnavailableWarning",
    "constraints",
    "functional",
    "initializers",
    "native_kernels",
    "regularization_loss",
    "regularizers",
]
