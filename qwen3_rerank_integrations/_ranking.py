"""What the LangChain and LlamaIndex adapters share: fields, constructors, and turning scores into a ranking.

Neither adapter scores anything: they hand (query, texts) to a :class:`~qwen3_rerank_integrations.Scorer` and
get one score per text back. This module checks that answer (one finite number per text, nothing lost) and
ranks it: score descending, ties in input order (a stable sort), then ``score_threshold``, then ``top_n``.
Each adapter only maps its framework's objects to texts and the ranking back to new objects.

It imports pydantic and :mod:`~qwen3_rerank_integrations.local` (which imports torch only when a model loads);
:class:`~qwen3_rerank_integrations.VLLMScorer` is imported inside :meth:`RerankerBase.from_vllm`, so importing an
adapter never imports torch or httpx.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator
from typing_extensions import Self

from .errors import RerankError
from .local import DEFAULT_MODEL, LocalScorer
from .scorer import Scorer, validate_inputs

__all__ = ["Ranked", "RerankerBase", "rank", "scorer_name"]


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


def scorer_name(scorer: object) -> str:
    """A name for events and messages: the scorer's model if it has one, else its class. Never a URL (it may
    carry credentials)."""
    model = getattr(scorer, "model", None)
    return model if isinstance(model, str) and model else type(scorer).__name__


def _checked_scores(scorer: object, scores: object, count: int) -> list[float]:
    """The scorer's answer as floats, or a RerankError: a lost, non-finite or out-of-range score would silently
    mis-rank (and break ``score_threshold``, which is a probability)."""
    name = scorer_name(scorer)
    if not isinstance(scores, Sequence) or isinstance(scores, (str, bytes)):
        raise RerankError(f"scorer {name} returned {type(scores).__name__}, not a list of scores")
    if len(scores) != count:
        raise RerankError(f"scorer {name} returned {len(scores)} scores for {count} documents")
    checked: list[float] = []
    for i, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RerankError(f"scorer {name} returned {value!r} for documents[{i}], not a finite number")
        if not 0.0 <= value <= 1.0:
            raise RerankError(
                f"scorer {name} returned {value!r} for documents[{i}], outside [0, 1]: a scorer must return "
                'P("yes") probabilities, not logits or distances'
            )
        checked.append(float(value))
    return checked


@contextlib.contextmanager
def _scorer_errors(scorer: object) -> Iterator[None]:
    """Let RerankError through as it is; wrap anything else a scorer raises (a third-party scorer, a torch
    RuntimeError) so callers catch one type."""
    try:
        yield
    except RerankError:
        raise
    except Exception as exc:  # re-raised as RerankError, cause kept
        raise RerankError(f"scorer {scorer_name(scorer)} failed: {type(exc).__name__}: {exc}") from exc


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
    def from_vllm(cls, base_url: str, /, **kwargs: Any) -> Self:
        """Build this reranker on a :class:`~qwen3_rerank_integrations.VLLMScorer` (a vLLM server's /rerank).

        Keyword arguments that name one of this class's fields configure the reranker; the rest go to
        ``VLLMScorer`` (``model``, ``api_key``, ``template``, ``timeout``...).

        Example:
            >>> reranker = Qwen3RerankCompressor.from_vllm("http://localhost:8000", template="server", top_n=5)
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
    def _rank(self, query: str, texts: Sequence[str]) -> list[Ranked]:
        """Score ``texts`` against ``query`` and rank them. Bad input raises before the scorer is called; no
        texts means no call."""
        docs = validate_inputs(query, texts, self.instruction)
        if not docs:
            return []
        with _scorer_errors(self.scorer):
            scores = self.scorer.score(query, docs, instruction=self.instruction)
        return self._ranked(scores, len(docs))

    async def _arank(self, query: str, texts: Sequence[str]) -> list[Ranked]:
        """The async twin of :meth:`_rank`, awaiting the scorer's ``ascore``."""
        docs = validate_inputs(query, texts, self.instruction)
        if not docs:
            return []
        with _scorer_errors(self.scorer):
            scores = await self.scorer.ascore(query, docs, instruction=self.instruction)
        return self._ranked(scores, len(docs))

    def _ranked(self, scores: object, count: int) -> list[Ranked]:
        checked = _checked_scores(self.scorer, scores, count)
        return rank(checked, top_n=self.top_n, score_threshold=self.score_threshold)
