"""The documentation site: every ```python block in docs/ runs, and the API pages cover the public API.

Blocks run as README.md's do (tests/test_readme.py): each on its own, in a fresh
namespace, under jax's default promotion rules. The site build itself
(``mkdocs build --strict``, in .ci/run) checks that every public name is
rendered (docs/hooks/coverage_check.py); these tests need no mkdocs.
"""

import dataclasses
import importlib
import importlib.util
import inspect
import pathlib
import re

import jax
import pytest

import flax_local
from flax_local import nnx as local_nnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
PAGES = sorted(DOCS.glob("*.md"))


def _blocks(language):
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                found.append((f"{page.name}:{text.count(chr(10), 0, match.start()) + 1}", match.group(2)))
    return found


PYTHON_BLOCKS = _blocks("python")


def test_docs_have_python_blocks():
    assert len(PYTHON_BLOCKS) >= 10


@pytest.mark.parametrize("code", [code for _, code in PYTHON_BLOCKS], ids=[name for name, _ in PYTHON_BLOCKS])
def test_python_block_runs(code):
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        exec(compile(code, "docs", "exec"), {"__name__": "docs"})


def _coverage_hook():
    spec = importlib.util.spec_from_file_location("coverage_check", DOCS / "hooks" / "coverage_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_module_has_an_api_page_rendering_it():
    pages = _coverage_hook().PAGES
    public = (
        {"flax_local"}
        | {f"flax_local.{name}" for name in flax_local.__all__ if inspect.ismodule(getattr(flax_local, name))}
        | {"flax_local.nnx", "flax_local.keras", "flax_local.sharding"}
    )
    assert public <= set(pages), public - set(pages)
    for module, page in pages.items():
        source = DOCS / page.replace("/index.html", ".md")
        assert f"::: {module}\n" in source.read_text(encoding="utf-8"), source
        importlib.import_module(module)


def test_coverage_check_reports_a_missing_name(tmp_path):
    hook = _coverage_hook()
    # An empty site misses every name; a page with every anchor misses none.
    assert "flax_local.LocallyConnected2D" in hook.missing_names(tmp_path)
    for module, page in hook.PAGES.items():
        names = importlib.import_module(module).__all__
        path = tmp_path / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f'<h2 id="{module}.{name}"></h2>' for name in names), encoding="utf-8")
    # Anchors alone do not do for a linen layer: its signature must list its fields.
    missing = hook.missing_names(tmp_path)
    assert "flax_local.LocallyConnected2D(kernel_initializer)" in missing
    assert all("(" in name for name in missing), missing


def _section(text, title):
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"no '## {title}' section"
    return match.group(1)


def test_argument_table_lists_every_module_argument():
    table = _section((DOCS / "getting-started.md").read_text(encoding="utf-8"), "Module arguments")
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    linen = {field.name for field in dataclasses.fields(flax_local.LocallyConnected)} - {"parent", "name"}
    nnx = set(inspect.signature(local_nnx.LocallyConnected.__init__).parameters) - {"self"}
    assert linen - documented == set()
    assert nnx - documented == set()
    assert documented - linen - nnx == set()


def test_padding_picture_is_committed_and_its_script_exists():
    assert (DOCS / "img" / "padding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "padding.png" in (DOCS / "scripts" / "padding_figure.py").read_text(encoding="utf-8")
