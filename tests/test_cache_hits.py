"""A cache hit is checked as a fresh score is: an entry that is not a float in [0, 1] is a miss.

A store shared with other code (a LangChain ByteStore), a disk cache written by another version or a damaged
entry could hold 5.0 or -0.25; those came back from score() as the score (only non-finite ones were refused).
Now such an entry is a miss: the pair is scored again, the entry overwritten, and a warning says so. Checked
through both ways a call reaches a backend's ``cache=`` field (``scorer.score`` and ``rerank()``, which the
adapters call and which skips the scorer's own argument checks), sync and async, on every store.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from typing import Any

import pytest

from qwen3_rerank_integrations import (
    ByteStoreScoreCache,
    DiskScoreCache,
    InMemoryScoreCache,
    ScorerBase,
    arerank,
    rerank,
)
from qwen3_rerank_integrations.cache import score_keys
from qwen3_rerank_integrations.prompt import DEFAULT_INSTRUCTION

QUERY = "What is the capital of China?"
FRESH = 0.5
BAD_FLOATS = [5.0, -0.25, 1.0000001, -0.0000001, math.inf, -math.inf, math.nan]


class Constant(ScorerBase):
    """Scores every document FRESH; counts the documents it was asked for."""

    def _score_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        _asked.extend(documents)
        return [FRESH] * len(documents)

    def cache_identity(self) -> dict[str, Any]:
        return {"backend": "constant"}


_asked: list[str] = []


def _keys(documents: list[str]) -> list[str]:
    # The keys a Constant(cache=...) looks a pair up under.
    return score_keys({"backend": "constant"}, DEFAULT_INSTRUCTION, QUERY, documents)


def _plant(cache: Any, values: list[Any]) -> list[str]:
    """Write ``values`` raw into ``cache`` under the keys of documents d0, d1, ...; returns the documents."""
    documents = [f"d{i}" for i in range(len(values))]
    keys = _keys(documents)
    if isinstance(cache, InMemoryScoreCache):
        cache._entries.update(zip(keys, values))  # raw: set_many would have made them floats
    elif isinstance(cache, ByteStoreScoreCache):
        cache.store.mset([(k, struct.pack("<d", v) if isinstance(v, float) else v) for k, v in zip(keys, values)])
    else:
        db = cache._cache()
        for key, value in zip(keys, values):
            db.set(key, value)
    return documents


def _store(kind: str, tmp_path) -> Any:
    if kind == "memory":
        return InMemoryScoreCache()
    if kind == "bytestore":
        from langchain_core.stores import InMemoryByteStore

        return ByteStoreScoreCache(store=InMemoryByteStore())
    return DiskScoreCache(tmp_path / "scores")


def _bad_values(kind: str) -> list[Any]:
    if kind == "memory":
        return [*BAD_FLOATS, 1, True, "0.5", None]
    if kind == "bytestore":
        return [*BAD_FLOATS, b"\x00" * 4, b"0.5"]
    return [*BAD_FLOATS[:-1], 1, "0.5"]  # SQLite keeps no NaN (it stores NULL: an absent entry)


def _scores(path: str, run: str, scorer: ScorerBase, documents: list[str]) -> list[float]:
    """The scores of one call, in input order, through ``path``: the scorer's own method or the ranking."""
    if path == "score":
        return scorer.score(QUERY, documents) if run == "sync" else asyncio.run(scorer.ascore(QUERY, documents))
    ranked = rerank(scorer, QUERY, documents) if run == "sync" else asyncio.run(arerank(scorer, QUERY, documents))
    return [score for _, score in sorted(ranked)]


@pytest.mark.parametrize("path", ["score", "rerank"])
@pytest.mark.parametrize("run", ["sync", "async"])
@pytest.mark.parametrize("kind", ["memory", "bytestore", "disk"])
def test_an_invalid_hit_is_a_miss_rescored_and_overwritten(kind, run, path, tmp_path, caplog):
    cache = _store(kind, tmp_path)
    bad = _bad_values(kind)
    documents = _plant(cache, bad)
    good = _plant_good(cache)
    scorer = Constant(cache=cache)
    _asked.clear()
    call = [*documents, good]
    with caplog.at_level(logging.WARNING, logger="qwen3_rerank_integrations.cache"):
        scores = _scores(path, run, scorer, call)
    assert scores == [FRESH] * len(documents) + [0.25]  # never a planted value; the valid hit is kept
    assert _asked == documents  # every invalid entry was scored again, the valid one was not
    assert cache.get_many(_keys(documents)) == [FRESH] * len(documents)  # and overwritten
    assert "held no probability in [0, 1]" in caplog.text
    if isinstance(cache, DiskScoreCache):
        cache.close()


def _plant_good(cache: Any) -> str:
    cache.set_many(dict(zip(_keys(["good"]), [0.25])))
    return "good"


def test_boundaries_zero_and_one_are_hits():
    cache = InMemoryScoreCache()
    cache.set_many(dict(zip(_keys(["zero", "one"]), [0.0, 1.0])))
    _asked.clear()
    assert Constant(cache=cache).score(QUERY, ["zero", "one"]) == [0.0, 1.0] and _asked == []
    assert (cache.stats.hits, cache.stats.misses) == (2, 0)


def test_invalid_hits_count_as_misses():
    cache = InMemoryScoreCache()
    documents = _plant(cache, [5.0, -0.25])
    Constant(cache=cache).score(QUERY, documents)
    assert (cache.stats.hits, cache.stats.misses) == (0, 2)
