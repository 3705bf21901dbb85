"""Ranking: the framework-free :func:`rerank`/:func:`arerank`, and what the LangChain and LlamaIndex adapters share.

:func:`rerank` hands (query, texts) to a :class:`~qwen3_rerank_integrations.Scorer`, checks its answer (one
probability per text, nothing lost) and ranks it: score descending, ties in input order (a stable sort), then
``score_threshold``, then ``top_n``. Neither adapter scores anything: each maps its framework's objects to texts,
calls :func:`rerank` through :meth:`RerankerBase._rank`, and maps the ranking back to new objects. An adapter for
another framework (Haystack, DSPy...) does the same without inheriting anything.

It imports pydantic and :mod:`~qwen3_rerank_integrations.local` (which imports torch only when a model loads);
:class:`~qwen3_rerank_integrations.VLLMScorer` is imported inside :meth:`RerankerBase.from_vllm`, so importing an
adapter never imports torch or httpx.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator
from typing_extensions import Self

from .base import ascore_validated, score_validated
from .local import DEFAULT_MODEL, LocalScorer
from .scorer import Scorer, validate_inputs

__all__ = ["Ranked", "RerankerBase", "rank", "rerank", "arerank"]


class Ranked(NamedTuple):
    """One kept input: its position in the input and its relevance score."""

    index: int  # type: ignore[assignment]  # shadows tuple.index(), deliberately: the name callers read
    score: float


def rank(scores: Sequence[float], *, top_n: int | None, score_threshold: float | None) -> list[Ranked]:
    """Positions and scores, best first; equal scores keep input order; below the threshold dropped; cut to top_n."""
    # sorted() is stable, so sorting on -score alone keeps ties in input order.
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = [Ranked(i, scores[i]) for i in order if score_threshold is None or scores[i] >= score_threshold]
    return kept if top_n is None else kept[:top_n]


def _check_options(top_n: object, score_threshold: object) -> None:
    """Reject bad ranking options by name, before any scoring (the adapters' fields check the same)."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ValueError(f"top_n must be an int >= 1 or None, got {top_n!r}")
    if score_threshold is not None:
        if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
            raise TypeError(f"score_threshold must be a number in [0, 1] or None, got {type(score_threshold).__name__}")
        if not 0.0 <= score_threshold <= 1.0:  # NaN fails this too
            raise ValueError(f'score_threshold must be in [0, 1] (a P("yes") probability), got {score_threshold!r}')


def _check_scorer(scorer: object) -> None:
    if isinstance(scorer, type):
        raise TypeError(f"scorer must be an instance, got the class {scorer.__name__}; e.g. {scorer.__name__}(...)")
    if not (callable(getattr(scorer, "score", None)) and callable(getattr(scorer, "ascore", None))):
        raise TypeError(
            f"scorer must implement score() and ascore() (the Scorer protocol), got a {type(scorer).__name__}"
        )


def _prepare(
    scorer: object, query: object, documents: object, top_n: object, score_threshold: object, instruction: object
) -> list[str]:
    _check_scorer(scorer)
    _check_options(top_n, score_threshold)
    return validate_inputs(query, documents, instruction)


def rerank(
    scorer: Scorer,
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None = None,
    score_threshold: float | None = None,
    instruction: str | None = None,
) -> list[Ranked]:
    """Rank ``documents`` against ``query`` with ``scorer``: the framework-free core of every adapter.

    Scores all documents in one call, checks the answer, and returns ``Ranked(index, score)`` pairs: score
    descending, equal scores in input order, those below ``score_threshold`` dropped, then cut to ``top_n``.
    An adapter for another framework maps its objects to texts, calls this, and maps ``index`` back.

    Args:
        scorer: any :class:`~qwen3_rerank_integrations.Scorer` (LocalScorer, VLLMScorer, a ScorerBase subclass...).
        query: the search query; must not be empty.
        documents: the texts to rank (empty strings are valid and scored).
        top_n: keep at most this many (None: all that pass the threshold).
        score_threshold: drop documents scoring below this probability (None: keep all).
        instruction: the task instruction; None uses the scorer's default.

    Raises:
        TypeError, ValueError: a bad argument, named, before any scoring. No documents means no scorer call.
        RerankError: the scorer failed (any other exception it raises is wrapped, cause kept) or answered
            other than one probability in [0, 1] per document.

    Example:
        >>> from qwen3_rerank_integrations import LocalScorer, rerank
        >>> docs = ["Gravity pulls.", "Beijing is the capital of China."]
        >>> rerank(LocalScorer("Qwen/Qwen3-Reranker-0.6B"), "capital of China?", docs, top_n=1)
        [Ranked(index=1, score=0.99...)]
    """
    docs = _prepare(scorer, query, documents, top_n, score_threshold, instruction)
    if not docs:
        return []
    scores = score_validated(scorer, query, docs, instruction)
    return rank(scores, top_n=top_n, score_threshold=score_threshold)


async def arerank(
    scorer: Scorer,
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None = None,
    score_threshold: float | None = None,
    instruction: str | None = None,
) -> list[Ranked]:
    """Async twin of :func:`rerank`, awaiting the scorer's ``ascore``."""
    docs = _prepare(scorer, query, documents, top_n, score_threshold, instruction)
    if not docs:
        return []
    scores = await ascore_validated(scorer, query, docs, instruction)
    return rank(scores, top_n=top_n, score_threshold=score_threshold)


class RerankerBase(BaseModel):
    """The fields and constructors of both adapters, and their one path to the scorer (sync and async)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=True)

    scorer: Scorer = Field(
        description="What scores (query, document) pairs: a LocalScorer, a VLLMScorer, or any object with "
        "score()/ascore() (the Scorer protocol). from_model()/from_vllm() build one for you."
    )
    top_n: int | None = Field(
        3, ge=1, description="How many documents to return, best first; None returns all that pass the threshold."
    )
    score_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description='Drop documents whose relevance score (P("yes"), 0 to 1) is below this; None keeps all.',
    )
    instruction: str | None = Field(
        None,
        description="The task instruction the reranker judges by (e.g. 'Given a legal question, retrieve the "
        "statutes that answer it'); None uses the scorer's own default (the model card's web-search one).",
    )

    @field_validator("scorer")
    @classmethod
    def _scorer_is_an_instance(cls, value: Scorer) -> Scorer:
        # A class has score/ascore attributes too, so the protocol check alone lets `scorer=LocalScorer` through.
        # ValueError, not TypeError: pydantic turns it into a ValidationError naming the field.
        if isinstance(value, type):
            name = value.__name__
            raise ValueError(f"scorer must be an instance, got the class {name}; e.g. {name}(...)")
        return value

    @field_validator("instruction")
    @classmethod
    def _instruction_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("instruction must not be empty or whitespace; pass None for the default")
        return value

    @field_serializer("scorer")
    def _serialize_scorer(self, scorer: Scorer) -> dict[str, Any]:
        # A scorer is a live object (a model, an HTTP client); dumps and traces get its identity only, never
        # its settings, so an API key or a credentialed URL cannot leak through model_dump()/to_json().
        return {"class_name": type(scorer).__name__, "model": getattr(scorer, "model", None)}

    # ------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_model(cls, model: str = DEFAULT_MODEL, /, **kwargs: Any) -> Self:
        """Build this reranker on a :class:`~qwen3_rerank_integrations.LocalScorer` (in-process model).

        Keyword arguments that name one of this class's fields (``top_n``, ``score_threshold``,
        ``instruction``...) configure the reranker; the rest go to ``LocalScorer`` (``device``, ``dtype``,
        ``max_length``, ``source``...). The model loads on first use.

        Example:
            >>> reranker = Qwen3RerankCompressor.from_model("Qwen/Qwen3-Reranker-0.6B", device="cpu", top_n=5)
        """
        own, scorer_kwargs = cls._split_kwargs(kwargs)
        return cls(scorer=LocalScorer(model, **scorer_kwargs), **own)

    @classmethod
    def from_vllm(cls, base_url: str | Sequence[str], /, **kwargs: Any) -> Self:
        """Build this reranker on a :class:`~qwen3_rerank_integrations.VLLMScorer` (a vLLM server's /rerank; a
        list of URLs spreads the work over replicas of one configuration).

        Keyword arguments that name one of this class's fields configure the reranker; the rest go to
        ``VLLMScorer`` (``model``, ``api_key``, ``template``, ``timeout``...).

        Example:
            >>> reranker = Qwen3RerankCompressor.from_vllm("http://localhost:8000", top_n=5)  # template="auto"
        """
        from .vllm import VLLMScorer  # lazy: httpx is an optional dependency

        own, scorer_kwargs = cls._split_kwargs(kwargs)
        return cls(scorer=VLLMScorer(base_url, **scorer_kwargs), **own)

    @classmethod
    def _split_kwargs(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if "scorer" in kwargs:
            raise TypeError("scorer= cannot be combined with from_model()/from_vllm(); construct the class directly")
        own = {key: value for key, value in kwargs.items() if key in cls.model_fields}
        return own, {key: value for key, value in kwargs.items() if key not in own}

    # ----------------------------------------------------------------------------------------- ranking
    # An adapter checks its inputs once (_checked, before any event or callback run starts); its fields are
    # checked by pydantic; so _rank/_arank hand the texts straight to the scorer (score_validated), as rerank()
    # does after its own checks.
    def _checked(self, query: str, texts: list[str]) -> list[str]:
        """``texts`` after the call's checks (query, texts, this adapter's instruction); raises before any work."""
        return validate_inputs(query, texts, self.instruction)

    def _rank(self, query: str, texts: list[str]) -> list[Ranked]:
        """Score checked ``texts`` against ``query`` and rank them with this adapter's options."""
        if not texts:
            return []
        scores = score_validated(self.scorer, query, texts, self.instruction)
        return rank(scores, top_n=self.top_n, score_threshold=self.score_threshold)

    async def _arank(self, query: str, texts: list[str]) -> list[Ranked]:
        """The async twin of :meth:`_rank`."""
        if not texts:
            return []
        scores = await ascore_validated(self.scorer, query, texts, self.instruction)
        return rank(scores, top_n=self.top_n, score_threshold=self.score_threshold)
