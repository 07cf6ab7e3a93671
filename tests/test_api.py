"""API hygiene (as dm_pix's api test): every public name is documented with a runnable example."""

import importlib
import inspect

import pytest

_NAMESPACES = [
    "flax_local",
    "flax_local.functional",
    "flax_local.initializers",
    "flax_local.regularizers",
    "flax_local.constraints",
    "flax_local.keras",
    "flax_local.nnx",
    "flax_local.sharding",
]


def _public(namespace):
    try:
        module = importlib.import_module(namespace)
    except ImportError:
        pytest.skip(f"{namespace} is not available")
    for name in module.__all__:
        yield name, getattr(module, name)


@pytest.mark.parametrize("namespace", _NAMESPACES)
def test_all_is_sorted_and_resolves(namespace):
    names = [name for name, _ in _public(namespace)]
    assert names == sorted(names), f"{namespace}.__all__ is not sorted"


@pytest.mark.parametrize("namespace", _NAMESPACES)
def test_every_public_function_and_class_has_an_example(namespace):
    missing = []
    for name, value in _public(namespace):
        if inspect.ismodule(value) or not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        doc = inspect.getdoc(value) or ""
        if "Example" not in doc or ">>>" not in doc:
            missing.append(name)
    assert not missing, f"{namespace}: no runnable example in the docstring of {missing}"


@pytest.mark.parametrize("namespace", _NAMESPACES)
def test_public_functions_are_annotated(namespace):
    unannotated = []
    for name, value in _public(namespace):
        if inspect.isfunction(value):
            signature = inspect.signature(value)
            if signature.return_annotation is inspect.Signature.empty:
                unannotated.append(name)
    assert not unannotated, f"{namespace}: no return annotation on {unannotated}"
