"""A base for scoring backends: :class:`ScorerBase`, and the check every scorer's answer gets.

A backend (an in-process model, an engine, a remote service, a toy) subclasses :class:`ScorerBase` and writes
only how it scores texts: ``_score_texts(query, documents, instruction)`` and, if it has a native async path,
``_ascore_texts``. The base implements the public :meth:`~ScorerBase.score` / :meth:`~ScorerBase.ascore` once:

1. the arguments are checked (:func:`~qwen3_rerank_integrations.scorer.validate_inputs`) before any work;
2. an empty document list returns ``[]`` without calling the backend (no model load, no request);
3. the instruction falls back to the scorer's ``instruction`` field, then to the model card's
   :data:`~qwen3_rerank_integrations.prompt.DEFAULT_INSTRUCTION`, so the backend always gets a real one;
4. with ``cache=`` set, cached pairs are answered from the cache and only the rest reach the backend;
5. the backend's answer is checked: one finite probability in [0, 1] per document, or a
   :class:`~qwen3_rerank_integrations.RerankError` (a lost or out-of-range score would silently mis-rank).

Settings and loaded state follow one rule (:class:`~qwen3_rerank_integrations._loaded_state.LoadedStateModel`):
the fields are settings, validated on assignment and in ``model_copy(update=...)``; what a backend builds from
them (a model, clients, learned limits) lives in private attributes, dropped when a setting it depends on
changes (assigned, copied with ``update=``, or a list/dict changed in place), and never copied or pickled. A
changed setting therefore takes effect on the next call, and ``cache_identity()`` always describes what scores.

A backend that builds the official prompt as token ids uses
:class:`~qwen3_rerank_integrations.prompt.PromptEncoder` (which escapes control tokens in retrieved text); one
that sends text uses :func:`~qwen3_rerank_integrations.prompt.format_prompt` or the query/document sides.

Imports pydantic and the cache module only: no torch, no httpx.
"""

from __future__ import annotations

import asyncio
import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from ._loaded_state import LoadedStateModel
from .cache import InMemoryScoreCache, ScoreCache, acached_scores, cached_scores
from .errors import RerankError
from .prompt import DEFAULT_INSTRUCTION
from .scorer import check_instruction, validate_inputs

__all__ = ["ScorerBase", "checked_scores", "scorer_name"]


def scorer_name(scorer: object) -> str:
    """A name for events and messages: the scorer's model if it has one, else its class. Never a URL (it may
    carry credentials)."""
    model = getattr(scorer, "model", None)
    return model if isinstance(model, str) and model else type(scorer).__name__


