"""Old import path of the NNX modules, kept as an alias: they live in ``_src/layers/nnx.py``."""

from flax_local._src.layers.nnx import LocallyConnected as LocallyConnected
from flax_local._src.layers.nnx import LocallyConnected1D as LocallyConnected1D
from flax_local._src.layers.nnx import LocallyConnected2D as LocallyConnected2D
from flax_local._src.layers.nnx import LocallyConnected3D as LocallyConnected3D
from flax_local._src.layers.nnx import RegularizationLoss as RegularizationLoss
from flax_local._src.layers.nnx import apply_constraints as apply_constraints
from flax_local._src.layers.nnx import regularization_loss as regularization_loss
