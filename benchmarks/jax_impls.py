"""The JAX contenders: flax_local's implementations and ``flax.linen.ConvLocal``.

Every contender gets the same numbers: flax_local's parameters are the case's
arrays; ConvLocal's kernel is the same weights rearranged to its layout, so the
outputs and gradients agree to float tolerance (checked by ``check_agreement``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import flax_local
from benchmarks.cases import Case
from flax_local._src import registry
from flax_local._src.geometry import make_geometry
from flax_local.functional import choose_implementation

# Every implementation in the registry, and "auto".
FLAX_LOCAL_IMPLEMENTATIONS = (*registry.NAMES, "auto")


@dataclasses.dataclass
class Contender:
    """One way to run a case.

    Attributes:
      name: row label, e.g. ``"flax_local:patches"`` or ``"ConvLocal"``.
      forward: ``forward(params, x) -> y``.
      params: its parameters (device arrays).
      to_ours: maps a gradient of ``params`` to flax_local's layout
        ``{"kernel", "bias"}``, for the agreement check.
      note: anything the reader should know about this row.
    """

    name: str
    forward: Callable
    params: dict
    to_ours: Callable[[dict], dict]
    note: str = ""

    def train_step(self) -> Callable:
        """``step(params, x) -> (loss, (d_params, d_x))``: value and gradient w.r.t. both."""

        def loss(params, x):
            y = self.forward(params, x)
            return jnp.mean(jnp.square(y.astype(jnp.float32)))

        return jax.value_and_grad(loss, argnums=(0, 1))


def geometry_of(case: Case):
    """The flax_local geometry of ``case``."""
    return make_geometry(case.spatial, case.kernel_size, case.strides, case.padding, case.dilation)


def auto_choice(case: Case) -> str:
    """What ``implementation="auto"`` picks for ``case`` on this backend."""
    return choose_implementation(geometry_of(case), case.channels, case.filters, jnp.dtype(case.dtype))


def matrix_bytes(case: Case, implementation: str) -> int:
    """Bytes of the matrix an implementation (or ``"auto"``'s pick) builds: its registry ``matrix_bytes``, or 0."""
    entry = registry.get(auto_choice(case) if implementation == "auto" else implementation)
    if entry.matrix_bytes is None:
        return 0
    return entry.matrix_bytes(geometry_of(case), case.channels, case.filters, case.itemsize, case.batch)


def inputs(case: Case, seed: int = 0) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    """The case's input on device in its dtype, and float32 numpy kernel and bias."""
    x, kernel, bias = case.arrays(seed)
    return jnp.asarray(x, case.dtype), kernel, bias


def flax_local_contender(case: Case, implementation: str, kernel: np.ndarray, bias: np.ndarray) -> Contender:
    """``flax_local.LocallyConnected`` with ``implementation``, parameters as given."""
    dtype = jnp.dtype(case.dtype)
    module = flax_local.LocallyConnected(
        filters=case.filters,
        kernel_size=case.kernel_size,
        strides=case.strides,
        padding=case.padding,
        data_format=case.data_format,
        dilation_rate=case.dilation,
        implementation=implementation,
        dtype=dtype,
        param_dtype=dtype,
        max_matrix_bytes=1 << 62,
    )
    params = {"kernel": jnp.asarray(kernel, dtype), "bias": jnp.asarray(bias, dtype)}
    note = f"auto -> {auto_choice(case)}" if implementation == "auto" else ""
    return Contender(
        name=f"flax_local:{implementation}",
        forward=lambda p, x: module.apply({"params": p}, x),
        params=params,
        to_ours=lambda g: g,
        note=note,
    )


def convlocal_contender(case: Case, kernel: np.ndarray, bias: np.ndarray) -> Contender:
    """``flax.linen.ConvLocal`` holding the same weights in its kernel layout.

    ConvLocal's kernel is ``(*out, C * window, F)`` with channels varying
    slowest (``lax.conv_general_dilated_local``'s "C" + spatial order); ours is
    ``(*out, *kernel_size, C, F)``. ConvLocal reads channels-last only, so a
    channels_first case transposes in and out, as a user would.
    """
    rank, dtype = case.rank, jnp.dtype(case.dtype)
    out = case.output_spatial
    perm = (*range(rank), 2 * rank, *range(rank, 2 * rank), 2 * rank + 1)  # (*out, C, *k, F)
    flax_kernel = np.transpose(kernel, perm).reshape(*out, case.channels * case.window, case.filters)
    module = nn.ConvLocal(
        features=case.filters,
        kernel_size=case.kernel_size,
        strides=case.strides,
        padding=case.padding.upper(),
        kernel_dilation=case.dilation,
        dtype=dtype,
        param_dtype=dtype,
    )
    params = {"kernel": jnp.asarray(flax_kernel, dtype), "bias": jnp.asarray(bias, dtype)}
    channels_first = case.data_format == "channels_first"

    def forward(p, x):
        if channels_first:
            x = jnp.moveaxis(x, 1, -1)
        y = module.apply({"params": p}, x)
        return jnp.moveaxis(y, -1, 1) if channels_first else y

    def to_ours(g):
        k = g["kernel"].reshape(*out, case.channels, *case.kernel_size, case.filters)
        inverse = (*range(rank), *range(rank + 1, 2 * rank + 1), rank, 2 * rank + 1)
        return {"kernel": jnp.transpose(k, inverse), "bias": g["bias"]}

    note = "NCHW via transposes" if channels_first else ""
    return Contender("ConvLocal", forward, params, to_ours, note)


def relative_error(a, b) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def tolerance(case: Case) -> float:
    """The relative error two implementations may differ by.

    float32: 1e-4 on CPU; 5e-3 elsewhere, where default precision may round
    float32 products to TF32 (10-bit mantissa) and each implementation rounds
    different operands. bfloat16: 3e-2.
    """
    if case.dtype == "bfloat16":
        return 3e-2
    return 1e-4 if jax.default_backend() == "cpu" else 5e-3
