"""An optax transformation that enforces the constraints declared on layers."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax
from flax import linen as nn

from flax_local._src.constraints import Constraint
from flax_local._src.layers.core import LayerConfig, LocalOp
from flax_local._src.layers.linen import LocallyConnected


class _Target(NamedTuple):
    constraint: Constraint
    layer: tuple[LocalOp, LayerConfig] | None  # the layer's family and config for a kernel; None: a bias

    def apply(self, value: jax.Array) -> jax.Array:
        if self.layer is None:  # each element of a bias is a unit
            return self.constraint(value, axis=())
        # The layer's rank, not the kernel's ndim: kernels may be stacked (nn.scan, nn.vmap).
        op, config = self.layer
        return op.constrain_kernel(config, self.constraint, value)


def declared_constraints(
    model: nn.Module, *example_args: Any, **example_kwargs: Any
) -> dict[tuple[str, ...], _Target]:
    """Finds every flax_local layer in ``model`` and the constraints it declares.

    ``model.init`` is traced abstractly (``jax.eval_shape``: nothing is
    computed) with the example inputs, and every locally-connected layer that
    runs is recorded, however deeply it is nested.

    Returns:
      A map from parameter path (module path plus ``"kernel"`` or ``"bias"``)
      to the constraint to enforce there.
    """
    found: dict[tuple[str, ...], _Target] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, LocallyConnected) and context.method_name == "__call__":
            path = tuple(module.scope.path)
            config = module.config  # validated at construction: a bias constraint implies a bias
            if config.kernel_constraint is not None:
                found[(*path, "kernel")] = _Target(config.kernel_constraint, (module.op, config))
            if config.bias_constraint is not None:
                # Per-unit norms of a bias act on each element (one weight per unit).
                found[(*path, "bias")] = _Target(config.bias_constraint, None)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: model.init(jax.random.key(0), *example_args, **example_kwargs))
    return found


def _key_path(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path)


def _resolve(targets: dict[tuple[str, ...], _Target], params: Any) -> dict[tuple[str, ...], _Target]:
    """Maps the declared paths onto the leaves of ``params``; raises if one is missing."""
    leaves = {_key_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    resolved = {}
    for path, target in targets.items():
        for candidate in (path, ("params", *path)):
            if candidate in leaves:
                resolved[candidate] = target
                break
        else:
            raise ValueError(
                f"a constraint is declared on parameter {'/'.join(path)} but params has no such "
                f"leaf (it has {sorted('/'.join(p) for p in leaves)[:8]}...); the constraint would "
                "be silently dropped. Pass the same model's params (or variables)."
            )
    return resolved


def enforce_constraints(
    model: nn.Module, *example_args: Any, **example_kwargs: Any
) -> optax.GradientTransformation:
    """An optax transformation that keeps every declared constraint satisfied.

    Put it last in an ``optax.chain``: it rewrites the updates so that
    ``optax.apply_updates(params, updates)`` lands on the constrained
    parameters, ``constraint(params + updates)``, which is how Keras applies
    constraints after every optimizer step.

    Args:
      model: the (unbound) Flax model that contains flax_local layers anywhere.
      *example_args: example inputs for ``model.init`` (only shapes matter).
      **example_kwargs: keyword inputs for ``model.init``.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    Raises:
      ValueError: at ``init``, when params lack a constrained leaf; at
        ``update``, when ``params`` is None. (A bias constraint on a layer
        without a bias is rejected when the layer is constructed.)

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import flax_local
      >>> model = flax_local.LocallyConnected1D(4, 3, kernel_constraint=flax_local.constraints.non_neg())
      >>> x = jax.random.normal(jax.random.key(0), (2, 8, 3))
      >>> params = model.init(jax.random.key(1), x)["params"]
      >>> tx = optax.chain(optax.sgd(1.0), flax_local.constraints.enforce_constraints(model, x))
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: model.apply({"params": p}, x).sum())(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
      >>> bool((params["kernel"] >= 0).all())
      True
    """
    declared = declared_constraints(model, *example_args, **example_kwargs)

    def init_fn(params):
        _resolve(declared, params)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("enforce_constraints needs params: call tx.update(updates, state, params).")
        targets = _resolve(declared, params)

        def constrain(path, update, param):
            target = targets.get(_key_path(path))
            if target is None:
                return update
            return target.apply(param + update) - param

        return jax.tree_util.tree_map_with_path(constrain, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)
