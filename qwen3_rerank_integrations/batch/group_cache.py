"""A score cache read and written per whole group: :class:`GroupCache`.

A group (one query, its documents, one instruction) is scored in one scorer call. A model's fp32 rounding depends
on which documents share a batch (~1e-7), so a group is taken from the cache only when the cache holds every one
of its scores; otherwise it is scored whole again and all its scores are written, over any older ones. The keys
are those of a scorer's own ``cache=``, so the folder of a :class:`~qwen3_rerank_integrations.DiskScoreCache`
serves both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..cache import ScoreCache, score_keys
from ..scorer import instruction_in_use, scorer_errors
from .groups import ScoreGroup

__all__ = ["GroupCache", "group_cache_for"]


class GroupCache(BaseModel):
    """A scorer's view of a :class:`~qwen3_rerank_integrations.cache.ScoreCache`: a group's scores, whole or
    not at all."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    scorer: Any = Field(description="The scorer whose scores are cached: it needs cache_identity().")
    cache: ScoreCache = Field(description="Where the scores are kept (an InMemoryScoreCache, a DiskScoreCache...).")

    def keys(self, group: ScoreGroup) -> list[str]:
        """The cache keys of ``group``'s documents, in order."""
        with scorer_errors(self.scorer):  # a remote scorer asks its server once
            identity = self.scorer.cache_identity()
        return score_keys(identity, instruction_in_use(self.scorer, group.instruction), group.query, group.documents)

    def get(self, group: ScoreGroup) -> list[float] | None:
        """The group's scores if the cache holds every one of them (each a probability), else None."""
        found = self.cache.get_many(self.keys(group))
        if all(isinstance(value, float) and 0.0 <= value <= 1.0 for value in found):
            return found  # type: ignore[return-value]
        return None

    def put(self, group: ScoreGroup, scores: Sequence[float]) -> None:
        """Write every score of ``group`` (keys asked again: a first load may pin another revision than before)."""
        self.cache.set_many(dict(zip(self.keys(group), scores)))

    async def aget(self, group: ScoreGroup) -> list[float] | None:
        """:meth:`get` on a worker thread (the identity may read model files or ask a server; the cache a disk)."""
        return await asyncio.to_thread(self.get, group)

    async def aput(self, group: ScoreGroup, scores: Sequence[float]) -> None:
        """:meth:`put` on a worker thread."""
        await asyncio.to_thread(self.put, group, scores)

    def count_cached(self, groups: Sequence[ScoreGroup]) -> int:
        """Documents whose group is whole in the cache (these lookups are not counted as hits or misses)."""
        cached = sum(len(group.documents) for group in groups if self.get(group) is not None)
        self.cache.reset_stats()
        return cached


def group_cache_for(scorer: object, cache: ScoreCache | None) -> GroupCache | None:
    """A GroupCache over ``cache`` for ``scorer`` (None without a cache).

    Raises:
        TypeError: the scorer has no ``cache_identity()``, so its scores cannot be keyed.
    """
    if cache is None:
        return None
    if not callable(getattr(scorer, "cache_identity", None)):
        raise TypeError(f"{type(scorer).__name__} has no cache_identity(), so the score cache cannot tell its "
                        "configurations apart: implement cache_identity() (see Extending), or pass no cache")
    return GroupCache(scorer=scorer, cache=cache)
