"""No stale state: a setting changed after use takes effect on the next call, on every backend.

The rule (``qwen3_rerank_integrations/_loaded_state.py``): settings are fields, validated on assignment and in
``model_copy(update=...)``; loaded state (model, tokenizer, engine, HTTP clients, learned context, database
handle) lives in private attributes, dropped when a setting changes (assigned, copied with ``update=``, or a
list/dict changed in place) and never shared with a copy. Each case is checked the way a user would notice it:
the changed scorer scores exactly as a fresh scorer built with the new settings, and its ``cache_identity()``
never lets another configuration's score through a shared cache.
"""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
from pydantic import SecretStr, ValidationError

from qwen3_rerank_integrations import (
    DiskScoreCache,
    InMemoryScoreCache,
    LocalScorer,
    VLLMScorer,
)
from qwen3_rerank_integrations.engine import VLLMEngineScorer
from tests.test_engine import FakeLLM, fake_vllm  # noqa: F401  (a fixture used here)
from tests.vllm_standin import VLLMStandIn

QUERY = "What is the capital of China?"
# About 600 tokens: cut at max_length=120, whole at the default.
LONG = " ".join(f"Sentence {i} says that Beijing is a large city in the north of China." for i in range(40))
DOCS = [LONG, "Beijing is the capital of China.", "Gravity pulls."]


def _local(folder, **options) -> LocalScorer:
    return LocalScorer(str(folder), device="cpu", dtype="float32", **options)


# ------------------------------------------------------------------------------------------------ LocalScorer
def test_local_assignment_after_use_takes_effect(tiny_model_dir):
    """The issue's case: max_length changed after the first score() used to keep the loaded encoder."""
    scorer = _local(tiny_model_dir)
    before = scorer.score(QUERY, DOCS)
    scorer.max_length = 120
    assert not scorer.loaded  # the model and tokenizer loaded for the old settings are gone
    fresh = _local(tiny_model_dir, max_length=120).score(QUERY, DOCS)
    assert scorer.score(QUERY, DOCS) == fresh
    assert fresh[0] != before[0]  # the cut moves the long document's score (the case is not vacuous)
    assert scorer.cache_identity()["max_length"] == 120

    scorer.dtype = "bfloat16"  # a setting the weights themselves depend on
    assert scorer.score(QUERY, DOCS) == _local(tiny_model_dir, max_length=120).model_copy(
        update={"dtype": "bfloat16"}
    ).score(QUERY, DOCS)
    assert scorer._model.dtype.is_floating_point and str(scorer._model.dtype) == "torch.bfloat16"


def test_local_per_call_settings_keep_the_model(tiny_model_dir):
    scorer = _local(tiny_model_dir).load()
    model = scorer._model
    scorer.batch_size, scorer.max_batch_tokens, scorer.show_progress_bar = 1, 512, False
    scorer.instruction, scorer.cache = "Find the capital", True
    scorer.max_length = scorer.max_length  # the same value is no change
    assert scorer._model is model


def test_local_model_copy_update_takes_effect_and_leaves_the_original(tiny_model_dir):
    scorer = _local(tiny_model_dir)
    before = scorer.score(QUERY, DOCS)
    short = scorer.model_copy(update={"max_length": 120})
    assert not short.loaded and scorer.loaded
    assert short.score(QUERY, DOCS) == _local(tiny_model_dir, max_length=120).score(QUERY, DOCS)
    assert short.cache_identity()["max_length"] == 120 and "max_length" in short.model_fields_set
    assert scorer.score(QUERY, DOCS) == before and scorer.max_length == 8192


@pytest.mark.slow  # seven model loads; fast: test_local_model_copy_update_..., test_engine_model_copy_update_...
def test_local_copy_then_assign_takes_effect_and_shares_nothing(tiny_model_dir):
    scorer = _local(tiny_model_dir)
    before = scorer.score(QUERY, DOCS)
    for copied in (scorer.model_copy(), copy.copy(scorer), copy.deepcopy(scorer)):
        assert not copied.loaded and copied._lock is not scorer._lock
        copied.max_length = 120
        assert copied.score(QUERY, DOCS[:1]) == _local(tiny_model_dir, max_length=120).score(QUERY, DOCS[:1])
        assert copied._model is not scorer._model
    assert scorer.score(QUERY, DOCS) == before


