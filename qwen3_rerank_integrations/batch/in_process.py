"""Scoring many groups in this process, a bounded number in flight (what :func:`~.scoring.score_groups` runs
without Ray, and what each Ray actor runs on its share).

Each group is one ``scorer.ascore`` call over its whole document list, so its scores are the ones
``scorer.score`` gives for that group alone, whatever the order in which groups finish or how many run at once.
A remote scorer (VLLMScorer) gets ``concurrency`` groups in flight through its ``ascore``, so every replica stays
busy; any other scorer (a local model) runs ``score`` on a worker thread, its own batching inside each call, one
group after another by default.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..base import ascore_validated, score_validated
from ..cache import ScoreCache
from ..scorer import Scorer
from .group_cache import group_cache_for
from .groups import BatchScores, ScoreGroup, as_groups

__all__ = ["OnGroup", "ascore_groups_here", "score_groups_here", "default_concurrency", "remote_replicas", "run_blocking"]

T = TypeVar("T")

# Called as each group is done: (its index in the input, its scores, whether they came from the cache).
OnGroup = Callable[[int, list[float], bool], None]
# Groups in flight for a remote scorer: enough for a few replicas; more replicas get two each.
REMOTE_CONCURRENCY = 8


def remote_replicas(scorer: object) -> int:
    """How many servers a remote scorer sends to (a ``base_urls`` list: VLLMScorer, or a wrapper of one that keeps
    it as ``scorer``); 0 for a scorer that computes here (LocalScorer, VLLMEngineScorer, your own)."""
    while not isinstance(getattr(scorer, "base_urls", None), list):
        inner = getattr(scorer, "scorer", None)  # a wrapper: look at what it wraps
        if inner is None or inner is scorer:
            return 0
        scorer = inner
    return len(scorer.base_urls)  # type: ignore[attr-defined]


def default_concurrency(scorer: object) -> int:
    """Groups in flight by default: for a remote scorer 8, or 2 per replica when it has more than 4; otherwise 1
    (a local model batches inside each call)."""
    replicas = remote_replicas(scorer)
    return max(REMOTE_CONCURRENCY, 2 * replicas) if replicas else 1


def _check_concurrency(concurrency: object) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int (groups in flight), got {concurrency!r}")


async def _score_one(scorer: Scorer, group: ScoreGroup, threads: ThreadPoolExecutor | None) -> list[float]:
    """One group, one call: a remote scorer's ``ascore`` (``threads`` None: its requests then share this loop);
    any other scorer's ``score`` on one of ``threads`` (a local model's own sync path and batching, and the loop
    never blocked)."""
    if not group.documents:
        return []
    # A ScoreGroup's texts were checked when it was made: the scorer gets them without a second check, and its
    # answer is checked once (score_validated).
    if threads is None and callable(getattr(scorer, "ascore", None)):
        return await ascore_validated(scorer, group.query, group.documents, group.instruction)
    call = functools.partial(score_validated, scorer, group.query, group.documents, group.instruction)
    return await asyncio.get_running_loop().run_in_executor(threads, call)


async def ascore_groups_here(
    scorer: Scorer,
    groups: Iterable[ScoreGroup | Mapping[str, Any]],
    *,
    concurrency: int | None = None,
    cache: ScoreCache | None = None,
    on_group: OnGroup | None = None,
) -> BatchScores:
    """:func:`~qwen3_rerank_integrations.batch.ascore_groups` in this process (see there)."""
    checked = as_groups(groups)
    width = default_concurrency(scorer) if concurrency is None else concurrency
    _check_concurrency(width)
    store = group_cache_for(scorer, cache)
    # A scorer that computes here gets its own threads, as many as groups may be in flight.
    threads = None if remote_replicas(scorer) else ThreadPoolExecutor(width, thread_name_prefix="score_groups")
    scores: list[list[float] | None] = [None] * len(checked)
    cached = [False] * len(checked)
    pending = iter(range(len(checked)))

    async def worker() -> None:
        for index in pending:  # shared iterator: each group is taken by one worker
            group = checked[index]
            found = await store.aget(group) if store is not None and group.documents else None
            if found is None:
                found = await _score_one(scorer, group, threads)
                if store is not None and found:
                    await store.aput(group, found)  # committed as it returns: a killed run loses only what is in flight
            else:
                cached[index] = True
            scores[index] = found
            if on_group is not None:
                on_group(index, found, cached[index])

    workers = [asyncio.ensure_future(worker()) for _ in range(min(width, len(checked)) or 1)]
    try:
        await asyncio.gather(*workers)
    finally:  # the first failure stops the others (what they finished is in the cache)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if threads is not None:
            threads.shutdown(wait=False)  # a call still running finishes on its own; nothing waits for it
    return BatchScores(scores=scores, cached=cached)  # type: ignore[arg-type]


def run_blocking(run: Coroutine[Any, Any, T]) -> T:
    """Run ``run`` to its end from sync code, also when called inside a running event loop (a notebook, an async
    framework): there on a thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run)
    # Called from inside an event loop (a notebook, an async framework): run on a thread with its own loop.
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(run)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller's thread, raised there)
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="score_groups")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def score_groups_here(
    scorer: Scorer,
    groups: Iterable[ScoreGroup | Mapping[str, Any]],
    *,
    concurrency: int | None = None,
    cache: ScoreCache | None = None,
    on_group: OnGroup | None = None,
) -> BatchScores:
    """:func:`~qwen3_rerank_integrations.batch.score_groups` in this process (see there)."""
    return run_blocking(ascore_groups_here(scorer, groups, concurrency=concurrency, cache=cache, on_group=on_group))
