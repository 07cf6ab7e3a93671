"""Griffe extension: read the library's ``Example:`` docstring sections as examples.

Griffe's Google parser takes ``Examples:`` as an examples section (whose ``>>>``
lines render as code) but ``Example:`` as an admonition of plain Markdown, where
doctest lines like ``variables["params"]["kernel"]`` would read as links. The
library's docstrings say ``Example:`` (Google style allows both), so the docs
read it as ``Examples:``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)


def _default(value: object) -> str | None:
    """Source-like text for a default: ``jax.numpy.float32`` rather than ``<class ...>``."""
    if value is inspect.Parameter.empty:
        return None
    if isinstance(value, type) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


class DataclassSignatures(griffe.Extension):
    """Gives every dataclass (every Flax linen module) the ``__init__`` Python generates for it.

    Static analysis cannot see the constructor that ``flax.linen.Module``
    subclasses get at class creation, so ``LocallyConnected2D`` would show no
    arguments. This reads the runtime signature and adds it as ``__init__``,
    which ``merge_init_into_class`` then shows as the class's signature.
    """

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        self._visit(pkg)

    def _visit(self, module: griffe.Module) -> None:
        for member in list(module.members.values()):
            if member.is_alias:
                continue
            if member.is_module:
                self._visit(member)
            elif member.is_class:
                self._add_init(member)

    def _add_init(self, cls: griffe.Class) -> None:
        try:
            runtime = getattr(importlib.import_module(cls.module.path), cls.name)
        except (ImportError, AttributeError):
            return
        if not dataclasses.is_dataclass(runtime) or "__init__" in cls.members:
            return
        parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
        for parameter in inspect.signature(runtime).parameters.values():
            if parameter.name == "parent":  # Flax's bookkeeping, never passed by users
                continue
            annotation = parameter.annotation
            if annotation is not inspect.Parameter.empty and not isinstance(annotation, str):
                annotation = inspect.formatannotation(annotation)
            parameters.append(
                griffe.Parameter(
                    parameter.name,
                    annotation=None if annotation is inspect.Parameter.empty else annotation,
                    kind=griffe.ParameterKind[parameter.kind.name.lower()],
                    default=_default(parameter.default),
                )
            )
        init = griffe.Function("__init__", parameters=griffe.Parameters(*parameters), parent=cls)
        cls.set_member("__init__", init)