def test_model_copy_update_is_validated_like_the_constructor(tiny_model_dir):
    scorer = _local(tiny_model_dir)
    with pytest.raises(ValidationError, match="max_length"):
        scorer.model_copy(update={"max_length": -1})
    with pytest.raises(ValidationError, match="dtype"):
        scorer.model_copy(update={"dtype": "float8"})
    with pytest.raises(ValidationError, match="no_such_setting"):
        scorer.model_copy(update={"no_such_setting": 1})
    with pytest.raises(ValidationError, match="max_length"):
        scorer.max_length = 0  # plain assignment: validated too, and nothing changed
    assert scorer.max_length == 8192


def test_a_changed_scorer_never_serves_another_configurations_score_from_a_shared_cache(tiny_model_dir):
    """The issue's worse half: cache_identity() already said max_length=120 while the old encoder scored, so a
    correct scorer sharing the cache later got the wrong score as a hit."""
    store = InMemoryScoreCache()
    scorer = _local(tiny_model_dir, cache=store)
    scorer.score(QUERY, DOCS)
    scorer.max_length = 120
    changed = scorer.score(QUERY, DOCS)
    uncached = _local(tiny_model_dir, max_length=120).score(QUERY, DOCS)
    assert changed == uncached
    assert _local(tiny_model_dir, max_length=120, cache=store).score(QUERY, DOCS) == uncached  # hits, right ones
    assert store.stats.hits == len(DOCS)


@pytest.mark.slow  # the sync path: test_local_assignment_after_use_takes_effect
async def test_local_async_after_assignment(tiny_model_dir):
    scorer = _local(tiny_model_dir)
    await scorer.ascore(QUERY, DOCS)
    scorer.max_length = 120
    assert await scorer.ascore(QUERY, DOCS) == _local(tiny_model_dir, max_length=120).score(QUERY, DOCS)


# ------------------------------------------------------------------------------------------------ VLLMEngineScorer
def _engine(folder, **options) -> VLLMEngineScorer:
    return VLLMEngineScorer(str(folder), dtype="float32", max_length=2048, **options)


class _Stopped(FakeLLM):
    stopped: list[FakeLLM] = []

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        outer = self

        class Core:
            def shutdown(self):
                _Stopped.stopped.append(outer)

        self.llm_engine = type("Engine", (), {"engine_core": Core()})()


@pytest.fixture
def stoppable_vllm(fake_vllm):  # noqa: F811  (the fixture imported above)
    fake_vllm.LLM = _Stopped
    _Stopped.stopped = []
    return fake_vllm


def test_engine_assignment_restarts_the_engine_with_the_new_settings(stoppable_vllm, tiny_model_dir):
    scorer = _engine(tiny_model_dir)
    scorer.score(QUERY, DOCS)
    first = FakeLLM.created[0]
    scorer.dtype = "bfloat16"
    assert _Stopped.stopped == [first] and not scorer.loaded  # the old engine is stopped at once
    scorer.score(QUERY, DOCS)
    assert FakeLLM.created[1].kwargs["dtype"] == "bfloat16"
    assert scorer.cache_identity()["dtype"] == "bfloat16"

    scorer.engine_kwargs = {"enforce_eager": True}
    scorer.score(QUERY, DOCS)
    assert len(FakeLLM.created) == 3 and FakeLLM.created[2].kwargs["enforce_eager"] is True


def test_engine_settings_changed_in_place_are_noticed_and_checked(stoppable_vllm, tiny_model_dir):
    scorer = _engine(tiny_model_dir)
    scorer.score(QUERY, DOCS)
    scorer.engine_kwargs["gpu_memory_utilization"] = 0.5  # a dict setting changed in place
    assert scorer.cache_identity()["engine_kwargs"] == {"gpu_memory_utilization": 0.5}
    scorer.score(QUERY, DOCS)
    assert len(FakeLLM.created) == 2 and FakeLLM.created[1].kwargs["gpu_memory_utilization"] == 0.5
    assert _Stopped.stopped == [FakeLLM.created[0]]

    scorer.engine_kwargs["trust_remote_code"] = True  # refused as at construction, before any engine work
    with pytest.raises(ValidationError, match="trust_remote_code"):
        scorer.score(QUERY, DOCS)
    assert len(FakeLLM.created) == 2


def test_engine_model_copy_update_and_copy_then_assign(stoppable_vllm, tiny_model_dir, reference_model):
    from tests.reference import format_instruction, official_input_ids

    scorer = _engine(tiny_model_dir)
    scorer.score(QUERY, DOCS)
    short = scorer.model_copy(update={"max_length": 120})
    assert not short.loaded and scorer.loaded
    short.score(QUERY, DOCS)
    expected = official_input_ids(reference_model[1], [format_instruction(None, QUERY, d) for d in DOCS], 120)
    assert FakeLLM.created[1].prompts == expected  # the copy's own engine, fed the copy's cut
    copied = scorer.model_copy()
    copied.dtype = "bfloat16"
    copied.score(QUERY, DOCS)
    assert FakeLLM.created[2].kwargs["dtype"] == "bfloat16"
    assert _Stopped.stopped == []  # neither copy touched the original's engine
    assert scorer._llm is FakeLLM.created[0]


