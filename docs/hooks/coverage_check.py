"""MkDocs hook: fail the build when a public name of flax_local is missing from the API pages.

The API pages render each public module with mkdocstrings, which lists the
members in the module's ``__all__``; so a name a module gains appears without
editing the docs. This hook checks that it did: after the build, every name in
the ``__all__`` of every documented module must have its anchor
(``id="<module>.<name>"``) in the module's rendered page. As optax's
``docs/ext/coverage_check.py`` does for Sphinx.
"""

from __future__ import annotations

import importlib
import pathlib

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
    return missing


def on_post_build(config, **kwargs) -> None:
    from mkdocs.exceptions import PluginError  # here, so that tests can import this file without mkdocs

    missing = missing_names(config["site_dir"])
    if missing:
        raise PluginError(f"API reference misses {len(missing)} public name(s): {', '.join(missing)}")
