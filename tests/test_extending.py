"""Extending the package: the ScorerBase contract every backend gets, and the code of docs/extending.md run as is.

The page's blocks marked ``<!-- run: extending -->`` are executed here in order, in one namespace, so the
documented backend and adapter cannot rot; the rest checks what ScorerBase promises a backend author: checks
before work, no call for no documents, the instruction default, checked answers, the async default off the event
loop, and the opt-in cache.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from pydantic import PrivateAttr, ValidationError

from qwen3_rerank_integrations import (
    DEFAULT_INSTRUCTION,
    DiskScoreCache,
    InMemoryScoreCache,
    RerankError,
    Scorer,
    ScorerBase,
)
from tests.doc_blocks import ROOT, blocks_to_run, run_blocks

QUERY = "What is the capital of China?"


# ------------------------------------------------------------------------------------------------ the page
@pytest.fixture(scope="module")
def readme_namespace() -> Iterator[dict[str, Any]]:
    blocks = blocks_to_run(ROOT / "docs/extending.md", "extending")
    assert len(blocks) == 2, "the backend and the adapter"
    with run_blocks(blocks, "docs_extending") as namespace:
        yield namespace


def test_readme_backend_runs_and_prints_what_its_comments_say(readme_namespace):
    ns = readme_namespace
    scorer = ns["scorer"]
    assert isinstance(scorer, ScorerBase) and isinstance(scorer, Scorer)
    assert isinstance(scorer.cache, InMemoryScoreCache)
    assert (scorer.cache.stats.hits, scorer.cache.stats.misses) == (1, 3)  # as the page's comment says
    scores = ns["OverlapScorer"]().score(ns["query"], ns["documents"])
    assert scores[0] > 0.9 > 0.1 > scores[1] == scores[2]
    assert ns["result"]["documents"][0].content == "Beijing is the capital of China."
    assert ns["result"]["documents"][0].score == pytest.approx(0.935, abs=1e-3)  # the page's "0.935..."


def test_readme_backend_gets_the_whole_contract(readme_namespace):
    overlap_scorer = readme_namespace["OverlapScorer"]
    calls: list[list[str]] = []

    class Counting(overlap_scorer):  # type: ignore[misc, valid-type]
        def _score_texts(self, query, documents, instruction):
            calls.append(list(documents))
            return super()._score_texts(query, documents, instruction)

    scorer = Counting()
    with pytest.raises(TypeError, match="documents must be a sequence of str"):
        scorer.score(QUERY, "one text")
    with pytest.raises(ValueError, match="query must not be empty"):
        scorer.score("  ", ["doc"])
    assert scorer.score(QUERY, []) == [] and asyncio.run(scorer.ascore(QUERY, [])) == []
    assert calls == []
    assert asyncio.run(scorer.ascore(QUERY, ["capital of China", "x"])) == scorer.score(QUERY, ["capital of China", "x"])
    with pytest.raises(ValidationError, match="sharpness"):
        overlap_scorer(sharpness=0)


def test_readme_adapter_ranks_sync_and_async_and_wraps_failures(readme_namespace):
    ns = readme_namespace
    document, ranker_class = ns["Document"], ns["Qwen3Ranker"]
    docs = [document("Gravity pulls."), document("the capital of China is Beijing"), document("China")]
    ranker = ranker_class(ns["OverlapScorer"](), top_k=None, score_threshold=0.5)
    best = ranker.run(QUERY, docs)["documents"]
    assert [d.content for d in best] == ["the capital of China is Beijing"]
    assert asyncio.run(ranker.run_async(QUERY, docs)) == {"documents": best}
    assert docs[1].score is None  # the inputs are not changed

    class Broken(ns["OverlapScorer"]):  # type: ignore[misc, valid-type, name-defined]
        def _score_texts(self, query, documents, instruction):
            raise ConnectionError("service down")

    with pytest.raises(RerankError, match="service down") as caught:
        ranker_class(Broken()).run(QUERY, docs)
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_readme_backend_works_in_both_adapters(readme_namespace):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor
    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    scorer = readme_namespace["OverlapScorer"]()
    texts = ["Gravity pulls.", "the capital of China is Beijing"]
    docs = Qwen3RerankCompressor(scorer=scorer, top_n=1).compress_documents([Document(t) for t in texts], QUERY)
    assert [d.page_content for d in docs] == [texts[1]]
    nodes = Qwen3RerankPostprocessor(scorer=scorer, top_n=1).postprocess_nodes(
        [NodeWithScore(node=TextNode(text=t)) for t in texts], query_str=QUERY
    )
    assert [n.node.get_content() for n in nodes] == [texts[1]]


# ------------------------------------------------------------------------------------------------ the base
class Recording(ScorerBase):
    """Answers ``answer`` (or a score from the text's length); records what it was called with, and where."""

    answer: Any = None
    # A private attribute is loaded state, dropped when a setting changes; this record is data to keep.
    _carried_private: ClassVar[frozenset[str]] = frozenset({"_calls"})
    _calls: list[tuple[str, list[str], str, int]] = PrivateAttr(default_factory=list)

    def _score_texts(self, query: str, documents: list[str], instruction: str) -> Any:
        self._calls.append((query, list(documents), instruction, threading.get_ident()))
        if self.answer is not None:
            return self.answer
        return [len(doc) % 10 / 10 for doc in documents]

    @property
    def calls(self) -> list[tuple[str, list[str], str, int]]:
        return self._calls

    def cache_identity(self) -> dict[str, Any]:
        return {"backend": "recording"}


def test_the_base_is_abstract_and_a_backend_without_scoring_cannot_be_made():
    with pytest.raises(TypeError, match="abstract"):
        ScorerBase()

    class NoScoring(ScorerBase):
        pass

    with pytest.raises(TypeError, match="_score_texts"):
        NoScoring()


def test_bad_input_raises_before_the_backend_is_called():
    scorer = Recording()
    for args, kwargs, error, match in [
        ((None, ["doc"]), {}, TypeError, "query must be a str"),
        ((QUERY, ["ok", 3]), {}, TypeError, r"documents\[1\] must be a str"),
        ((QUERY, ["ok"]), {"instruction": " "}, ValueError, "instruction must not be empty"),
        ((QUERY, ["bad \ud800"]), {}, ValueError, r"documents\[0\] is not valid Unicode"),
    ]:
        with pytest.raises(error, match=match):
            scorer.score(*args, **kwargs)
        with pytest.raises(error, match=match):
            asyncio.run(scorer.ascore(*args, **kwargs))
    assert scorer.calls == []


def test_instruction_falls_back_to_the_field_then_the_model_card():
    scorer = Recording()
    scorer.score(QUERY, ["a"])
    scorer.score(QUERY, ["a"], instruction="call's own")
    scorer.instruction = "the scorer's"
    scorer.score(QUERY, ["a"])
    scorer.score(QUERY, ["a"], instruction="call's own")
    assert [call[2] for call in scorer.calls] == [DEFAULT_INSTRUCTION, "call's own", "the scorer's", "call's own"]


@pytest.mark.parametrize("value", ["", "   ", 5])
def test_a_blank_or_non_text_instruction_field_is_refused(value):
    with pytest.raises(ValidationError, match="instruction"):
        Recording(instruction=value)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ([0.5], "returned 1 scores for 2 documents"),
        ([0.5, float("nan")], r"documents\[1\], not a finite number"),
        ([0.5, 1.5], r"outside \[0, 1\]"),
        ([0.5, -0.1], r"outside \[0, 1\]"),
        ([0.5, True], "not a finite number"),
        ("0.5", "not a list of scores"),
        ({"a": 0.5, "b": 0.5}, "not a list of scores"),
    ],
)
def test_a_wrong_backend_answer_is_a_rerank_error(answer, match):
    scorer = Recording(answer=answer)
    with pytest.raises(RerankError, match=match):
        scorer.score(QUERY, ["a", "b"])
    with pytest.raises(RerankError, match=match):
        asyncio.run(scorer.ascore(QUERY, ["a", "b"]))