# ------------------------------------------------------------------------------------------------ VLLMScorer
@pytest.fixture(scope="module")
def small_server(reference_model, vllm_standin_tokenizer):
    server = VLLMStandIn("legacy", model=reference_model[0], tokenizer=vllm_standin_tokenizer, max_model_len=160)
    yield server
    server.close()


def _remote(url, **options) -> VLLMScorer:
    return VLLMScorer(url, **{"backoff": 0.001, "api_key": None, **options})


def test_vllm_base_url_assignment_learns_the_new_servers_context(vllm_legacy_server, small_server):
    scorer = _remote(vllm_legacy_server.base_url)
    assert scorer.score(QUERY, DOCS)  # learns a 4096-token context: the long document goes whole
    scorer.base_url = small_server.base_url
    with _remote(small_server.base_url) as fresh:
        assert scorer.score(QUERY, DOCS) == fresh.score(QUERY, DOCS)
    assert scorer.cache_identity()["context"] == 160
    scorer.close()


def test_vllm_credentials_assigned_after_use_are_the_ones_sent(vllm_legacy_server):
    vllm_legacy_server.api_key = "sk-second"
    scorer = _remote(vllm_legacy_server.base_url, api_key="sk-first")
    with pytest.raises(Exception, match="401|[Aa]uthenticat"):
        scorer.score(QUERY, DOCS[1:])  # the client was built with sk-first
    scorer.api_key = SecretStr("sk-second")
    assert scorer.score(QUERY, DOCS[1:])
    assert vllm_legacy_server.requests[-1].headers["authorization"] == "Bearer sk-second"

    scorer.headers = {"X-Tenant": "t-2"}
    scorer.score(QUERY, DOCS[1:])
    assert vllm_legacy_server.requests[-1].headers["x-tenant"] == "t-2"
    scorer.headers["X-Tenant"] = "t-3"  # changed in place: noticed, and validated (kept secret) as assigned
    scorer.score(QUERY, DOCS[1:])
    assert vllm_legacy_server.requests[-1].headers["x-tenant"] == "t-3"
    assert isinstance(scorer.headers["X-Tenant"], SecretStr) and "t-3" not in repr(scorer)
    scorer.close()


def test_vllm_model_copy_update_and_copy_then_assign_have_their_own_clients(vllm_legacy_server):
    vllm_legacy_server.api_key = "sk-2"
    scorer = _remote(vllm_legacy_server.base_url, api_key="sk-1", max_length=4096)
    with pytest.raises(Exception, match="401|[Aa]uthenticat"):
        scorer.score(QUERY, DOCS[1:])
    updated = scorer.model_copy(update={"api_key": "sk-2"})  # validated: a str becomes a SecretStr
    assert isinstance(updated.api_key, SecretStr) and "sk-2" not in repr(updated)
    assert updated.score(QUERY, DOCS[1:])
    copied = scorer.model_copy()
    assert copied._state is not scorer._state  # no shared client, pool or learned state
    copied.api_key = SecretStr("sk-2")
    assert copied.score(QUERY, DOCS[1:])
    with pytest.raises(Exception, match="401|[Aa]uthenticat"):
        scorer.score(QUERY, DOCS[1:])  # the original keeps its own key and client
    for each in (scorer, updated, copied):
        each.close()


def test_vllm_model_copy_moves_url_credentials_out_of_sight():
    """Item 9: model_copy(update={"base_url": "http://u:pw@host"}) showed the password in repr, dumps, errors."""
    scorer = VLLMScorer("http://localhost:8000", api_key=None)
    copied = scorer.model_copy(update={"base_url": "http://alice:pw-s3cret@localhost:9000"})
    assert copied.base_url == "http://localhost:9000"
    assert copied.basic_auth is not None and copied.basic_auth.get_secret_value() == "alice:pw-s3cret"
    for shown in (repr(copied), str(copied), copied.model_dump_json(), json.dumps(copied.model_dump(mode="json"))):
        assert "pw-s3cret" not in shown
    replicas = scorer.model_copy(update={"base_url": ["http://bob:pw-other@a:1", "http://bob:pw-other@b:2"]})
    assert replicas.base_urls == ["http://a:1", "http://b:2"] and "pw-other" not in repr(replicas)

    keyed = VLLMScorer("http://localhost:8000", api_key="sk-key")
    with pytest.raises(ValueError) as refused:  # two sources of the Authorization header, as at construction
        keyed.model_copy(update={"base_url": "http://alice:pw-s3cret@localhost:9000"})
    assert "pw-s3cret" not in str(refused.value) and "sk-key" not in str(refused.value)
    with pytest.raises(ValidationError) as bad:
        scorer.model_copy(update={"base_url": "ftp://alice:pw-s3cret@localhost"})
    assert "pw-s3cret" not in str(bad.value)


