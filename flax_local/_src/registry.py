"""The registry of implementations: one entry per way of computing the layer.

``locally_connected`` dispatches through it, ``arguments.check_implementation``
reads the names and Keras aliases from it, ``auto.choose_implementation`` asks
each entry's cost hook in turn, and the tests and benchmarks iterate over it.
A new implementation is one file exposing an ``apply`` function with the
contract below, plus one ``Implementation(...)`` line in ``IMPLEMENTATIONS``.

The ``apply`` contract (that of ``patches.apply_patches``):
``apply(x, kernel, bias, geometry, precision) -> y`` with channels-last ``x``
of shape ``(batch, *input_spatial, C)`` (batch may be 0), ``kernel`` of shape
``(*output_spatial, *kernel_size, C, filters)``, ``bias`` of shape
``(*output_spatial, filters)`` or None, all of one floating dtype, and ``y`` of
shape ``(batch, *output_spatial, filters)`` in that dtype. Arguments arrive
validated. A tap that reads padding contributes exactly zero, whatever the
kernel holds there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from flax_local._src import auto, dense, native, patches
from flax_local._src.geometry import Geometry

ApplyFn = Callable[[jax.Array, jax.Array, "jax.Array | None", Geometry, lax.PrecisionLike], jax.Array]
MatrixBytesFn = Callable[[Geometry, int, int, int, int], int]

ALL_BACKENDS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One implementation of the layer.

    Attributes:
      name: the ``implementation=`` string (lower case).
      apply: the function that computes the layer (contract in the module docstring).
      backends: the backends where it runs its own kernels and ``"auto"`` may
        consider it; it still runs elsewhere through a portable fallback
        (XLA ops, or interpret mode).
      dtypes: the layer dtypes it accepts, or None for every floating dtype;
        another dtype raises a ``ValueError`` naming them.
      matrix_bytes: ``(geometry, channels, filters, itemsize, batch) -> bytes``
        of the largest structure it builds, checked against
        ``max_matrix_bytes`` before calling ``apply``; None if it builds
        nothing beyond the layer's own arrays.
      picks: the cost hook: ``picks(layer: auto.Layer) -> bool``, whether
        ``"auto"`` should choose it for this layer. ``"auto"`` asks the
        entries in registry order (after checking backend, dtype, availability
        and ``matrix_bytes``) and takes the first that says yes; None: never
        chosen by ``"auto"``.
      available: whether it can run in this process (e.g. its kernels build);
        None: always. ``"auto"`` skips an entry that is not available.
      keras_alias: Keras's ``implementation=`` integer for the same
        formulation, if any.

    Example:
      >>> from flax_local._src.registry import IMPLEMENTATIONS, get
      >>> [entry.name for entry in IMPLEMENTATIONS]
      ['dense', 'native', 'patches', 'sparse']
      >>> get(2).name, get("Patches").keras_alias
      ('dense', 1)
    """

    name: str
    apply: ApplyFn
    backends: tuple[str, ...] = ALL_BACKENDS
    dtypes: tuple[jnp.dtype, ...] | None = None
    matrix_bytes: MatrixBytesFn | None = None
    picks: Callable[[auto.Layer], bool] | None = None
    available: Callable[[], bool] | None = None
    keras_alias: int | None = None

    def supports_dtype(self, dtype) -> bool:
        """Whether ``apply`` accepts a layer of ``dtype``."""
        return self.dtypes is None or jnp.dtype(dtype) in self.dtypes


# Order matters to "auto" only: it takes the first entry whose cost hook accepts
# the layer, and "patches" accepts every layer.
IMPLEMENTATIONS: tuple[Implementation, ...] = (
    Implementation(
        "dense",
        dense.apply_dense,
        matrix_bytes=dense.dense_matrix_bytes,
        picks=auto.dense_pays_off,
        keras_alias=2,
    ),
    Implementation(
        "native",
        native.apply_native,
        backends=("cpu",),
        dtypes=tuple(jnp.dtype(d) for d in native.SUPPORTED_DTYPES),
        picks=auto.always,
        available=auto.native_usable,
    ),
    Implementation("patches", patches.apply_patches, picks=auto.always, keras_alias=1),
    Implementation("sparse", dense.apply_sparse, matrix_bytes=dense.sparse_matrix_bytes, keras_alias=3),
)

NAMES: tuple[str, ...] = tuple(entry.name for entry in IMPLEMENTATIONS)
"""Every implementation's name, in registry order (``"auto"`` is not one)."""

_BY_NAME = {entry.name: entry for entry in IMPLEMENTATIONS}
_BY_KERAS_ALIAS = {entry.keras_alias: entry for entry in IMPLEMENTATIONS if entry.keras_alias is not None}


def get(implementation: str | int) -> Implementation:
    """The entry named ``implementation`` (any case) or with that Keras alias.

    Raises:
      KeyError: for an unknown name; ``arguments.check_implementation`` is the
        user-facing check.
    """
    if isinstance(implementation, int) and not isinstance(implementation, bool):
        return _BY_KERAS_ALIAS[implementation]
    return _BY_NAME[implementation.lower()]


def keras_aliases() -> dict[int, str]:
    """Keras's ``implementation`` integers and the names they select."""
    return {alias: entry.name for alias, entry in sorted(_BY_KERAS_ALIAS.items())}
