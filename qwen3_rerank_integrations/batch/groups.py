"""What the batch API scores and returns: :class:`ScoreGroup` (a query, its documents, an instruction) and
:class:`BatchScores` (every group's scores in input order, and which came from the score cache)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..scorer import validate_inputs

__all__ = ["BatchScores", "ScoreGroup", "as_groups"]


class ScoreGroup(BaseModel):
    """One scorer call's worth of work: a query, its documents, and the instruction to score them under."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str = Field(description="The search query; must not be empty.")
    documents: list[str] = Field(description="The texts to score against the query (empty strings are valid).")
    instruction: str | None = Field(None, description="The task instruction; None uses the scorer's default.")

    @model_validator(mode="before")
    @classmethod
    def _checked_like_a_scorer_call(cls, data: Any) -> Any:
        # The scorers' own checks and messages ("documents[2] must be a str"), before pydantic's coercion.
        if isinstance(data, Mapping) and "query" in data and "documents" in data:
            documents = validate_inputs(data["query"], data["documents"], data.get("instruction"))
            return {**data, "documents": documents}
        return data


class BatchScores(BaseModel):
    """What :func:`~qwen3_rerank_integrations.batch.score_groups` returns."""

    scores: list[list[float]] = Field(description="Each group's scores, in input order: P('yes') per document.")
    cached: list[bool] = Field(description="Per group: True when its scores were read from the score cache.")

    @property
    def pairs_scored(self) -> int:
        """(query, document) scores computed by this run."""
        return sum(len(scores) for scores, hit in zip(self.scores, self.cached) if not hit)

    @property
    def pairs_cached(self) -> int:
        """(query, document) scores read from the score cache."""
        return sum(len(scores) for scores, hit in zip(self.scores, self.cached) if hit)


def as_groups(groups: Iterable[ScoreGroup | Mapping[str, Any]]) -> list[ScoreGroup]:
    """``groups`` as ScoreGroups, every one checked before any scoring.

    Raises:
        TypeError, ValueError: a group is not a ScoreGroup or a mapping with ``query`` and ``documents``, or
            fails a scorer's input checks; the message starts with ``groups[i]``.
    """
    if isinstance(groups, (str, bytes, Mapping, ScoreGroup)):
        raise TypeError(f"groups must be an iterable of ScoreGroup (or dicts with query, documents, instruction), "
                        f"got a single {type(groups).__name__}; wrap it in a list")
    checked = []
    for i, group in enumerate(groups):
        if isinstance(group, ScoreGroup):
            checked.append(group)
            continue
        if not isinstance(group, Mapping) or "query" not in group or "documents" not in group:
            raise TypeError(f"groups[{i}] must be a ScoreGroup or a dict with 'query' and 'documents' (and "
                            f"optionally 'instruction'), got {type(group).__name__}")
        unknown = set(group) - {"query", "documents", "instruction"}
        if unknown:
            raise ValueError(f"groups[{i}] has unknown keys {sorted(unknown)}: a group has query, documents and "
                             "instruction")
        try:  # the scorers' checks first, so the message is theirs, not pydantic's
            validate_inputs(group["query"], group["documents"], group.get("instruction"))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"groups[{i}]: {exc}") from None
        checked.append(ScoreGroup.model_validate(group))
    return checked
