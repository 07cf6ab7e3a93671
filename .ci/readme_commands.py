"""Prints the README's two set-up commands (main job, tests), one per line.

.ci/run executes exactly these, so CI tests what a new user would type.
"""

import pathlib
import re
import sys

readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
section = re.search(r"^## Set-up\n(.*?)(?=^## )", readme, re.DOTALL | re.MULTILINE)
block = re.search(r"^```bash\n(.*?)^```$", section.group(1) if section else "", re.DOTALL | re.MULTILINE)
commands = [line for line in (block.group(1) if block else "").splitlines() if line.strip()]
if len(commands) != 2:
    sys.exit(f"README.md's Set-up section must hold exactly two commands, found {commands!r}")
print("\n".join(commands))
