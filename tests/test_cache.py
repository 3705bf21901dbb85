"""The score cache: only missing pairs are scored, scores come back exact and in order, and no key part can be
changed without a miss (a cached score is never returned for another configuration)."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field, PrivateAttr, ValidationError

import qwen3_rerank_integrations
from qwen3_rerank_integrations import DEFAULT_INSTRUCTION, LocalScorer, ScorerBase, VLLMScorer
from qwen3_rerank_integrations._secrets import public_url
from qwen3_rerank_integrations.cache import (
    ByteStoreScoreCache,
    DiskScoreCache,
    InMemoryScoreCache,
    cached_scores,
    score_keys,
)
from qwen3_rerank_integrations.errors import ModelLoadError, RerankError
from qwen3_rerank_integrations.model_source import folder_fingerprint, model_revision
from tests.test_engine import fake_vllm  # noqa: F401  (the stand-in vllm module, a fixture)

QUERY = "What is the capital of China?"


class CountingScorer(ScorerBase):
    """A deterministic fake backend: records every backend call; the score depends on query, document and
    instruction. Cached through its own ``cache=`` field, as every ScorerBase backend is."""

    identity: dict[str, Any] = Field(default_factory=lambda: {"backend": "fake", "model": "m1"},
                                     description="What cache_identity() returns.")
    # The call records are data to keep: a changed setting (identity=) must not wipe them as loaded state.
    _carried_private: ClassVar[frozenset[str]] = frozenset({"_calls", "_acalls"})
    _kept_on_change: ClassVar[frozenset[str]] = ScorerBase._kept_on_change | {"_calls_lock"}
    _calls: list[list[str]] = PrivateAttr(default_factory=list)
    _acalls: list[list[str]] = PrivateAttr(default_factory=list)
    _calls_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @staticmethod
    def value(query: str, doc: str, instruction: str | None) -> float:
        return (hash((query, doc, instruction)) % 10_007) / 10_007

    @property
    def calls(self) -> list[list[str]]:
        """The documents of each sync backend call, in order."""
        return self._calls

    @property
    def acalls(self) -> list[list[str]]:
        """The documents of each async backend call, in order."""
        return self._acalls

    def _score_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        with self._calls_lock:
            self._calls.append(list(documents))
        return [self.value(query, doc, instruction) for doc in documents]

    async def _ascore_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        self._acalls.append(list(documents))
        return [self.value(query, doc, instruction) for doc in documents]

    def cache_identity(self) -> dict[str, Any]:
        return dict(self.identity)


# ------------------------------------------------------------------------------------------ hits and misses
def test_partial_hits_score_only_the_missing_documents_in_one_call():
    scorer = CountingScorer(cache=True)
    first = scorer.score(QUERY, ["a", "b", "c"])
    assert scorer.calls == [["a", "b", "c"]]
    assert scorer.cache.stats.model_dump() == {"hits": 0, "misses": 3, "hit_rate": 0.0}

    second = scorer.score(QUERY, ["c", "d", "a", "e"])
    assert scorer.calls[1] == ["d", "e"]  # one backend call, only the missing ones, in input order
    assert second == [first[2], scorer.value(QUERY, "d", DEFAULT_INSTRUCTION), first[0],
                      scorer.value(QUERY, "e", DEFAULT_INSTRUCTION)]
    assert (scorer.cache.stats.hits, scorer.cache.stats.misses) == (2, 5)

    assert scorer.score(QUERY, ["e", "b"]) == [second[3], first[1]]
    assert len(scorer.calls) == 2  # all hits: no backend call at all
    assert scorer.cache.stats.hit_rate == pytest.approx(4 / 9)


def test_duplicates_within_a_call_are_scored_once_and_every_position_answered():
    scorer = CountingScorer(cache=True)
    docs = ["x", "y", "x", "", "y", "x", ""]
    scores = scorer.score(QUERY, docs)
    assert scorer.calls == [["x", "y", ""]]
    assert scores == [scorer.value(QUERY, d, DEFAULT_INSTRUCTION) for d in docs]
    assert scorer.score(QUERY, []) == [] and len(scorer.calls) == 1


def test_bad_input_is_refused_before_any_lookup():
    scorer = CountingScorer(cache=True)
    with pytest.raises(TypeError, match="documents"):
        scorer.score(QUERY, "one string")
    with pytest.raises(ValueError, match="query"):
        scorer.score(" ", ["a"])
    assert scorer.cache.stats.hits + scorer.cache.stats.misses == 0 and scorer.calls == []


def test_cache_field_needs_a_cache_identity_the_key_can_encode():
    """``cache=`` on a ScorerBase without ``cache_identity()`` is refused (made or assigned): nothing would tell
    its configurations apart. (A scorer that only follows the Scorer protocol gets a cache by subclassing
    ScorerBase with a ``cache_identity()``, as docs/cache.md says.)"""

    class Bare(ScorerBase):
        def _score_texts(self, query, documents, instruction):
            return [0.5] * len(documents)

    for cache in (True, InMemoryScoreCache()):
        with pytest.raises((TypeError, ValidationError), match="has no cache_identity"):
            Bare(cache=cache)
    bare = Bare()
    with pytest.raises((TypeError, ValidationError), match="has no cache_identity"):
        bare.cache = True
    assert bare.cache is None and bare.score(QUERY, ["a"]) == [0.5]  # refused: nothing changed; uncached it scores

    class Identified(Bare):
        weights: Any = Field(None, description="Anything; part of the identity.")

        def cache_identity(self) -> dict[str, Any]:
            return {"model": "bare", "version": 2, "weights": self.weights}

    cached = Identified(cache=True)
    assert cached.score(QUERY, ["a"]) == [0.5] and cached.score(QUERY, ["a"]) == [0.5]
    assert (cached.cache.stats.hits, cached.cache.stats.misses) == (1, 1)
    with pytest.raises(TypeError, match=r"\['weights'\] is a object"):
        Identified(cache=True, weights=object()).score(QUERY, ["a"])  # not something a key can encode


# ------------------------------------------------------------------------------------------ key parts
def _assert_all_miss(cache, identity, instruction, query, documents):
    assert cache.get_many(score_keys(identity, instruction, query, documents)) == [None] * len(documents)


def test_every_call_key_part_changed_misses():
    cache = InMemoryScoreCache()
    scorer = CountingScorer(cache=cache)
    scorer.score(QUERY, ["doc"], instruction="Find answers")
    identity = scorer.cache_identity()
    assert cache.get_many(score_keys(identity, "Find answers", QUERY, ["doc"]))[0] is not None
    _assert_all_miss(cache, identity, "Find answers!", QUERY, ["doc"])  # instruction
    _assert_all_miss(cache, identity, "Find answers", QUERY + "?", ["doc"])  # query
    _assert_all_miss(cache, identity, "Find answers", QUERY, ["doc "])  # document
    _assert_all_miss(cache, {**identity, "model": "m2"}, "Find answers", QUERY, ["doc"])  # identity
    # No boundary ambiguity: the same characters split differently between query and document.
    scorer.score("ab", ["c"])
    _assert_all_miss(cache, identity, DEFAULT_INSTRUCTION, "a", ["bc"])

    calls = len(scorer.calls)
    scorer.score(QUERY, ["doc"], instruction="Find answers!")
    scorer.score(QUERY, ["doc"])  # the default instruction is a different instruction
    scorer.identity = {**identity, "model": "m2"}  # a setting: the next call keys by the new identity
    scorer.score(QUERY, ["doc"], instruction="Find answers")
    assert len(scorer.calls) == calls + 3


def test_default_instruction_is_keyed_as_the_instruction_actually_used():
    scorer = CountingScorer(cache=True)
    scorer.score(QUERY, ["doc"])
    scorer.score(QUERY, ["doc"], instruction=DEFAULT_INSTRUCTION)  # the same instruction: a hit
    assert len(scorer.calls) == 1
    scorer.instruction = "Given a legal question, retrieve statutes"  # the scorer's default changes
    assert scorer.score(QUERY, ["doc"]) == [scorer.value(QUERY, "doc", scorer.instruction)]
    assert len(scorer.calls) == 2


def test_key_format_and_package_version_are_in_the_key(monkeypatch):
    before = score_keys({"m": 1}, None, QUERY, ["doc"])
    monkeypatch.setattr(qwen3_rerank_integrations, "__version__", "99.0.0")
    assert score_keys({"m": 1}, None, QUERY, ["doc"]) != before
    assert before[0].startswith("qwen3-rerank-score-v1-")


def test_local_scorer_identity_parts(tiny_model_dir, tmp_path):
    base = LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32")
    identity = base.cache_identity()
    assert identity["model"] == "local folder"  # a folder is its content, not its path
    assert identity["revision"] == "sha256:" + folder_fingerprint(tiny_model_dir)
    assert (identity["dtype"], identity["device"], identity["max_length"]) == ("float32", "cpu", 8192)
    assert base.cache_identity() == identity  # stable

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    # A byte-identical copy of the folder, elsewhere: the same identity, so the same cache entries.
    assert LocalScorer(str(copy), device="cpu", dtype="float32").cache_identity() == identity
    variants = {
        "dtype": LocalScorer(str(tiny_model_dir), device="cpu", dtype="bfloat16"),
        "max_length": LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", max_length=512),
    }
    cache = InMemoryScoreCache()
    cache.set_many(dict.fromkeys(score_keys(identity, DEFAULT_INSTRUCTION, QUERY, ["doc"]), 0.5))
    for name, scorer in variants.items():
        other = scorer.cache_identity()
        assert other != identity, name
        _assert_all_miss(cache, other, DEFAULT_INSTRUCTION, QUERY, ["doc"])


def test_folder_fingerprint_changes_with_config_weights_and_tokenizer(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    seen = {folder_fingerprint(folder)}

    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    seen.add(folder_fingerprint(folder))

    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    save_file({name: t + 1e-3 * torch.randn_like(t) for name, t in tensors.items()}, weights,
              metadata={"format": "pt"})  # retrained: same names, shapes and sizes
    seen.add(folder_fingerprint(folder))

    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 1234
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    seen.add(folder_fingerprint(folder))
    assert len(seen) == 4

    (folder / "README.md").write_text("notes")  # not part of what scores
    assert folder_fingerprint(folder) in seen


def test_engine_scorer_identity_parts(tiny_model_dir, tmp_path):
    from qwen3_rerank_integrations.engine import VLLMEngineScorer

    base = VLLMEngineScorer(str(tiny_model_dir), max_length=512, engine_kwargs={"enforce_eager": True})
    identity = base.cache_identity()  # never starts an engine or imports vllm
    assert not base.loaded
    assert identity["backend"] == "vllm-engine" and identity["model"] == "local folder"
    assert identity["revision"] == "sha256:" + folder_fingerprint(tiny_model_dir)
    assert identity["dtype"] == "float32" and identity["max_length"] == 512  # 'auto' as the engine resolves it on CPU
    assert identity["engine_kwargs"] == {"enforce_eager": True}
    assert identity != LocalScorer(str(tiny_model_dir), max_length=512).cache_identity()
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert VLLMEngineScorer(str(copy), max_length=512, engine_kwargs={"enforce_eager": True}).cache_identity() == identity
    variants = {
        "dtype": VLLMEngineScorer(str(tiny_model_dir), dtype="bfloat16", max_length=512,
                                  engine_kwargs={"enforce_eager": True}),
        "max_length": VLLMEngineScorer(str(tiny_model_dir), max_length=1024, engine_kwargs={"enforce_eager": True}),
        "engine_kwargs": VLLMEngineScorer(str(tiny_model_dir), max_length=512,
                                          engine_kwargs={"enforce_eager": True, "kv_cache_dtype": "fp8"}),
    }
    for name, scorer in variants.items():
        assert scorer.cache_identity()[name] != identity[name], name

    class Engine:  # stands in for a running vllm.LLM: the revision it loaded stays with it
        pass

    base._llm = Engine()
    assert base.cache_identity() == identity
    moved = VLLMEngineScorer(str(copy), max_length=512, engine_kwargs={"enforce_eager": True})
    moved._llm = Engine()
    before = moved.cache_identity()
    config = copy / "config.json"
    config.write_text(config.read_text() + " ")  # the files change under the running engine
    assert moved.cache_identity() == before  # it still holds the weights it loaded
    assert VLLMEngineScorer(str(copy), max_length=512, engine_kwargs={"enforce_eager": True}).cache_identity() != before


def test_hub_revision_is_the_cached_snapshot_commit(tmp_path):
    repo = tmp_path / "models--acme--reranker"
    commit_a, commit_b = "a" * 40, "b" * 40
    for commit in (commit_a, commit_b):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit_a)

    scorer = LocalScorer("acme/reranker", cache_dir=str(tmp_path), device="cpu", dtype="float32")
    first = scorer.cache_identity()
    assert (first["model"], first["revision"]) == ("acme/reranker", commit_a)
    (repo / "refs" / "main").write_text(commit_b)  # a newer download moved main
    assert scorer.cache_identity()["revision"] == commit_b
    assert model_revision("acme/reranker", commit_a, str(tmp_path)) == commit_a
    assert model_revision("acme/missing", None, str(tmp_path)) is None  # not downloaded, not loaded
    with pytest.raises(RerankError, match="revision"):
        model_revision("acme/missing", None, str(tmp_path), required=True)  # loaded, yet unknown: refuse


def test_vllm_scorer_identity_parts_and_no_secrets():
    base = VLLMScorer("http://host:8000/v1", api_key="sk-secret", max_length=512, model="qwen3-reranker")
    identity = base.cache_identity()  # max_length given: no request needed
    assert identity == {"backend": "vllm", "base_url": "http://host:8000", "model": "qwen3-reranker",
                        "template": "auto", "route": "rerank", "max_length": 512, "context": 512}
    with_password = VLLMScorer("http://user:hunter2@host:8000", api_key=None, max_length=512, model="qwen3-reranker")
    assert with_password.cache_identity() == identity  # credentials reach the server, not the scores
    assert not any(secret in json.dumps(identity) for secret in ("hunter2", "sk-secret", "user"))
    settings = {"base_url": "http://host:8000", "api_key": "sk-secret", "max_length": 512, "model": "qwen3-reranker"}
    variants = {
        "base_url": {"base_url": "http://host:8001"},
        "model": {"model": "other"},
        "template": {"template": "server"},
        "route": {"route": "score"},
        "max_length": {"max_length": 1024},
    }
    for name, change in variants.items():
        options = {**settings, **change}
        other = VLLMScorer(options.pop("base_url"), **options).cache_identity()
        assert other != identity and other[name] != identity[name], name


def test_public_url_drops_credentials_query_and_fragment():
    assert public_url("https://me:pw@host:8443/prefix?key=k#f") == "https://host:8443/prefix"
    assert public_url("http://[::1]:8000") == "http://[::1]:8000"


def test_vllm_server_context_is_part_of_the_identity(vllm_legacy_server):
    first = VLLMScorer(vllm_legacy_server.base_url).cache_identity()
    assert first["context"] == vllm_legacy_server.max_model_len and first["max_length"] is None
    original = vllm_legacy_server.max_model_len
    try:
        vllm_legacy_server.max_model_len = 2048  # the server restarted with a shorter context
        second = VLLMScorer(vllm_legacy_server.base_url).cache_identity()
    finally:
        vllm_legacy_server.max_model_len = original
    assert second["context"] == 2048 and second["base_url"] == first["base_url"]
    assert score_keys(first, None, QUERY, ["d"]) != score_keys(second, None, QUERY, ["d"])


async def test_vllm_scorer_cached_sync_and_async_equal_uncached(vllm_legacy_server, documents):
    unique = list(dict.fromkeys(documents))  # the same backend call, so bit for bit the same scores
    async with VLLMScorer(vllm_legacy_server.base_url) as plain:
        expected = plain.score(QUERY, unique)
    async with VLLMScorer(vllm_legacy_server.base_url, cache=True) as cached:
        assert await cached.acache_identity() == cached.cache_identity()
        assert await cached.ascore(QUERY, unique) == expected  # filled by the async twin
        requests = len(vllm_legacy_server.scoring_requests())
        assert cached.score(QUERY, unique) == expected  # all from the cache
        assert len(vllm_legacy_server.scoring_requests()) == requests


async def test_vllm_scorer_cache_field_answers_repeats_without_requests(vllm_legacy_server, documents):
    """``cache=`` on VLLMScorer (the ScorerBase field): repeats, in any order and either twin, never reach the
    server, and the numbers are the server's own."""
    unique = list(dict.fromkeys(documents))
    async with VLLMScorer(vllm_legacy_server.base_url) as plain:
        expected = plain.score(QUERY, unique)
    async with VLLMScorer(vllm_legacy_server.base_url, cache=True) as scorer:
        assert scorer.score(QUERY, unique) == expected
        before = len(vllm_legacy_server.scoring_requests())
        assert await scorer.ascore(QUERY, unique[::-1]) == expected[::-1]
        assert scorer.score(QUERY, unique[:2]) == expected[:2]
        assert len(vllm_legacy_server.scoring_requests()) == before
        assert scorer.cache.stats.hits == len(unique) + 2 and scorer.cache.stats.misses == len(unique)
    # another template mode is another key: the same store answers nothing for it
    store = InMemoryScoreCache()
    async with VLLMScorer(vllm_legacy_server.base_url, cache=store) as client_mode:
        client_mode.score(QUERY, unique[:1])
    async with VLLMScorer(vllm_legacy_server.base_url, route="score", cache=store) as other_route:
        other_route.score(QUERY, unique[:1])
    assert store.stats.misses == 2 and store.stats.hits == 0


