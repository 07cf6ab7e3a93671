"""The pure functional core of flax_local: no Flax, only jax."""

from flax_local._src.auto import choose_implementation as choose_implementation
from flax_local._src.dense import DEFAULT_MAX_MATRIX_BYTES as DEFAULT_MAX_MATRIX_BYTES
from flax_local._src.locally_connected import locally_connected as locally_connected
from flax_local._src.locally_connected import output_shape as output_shape
from flax_local._src.patches import extract_patches as extract_patches

__all__ = [
    "DEFAULT_MAX_MATRIX_BYTES",
    "choose_implementation",
    "extract_patches",
    "locally_connected",
    "output_shape",
]
