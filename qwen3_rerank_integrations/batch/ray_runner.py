"""Score groups on a Ray cluster: Ray Data ``map_batches`` over a pool of actors that each hold a scorer.

The scorer travels to each actor by pickle (no model, client or lock inside: it loads on the actor's first call,
a local model on the GPU/NPU Ray gives the actor). The driver reads the score cache first, sends only the
groups it does not hold whole, and writes each result back as it arrives, so a killed run resumes where it
stopped. An actor that dies is restarted by Ray and its batch retried (Ray Data's actor pools restart actors and
retry their tasks), so a killed actor costs only the time to redo its batch.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..cache import ScoreCache
from ..extras import require_extra
from ..scorer import Scorer
from .group_cache import group_cache_for
from .groups import BatchScores, ScoreGroup, as_groups
from .in_process import OnGroup, default_concurrency, score_groups_here

__all__ = ["RayOptions", "score_groups_on_ray"]


class RayOptions(BaseModel):
    """Where and how :func:`score_groups_on_ray` runs."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="The cluster: None starts a local one in this process (or uses the one ray.init already "
        "connected to); 'auto' joins the cluster this machine belongs to; 'ray://head:10001' one by Ray Client.",
    )
    num_actors: int = Field(2, gt=0, description="Actors, each with its own copy of the scorer.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each actor (1: a local model per GPU).")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom resources per actor, e.g. {'NPU': 1} for an Ascend NPU the cluster declares.",
    )
    batch_size: int = Field(16, gt=0, description="Groups per actor call (Ray Data's batch).")
    concurrency_per_actor: int | None = Field(
        None, gt=0,
        description="Groups each actor keeps in flight within a batch (default: 8 for a remote scorer, 1 for a "
        "local model).",
    )
    init_options: dict[str, Any] = Field(
        default_factory=dict,
        description="More ray.init() arguments when this call starts or joins the cluster (runtime_env...).",
    )


class _ScoringActor:
    """Ray Data's callable class: one scorer per actor, unpickled once; each batch scored through the batch API."""

    def __init__(self, scorer: bytes, concurrency: int | None) -> None:
        self.scorer = pickle.loads(scorer)
        self.concurrency = concurrency

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        groups = [ScoreGroup.model_validate_json(text) for text in batch["group"]]
        result = score_groups_here(self.scorer, groups, concurrency=self.concurrency)
        return {"index": list(batch["index"]), "scores": [json.dumps(scores) for scores in result.scores]}


def score_groups_on_ray(
    scorer: Scorer,
    groups: Iterable[ScoreGroup | Mapping[str, Any]],
    *,
    options: RayOptions | None = None,
    cache: ScoreCache | None = None,
    on_group: OnGroup | None = None,
) -> BatchScores:
    """:func:`~qwen3_rerank_integrations.batch.score_groups` on Ray: the same scores, in input order.

    Needs the ``ray`` extra. Connects with ``ray.init(address=...)`` unless Ray is already initialised here (then
    that cluster is used and left running); a cluster this call started is shut down at the end.

    Raises:
        MissingDependencyError: Ray Data is not installed (the ``ray`` extra).
        TypeError, ValueError: a bad group, before Ray starts.
        RerankError, ray.exceptions.RayError: the scoring failed (what finished is in the cache).
    """
    require_extra("ray", needed_by="score_groups on Ray", modules=["ray", "ray.data"])
    options = options or RayOptions()
    checked = as_groups(groups)
    store = group_cache_for(scorer, cache)
    scores: list[list[float] | None] = [None] * len(checked)
    cached = [False] * len(checked)
    todo = []
    for index, group in enumerate(checked):
        found = store.get(group) if store is not None and group.documents else None
        if found is None and group.documents:
            todo.append(index)
            continue
        scores[index], cached[index] = found or [], found is not None
        if on_group is not None:
            on_group(index, scores[index], cached[index])  # type: ignore[arg-type]
    if todo:
        for index, values in _run_on_ray(scorer, checked, todo, options):
            scores[index] = values
            if store is not None:
                store.put(checked[index], values)
            if on_group is not None:
                on_group(index, values, False)
    return BatchScores(scores=scores, cached=cached)  # type: ignore[arg-type]


def _run_on_ray(
    scorer: Scorer, groups: list[ScoreGroup], todo: list[int], options: RayOptions
) -> Iterable[tuple[int, list[float]]]:
    """(index, scores) of each group in ``todo``, as Ray's actors return them."""
    import ray
    import ray.data

    from ..scorer import checked_scores

    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False, **options.init_options)
    try:
        rows = [{"index": index, "group": groups[index].model_dump_json()} for index in todo]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // options.batch_size)))
        per_actor = options.concurrency_per_actor or default_concurrency(scorer)
        scored = dataset.map_batches(
            _ScoringActor,
            # cloudpickle: a scorer class defined in a script or notebook (__main__) travels by value.
            fn_constructor_kwargs={"scorer": ray.cloudpickle.dumps(scorer), "concurrency": per_actor},
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=options.num_actors),
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            resources=options.resources or None,
        )
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            for index, text in zip(batch["index"], batch["scores"]):
                index = int(index)
                yield index, checked_scores(scorer, json.loads(str(text)), len(groups[index].documents))
    finally:
        if started:
            ray.shutdown()