# ------------------------------------------------------------------------------------------ real local model
def test_local_scorer_cached_equals_uncached_and_scores_only_missing(local_scorer, reference_scorer, documents,
                                                                     monkeypatch):
    unique = list(dict.fromkeys(documents))
    uncached = local_scorer.score(QUERY, unique)
    by_text = dict(zip(unique, uncached))
    extra = ["Shanghai is the largest city in China.", documents[0]]
    uncached_extra = local_scorer.score(QUERY, extra)
    prompts: list[int] = []
    original = LocalScorer._score_ids

    def spy(self, ids):
        prompts.append(len(ids))
        return original(self, ids)

    monkeypatch.setattr(LocalScorer, "_score_ids", spy)
    monkeypatch.setattr(local_scorer, "cache", InMemoryScoreCache())  # read by every call: the model stays loaded
    cached = local_scorer
    assert cached.score(QUERY, unique) == uncached  # the same backend call: bit for bit
    assert prompts == [len(unique)]
    assert cached.score(QUERY, documents) == [by_text[d] for d in documents]  # all hits, the duplicate too
    assert prompts == [len(unique)]

    mixed = cached.score(QUERY, extra + documents[:3])
    assert prompts[1:] == [1]  # only the new document reached the model
    assert mixed[1:] == [by_text[d] for d in (documents[0], *documents[:3])]
    assert mixed[0] == pytest.approx(reference_scorer.score(QUERY, extra)[0], abs=1e-5)
    assert mixed[0] == pytest.approx(uncached_extra[0], abs=1e-6)


