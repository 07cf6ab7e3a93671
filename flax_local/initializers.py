"""Initializers with Keras's names, applied per output position."""

from flax_local._src.initializers import NAMES as NAMES
from flax_local._src.initializers import Initializer as Initializer
from flax_local._src.initializers import constant as constant
from flax_local._src.initializers import get_initializer as get
from flax_local._src.initializers import identity as identity
from flax_local._src.initializers import orthogonal as orthogonal
from flax_local._src.initializers import per_position as per_position
from flax_local._src.initializers import variance_scaling as variance_scaling

__all__ = [
    "Initializer",
    "NAMES",
    "constant",
    "get",
    "identity",
    "orthogonal",
    "per_position",
    "variance_scaling",
]
