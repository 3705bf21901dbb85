"""Scorers and adapters that travel (issue 20): pickle, copy, and a spawned process.

Every scorer and both adapters pickle and unpickle with their settings only: no loaded model, HTTP client, lock
or database handle is in the pickle (checked by recording every class the pickle names), secrets stay
``SecretStr`` and never show, and the unpickled object loads lazily and scores the same. Caches: an in-memory
cache carries its entries, a disk cache its folder (reopened), a ByteStore cache its store.
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import pickle
from typing import Any

import pytest

from qwen3_rerank_integrations import (
    ByteStoreScoreCache,
    DiskScoreCache,
    InMemoryScoreCache,
    LocalScorer,
    VLLMScorer,
)
from qwen3_rerank_integrations.engine import VLLMEngineScorer
from qwen3_rerank_integrations.errors import RerankError
from tests.test_engine import FakeLLM, fake_vllm  # noqa: F401  (a fixture used here)

QUERY = "What is the capital of China?"
DOCS = ["Beijing is the capital of China.", "Gravity pulls.", "北京是中华人民共和国的首都。", ""]
KEY = "sk-travel-key-1234"
HEADER = "hdr-travel-secret-5678"
# What a pickle of settings must never name: loaded models, clients, locks, handles, engines.
_LOADED_MODULES = ("torch", "transformers", "tokenizers", "httpx", "httpcore", "threading", "_thread", "ssl",
                   "diskcache", "sqlite3", "vllm", "tests.")


class _Recorder(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.modules: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.modules.add(module)
        return super().find_class(module, name)


def trip(obj: Any) -> Any:
    """``obj`` through pickle, checking the pickle holds no loaded state."""
    data = pickle.dumps(obj)
    recorder = _Recorder(data)
    restored = recorder.load()
    loaded = sorted(m for m in recorder.modules if m.startswith(_LOADED_MODULES) or m in {"socket"})
    assert loaded == [], f"the pickle of {type(obj).__name__} names loaded state: {loaded}"
    return restored


def _local(folder, **options) -> LocalScorer:
    return LocalScorer(str(folder), device="cpu", dtype="float32", **options)


# ------------------------------------------------------------------------------------------------ scorers
def test_local_scorer_travels_without_its_model(tiny_model_dir):
    scorer = _local(tiny_model_dir, max_length=512, instruction="Find the capital").load()
    expected = scorer.score(QUERY, DOCS)
    data = pickle.dumps(scorer)
    assert len(data) < 4096  # settings only: the weights and the tokenizer stay behind
    restored = trip(scorer)
    assert not restored.loaded and restored.model_dump() == scorer.model_dump()
    assert restored.model_fields_set == scorer.model_fields_set
    assert restored.score(QUERY, DOCS) == expected
    assert asyncio.run(restored.ascore(QUERY, DOCS)) == expected
    assert restored._lock is not scorer._lock


def test_local_scorer_with_its_cache_takes_the_entries_along(tiny_model_dir):
    scorer = _local(tiny_model_dir, cache=True)
    expected = scorer.score(QUERY, DOCS)
    restored = trip(scorer)
    assert restored.score(QUERY, DOCS) == expected
    assert not restored.loaded  # every pair was a hit: the model never loaded
    assert restored.cache is not scorer.cache and restored.cache.stats.hits == scorer.cache.stats.hits + len(DOCS)


def test_vllm_scorer_travels_with_its_secrets_hidden(vllm_legacy_server):
    vllm_legacy_server.api_key = KEY
    scorer = VLLMScorer(vllm_legacy_server.base_url, api_key=KEY, headers={"X-Tenant": HEADER}, backoff=0.001)
    expected = scorer.score(QUERY, DOCS)  # its clients are open now
    restored = trip(scorer)
    assert restored.api_key.get_secret_value() == KEY and restored.headers["X-Tenant"].get_secret_value() == HEADER
    for shown in (repr(restored), restored.model_dump_json()):
        assert KEY not in shown and HEADER not in shown
    assert restored._state is not scorer._state and restored._state.connections.client is None
    assert restored.score(QUERY, DOCS) == expected
    assert asyncio.run(restored.ascore(QUERY, DOCS)) == expected
    assert vllm_legacy_server.requests[-1].headers["x-tenant"] == HEADER
    scorer.close()
    restored.close()


def test_vllm_engine_scorer_travels_without_its_engine(fake_vllm, tiny_model_dir):  # noqa: F811
    scorer = VLLMEngineScorer(str(tiny_model_dir), dtype="float32", max_length=2048,
                              engine_kwargs={"hf_token": HEADER})
    expected = scorer.score(QUERY, DOCS)
    restored = trip(scorer)
    assert not restored.loaded and HEADER not in repr(restored)
    assert restored.score(QUERY, DOCS) == expected
    assert len(FakeLLM.created) == 2 and FakeLLM.created[1].kwargs["hf_token"] == HEADER  # its own engine


def test_local_scorer_with_a_disk_cache_reopens_the_folder(tiny_model_dir, tmp_path):
    scorer = _local(tiny_model_dir, cache=DiskScoreCache(tmp_path / "scores"))
    expected = scorer.score(QUERY, DOCS)
    restored = trip(scorer)
    assert restored.cache.directory == scorer.cache.directory and restored.cache._db is None
    assert restored.score(QUERY, DOCS) == expected
    assert not restored.loaded  # all hits, read from the same folder
    scorer.cache.close()
    restored.cache.close()


# ------------------------------------------------------------------------------------------------ caches
def test_in_memory_cache_pickles_its_entries_and_counts():
    cache = InMemoryScoreCache(max_entries=10)
    cache.set_many({"a": 0.5, "b": 0.25})
    cache.get_many(["a", "x"])
    restored = trip(cache)
    assert restored.max_entries == 10 and len(restored) == 2 and restored.stats == cache.stats
    restored.set_many({"c": 0.75})
    assert cache.get_many(["c"]) == [None]  # a snapshot: what the copy learns stays with it


def test_disk_cache_pickles_as_its_folder(tmp_path):
    with DiskScoreCache(tmp_path / "scores", size_limit=1 << 20) as cache:
        cache.set_many({"a": 0.5})
        restored = trip(cache)
        assert (restored.directory, restored.size_limit) == (cache.directory, 1 << 20)
        assert restored.get_many(["a"]) == [0.5]
        restored.set_many({"b": 0.25})
        assert cache.get_many(["b"]) == [0.25]  # the same folder: shared, as between processes
        restored.close()


def test_bytestore_cache_pickles_with_its_store():
    from langchain_core.stores import InMemoryByteStore

    cache = ByteStoreScoreCache(store=InMemoryByteStore())
    cache.set_many({"a": 0.5})
    assert trip(cache).get_many(["a"]) == [0.5]


# ------------------------------------------------------------------------------------------------ adapters
def test_langchain_compressor_travels(tiny_model_dir):
    from langchain_core.documents import Document

    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor

    reranker = Qwen3RerankCompressor(scorer=_local(tiny_model_dir).load(), top_n=2, instruction="Find capitals")
    documents = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)]
    expected = reranker.compress_documents(documents, QUERY)
    restored = trip(reranker)
    assert (restored.top_n, restored.instruction) == (2, "Find capitals") and not restored.scorer.loaded
    assert restored.compress_documents(documents, QUERY) == expected


def test_llama_index_postprocessor_travels_with_its_scorer(tiny_model_dir, caplog):
    """It came back without its scorer: LlamaIndex drops attributes it cannot pickle, with a warning."""
    from llama_index.core.schema import NodeWithScore, TextNode

    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    reranker = Qwen3RerankPostprocessor(scorer=_local(tiny_model_dir).load(), top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}"), score=0.1) for i, d in enumerate(DOCS)]
    expected = reranker.postprocess_nodes(nodes, query_str=QUERY)
    with caplog.at_level(logging.WARNING):
        restored = trip(reranker)
    assert "unpickleable" not in caplog.text
    assert isinstance(restored.scorer, LocalScorer) and not restored.scorer.loaded and restored.top_n == 2
    got = restored.postprocess_nodes(nodes, query_str=QUERY)
    assert [(n.node.node_id, n.score) for n in got] == [(n.node.node_id, n.score) for n in expected]


# ------------------------------------------------------------------------------------------------ a spawned process
def _score_in_child(payload: bytes) -> dict[str, Any]:
    """Runs in a spawned process: unpickle everything, check the secrets are masked there, score. (The
    LlamaIndex adapter travels the same way; it is left out here only because importing llama_index costs ~5 s.)"""
    local, cached, compressor, remote = pickle.loads(payload)
    masked = KEY not in str(RerankError(f"a server echoed {KEY}"))  # registered before any request
    return {
        "masked": masked,
        "local": local.score(QUERY, DOCS),
        "cached": cached.score(QUERY, DOCS),
        "compressor": compressor.rerank(DOCS, QUERY),
        "remote": remote.score(QUERY, DOCS),
    }


@pytest.mark.slow  # a spawned interpreter (~10 s CPU); the fast tests above pickle and unpickle each object in-process
def test_scorers_and_adapters_work_in_a_spawned_process(tiny_model_dir, vllm_legacy_server):
    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor

    vllm_legacy_server.api_key = KEY
    local = _local(tiny_model_dir).load()
    cached = local.model_copy(update={"cache": InMemoryScoreCache()})
    remote = VLLMScorer(vllm_legacy_server.base_url, api_key=KEY, backoff=0.001)
    objects = (local, cached, Qwen3RerankCompressor(scorer=local, top_n=None), remote)
    expected = local.score(QUERY, DOCS)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        got = pool.apply(_score_in_child, (pickle.dumps(objects),))
    assert got["masked"]
    assert got["local"] == expected and got["cached"] == expected
    ranked = sorted(range(len(DOCS)), key=lambda i: -expected[i])
    assert [(r["index"], r["relevance_score"]) for r in got["compressor"]] == [(i, expected[i]) for i in ranked]
    assert got["remote"] == pytest.approx(expected, abs=1e-5)
    remote.close()
