"""rerank()/arerank(): the framework-free ranking every adapter calls.

Order (score descending, ties in input order), threshold then top_n, checks before any scoring, no call for no
documents, the scorer's faults and wrong answers as RerankError, and that both adapters go through it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import qwen3_rerank_integrations
from qwen3_rerank_integrations import Ranked, RerankError, arerank, rerank

QUERY = "What is the capital of China?"


class FixedScorer:
    """Answers ``answer``, or raises ``error``; records every call."""

    def __init__(self, answer: Any = None, error: BaseException | None = None) -> None:
        self.answer, self.error = answer, error
        self.calls: list[tuple[str, list[str], str | None]] = []

    def _answer(self, query: str, documents: list[str], instruction: str | None) -> Any:
        self.calls.append((query, list(documents), instruction))
        if self.error is not None:
            raise self.error
        return self.answer

    def score(self, query: str, documents: list[str], *, instruction: str | None = None) -> Any:
        return self._answer(query, documents, instruction)

    async def ascore(self, query: str, documents: list[str], *, instruction: str | None = None) -> Any:
        return self._answer(query, documents, instruction)


def both(scorer: Any, *args: Any, **kwargs: Any) -> list[Ranked]:
    """rerank and arerank give the same answer; returns it."""
    sync = rerank(scorer, *args, **kwargs)
    assert asyncio.run(arerank(scorer, *args, **kwargs)) == sync
    return sync


def test_exported_at_the_package_root():
    assert {"rerank", "arerank", "Ranked", "ScorerBase", "escape_control_tokens"} <= set(qwen3_rerank_integrations.__all__)
    assert qwen3_rerank_integrations.escape_control_tokens("<|im_end|>") == "<\u200b|im_end|>"


def test_best_first_ties_in_input_order_threshold_then_top_n():
    scorer = FixedScorer([0.2, 0.9, 0.5, 0.9, 0.1])
    docs = ["a", "b", "c", "d", "e"]
    assert both(scorer, QUERY, docs) == [(1, 0.9), (3, 0.9), (2, 0.5), (0, 0.2), (4, 0.1)]
    assert both(scorer, QUERY, docs, top_n=2) == [(1, 0.9), (3, 0.9)]
    assert both(scorer, QUERY, docs, score_threshold=0.5) == [(1, 0.9), (3, 0.9), (2, 0.5)]  # >= keeps 0.5
    assert both(scorer, QUERY, docs, score_threshold=0.3, top_n=10) == [(1, 0.9), (3, 0.9), (2, 0.5)]
    assert both(scorer, QUERY, docs, score_threshold=0.95) == []
    ranked = rerank(scorer, QUERY, docs, top_n=1)[0]
    assert isinstance(ranked, Ranked) and (ranked.index, ranked.score) == (1, 0.9)


def test_one_scorer_call_with_the_documents_and_instruction_as_given():
    scorer = FixedScorer([0.1, 0.2])
    both(scorer, QUERY, ("x", ""), instruction="Find the statute")
    assert scorer.calls == [(QUERY, ["x", ""], "Find the statute")] * 2
    both(scorer, QUERY, ["x", "y"])
    assert scorer.calls[-1][2] is None  # None: the scorer applies its own default


def test_no_documents_no_scorer_call():
    scorer = FixedScorer(error=AssertionError("must not be called"))
    assert both(scorer, QUERY, []) == []
    assert scorer.calls == []


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((QUERY, "one text"), {}, TypeError, "documents must be a sequence of str"),
        ((QUERY, ["a", None]), {}, TypeError, r"documents\[1\] must be a str"),
        (("", ["a"]), {}, ValueError, "query must not be empty"),
        ((QUERY, ["a"]), {"instruction": ""}, ValueError, "instruction must not be empty"),
        ((QUERY, ["a"]), {"top_n": 0}, ValueError, "top_n must be an int >= 1"),
        ((QUERY, ["a"]), {"top_n": 2.0}, ValueError, "top_n must be an int >= 1"),
        ((QUERY, ["a"]), {"top_n": True}, ValueError, "top_n must be an int >= 1"),
        ((QUERY, ["a"]), {"score_threshold": 1.5}, ValueError, r"score_threshold must be in \[0, 1\]"),
        ((QUERY, ["a"]), {"score_threshold": float("nan")}, ValueError, r"score_threshold must be in \[0, 1\]"),
        ((QUERY, ["a"]), {"score_threshold": "0.5"}, TypeError, "score_threshold must be a number"),
    ],
)
def test_bad_arguments_are_named_before_any_scoring(args, kwargs, error, match):
    scorer = FixedScorer([0.5])
    with pytest.raises(error, match=match):
        rerank(scorer, *args, **kwargs)
    with pytest.raises(error, match=match):
        asyncio.run(arerank(scorer, *args, **kwargs))
    assert scorer.calls == []


def test_a_scorer_class_or_a_non_scorer_is_refused():
    with pytest.raises(TypeError, match="got the class FixedScorer"):
        rerank(FixedScorer, QUERY, ["a"])
    with pytest.raises(TypeError, match="Scorer protocol"):
        rerank(object(), QUERY, ["a"])


def test_scorer_faults_arrive_as_rerank_error_with_their_cause():
    scorer = FixedScorer(error=RuntimeError("device lost"))
    with pytest.raises(RerankError, match="FixedScorer failed: RuntimeError: device lost") as caught:
        rerank(scorer, QUERY, ["a"])
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(RerankError, match="device lost"):
        asyncio.run(arerank(scorer, QUERY, ["a"]))
    own = RerankError("already ours")
    with pytest.raises(RerankError, match="already ours") as caught:
        rerank(FixedScorer(error=own), QUERY, ["a"])
    assert caught.value is own  # not wrapped twice


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ([0.5], "returned 1 scores for 2 documents"),
        ([0.5, float("inf")], "not a finite number"),
        ([0.5, 3.0], r"outside \[0, 1\]"),
        (None, "returned NoneType, not a list of scores"),
    ],
)
def test_wrong_scorer_answers_are_rerank_errors(answer, match):
    with pytest.raises(RerankError, match=match):
        rerank(FixedScorer(answer), QUERY, ["a", "b"])
    with pytest.raises(RerankError, match=match):
        asyncio.run(arerank(FixedScorer(answer), QUERY, ["a", "b"]))


def test_both_adapters_score_and_rank_on_rerank_s_path(monkeypatch):
    """The adapters score nothing themselves: each call goes to the scorer through the one checked path rerank()
    takes (score_validated, sync or async), with the adapter's instruction, and is ranked by the same rank()."""
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from qwen3_rerank_integrations import _ranking
    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor
    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    seen: list[tuple[str, Any]] = []
    real = {name: getattr(_ranking, name) for name in ("score_validated", "ascore_validated", "rank")}

    def score_spy(scorer, query, documents, instruction):
        seen.append(("score", instruction))
        return real["score_validated"](scorer, query, documents, instruction)

    async def ascore_spy(scorer, query, documents, instruction):
        seen.append(("ascore", instruction))
        return await real["ascore_validated"](scorer, query, documents, instruction)

    def rank_spy(scores, **options):
        seen.append(("rank", options))
        return real["rank"](scores, **options)

    monkeypatch.setattr(_ranking, "score_validated", score_spy)
    monkeypatch.setattr(_ranking, "ascore_validated", ascore_spy)
    monkeypatch.setattr(_ranking, "rank", rank_spy)
    scorer = FixedScorer([0.1, 0.8])
    options = {"top_n": 1, "score_threshold": 0.05, "instruction": "Find the capital"}
    compressor = Qwen3RerankCompressor(scorer=scorer, **options)
    postprocessor = Qwen3RerankPostprocessor(scorer=scorer, **options)
    texts = ["Gravity pulls.", "Beijing."]
    assert [d.page_content for d in compressor.compress_documents([Document(t) for t in texts], QUERY)] == ["Beijing."]
    assert asyncio.run(compressor.acompress_documents([Document(t) for t in texts], QUERY))[0].page_content == "Beijing."
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in texts]
    assert postprocessor.postprocess_nodes(nodes, query_str=QUERY)[0].node.get_content() == "Beijing."
    assert len(asyncio.run(postprocessor.apostprocess_nodes(nodes, query_str=QUERY))) == 1
    ranking = ("rank", {"top_n": 1, "score_threshold": 0.05})
    call = [("score", "Find the capital"), ranking]
    acall = [("ascore", "Find the capital"), ranking]
    assert seen == call + acall + call + acall
    # rerank() itself takes the same two steps.
    seen.clear()
    _ranking.rerank(scorer, QUERY, texts, **options)
    assert seen == call
