"""The package's layering, checked on its source: no import cycle between its modules, no module importing
another's private names, and a call through an adapter or ``rerank()`` checked once on its way down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qwen3_rerank_integrations
from qwen3_rerank_integrations import ScorerBase, rerank
from qwen3_rerank_integrations import scorer as contract

PACKAGE = Path(qwen3_rerank_integrations.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if _is_package(importer) else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(name: str, *, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for each import in ``name``; with ``top_level_only``, only those at
    the module's top level (a lazy import inside a function still counts as a dependency otherwise)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(name, node.level, node.module)
            found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return [(target, names) for target, names in found if target.startswith("qwen3_rerank_integrations")]


def test_no_import_cycle_between_the_package_modules():
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        edges = set()
        for target, names in _imports(name, top_level_only=False):
            # `from .pkg import module` imports the submodule; `from .module import name` the module.
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            edges.update(submodules or ([target] if target in MODULES else []))
        graph[name] = edges - {name}

    def is_ancestor(package: str, module: str) -> bool:
        return module.startswith(package + ".")  # a package's __init__ importing its own submodules is no cycle

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if is_ancestor(nxt, node) or is_ancestor(node, nxt):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name in MODULES:
        for target, names in _imports(name, top_level_only=False):
            if target == name:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in MODULES]
            offenders.extend(f"{name} imports {target}.{n}" for n in private)
    assert not offenders, offenders


def test_the_checker_itself_sees_a_private_import_and_a_cycle(tmp_path):
    # The checks above read ASTs; make sure they would see what they look for.
    tree = ast.parse("from .._ranking import _scorer_errors\nfrom .base import ScorerBase\n")
    imported = [(_resolve("qwen3_rerank_integrations.evaluation.pipeline", n.level, n.module), [a.name for a in n.names])
                for n in tree.body]
    assert imported == [("qwen3_rerank_integrations._ranking", ["_scorer_errors"]),
                        ("qwen3_rerank_integrations.evaluation.base", ["ScorerBase"])]


class _Counting(ScorerBase):
    def _score_texts(self, query, documents, instruction):
        return [0.5] * len(documents)


@pytest.fixture
def checks(monkeypatch):
    """How many times a call's arguments (texts looked at) and its answer (scores checked) were checked."""
    for adapter in ("langchain", "llama_index"):  # imported first: a module imported later binds the counters
        try:
            __import__(f"qwen3_rerank_integrations.{adapter}")
        except ImportError:
            pass
    counts = {"texts": 0, "answers": 0}
    check_unicode, name = contract._check_unicode, contract.scorer_name

    def counting_check(where, text):
        counts["texts"] += 1
        return check_unicode(where, text)

    def counting_name(scorer):  # checked_scores names its scorer once per answer it checks
        counts["answers"] += 1
        return name(scorer)

    monkeypatch.setattr(contract, "_check_unicode", counting_check)
    monkeypatch.setattr(contract, "scorer_name", counting_name)
    return counts


DOCS = ["Beijing is the capital.", "Gravity pulls.", "Paris is in France."]


def test_rerank_checks_a_call_once_and_its_answer_once(checks):
    rerank(_Counting(), "capital of China?", DOCS)
    assert checks == {"texts": 1 + len(DOCS), "answers": 1}


async def test_arerank_checks_a_call_once_and_its_answer_once(checks):
    await qwen3_rerank_integrations.arerank(_Counting(), "capital of China?", DOCS)
    assert checks == {"texts": 1 + len(DOCS), "answers": 1}


def test_a_protocol_only_scorer_answer_is_checked_once_too(checks):
    class Plain:
        def score(self, query, documents, *, instruction=None):
            return [0.5] * len(documents)

        async def ascore(self, query, documents, *, instruction=None):
            return self.score(query, documents)

    rerank(Plain(), "capital of China?", DOCS)
    assert checks == {"texts": 1 + len(DOCS), "answers": 1}


def test_the_langchain_compressor_checks_a_call_once(checks):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor

    compressor = Qwen3RerankCompressor(scorer=_Counting(), top_n=2)
    compressor.compress_documents([Document(page_content=d) for d in DOCS], "capital of China?")
    assert checks == {"texts": 1 + len(DOCS), "answers": 1}


def test_the_llama_index_postprocessor_checks_a_call_once(checks):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    postprocessor = Qwen3RerankPostprocessor(scorer=_Counting(), top_n=2)
    postprocessor.postprocess_nodes([NodeWithScore(node=TextNode(text=d)) for d in DOCS], query_str="capital?")
    assert checks == {"texts": 1 + len(DOCS), "answers": 1}


def test_a_scorer_called_directly_still_checks_its_arguments(checks):
    with pytest.raises(ValueError, match="query"):
        _Counting().score(" ", DOCS)
    _Counting().score("capital?", DOCS)
    assert checks["answers"] == 1