def test_a_changed_model_folder_misses_and_a_loaded_model_keeps_its_revision(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    cache = InMemoryScoreCache()
    old = LocalScorer(str(folder), device="cpu", dtype="float32", cache=cache).load()
    docs = ["Beijing is the capital of China.", "Gravity pulls."]
    old_scores = old.score(QUERY, docs)
    old_identity = old.cache_identity()

    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    weights.unlink()  # a new file: the loaded model may still map the old one
    torch.manual_seed(1)
    save_file({name: torch.randn_like(t) * 0.1 for name, t in tensors.items()}, weights, metadata={"format": "pt"})

    new = LocalScorer(str(folder), device="cpu", dtype="float32", cache=cache)
    new_scores = new.score(QUERY, docs)
    assert new.cache_identity()["revision"] != old_identity["revision"]
    uncached_new = LocalScorer(str(folder), device="cpu", dtype="float32").score(QUERY, docs)
    assert new_scores == uncached_new and new_scores != old_scores  # computed, not the old weights'
    # The scorer that still holds the old weights keeps their revision: it still hits its own scores.
    assert old.cache_identity() == old_identity
    hits = cache.stats.hits
    assert old.score(QUERY, docs) == old_scores and cache.stats.hits == hits + 2


# ------------------------------------------------------------------------------------------ identity moving
def test_identity_that_changes_while_computing_never_returns_stale_scores():
    class Reloading(CountingScorer):
        """Its first compute 'loads' a newer revision than the one the cache was filled under."""

        def _score_texts(self, query, documents, instruction):
            self.identity = {"backend": "fake", "model": "m1", "revision": "new"}
            return [s / 2 + 0.5 for s in super()._score_texts(query, documents, instruction)]

    cache = InMemoryScoreCache()
    scorer = Reloading(identity={"backend": "fake", "model": "m1", "revision": "old"}, cache=cache)
    stale = dict.fromkeys(score_keys(scorer.cache_identity(), DEFAULT_INSTRUCTION, QUERY, ["a"]), 0.0)
    cache.set_many(stale)  # "a" was scored under the old revision
    scores = scorer.score(QUERY, ["a", "b"])
    assert scorer.calls == [["b"], ["a"]]  # the stale "a" was looked up again under the new revision
    assert scores == [scorer.value(QUERY, d, DEFAULT_INSTRUCTION) / 2 + 0.5 for d in ("a", "b")]


def test_identity_that_never_settles_is_an_error():
    class Restless(CountingScorer):
        """Its identity flips on every look: no round of lookups and scores ever belongs to one configuration."""

        ticks: ClassVar[Any] = itertools.count()

        def cache_identity(self):
            return {"rev": next(self.ticks) % 2}

    cache = InMemoryScoreCache()
    cache.set_many(dict.fromkeys(score_keys({"rev": 0}, DEFAULT_INSTRUCTION, QUERY, ["a"]), 0.5))
    with pytest.raises(RerankError, match="changed every time"):
        Restless(cache=cache).score(QUERY, ["a", "b", "c"])


# ------------------------------------------------------------------------------------------ stores
def test_in_memory_lru_evicts_the_least_recently_used():
    cache = InMemoryScoreCache(max_entries=3)
    cache.set_many({"a": 0.1, "b": 0.2, "c": 0.3})
    assert cache.get_many(["a"]) == [0.1]  # "a" is now the most recently used
    cache.set_many({"d": 0.4})
    assert len(cache) == 3
    assert cache.get_many(["a", "b", "c", "d"]) == [0.1, None, 0.3, 0.4]
    assert (cache.stats.hits, cache.stats.misses) == (4, 1)
    cache.clear()
    assert len(cache) == 0 and cache.stats.hits == 0


def test_disk_cache_persists_across_instances_exactly(tmp_path):
    docs = ["a", "b", "c"]
    with DiskScoreCache(tmp_path / "scores") as cache:
        first = CountingScorer(cache=cache).score(QUERY, docs)
    second_cache = DiskScoreCache(directory=str(tmp_path / "scores"))
    second = CountingScorer(cache=second_cache)
    assert second.score(QUERY, docs) == first  # exact doubles
    assert second.calls == [] and second.cache.stats.hits == 3
    second_cache.clear()
    assert len(second_cache) == 0
    second_cache.close()


_unpickled: list[str] = []


def _record_unpickle() -> str:
    _unpickled.append("ran")
    return "payload"


class _Payload:
    def __reduce__(self):
        return (_record_unpickle, ())


def test_disk_cache_never_unpickles_what_it_finds(tmp_path):
    import diskcache

    key = score_keys({"m": 1}, None, QUERY, ["doc"])[0]
    with diskcache.Cache(str(tmp_path)) as foreign:
        foreign.set(key, _Payload())  # a pickled entry planted in the folder
        foreign.set("bytes", b"\x00" * 8)
    with DiskScoreCache(tmp_path) as cache:
        assert cache.get_many([key, "bytes"]) == [None, None]
    assert _unpickled == []


def test_byte_store_cache_stores_exact_doubles_and_clears_only_its_keys():
    from langchain_core.stores import InMemoryByteStore

    store = InMemoryByteStore()
    store.mset([("unrelated", b"keep me")])
    cache = ByteStoreScoreCache(store=store)
    scorer = CountingScorer(cache=cache)
    first = scorer.score(QUERY, ["a", "b"])
    assert scorer.score(QUERY, ["b", "a"]) == first[::-1] and len(scorer.calls) == 1
    ours = list(store.yield_keys(prefix="qwen3-rerank-score-v1-"))
    assert len(ours) == 2 and all(len(v) == 8 for v in store.mget(ours))
    store.mset([(ours[0], b"not a double")])  # a damaged entry is a miss, never a score
    assert cache.get_many(ours).count(None) == 1
    cache.clear()
    assert list(store.yield_keys()) == ["unrelated"]
    with pytest.raises(TypeError, match="ByteStore"):
        ByteStoreScoreCache(store={})


# ------------------------------------------------------------------------------------------ async
async def test_async_uses_the_backends_async_path_and_agrees_with_sync(tmp_path):
    from langchain_core.stores import InMemoryByteStore

    for cache in (InMemoryScoreCache(), DiskScoreCache(tmp_path / "d"), ByteStoreScoreCache(store=InMemoryByteStore())):
        scorer = CountingScorer(cache=cache)
        first = await scorer.ascore(QUERY, ["a", "b", "a"])
        assert scorer.acalls == [["a", "b"]] and scorer.calls == []
        assert await scorer.ascore(QUERY, ["b", "c"]) == [first[1], scorer.value(QUERY, "c", DEFAULT_INSTRUCTION)]
        assert scorer.acalls[1] == ["c"]
        assert scorer.score(QUERY, ["a", "b", "c"]) == await scorer.ascore(QUERY, ["a", "b", "c"])
        assert scorer.calls == []


async def test_async_disk_io_runs_off_the_event_loop(tmp_path, monkeypatch):
    threads: list[str] = []
    original = DiskScoreCache._get_many

    def spy(self, keys):
        threads.append(threading.current_thread().name)
        return original(self, keys)

    monkeypatch.setattr(DiskScoreCache, "_get_many", spy)
    with DiskScoreCache(tmp_path) as cache:
        await CountingScorer(cache=cache).ascore(QUERY, ["a"])
    assert threads and threading.main_thread().name not in threads


async def test_concurrent_async_calls_agree():
    scorer = CountingScorer(cache=True)
    docs = [[f"d{(i * 7 + j) % 15}" for j in range(6)] for i in range(30)]
    results = await asyncio.gather(*(scorer.ascore(QUERY, d) for d in docs))
    for d, r in zip(docs, results):
        assert r == [scorer.value(QUERY, x, DEFAULT_INSTRUCTION) for x in d]


# ------------------------------------------------------------------------------------------ threads
def test_thread_safe_under_concurrent_calls_with_eviction():
    cache = InMemoryScoreCache(max_entries=20)  # small: evictions race with lookups
    scorer = CountingScorer(cache=cache)
    # Each call shares 7 documents with the one before it, so even taken one at a time the calls hit.
    calls = [[f"doc {(i * 3 + j) % 60}" for j in range(10)] for i in range(400)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda docs: scorer.score(QUERY, docs), calls))
    for docs, scores in zip(calls, results):
        assert scores == [scorer.value(QUERY, d, DEFAULT_INSTRUCTION) for d in docs]
    assert cache.stats.hits + cache.stats.misses == sum(len(set(d)) for d in calls)
    assert cache.stats.hits > 0 and len(cache) <= 20
    assert sum(len(c) for c in scorer.calls) == cache.stats.misses


