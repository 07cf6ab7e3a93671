"""Weight constraints, and the optax transformation that enforces them."""

from flax_local._src.constraints import Constraint as Constraint
from flax_local._src.constraints import MaxNorm as MaxNorm
from flax_local._src.constraints import MinMaxNorm as MinMaxNorm
from flax_local._src.constraints import NonNeg as NonNeg
from flax_local._src.constraints import RadialConstraint as RadialConstraint
from flax_local._src.constraints import UnitNorm as UnitNorm
from flax_local._src.constraints import get_constraint as get
from flax_local._src.constraints import max_norm as max_norm
from flax_local._src.constraints import min_max_norm as min_max_norm
from flax_local._src.constraints import non_neg as non_neg
from flax_local._src.constraints import radial_constraint as radial_constraint
from flax_local._src.constraints import unit_norm as unit_norm
from flax_local._src.enforce_constraints import enforce_constraints as enforce_constraints

__all__ = [
    "Constraint",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "RadialConstraint",
    "UnitNorm",
    "enforce_constraints",
    "get",
    "max_norm",
    "min_max_norm",
    "non_neg",
    "radial_constraint",
    "unit_norm",
]
