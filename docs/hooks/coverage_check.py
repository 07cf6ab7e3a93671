"""MkDocs hook: fail the build when a public name of flax_local is missing from the API pages.

The API pages render each public module with mkdocstrings, which lists the
members in the module's ``__all__``; so a name a module gains appears without
editing the docs. This hook checks that it did: after the build, every name in
the ``__all__`` of every documented module must have its anchor
(``id="<module>.<name>"``) in the module's rendered page, and every dataclass
(every Flax linen layer) must show each of its fields in its signature, since
its docstring alone does not list them. As optax's
``docs/ext/coverage_check.py`` does for Sphinx.
"""

from __future__ import annotations

import dataclasses
import html as html_lib
import importlib
import pathlib
import re

# Public module -> its API page (relative to the site, as mkdocs writes it).
PAGES = {
    "flax_local": "api/flax_local/index.html",
    "flax_local.functional": "api/functional/index.html",
    "flax_local.nnx": "api/nnx/index.html",
    "flax_local.keras": "api/keras/index.html",
    "flax_local.sharding": "api/sharding/index.html",
    "flax_local.initializers": "api/initializers/index.html",
    "flax_local.regularizers": "api/regularizers/index.html",
    "flax_local.constraints": "api/constraints/index.html",
}


def missing_names(site_dir: str | pathlib.Path) -> list[str]:
    """``module.name`` for every public name without an anchor on its module's page."""
    missing = []
    for module_name, page in PAGES.items():
        path = pathlib.Path(site_dir) / page
        html = path.read_text(encoding="utf-8") if path.is_file() else ""
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if f"{module_name}.{name}" in PAGES:
                continue  # a public submodule: it has its own page
            if f'id="{module_name}.{name}"' not in html:
                missing.append(f"{module_name}.{name}")
            elif dataclasses.is_dataclass(getattr(module, name)):
                missing += _missing_arguments(html, module_name, name, getattr(module, name))
    return missing


def _missing_arguments(html: str, module_name: str, name: str, cls: type) -> list[str]:
    """``module.Class(argument)`` for each dataclass field its rendered signature lacks."""
    section = html[html.index(f'id="{module_name}.{name}"') :]
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", section))
    head = text[: text.find("Bases:")]  # the heading and the signature, before the docstring
    signature = head[head.find(f"{name}(") :] if f"{name}(" in head else ""
    fields = [field.name for field in dataclasses.fields(cls) if field.name != "parent"]
    return [f"{module_name}.{name}({field})" for field in fields if f"{field}:" not in signature]


def on_post_build(config, **kwargs) -> None:
    from mkdocs.exceptions import PluginError  # here, so that tests can import this file without mkdocs

    missing = missing_names(config["site_dir"])
    if missing:
        raise PluginError(f"API reference misses {len(missing)} public name(s): {', '.join(missing)}")
