"""Every ```python block of README.md runs, and the README stays in step with the code.

Each block runs on its own, in a fresh namespace, because readers copy a single
block: a block that needed an earlier one would break for them. Blocks run
under jax's default promotion rules (tests/conftest.py makes implicit rank and
dtype promotion errors for the library's own tests), since README code is user
code, and users run with the defaults.
"""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def _blocks(language):
    """``(line number, code)`` of every fenced block in ``language``."""
    return [
        (README.count("\n", 0, match.start()) + 1, match.group(2))
        for match in FENCE.finditer(README)
        if match.group(1) == language
    ]


def _section(title):
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


PYTHON_BLOCKS = _blocks("python")


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize(
    "code", [code for _, code in PYTHON_BLOCKS], ids=[f"line{n}" for n, _ in PYTHON_BLOCKS]
)
def test_python_block_runs(code):
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_setup_section_has_exactly_the_two_commands():
    blocks = FENCE.findall(_section("Set-up"))
    assert len(blocks) == 1 and blocks[0][0] == "bash"
    commands = blocks[0][1].strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("python examples/climate_grid.py")
    # CI (.ci/run) installs the test extra and runs exactly this command.
    assert commands[1].endswith('pip install -e ".[test]" && python -m pytest')
    assert (ROOT / "examples" / "climate_grid.py").is_file()


def test_readme_is_short_and_links_exist():
    # The README introduces; the guides live in docs/ (tests/test_docs.py runs their code).
    assert README.count("\n") <= 300
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[\w./-]+|CHANGELOG\.md)\)", README):
        assert (ROOT / target).is_file(), target
    for example in re.findall(r"`(examples/\w+\.py)`", README):
        assert (ROOT / example).is_file(), example
