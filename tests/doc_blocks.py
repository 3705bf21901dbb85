"""The python blocks of README.md and docs/*.md, by their markers, for the tests that run them.

Every python block sits right below one HTML comment saying what happens to it:

- ``<!-- run: NAME -->``: a test runs it; the blocks of one NAME on one page run in order, in one namespace.
- ``<!-- not-run: REASON -->``: nothing runs it, for the reason given (what no test machine has).

tests/test_docs.py checks that every block has one, and that every NAME is one a test runs (``RUN_BY``).

A block runs as pasted, with offline stand-ins: the names a page leaves to its reader (``documents``,
``vector_store``, ``llm``...) are set in the namespace before it runs, and a model id or URL string may be swapped
for a stand-in's (a local folder, a loopback server). Nothing else of its text changes. Top-level ``await`` and
``async with`` run as in a notebook or ``python -m asyncio``.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import re
import shutil
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Each name a `run:` marker may use, and the test module that runs those blocks.
RUN_BY = {
    "quickstart": "tests/test_docs.py",
    "cache": "tests/test_docs.py",
    "extending": "tests/test_extending.py",
    "langchain": "tests/test_docs_adapters.py",
    "llama-index": "tests/test_docs_adapters.py",
    "local-scorer": "tests/test_docs_backends.py",
    "vllm": "tests/test_docs_backends.py",
    "replicas": "tests/test_docs_backends.py",
    "engine": "tests/test_docs_backends.py",
    "evaluation": "tests/test_docs_backends.py",
    "settings": "tests/test_state.py",
    "scale": "tests/test_batch.py",
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
def run_blocks(
    blocks: list[Block],
    module_name: str,
    *,
    given: Mapping[str, Any] | None = None,
    replace: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run ``blocks`` in order in one fresh module, registered while the caller uses it (as a user's script would
    be: dataclasses and pydantic look their module up), and give its namespace.

    ``given``: the names the page leaves to its reader, set before the first block. ``replace``: a string literal
    of the blocks (a model id, a URL) to its stand-in's; each must occur in them, so a renamed id cannot slip past
    its stand-in to the network.
    """
    codes = [block.code for block in blocks]
    for old, new in (replace or {}).items():
        literal = json.dumps(old)
        assert any(literal in code for code in codes), f"no block of {blocks[0].where} has the string {literal}"
        codes = [code.replace(literal, json.dumps(new)) for code in codes]
    module = types.ModuleType(module_name)
    module.__dict__.update(given or {})
    sys.modules[module_name] = module
    try:
        for block, code in zip(blocks, codes):
            compiled = compile(code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if compiled.co_flags & inspect.CO_COROUTINE:  # top-level await: the block is a coroutine
                asyncio.run(eval(compiled, module.__dict__))
            else:
                exec(compiled, module.__dict__)
        yield module.__dict__
    finally:
        del sys.modules[module_name]


# ------------------------------------------------------------------------------------------------ stand-ins
HUB_ID = "Qwen/Qwen3-Reranker-0.6B"
EMBEDDER_ID = "BAAI/bge-small-en-v1.5"
PAGE_URL = "http://localhost:8000"
# The real Qwen3-Reranker's context (config max_position_embeddings); pages may ask for max_length=8192.
HUB_CONTEXT = 40960


def hub_model_stand_in(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in for a page's hub id: the tiny random model of tests/conftest.py (same weights, so the same
    scores as the official method on it and as the vLLM stand-ins), with the real model's context."""
    folder = tmp_path_factory.mktemp("hub-model-stand-in")
    for file in tiny_model_dir.iterdir():
        shutil.copy2(file, folder / file.name)
    config = json.loads((folder / "config.json").read_text("utf-8"))
    config["max_position_embeddings"] = HUB_CONTEXT
    (folder / "config.json").write_text(json.dumps(config, indent=2), "utf-8")
    return folder


def example_corpus() -> list[str]:
    """The passages of examples/corpus.jsonl (50, on a few topics): what a reader would index."""
    lines = (ROOT / "examples/corpus.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def printed_ranking(out: str) -> list[tuple[float, str]]:
    """The ``print(score, text)`` lines of a page's loop, as (score, text)."""
    rows = [line.split(" ", 1) for line in out.splitlines()]
    return [(float(score), text) for score, text in rows]


def built_by(monkeypatch: pytest.MonkeyPatch, cls: type, factory: str) -> list[Any]:
    """Record what ``cls.<factory>(...)`` builds (a page's first alternative, replaced by its second, stays
    reachable), building it unchanged."""
    built: list[Any] = []
    original = getattr(cls, factory)  # bound to cls

    def recording(*args: Any, **kwargs: Any) -> Any:
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(cls, factory, recording)
    return built