# ------------------------------------------------------------------------------------------ failures
def test_backend_errors_propagate_unchanged_and_nothing_is_stored():
    class Failing(CountingScorer):
        error: Any = Field(None, description="Raised for a call that has the document 'poison'.")

        def _score_texts(self, query, documents, instruction):
            if "poison" in documents:
                raise self.error
            return super()._score_texts(query, documents, instruction)

    error = ModelLoadError("weights missing")
    cache = InMemoryScoreCache()
    scorer = Failing(error=error, cache=cache)
    scorer.score(QUERY, ["ok"])
    with pytest.raises(ModelLoadError) as caught:
        scorer.score(QUERY, ["fine", "poison"])
    assert caught.value is error
    assert len(cache) == 1  # "fine" was not stored: the call failed as a whole
    assert scorer.score(QUERY, ["fine"]) and scorer.calls[-1] == ["fine"]


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ([0.5], "1 scores for 2 documents"),
        ([0.5, float("nan")], "not a finite number"),
        ([0.5, 3.0], r"outside \[0, 1\]"),
    ],
)
def test_a_wrong_backend_answer_is_an_error_and_is_not_stored(answer, match):
    class Wrong(CountingScorer):
        def _score_texts(self, query, documents, instruction):
            return list(answer)

    cache = InMemoryScoreCache()
    with pytest.raises(RerankError, match=match):
        Wrong(cache=cache).score(QUERY, ["a", "b"])
    assert len(cache) == 0


