"""Every ```python block of README.md runs, and the README stays in step with the code.

Each block runs on its own, in a fresh namespace, because readers copy a single
block: a block that needed an earlier one would break for them. Blocks run
under jax's default promotion rules (tests/conftest.py makes implicit rank and
dtype promotion errors for the library's own tests), since README code is user
code, and users run with the defaults.
"""

import dataclasses
import inspect
import pathlib
import re

import jax
import pytest

import flax_local
from flax_local import nnx as local_nnx

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
    assert len(PYTHON_BLOCKS) >= 7


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
    assert commands[0].endswith("python examples/train_digits.py")
    # CI (.ci/run) installs the test extra and runs exactly this command.
    assert commands[1].endswith('pip install -e ".[test]" && python -m pytest')
    assert (ROOT / "examples" / "train_digits.py").is_file()


def test_argument_table_lists_every_module_argument():
    table = _section("Module arguments")
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    linen = {field.name for field in dataclasses.fields(flax_local.LocallyConnected)} - {"parent", "name"}
    nnx = set(inspect.signature(local_nnx.LocallyConnected.__init__).parameters) - {"self"}
    assert linen - documented == set()
    assert nnx - documented == set()
    assert documented - linen - nnx == set()
