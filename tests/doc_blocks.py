"""The python blocks of README.md and docs/*.md, by their markers, for the tests that run them.

Every python block sits right below one HTML comment saying what happens to it:

- ``<!-- run: NAME -->``: a test runs it; the blocks of one NAME on one page run in order, in one namespace.
- ``<!-- not-run: REASON -->``: nothing runs it, for the reason given (a real model, a server, an LLM...).

tests/test_docs.py checks that every block has one, and that every NAME is one a test runs (``RUN_BY``).
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Each name a `run:` marker may use, and the test module that runs those blocks.
RUN_BY = {
    "quickstart": "tests/test_docs.py",
    "cache": "tests/test_docs.py",
    "extending": "tests/test_extending.py",
}

_FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_MARKER = re.compile(r"<!-- (run|not-run): (.*?) -->\Z")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    marker: str | None  # "run", "not-run", or None when the line above is no marker
    value: str  # the NAME or the REASON
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    text = page.read_text("utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].split("\n")  # ends with "" (the fence starts a line)
        above = before[-2] if len(before) > 1 else ""
        marker = _MARKER.match(above)
        blocks.append(Block(page, len(before), marker and marker.group(1), marker.group(2).strip() if marker else "",
                            match.group(1)))
    return blocks


def blocks_to_run(page: Path, name: str) -> list[Block]:
    """The blocks of ``page`` marked ``<!-- run: name -->``; at least one, or the page lost them."""
    assert name in RUN_BY, f"{name!r} is not in RUN_BY"
    found = [block for block in python_blocks(page) if block.marker == "run" and block.value == name]
    assert found, f"{page.relative_to(ROOT)} has no block marked <!-- run: {name} -->"
    return found


@contextmanager
def run_blocks(blocks: list[Block], module_name: str) -> Iterator[dict[str, Any]]:
    """Run ``blocks`` in order in one fresh module, registered while the caller uses it (as a user's script would
    be: dataclasses and pydantic look their module up), and give its namespace."""
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    try:
        for block in blocks:
            exec(compile(block.code, block.where, "exec"), module.__dict__)
        yield module.__dict__
    finally:
        del sys.modules[module_name]
