"""flax_local: locally-connected layers (unshared-weight convolutions) for JAX and Flax.

The submodules ``flax_local.nnx``, ``flax_local.sharding`` and
``flax_local.keras`` are attributes of the package, imported on first use, so
``import flax_local`` imports neither h5py nor TensorFlow.

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
from flax_local._src.conv_local import conv_local_kernel as conv_local_kernel
from flax_local._src.conv_local import from_conv_local as from_conv_local
from flax_local._src.layers.linen import LocallyConnected as LocallyConnected
from flax_local._src.layers.linen import LocallyConnected1D as LocallyConnected1D
from flax_local._src.layers.linen import LocallyConnected2D as LocallyConnected2D
from flax_local._src.layers.linen import LocallyConnected3D as LocallyConnected3D
from flax_local._src.layers.linen_transpose import LocallyConnected1DTranspose as LocallyConnected1DTranspose
from flax_local._src.layers.linen_transpose import LocallyConnected2DTranspose as LocallyConnected2DTranspose
from flax_local._src.layers.linen_transpose import LocallyConnected3DTranspose as LocallyConnected3DTranspose
from flax_local._src.native_build import NativeKernels as NativeKernels
from flax_local._src.native_build import NativeKernelsUnavailableWarning as NativeKernelsUnavailableWarning
from flax_local._src.native_build import native_kernels as native_kernels
from flax_local._src.regularizers import regularization_loss as regularization_loss

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("keras", "nnx", "sharding")


def __getattr__(name: str):
    """Imports ``keras``, ``nnx`` and ``sharding`` on first access (PEP 562)."""
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})


__all__ = [
    "LocallyConnected",
    "LocallyConnected1D",
    "LocallyConnected1DTranspose",
    "LocallyConnected2D",
    "LocallyConnected2DTranspose",
    "LocallyConnected3D",
    "LocallyConnected3DTranspose",
    "NativeKernels",
    "NativeKernelsUnavailableWarning",
    "constraints",
    "conv_local_kernel",
    "from_conv_local",
    "functional",
    "initializers",
    "native_kernels",
    "regularization_loss",
    "regularizers",
]
