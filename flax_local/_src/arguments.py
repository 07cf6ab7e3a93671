"""Parsing and validation of the layer arguments shared by every entry point.

Every function here runs on static Python values at trace time and raises a
``ValueError`` that names the argument, the value received and what was
expected, so that a bad argument never reaches einsum or XLA.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal, TypeAlias

import jax
import jax.numpy as jnp
from jax import lax

DataFormat: TypeAlias = Literal["channels_last", "channels_first"]
PaddingLike: TypeAlias = str | Sequence[tuple[int, int]]
IntOrSequence: TypeAlias = int | Sequence[int]

_DATA_FORMATS = ("channels_last", "channels_first")
_PADDING_NAMES = ("valid", "same", "causal")


def to_tuple(value: IntOrSequence, rank: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """Returns ``value`` as a tuple of ``rank`` ints, each at least ``minimum``.

    An int is repeated ``rank`` times; a sequence must have ``rank`` entries.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a sequence of {rank} ints, got {value!r}.")
    if isinstance(value, int) or _is_integer_scalar(value):
        values = (int(value),) * rank
    elif isinstance(value, Sequence) and all(
        isinstance(v, int) and not isinstance(v, bool) or _is_integer_scalar(v) for v in value
    ):
        values = tuple(int(v) for v in value)
        if len(values) != rank:
            raise ValueError(
                f"{name} must have {rank} entries (one per spatial dimension), got {tuple(value)!r}."
            )
    else:
        raise ValueError(f"{name} must be an int or a sequence of {rank} ints, got {value!r}.")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {values!r}.")
    return values


def _is_integer_scalar(value: object) -> bool:
    """True for numpy integer scalars, which users pass around from shapes."""
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu"  # type: ignore[attr-defined]


def check_data_format(data_format: str) -> DataFormat:
    """Returns ``data_format`` lower-cased, or raises if it is not a known layout."""
    normalized = data_format.lower() if isinstance(data_format, str) else data_format
    if normalized not in _DATA_FORMATS:
        raise ValueError(f"data_format must be one of {_DATA_FORMATS}, got {data_format!r}.")
    return normalized  # type: ignore[return-value]


def check_implementation(implementation: str | int) -> str:
    """Returns the canonical implementation name, ``"auto"`` or one in the registry.

    Names are case-insensitive; Keras's integer aliases (1, 2, 3) are accepted.
    """
    from flax_local._src import registry  # imports every implementation, which import this module

    aliases = registry.keras_aliases()
    names = ("auto", *registry.NAMES)
    if isinstance(implementation, int) and not isinstance(implementation, bool):
        if implementation in aliases:
            return aliases[implementation]
    elif isinstance(implementation, str) and implementation.lower() in names:
        return implementation.lower()
    raise ValueError(
        f"implementation must be one of {names} or Keras's {', '.join(map(str, aliases))}, "
        f"got {implementation!r}."
    )


def check_floating_dtype(dtype, op: str = "locally_connected", **operands) -> None:
    """Raises unless the layer's ``dtype`` (the operands' common type) is floating point.

    Every implementation computes in floating point; integer or bool layers
    would otherwise fail deep inside XLA or silently truncate.
    """
    if not jnp.issubdtype(dtype, jnp.floating):
        given = ", ".join(f"{name} {jnp.dtype(value.dtype)}" for name, value in operands.items())
        raise ValueError(
            f"{op} computes in floating point, but its operands ({given}) have common dtype "
            f"{jnp.dtype(dtype)}; cast them to a floating dtype (e.g. float32) first."
        )


def check_precision(precision: lax.PrecisionLike) -> None:
    """Raises unless ``jax.lax.dot_general`` accepts ``precision``.

    Checked up front because the ``"native"`` kernels ignore it: without this
    a typo would pass silently wherever ``"auto"`` picks them. jax's own check
    decides (an abstract matrix product, no computation), so every form it
    accepts is accepted here.
    """
    try:
        _check_precision(precision)
    except TypeError:  # unhashable (e.g. a list): check without the cache
        _check_precision.__wrapped__(precision)


@functools.lru_cache(maxsize=64)
def _check_precision(precision) -> None:
    operand = jax.ShapeDtypeStruct((1, 1), "float32")
    try:
        jax.eval_shape(lambda a: lax.dot(a, a, precision=precision), operand)
    except (ValueError, TypeError) as error:
        raise ValueError(f"precision={precision!r} is not accepted by jax.lax.dot_general: {error}") from None


def check_positive(value: int, name: str) -> int:
    """Returns ``value`` if it is a positive int, else raises."""
    if isinstance(value, bool) or not (isinstance(value, int) or _is_integer_scalar(value)):
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def check_padding(padding: PaddingLike, rank: int) -> str | tuple[tuple[int, int], ...]:
    """Validates ``padding`` without resolving it to numbers.

    Returns the lower-cased name for a string, or a tuple of ``rank`` (low, high)
    int pairs for an explicit padding.
    """
    if isinstance(padding, str):
        name = padding.lower()
        if name not in _PADDING_NAMES:
            raise ValueError(
                f"padding must be one of {_PADDING_NAMES} (case-insensitive) or a sequence of "
                f"{rank} (low, high) pairs, got {padding!r}."
            )
        if name == "causal" and rank != 1:
            raise ValueError(
                f"padding='causal' is only defined for 1 spatial dimension, but the layer has {rank}."
            )
        return name
    expected = f"a sequence of {rank} (low, high) int pairs, one per spatial dimension"
    if not isinstance(padding, Sequence) or len(padding) != rank:
        raise ValueError(f"padding must be 'valid', 'same', 'causal' or {expected}, got {padding!r}.")
    pairs = []
    for pair in padding:
        if (
            not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) or _is_integer_scalar(p) for p in pair)
        ):
            raise ValueError(f"padding must be {expected}, got {padding!r}.")
        pairs.append((int(pair[0]), int(pair[1])))
    return tuple(pairs)