def checked_scores(scorer: object, scores: object, count: int) -> list[float]:
    """``scores`` as a list of floats, or a RerankError: a lost, non-finite or out-of-range score would silently
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


class ScorerBase(LoadedStateModel):
    """The public half of every backend: :meth:`score`/:meth:`ascore` with their checks, the ``instruction``
    default and the opt-in score ``cache``. Subclasses implement :meth:`_score_texts` (and may override
    :meth:`_ascore_texts`), plus :meth:`cache_identity` to allow ``cache=``.

    Fields are settings, validated on assignment and in ``model_copy(update=...)``; what a backend loads lives in
    private attributes, dropped when a setting changes and left out of copies and pickles, so a changed setting
    takes effect on the next call and a pickled scorer loads again where it lands (docs: "Settings, copies and
    pickles").

    Example:
        >>> class Overlap(ScorerBase):
        ...     def _score_texts(self, query, documents, instruction):
        ...         words = set(query.lower().split())
        ...         return [len(words & set(d.lower().split())) / max(len(words), 1) for d in documents]
        >>> Overlap().score("capital of China", ["the capital of China is Beijing", "Gravity pulls."])
        [1.0, 0.0]
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Read by every call: changing them keeps the loaded model (a subclass adds its own such settings).
    _per_call_settings: ClassVar[frozenset[str]] = frozenset({"instruction", "cache"})

    instruction: str | None = Field(
        None, description="Default task instruction; None means the model card's web-search instruction."
    )
    cache: ScoreCache | bool | None = Field(
        None,
        description="Opt-in score cache: True for a new in-memory LRU (InMemoryScoreCache), or a ScoreCache "
        "(InMemoryScoreCache, DiskScoreCache, ByteStoreScoreCache) to share; None/False scores every call. Keys "
        "cover the scorer's cache_identity(), the instruction used, the query and the document. Hit/miss counts: "
        "scorer.cache.stats.",
    )

    @field_validator("instruction")
    @classmethod
    def _instruction_is_text(cls, value: str | None) -> str | None:
        if value is not None:
            check_instruction(value)
        return value

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_switch(cls, value: Any) -> Any:
        # True/False are switches, not values to keep: True means a fresh LRU of this scorer's own.
        if value is True:
            return InMemoryScoreCache()
        if value is False or value is None:
            return None
        if not isinstance(value, ScoreCache):
            raise TypeError(
                "cache must be True, False, None or a ScoreCache (InMemoryScoreCache, DiskScoreCache, "
                f"ByteStoreScoreCache), got {type(value).__name__}"
            )
        return value

    @model_validator(mode="after")
    def _cache_needs_identity(self) -> Any:
        if self.cache is not None and type(self).cache_identity is ScorerBase.cache_identity:
            raise TypeError(
                f"{type(self).__name__} has no cache_identity(), so cache= cannot tell its configurations apart; "
                "implement cache_identity() (model, revision, every setting that changes scores) or wrap it in "
                "CachedScorer(scorer=..., identity={...})"
            )
        return self

    # ----------------------------------------------------------------------------------------- public API
    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]:
        """P("yes") for each document against ``query``, in input order.

        Args:
            query: the search query; must not be empty.
            documents: the texts to score; empty strings are valid.
            instruction: the task instruction for this call; defaults to the scorer's ``instruction``.

        Raises:
            TypeError, ValueError: bad arguments (before any work).
            RerankError: the backend answered other than one probability per document.
            Exception: whatever the backend raises, unchanged (the built-in ones raise ModelLoadError, RerankError
                and its subclasses); :func:`~qwen3_rerank_integrations.rerank` wraps anything else in a RerankError.
        """
        docs = validate_inputs(query, documents, instruction)
        self._notice_changed_containers()
        if not docs:
            return []
        used = self._instruction_for(instruction)
        cache = self._score_cache()
        if cache is None:
            return self._checked(self._score_texts(query, docs, used), len(docs))
        return cached_scores(
            cache, self.cache_identity, query, docs, used,
            lambda missing: self._checked(self._score_texts(query, missing, used), len(missing)),
            scorer=self,
        )

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async twin of :meth:`score`; never blocks the event loop (a sync-only backend runs on a worker thread)."""
        docs = validate_inputs(query, documents, instruction)
        self._notice_changed_containers()
        if not docs:
            return []
        used = self._instruction_for(instruction)
        cache = self._score_cache()
        if cache is None:
            return self._checked(await self._ascore_texts(query, docs, used), len(docs))

        async def compute(missing: list[str]) -> list[float]:
            return self._checked(await self._ascore_texts(query, missing, used), len(missing))

        return await acached_scores(cache, self.acache_identity, query, docs, used, compute, scorer=self)

    def cache_identity(self) -> dict[str, Any]:
        """What decides this scorer's scores (model, exact revision, every setting that changes a score), as a
        JSON-able dict for score-cache keys. Never put a secret in it. Required for ``cache=``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement cache_identity()")

    async def acache_identity(self) -> dict[str, Any]:
        """Async twin of :meth:`cache_identity`; by default it runs on a worker thread (it may read model files)."""
        return await asyncio.to_thread(self.cache_identity)

    # ----------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release what the scorer holds open (HTTP connections, an engine); a no-op where it holds nothing. A
        closed scorer opens again on its next call, so ``with`` blocks are safe to repeat."""

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------------------------- backend hooks
    @abstractmethod
    def _score_texts(self, query: str, documents: list[str], instruction: str) -> Sequence[float]:
        """Score ``documents`` against ``query`` under ``instruction``: P("yes") per document, in order.

        Called with checked arguments, at least one document, and the instruction already resolved (never
        None). Escaping control tokens is the prompt builder's job (``PromptEncoder``, ``format_prompt``).
        """

    async def _ascore_texts(self, query: str, documents: list[str], instruction: str) -> Sequence[float]:
        """Async twin of :meth:`_score_texts`. The default runs the sync one on a worker thread, so a sync-only
        backend is correct and never blocks the event loop; override it for a native async path."""
        return await asyncio.to_thread(self._score_texts, query, documents, instruction)

    # ----------------------------------------------------------------------------------------- internals
    def _instruction_for(self, instruction: str | None) -> str:
        return instruction or self.instruction or DEFAULT_INSTRUCTION

    def _score_cache(self) -> ScoreCache | None:
        cache = self.cache
        return cache if isinstance(cache, ScoreCache) else None

    def _checked(self, scores: object, count: int) -> list[float]:
        return checked_scores(self, scores, count)
