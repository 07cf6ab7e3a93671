"""Regularizers as loss terms, with tf_keras's semantics."""

from flax_local._src.regularizers import L1L2 as L1L2
from flax_local._src.regularizers import Regularizer as Regularizer
from flax_local._src.regularizers import get_regularizer as get
from flax_local._src.regularizers import l1 as l1
from flax_local._src.regularizers import l1_l2 as l1_l2
from flax_local._src.regularizers import l2 as l2
from flax_local._src.regularizers import regularization_loss as regularization_loss

__all__ = ["L1L2", "Regularizer", "get", "l1", "l1_l2", "l2", "regularization_loss"]