# ------------------------------------------------------------------------------------------ plain function, adapters
def test_cached_scores_takes_a_fixed_identity_and_a_compute_function():
    computed: list[list[str]] = []

    def compute(docs):
        computed.append(docs)
        return [0.25] * len(docs)

    cache = InMemoryScoreCache()
    assert cached_scores(cache, {"m": "x"}, QUERY, ["a", "b"], None, compute) == [0.25, 0.25]
    assert cached_scores(cache, {"m": "x"}, QUERY, ["b", "c"], None, compute) == [0.25, 0.25]
    assert computed == [["a", "b"], ["c"]]


def test_langchain_compressor_with_a_caching_scorer_scores_each_pair_once():
    from langchain_core.documents import Document

    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor

    scorer = CountingScorer(cache=True)
    compressor = Qwen3RerankCompressor(scorer=scorer, top_n=2)
    docs = [Document(page_content=t) for t in ("a", "b", "c")]
    first = compressor.compress_documents(docs, QUERY)
    assert compressor.compress_documents(docs, QUERY) == first
    assert scorer.calls == [["a", "b", "c"]]


# ------------------------------------------------------------------------------------------ cache= on the backends
def _backend(kind: str, model: Any, **options: Any) -> Any:
    """A LocalScorer or VLLMEngineScorer on ``model`` (fp32; the engine is never started by these tests)."""
    from qwen3_rerank_integrations.engine import VLLMEngineScorer

    options = {"dtype": "float32", **options}
    if kind == "local":
        return LocalScorer(str(model), device="cpu", **options)
    return VLLMEngineScorer(str(model), **{"max_length": 2048, **options})


