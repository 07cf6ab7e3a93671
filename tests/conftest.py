"""Run-wide jax settings for the test suite.

As in equinox's test suite, implicit rank promotion and implicit dtype
promotion are errors for the whole run: the library must broadcast and cast
explicitly, so these catch shape and dtype bugs that would otherwise pass
silently (e.g. a ``(positions, F)`` bias added to a ``(batch, positions, F)``
output by accident of broadcasting).
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
