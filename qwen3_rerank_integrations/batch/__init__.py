"""Batch scoring: many (query, documents, instruction) groups with one scorer, every replica kept busy, resumable
through the score cache, on one machine or on a Ray cluster (the ``ray`` extra).

Example:
    >>> from qwen3_rerank_integrations import ScorerBase
    >>> from qwen3_rerank_integrations.batch import ScoreGroup, score_groups
    >>> class Overlap(ScorerBase):
    ...     def _score_texts(self, query, documents, instruction):
    ...         words = set(query.lower().split())
    ...         return [len(words & set(d.lower().split())) / len(words) for d in documents]
    >>> groups = [ScoreGroup(query="capital of China", documents=["Beijing is the capital of China", "Gravity"]),
    ...           {"query": "gravity", "documents": ["Gravity pulls."]}]
    >>> score_groups(Overlap(), groups).scores
    [[1.0, 0.0], [1.0]]
"""

from __future__ import annotations

from .group_cache import GroupCache
from .groups import BatchScores, ScoreGroup, as_groups
from .in_process import default_concurrency
from .ray_runner import RayOptions, score_groups_on_ray
from .scoring import ascore_groups, score_groups

__all__ = [
    "BatchScores",
    "GroupCache",
    "RayOptions",
    "ScoreGroup",
    "as_groups",
    "ascore_groups",
    "default_concurrency",
    "score_groups",
    "score_groups_on_ray",
]