def test_local_scorer_cache_field_hits_and_equals_uncached(local_scorer, tiny_model_dir, documents, monkeypatch):
    unique = list(dict.fromkeys(documents))
    uncached = local_scorer.score(QUERY, unique)
    scorer = LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", cache=True)
    assert isinstance(scorer.cache, InMemoryScoreCache)
    batches: list[int] = []
    original = LocalScorer._score_ids

    def spy(self, ids):
        batches.append(len(ids))
        return original(self, ids)

    monkeypatch.setattr(LocalScorer, "_score_ids", spy)
    assert scorer.score(QUERY, unique) == uncached  # the same computation: bit for bit
    assert scorer.score(QUERY, documents) == [dict(zip(unique, uncached))[d] for d in documents]
    assert asyncio.run(scorer.ascore(QUERY, unique[:3])) == uncached[:3]
    assert batches == [len(unique)]  # only the first call reached the model
    stats = scorer.cache.stats
    assert (stats.misses, stats.hits) == (len(unique), len(unique) + 3)


async def test_engine_scorer_cache_field_hits_and_skips_the_engine(fake_vllm, tiny_model_dir):
    from tests.test_engine import FakeLLM

    docs = ["Beijing is the capital of China.", "Gravity pulls.", ""]
    scorer = _backend("engine", tiny_model_dir, cache=InMemoryScoreCache(max_entries=100))
    first = scorer.score(QUERY, docs)
    assert first == _backend("engine", tiny_model_dir).score(QUERY, docs)
    prompts = sum(len(llm.prompts) for llm in FakeLLM.created)
    assert scorer.score(QUERY, docs[::-1]) == first[::-1]
    assert await scorer.ascore(QUERY, docs) == first
    assert sum(len(llm.prompts) for llm in FakeLLM.created) == prompts  # the engine saw nothing more
    assert (scorer.cache.stats.hits, scorer.cache.stats.misses) == (6, 3)
    assert await scorer.ascore(QUERY, ["Shanghai."]) != []  # a miss reaches the engine, through ascore too
    assert sum(len(llm.prompts) for llm in FakeLLM.created) == prompts + 1


