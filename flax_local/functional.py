"""The pure functional core of flax_local: no Flax, only jax."""

from flax_local._src.auto import choose_implementation as choose_implementation
from flax_local._src.auto import native_usable as native_usable
from flax_local._src.dense import DEFAULT_MAX_MATRIX_BYTES as DEFAULT_MAX_MATRIX_BYTES
from flax_local._src.geometry import Geometry as Geometry
from flax_local._src.locally_connected import geometry as geometry
from flax_local._src.locally_connected import locally_connected as locally_connected
from flax_local._src.locally_connected import output_shape as output_shape
from flax_local._src.native_build import NativeKernels as NativeKernels
from flax_local._src.native_build import NativeKernelsUnavailableWarning as NativeKernelsUnavailableWarning
from flax_local._src.native_build import NativeUnavailableError as NativeUnavailableError
from flax_local._src.native_build import native_kernels as native_kernels
from flax_local._src.transpose import locally_connected_transpose as locally_connected_transpose
from flax_local._src.transpose import transpose_geometry as transpose_geometry
from flax_local._src.transpose import transpose_output_shape as transpose_output_shape

__all__ = [
    "DEFAULT_MAX_MATRIX_BYTES",
    "Geometry",
    "NativeKernels",
    "NativeKernelsUnavailableWarning",
    "NativeUnavailableError",
    "choose_implementation",
    "geometry",
    "locally_connected",
    "locally_connected_transpose",
    "native_kernels",
    "native_usable",
    "output_shape",
    "transpose_geometry",
    "transpose_output_shape",
]
