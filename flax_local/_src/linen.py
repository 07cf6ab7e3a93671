"""Old import path of the linen modules, kept as an alias: they live in ``_src/layers/linen.py``."""

from flax_local._src.layers.linen import LocallyConnected as LocallyConnected
from flax_local._src.layers.linen import LocallyConnected1D as LocallyConnected1D
from flax_local._src.layers.linen import LocallyConnected2D as LocallyConnected2D
from flax_local._src.layers.linen import LocallyConnected3D as LocallyConnected3D