@pytest.mark.parametrize("kind", ["local", "engine"])
def test_cache_field_never_returns_another_configurations_score(kind, tiny_model_dir, tmp_path, monkeypatch):
    """One shared store; each key part changed in turn must miss and return that configuration's own score."""
    cls = type(_backend(kind, tiny_model_dir))
    calls: list[tuple[Any, ...]] = []

    def fake_score_texts(self, query, documents, instruction):
        # A score that depends on everything the key must cover, read here, at scoring time.
        config = (Path(self.model) / "config.json").read_text()
        setting = (self.model, self.max_length, self.dtype, instruction, query, config)
        calls.append(setting)
        return [(hash((setting, doc)) % 10_007) / 10_007 for doc in documents]

    monkeypatch.setattr(cls, "_score_texts", fake_score_texts)
    folder, copy = tmp_path / "model", tmp_path / "copy"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copytree(tiny_model_dir, copy)
    store = InMemoryScoreCache()
    doc = "Beijing is the capital of China."

    def fresh(scorer: Any, query: str = QUERY, document: str = doc, **call: Any) -> None:
        before = len(calls)
        got = scorer.score(query, [document], **call)
        assert len(calls) == before + 1, "a changed key part must miss"
        assert got == [(hash((calls[-1], document)) % 10_007) / 10_007]  # its own score, not a stored one

    base = _backend(kind, folder, cache=store)
    base.score(QUERY, [doc])
    same = _backend(kind, folder, cache=store)
    assert same.score(QUERY, [doc]) == base.score(QUERY, [doc]) and len(calls) == 1  # unchanged: a hit
    elsewhere = _backend(kind, copy, cache=store).score(QUERY, [doc])      # the same files elsewhere: a hit
    assert elsewhere == base.score(QUERY, [doc]) and len(calls) == 1
    fresh(_backend(kind, folder, max_length=1024, cache=store))              # max_length
    fresh(_backend(kind, folder, dtype="bfloat16", cache=store))             # dtype
    fresh(_backend(kind, folder, instruction="Find the statute", cache=store))  # the scorer's instruction
    fresh(base, instruction="Find the treaty")                               # the call's instruction
    fresh(base, query="What is the capital of France?")                      # query
    fresh(base, document=doc + " ")                                          # document
    config = folder / "config.json"
    config.write_text(config.read_text() + "\n")                             # revision: the folder's content
    fresh(_backend(kind, folder, cache=store))
    assert store.stats.hits == 4  # the unchanged scorer's and the copied folder's lookups only