def test_scores_come_back_as_floats_in_input_order():
    scorer = Recording(answer=[1, 0])
    assert scorer.score(QUERY, ["a", "b"]) == [1.0, 0.0]
    assert all(type(value) is float for value in scorer.score(QUERY, ["a", "b"]))


async def test_async_default_runs_the_sync_backend_off_the_event_loop():
    loop_thread = threading.get_ident()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    class Slow(Recording):
        def _score_texts(self, query, documents, instruction):
            import time

            time.sleep(0.2)  # a blocking model call
            return super()._score_texts(query, documents, instruction)

    scorer = Slow()
    task = asyncio.create_task(ticker())
    scores = await scorer.ascore(QUERY, ["abc", "de"])
    task.cancel()
    assert scores == scorer.score(QUERY, ["abc", "de"]) == [0.3, 0.2]
    assert scorer.calls[0][3] != loop_thread  # a worker thread
    assert ticks > 20  # the loop kept running while the backend blocked


async def test_a_native_async_path_is_used_by_ascore():
    class Native(Recording):
        async def _ascore_texts(self, query, documents, instruction):
            await asyncio.sleep(0)
            return [0.25] * len(documents)

    scorer = Native(cache=True)
    assert await scorer.ascore(QUERY, ["a", "b"]) == [0.25, 0.25]
    assert scorer.calls == []  # the sync path never ran
    assert await scorer.ascore(QUERY, ["a", "c"]) == [0.25, 0.25]
    assert (scorer.cache.stats.hits, scorer.cache.stats.misses) == (1, 3)


