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
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from ._loaded_state import LoadedStateModel
from .cache import InMemoryScoreCache, ScoreCache, acached_scores, cached_scores
from .prompt import DEFAULT_INSTRUCTION
from .scorer import Scorer, check_instruction, checked_scores, instruction_in_use, scorer_errors, validate_inputs

__all__ = ["ScorerBase", "score_validated", "ascore_validated"]


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
                "implement cache_identity() (model, revision, every setting that changes scores)"
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
        return self._score_validated(query, validate_inputs(query, documents, instruction), instruction)

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async twin of :meth:`score`; never blocks the event loop (a sync-only backend runs on a worker thread)."""
        return await self._ascore_validated(query, validate_inputs(query, documents, instruction), instruction)

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
    def _score_validated(self, query: str, docs: list[str], instruction: str | None) -> list[float]:
        """:meth:`score` after its argument checks: the cache, the backend, the answer's check."""
        if not docs:
            return []
        used, cache = self._call_settings(instruction)
        if cache is None:
            return self._checked(self._score_texts(query, docs, used), len(docs))
        return cached_scores(
            cache, self.cache_identity, query, docs, used,
            lambda missing: self._checked(self._score_texts(query, missing, used), len(missing)),
            scorer=self,
        )

    async def _ascore_validated(self, query: str, docs: list[str], instruction: str | None) -> list[float]:
        """Async twin of :meth:`_score_validated`."""
        if not docs:
            return []
        used, cache = self._call_settings(instruction)
        if cache is None:
            return self._checked(await self._ascore_texts(query, docs, used), len(docs))

        async def compute(missing: list[str]) -> list[float]:
            return self._checked(await self._ascore_texts(query, missing, used), len(missing))

        return await acached_scores(cache, self.acache_identity, query, docs, used, compute, scorer=self)

    def _call_settings(self, instruction: str | None) -> tuple[str, ScoreCache | None]:
        """What a call reads from the settings: the instruction it uses and the cache (None: off)."""
        self._notice_changed_containers()  # a list/dict setting changed in place drops the loaded state first
        return self._instruction_for(instruction), self._score_cache()

    def _instruction_for(self, instruction: str | None) -> str:
        return instruction_in_use(self, instruction) or DEFAULT_INSTRUCTION

    def _score_cache(self) -> ScoreCache | None:
        cache = self.cache
        return cache if isinstance(cache, ScoreCache) else None

    def _checked(self, scores: object, count: int) -> list[float]:
        return checked_scores(self, scores, count)


# ============================================================================================== one call, checked once
def score_validated(scorer: Scorer, query: str, documents: list[str], instruction: str | None) -> list[float]:
    """One scorer call for a layer that has already checked its arguments (``validate_inputs``): a
    :class:`ScorerBase` skips its own argument checks, and the answer is checked once (by the base, or here for
    any other :class:`~qwen3_rerank_integrations.Scorer`). Anything but a RerankError the scorer raises comes back
    as a RerankError naming it (:func:`~qwen3_rerank_integrations.scorer.scorer_errors`)."""
    with scorer_errors(scorer):
        if isinstance(scorer, ScorerBase):
            return scorer._score_validated(query, documents, instruction)
        answer = scorer.score(query, documents, instruction=instruction)
    return checked_scores(scorer, answer, len(documents))


async def ascore_validated(scorer: Scorer, query: str, documents: list[str], instruction: str | None) -> list[float]:
    """Async twin of :func:`score_validated`, awaiting the scorer's ``ascore``."""
    with scorer_errors(scorer):
        if isinstance(scorer, ScorerBase):
            return await scorer._ascore_validated(query, documents, instruction)
        answer = await scorer.ascore(query, documents, instruction=instruction)
    return checked_scores(scorer, answer, len(documents))
