"""Run-wide jax settings for the test suite.

As in equinox's test suite, implicit rank promotion and implicit dtype
promotion are errors for the whole run: the library must broadcast and cast
explicitly, so these catch shape and dtype bugs that would otherwise pass
silently (e.g. a ``(positions, F)`` bias added to a ``(batch, positions, F)``
output by accident of broadcasting).

On an accelerator, float32 matrix products at default precision may run in
TF32 (GPU) or bfloat16 passes (TPU), about 1e-3 off; the suite checks the
layers' arithmetic against float64 references at float32 tolerances, so there
it runs at ``"highest"`` precision (the layers pass ``precision=None`` on to
``dot_general``, which then follows this setting).
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")