def test_backend_errors_propagate_unchanged():
    class Failing(Recording):
        def _score_texts(self, query, documents, instruction):
            raise ConnectionError("service down")

    with pytest.raises(ConnectionError, match="service down"):
        Failing().score(QUERY, ["a"])
    with pytest.raises(ConnectionError, match="service down"):
        asyncio.run(Failing().ascore(QUERY, ["a"]))


# ------------------------------------------------------------------------------------------------ cache=
def test_cache_switch_values():
    assert Recording().cache is None and Recording(cache=False).cache is None and Recording(cache=None).cache is None
    first, second = Recording(cache=True), Recording(cache=True)
    assert isinstance(first.cache, InMemoryScoreCache) and first.cache is not second.cache  # each its own
    shared = InMemoryScoreCache(max_entries=10)
    assert Recording(cache=shared).cache is shared
    for bad in (1, "yes", {"max_entries": 5}):
        with pytest.raises((TypeError, ValidationError), match="cache must be True, False, None or a ScoreCache"):
            Recording(cache=bad)
    scorer = Recording()
    scorer.cache = True  # assignment is validated too
    assert isinstance(scorer.cache, InMemoryScoreCache)


def test_cache_needs_a_cache_identity():
    class Anonymous(ScorerBase):
        def _score_texts(self, query, documents, instruction):
            return [0.5] * len(documents)

    assert Anonymous().score(QUERY, ["a"]) == [0.5]  # fine without a cache
    with pytest.raises((TypeError, ValidationError), match="has no cache_identity"):
        Anonymous(cache=True)


def test_cache_scores_only_missing_documents_and_counts_hits():
    scorer = Recording(cache=True)
    assert scorer.score(QUERY, ["aa", "bbb"]) == [0.2, 0.3]
    assert scorer.score(QUERY, ["bbb", "c", "aa", "c"]) == [0.3, 0.1, 0.2, 0.1]
    assert [call[1] for call in scorer.calls] == [["aa", "bbb"], ["c"]]  # duplicates scored once
    assert (scorer.cache.stats.hits, scorer.cache.stats.misses) == (2, 3)
    assert asyncio.run(scorer.ascore(QUERY, ["aa", "c"])) == [0.2, 0.1]
    assert len(scorer.calls) == 2


def test_cache_keys_the_instruction_actually_used():
    scorer = Recording(cache=True)
    scorer.score(QUERY, ["a"])
    scorer.score(QUERY, ["a"], instruction=DEFAULT_INSTRUCTION)  # the same instruction: a hit
    assert len(scorer.calls) == 1
    scorer.score(QUERY, ["a"], instruction="another task")
    scorer.instruction = "the scorer's"
    scorer.score(QUERY, ["a"])
    assert [call[2] for call in scorer.calls] == [DEFAULT_INSTRUCTION, "another task", "the scorer's"]


def test_cache_stores_nothing_of_a_failed_or_wrong_answer():
    scorer = Recording(cache=True, answer=[0.5, math.inf])
    with pytest.raises(RerankError):
        scorer.score(QUERY, ["a", "b"])
    assert len(scorer.cache) == 0
    scorer.answer = None
    assert scorer.score(QUERY, ["a", "b"]) == [0.1, 0.1] and len(scorer.calls) == 2


def test_disk_cache_is_shared_across_scorers_and_reopens(tmp_path):
    with DiskScoreCache(tmp_path / "scores") as disk:
        first = Recording(cache=disk)
        assert first.score(QUERY, ["abc"]) == [0.3]
    again = Recording(cache=DiskScoreCache(tmp_path / "scores"))
    assert again.score(QUERY, ["abc"]) == [0.3] and again.calls == []
    assert again.cache.stats.hits == 1