def test_the_evals_score_cache_folder_and_a_scorers_cache_field_share_entries(tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    """The eval keys ``DIR/score-cache`` as a scorer's own ``cache=`` keys a pair: what a scorer given that
    folder stored, the eval reuses; what the eval stored, the scorer hits."""
    from qwen3_rerank_integrations.evaluation import EvalConfig, load_beir, read_run, run_evaluation
    from tests.test_eval import BEIR_MINI, hashed_first_stage

    calls: list[list[str]] = []

    def fake_score_texts(self, query, documents, instruction):
        calls.append(list(documents))
        return [(hash((query, doc, instruction)) % 10_007) / 10_007 for doc in documents]

    monkeypatch.setattr(LocalScorer, "_score_texts", fake_score_texts)
    instructions = [None, "Find answers"]
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=hashed_first_stage(tmp_path / "first.trec"),
                        top_k=[3], instructions=instructions)
    data = load_beir(BEIR_MINI)
    first = read_run(config.run_file, data.corpus)
    (first_id, first_query), (second_id, second_query) = list(data.queries.items())[:2]

    def candidates(query_id: str) -> list[str]:
        return list(dict.fromkeys(data.corpus[doc_id] for doc_id, _ in first[query_id][:3]))

    with DiskScoreCache(config.output / "score-cache") as folder:  # a scorer fills one query's calls first
        scorer = LocalScorer(str(tiny_model_dir), device="cpu", cache=folder)
        for instruction in instructions:
            scorer.score(first_query, candidates(first_id), instruction=instruction)
    notices: list[str] = []
    report = run_evaluation(config, LocalScorer(str(tiny_model_dir), device="cpu"), log=notices.append)
    held = 2 * len(candidates(first_id))
    assert report.pairs_cached == held and f"the score cache holds {held} of {report.pairs} pairs" in " ".join(notices)

    scored = len(calls)
    with DiskScoreCache(config.output / "score-cache") as folder:  # and the eval's entries answer the scorer
        scorer = LocalScorer(str(tiny_model_dir), device="cpu", cache=folder)
        for instruction in instructions:
            scorer.score(second_query, candidates(second_id), instruction=instruction)
        assert len(calls) == scored and folder.stats.misses == 0
        assert folder.stats.hits == 2 * len(candidates(second_id))


def test_adapters_from_model_pass_cache_to_the_scorer(tiny_model_dir):
    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor
    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    for adapter in (Qwen3RerankCompressor, Qwen3RerankPostprocessor):
        reranker = adapter.from_model(str(tiny_model_dir), device="cpu", cache=True, top_n=2)
        assert isinstance(reranker.scorer.cache, InMemoryScoreCache) and reranker.top_n == 2
