"""Score many groups with one scorer: :func:`score_groups`, :func:`ascore_groups` — in this process, a bounded
number in flight (:mod:`.in_process`), or on a Ray cluster (:mod:`.ray_runner`).

Each group is one ``scorer.ascore`` call over its whole document list, so its scores are the ones
``scorer.score`` gives for that group alone, whatever the order in which groups finish or how many run at once.
A remote scorer (VLLMScorer) gets ``concurrency`` groups in flight through its ``ascore``, so every replica stays
busy; any other scorer (a local model) runs ``score`` on a worker thread, its own batching inside each call, one
group after another by default.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..cache import ScoreCache
from ..scorer import Scorer
from .groups import BatchScores, ScoreGroup
from .in_process import OnGroup, ascore_groups_here, score_groups_here

if TYPE_CHECKING:
    from .ray_runner import RayOptions

__all__ = ["ascore_groups", "score_groups"]


async def ascore_groups(
    scorer: Scorer,
    groups: Iterable[ScoreGroup | Mapping[str, Any]],
    *,
    concurrency: int | None = None,
    cache: ScoreCache | None = None,
    on_group: OnGroup | None = None,
    ray: RayOptions | None = None,
) -> BatchScores:
    """Async twin of :func:`score_groups`."""
    if ray is not None:
        from .ray_runner import score_groups_on_ray

        return await asyncio.to_thread(score_groups_on_ray, scorer, groups, options=ray, cache=cache,
                                       on_group=on_group)
    return await ascore_groups_here(scorer, groups, concurrency=concurrency, cache=cache, on_group=on_group)


def score_groups(
    scorer: Scorer,
    groups: Iterable[ScoreGroup | Mapping[str, Any]],
    *,
    concurrency: int | None = None,
    cache: ScoreCache | None = None,
    on_group: OnGroup | None = None,
    ray: RayOptions | None = None,
) -> BatchScores:
    """Score every group (a query, its documents, an instruction) with ``scorer``, ``concurrency`` groups in flight.

    Each group is one scorer call over its whole list, so its scores equal ``scorer.score(query, documents,
    instruction=...)`` for that group alone; the result lists them in input order.

    Args:
        scorer: any Scorer: LocalScorer, VLLMScorer (replicas: keep ``concurrency`` at least twice their number),
            VLLMEngineScorer, your own...
        groups: ScoreGroups, or dicts with ``query``, ``documents`` and optionally ``instruction``; all checked
            before any scoring.
        concurrency: groups in flight at once (default :func:`default_concurrency`: 8 for a remote scorer, 1 for
            a local model, which batches inside each call).
        cache: a ScoreCache read first, per whole group (a group is reused only when every score of it is there),
            and written as each group is scored, so a killed run resumes where it stopped. The scorer needs
            ``cache_identity()``.
        on_group: called with (index, scores, from_cache) as each group is done, in completion order (progress).
        ray: run the scoring on a Ray cluster instead (:class:`~qwen3_rerank_integrations.batch.RayOptions`; the
            ``ray`` extra); ``concurrency`` then does not apply.

    Raises:
        TypeError, ValueError: a bad group (the message starts with ``groups[i]``) or concurrency, before any work.
        RerankError: the scorer failed (what other groups finished is in the cache).
        MissingDependencyError: ``ray`` without the ``ray`` extra.
    """
    if ray is not None:
        from .ray_runner import score_groups_on_ray

        return score_groups_on_ray(scorer, groups, options=ray, cache=cache, on_group=on_group)
    return score_groups_here(scorer, groups, concurrency=concurrency, cache=cache, on_group=on_group)
