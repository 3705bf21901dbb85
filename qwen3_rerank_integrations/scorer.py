"""The scorer contract: the ``Scorer`` protocol, the checks on a call's arguments and on its answer, the
instruction a call uses, and what a scorer may raise.

A scorer turns one query and a list of documents into one relevance score per document, in input order:
P("yes") in [0, 1] as the official Qwen3-Reranker method computes it. The framework adapters depend on this
protocol only, so any backend (local model, vLLM server, a test double) plugs into them. A new backend
subclasses :class:`~qwen3_rerank_integrations.ScorerBase`, which applies this contract for it.

Every layer a call passes through (an adapter, :func:`~qwen3_rerank_integrations.rerank`, the batch and eval
runners, :class:`~qwen3_rerank_integrations.ScorerBase`) uses these functions, so a rule is written once. Imports
nothing heavier than the prompt module's constants.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from .errors import RerankError
from .prompt import DEFAULT_INSTRUCTION

__all__ = [
    "Scorer",
    "validate_inputs",
    "check_instruction",
    "checked_scores",
    "scorer_name",
    "instruction_in_use",
    "scorer_errors",
]

# A lone UTF-16 surrogate (left by a bad decode: errors="surrogateescape", a JSON "\ud800") is not text: no
# tokenizer, UTF-8 encoder or JSON body can carry it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@runtime_checkable
class Scorer(Protocol):
    """Scores documents against a query; ``score`` and ``ascore`` return the same numbers."""

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]:
        """P("yes") for each document, in input order. ``instruction=None`` uses the scorer's default."""
        ...

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """The async twin of :meth:`score`; never blocks the event loop."""
        ...


def validate_inputs(query: object, documents: object, instruction: object = None) -> list[str]:
    """Check a scoring call's arguments before any model or network work, and return ``documents`` as a list.

    Raises:
        TypeError: ``query`` or ``instruction`` is not a string; ``documents`` is a bare string, not a
            sequence, or holds a non-string (the message names its index).
        ValueError: ``query`` or ``instruction`` is empty or whitespace, or a text holds a lone surrogate
            (not valid Unicode; the message names it and the position). Empty documents are valid and scored.
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query must not be empty or whitespace")
    if instruction is not None:
        check_instruction(instruction)
    _check_unicode("query", query)
    if isinstance(documents, (str, bytes)):
        raise TypeError(
            "documents must be a sequence of str, got a single "
            f"{type(documents).__name__}; wrap it in a list: documents=[text]"
        )
    if not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a sequence of str (a list or tuple), got {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise TypeError(f"documents[{i}] must be a str, got {type(doc).__name__}")
        _check_unicode(f"documents[{i}]", doc)
    return list(documents)


def check_instruction(instruction: object) -> str:
    """Check an instruction (a call's, or a scorer's default): a non-blank str of valid Unicode.

    Raises:
        TypeError: not a str. ValueError: empty or whitespace, or a lone surrogate.
    """
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str or None, got {type(instruction).__name__}")
    if not instruction.strip():
        raise ValueError("instruction must not be empty or whitespace; pass None for the default")
    _check_unicode("instruction", instruction)
    return instruction


def _check_unicode(name: str, text: str) -> None:
    found = _SURROGATE.search(text)
    if found is not None:
        raise ValueError(
            f"{name} is not valid Unicode text: a lone surrogate U+{ord(found.group()):04X} at position "
            f"{found.start()} (a broken decode); decode its source as UTF-8 with errors='replace', or remove it"
        )


# ============================================================================================== the answer
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


@contextlib.contextmanager
def scorer_errors(scorer: object) -> Iterator[None]:
    """Let RerankError through as it is; wrap anything else a scorer raises (a third-party scorer, a torch
    RuntimeError) in a RerankError naming the scorer, cause kept, so callers catch one type."""
    try:
        yield
    except RerankError:
        raise
    except Exception as exc:  # re-raised as RerankError, cause kept
        raise RerankError(f"scorer {scorer_name(scorer)} failed: {type(exc).__name__}: {exc}") from exc


# ============================================================================================== the instruction
def instruction_in_use(scorer: object, instruction: str | None) -> str | None:
    """The instruction ``scorer`` scores a call with: the call's, else the scorer's ``instruction`` field, else the
    model card's :data:`~qwen3_rerank_integrations.prompt.DEFAULT_INSTRUCTION`. A scorer without an
    ``instruction`` field keeps None (its own default is part of its cache identity)."""
    if instruction is not None or not hasattr(scorer, "instruction"):
        return instruction
    return getattr(scorer, "instruction") or DEFAULT_INSTRUCTION