# ------------------------------------------------------------------------------------------------ the cache field, caches
def test_cache_field_is_validated_read_by_every_call_and_keyed_by_the_current_settings(tiny_model_dir):
    scorer = _local(tiny_model_dir, cache=True)
    cache = scorer.cache
    first = scorer.score(QUERY, DOCS)
    with pytest.raises((TypeError, ValidationError), match="cache must be"):
        scorer.cache = "not a cache"
    assert scorer.cache is cache  # refused: nothing changed
    with pytest.raises((TypeError, ValidationError), match="cache"):
        scorer.model_copy(update={"cache": "not a cache"})
    assert scorer.loaded
    scorer.cache = InMemoryScoreCache()  # read by every call: the model stays loaded
    assert scorer.loaded and scorer.score(QUERY, DOCS) == first and scorer.cache.stats.misses == len(DOCS)
    scorer.cache = cache
    scorer.max_length = 120  # another configuration: its own entries, not the old ones
    assert scorer.cache is cache and scorer.cache_identity()["max_length"] == 120
    assert scorer.score(QUERY, DOCS) == _local(tiny_model_dir, max_length=120).score(QUERY, DOCS) != first
    assert cache.stats.misses == 2 * len(DOCS)


def test_disk_cache_directory_changed_after_use_is_the_one_written(tmp_path):
    cache = DiskScoreCache(tmp_path / "one")
    cache.set_many({"k": 0.25})
    cache.directory = str(tmp_path / "two")
    cache.set_many({"k": 0.75})
    assert cache.get_many(["k"]) == [0.75]
    with DiskScoreCache(tmp_path / "one") as one, DiskScoreCache(tmp_path / "two") as two:
        assert one.get_many(["k"]) == [0.25] and two.get_many(["k"]) == [0.75]
    copied = cache.model_copy(update={"directory": str(tmp_path / "three")})
    copied.set_many({"k": 0.5})
    assert cache.get_many(["k"]) == [0.75] and copied.get_many(["k"]) == [0.5]
    cache.close()
    copied.close()


def test_in_memory_cache_copies_are_independent():
    cache = InMemoryScoreCache()
    cache.set_many({"a": 0.5})
    for copied in (cache.model_copy(), copy.copy(cache), copy.deepcopy(cache), cache.model_copy(update={})):
        copied.set_many({"b": 0.25})
        assert copied.get_many(["a", "b"]) == [0.5, 0.25]
    assert cache.get_many(["b"]) == [None] and len(cache) == 1
    with pytest.raises(ValidationError):
        cache.max_entries = 0


def test_async_cache_field_after_a_setting_changed(tiny_model_dir):
    scorer = _local(tiny_model_dir, cache=True)
    asyncio.run(scorer.ascore(QUERY, DOCS))
    scorer.max_length = 120
    assert asyncio.run(scorer.ascore(QUERY, DOCS)) == _local(tiny_model_dir, max_length=120).score(QUERY, DOCS)


# ------------------------------------------------------------------------------------------------ the docs page
@pytest.mark.slow  # the page's code; each behaviour it shows has its fast test here
def test_the_settings_page_runs_and_prints_what_its_comments_say(tiny_model_dir, monkeypatch, capsys):
    import qwen3_rerank_integrations
    from tests.doc_blocks import ROOT, blocks_to_run, run_blocks

    def stand_in(model=None, /, **options):  # the hub id of the page is the offline tiny model here
        return LocalScorer(tiny_model_dir if model == "Qwen/Qwen3-Reranker-0.6B" else model, **options)

    monkeypatch.setattr(qwen3_rerank_integrations, "LocalScorer", stand_in)
    with run_blocks(blocks_to_run(ROOT / "docs/settings.md", "settings"), "docs_settings") as namespace:
        assert namespace["short"] != _local(tiny_model_dir).score(QUERY, namespace["documents"])
    assert capsys.readouterr().out == "True\n512 120\n"

