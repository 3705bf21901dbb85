"""VLLMScorer over several replicas (base_url as a list), on loopback stand-ins: spreading, failover, set-aside
and trial, kill and restart mid-call, all down, the per-replica check; plus the pure retry decision.

Real vLLM replicas: tests/test_real_vllm.py (TestReplicas)."""

from __future__ import annotations

import socket
import threading
import time
import zlib

import pytest

from qwen3_rerank_integrations import (
    BadRequestError,
    InvalidResponseError,
    ServerConnectionError,
    ServerError,
    ServerTimeoutError,
    VLLMScorer,
)
from qwen3_rerank_integrations.vllm import ServerCheck
from qwen3_rerank_integrations.vllm.check import CANARY_RELEVANT
from qwen3_rerank_integrations.vllm.protocol import TransientError
from qwen3_rerank_integrations.vllm.transport import Attempt, ReplicaPool, backoff_wait, decide
from tests.vllm_standin import VLLMStandIn

QUERY = "What is the capital of China?"
DOCS = [f"Document {i}: " + ("Beijing is the capital. " if i % 3 == 0 else "Gravity pulls things down. ") * (i % 4 + 1)
        for i in range(60)]


def by_text(query: str, document: str) -> float:
    """A score that depends on the document's own text only (not the prompt around it), the same on every
    replica."""
    text = document.split("<Document>: ", 1)[-1].split("<|im_end|>", 1)[0]
    return (zlib.crc32(text.encode()) % 1000) / 1000


EXPECTED = [by_text(QUERY, d) for d in DOCS]


def canary(query: str, document: str) -> float:
    return 0.995 if CANARY_RELEVANT in document else 0.002


def scorer_for(servers, **options) -> VLLMScorer:
    options.setdefault("backoff", 0.001)
    options.setdefault("max_length", 4096)
    # Legacy stand-ins, most without /tokenize: the given mode is taken as it is (no scored probe to count).
    options.setdefault("template", "client")
    return VLLMScorer([s.base_url for s in servers], **options)


def counts(servers) -> list[int]:
    return [len(s.scoring_requests()) for s in servers]


@pytest.fixture(scope="module")
def fleet():
    """Three model-free stand-ins (scores from the text alone), reset after each test."""
    servers = [VLLMStandIn("legacy", score_override=by_text) for _ in range(3)]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def _revive(fleet):
    yield
    for server in fleet:
        if server.dead:
            server.restart()


@pytest.fixture(scope="module")
def model_replicas(reference_model, vllm_standin_tokenizer):
    """Two more stand-ins of the legacy server's configuration, on the same tiny model."""
    servers = [VLLMStandIn("legacy", model=reference_model[0], tokenizer=vllm_standin_tokenizer) for _ in range(2)]
    yield servers
    for server in servers:
        if server.dead:
            server.restart()
        server.close()


@pytest.fixture(scope="module")
def closed_ports() -> list[int]:
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return ports


# ------------------------------------------------------------------------------------------------ settings
def test_a_list_of_urls_is_validated_and_each_error_names_its_index(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    scorer = VLLMScorer(["http://a:8000/v1", "http://b:8000/"])
    assert scorer.base_url == ["http://a:8000", "http://b:8000"] and scorer.base_urls == scorer.base_url
    assert VLLMScorer("http://a:8000").base_urls == ["http://a:8000"]  # one string keeps working
    for bad, words in [
        ([], "empty list"),
        (["http://a:8000", "http://a:8000/v1"], "base_url[1] repeats base_url[0]"),
        (["http://a:8000", "b:8000"], "base_url[1] must be an http:// or https:// URL"),
        (["http://a:8000", 3], "base_url[1] must be a URL string"),
    ]:
        with pytest.raises(ValueError) as caught:
            VLLMScorer(bad)
        assert words in str(caught.value), str(caught.value)
    with pytest.raises(ValueError, match=r"base_url\[1\] has other user:password@"):
        VLLMScorer(["http://u:pw-one@a:8000", "http://u:pw-two@b:8000"])
    with pytest.raises(ValueError, match=r"base_url\[0\] has user:password@ and basic_auth"):
        VLLMScorer(["http://u:pw-one@a:8000"], basic_auth="u:x")
    shared = VLLMScorer(["http://u:pw-one@a:8000", "http://u:pw-one@b:8000"])
    assert shared.base_url == ["http://a:8000", "http://b:8000"] and "pw-one" not in repr(shared)
    assert shared.basic_auth.get_secret_value() == "u:pw-one"


@pytest.mark.parametrize("urls", [["http://alice:pw-alice@a:8000", "http://b:8000"],
                                  ["http://a:8000", "http://b:8000", "http://alice:pw-alice@c:8000"]])
def test_one_replicas_credentials_never_go_to_another(urls, monkeypatch):
    """Before: accepted, and replica b received alice's Basic header."""
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(ValueError) as caught:
        VLLMScorer(urls)
    message = str(caught.value) + repr(caught.value)
    assert "has user:password@ but" in message and "has none" in message and "basic_auth=" in message
    assert "pw-alice" not in message and "alice" not in message


async def test_cache_identity_names_the_replicas_in_any_order(fleet):
    forward = scorer_for(fleet[:2])
    backward = scorer_for(fleet[1::-1])
    assert forward.cache_identity() == await backward.acache_identity()
    assert forward.cache_identity()["base_url"] == sorted(s.base_url for s in fleet[:2])


# ------------------------------------------------------------------------------------------------ spreading
@pytest.mark.parametrize("run", ["sync", "async"])
async def test_chunks_are_spread_over_the_replicas(fleet, run):
    for server in fleet:
        server.latency, server.capacity = 0.05, 1
    with scorer_for(fleet, batch_size=5) as scorer:  # 12 requests, 8 in flight
        scores = scorer.score(QUERY, DOCS) if run == "sync" else await scorer.ascore(QUERY, DOCS)
    assert scores == EXPECTED
    assert sum(counts(fleet)) == 12 and min(counts(fleet)) >= 3, counts(fleet)


@pytest.mark.parametrize("run", ["sync", "async"])
async def test_a_slow_replica_gets_fewer_requests(fleet, run):
    """Least outstanding requests, not round robin: a replica ten times slower gets a small share."""
    for server in fleet:
        server.latency, server.capacity = 0.02, 1
    fleet[0].latency = 0.3
    with scorer_for(fleet, batch_size=2, max_concurrency=4) as scorer:  # 30 requests
        scores = scorer.score(QUERY, DOCS) if run == "sync" else await scorer.ascore(QUERY, DOCS)
    assert scores == EXPECTED
    slow, *fast = counts(fleet)
    assert slow <= 5 and sum(fast) == 30 - slow, counts(fleet)


async def test_replicas_of_one_model_score_as_one_server(vllm_legacy_server, model_replicas, documents):
    # The same batches as below: a batch's padding moves scores in the 8th digit.
    with VLLMScorer(vllm_legacy_server.base_url, max_length=4096, batch_size=2) as single:
        expected = single.score(QUERY, documents)
    with scorer_for([vllm_legacy_server, *model_replicas], batch_size=2) as scorer:
        assert scorer.score(QUERY, documents) == expected
        assert await scorer.ascore(QUERY, documents) == expected
    assert all(len(s.scoring_requests()) > 0 for s in [vllm_legacy_server, *model_replicas])


# ------------------------------------------------------------------------------------------------ context
async def test_documents_are_cut_to_the_smallest_context_of_the_replicas(
    reference_model, vllm_standin_tokenizer, tiny_model_dir
):
    """Before: base_url[0]'s context decided every cut, so scores depended on which replica was first and the
    replica with the smaller context refused documents cut to the larger."""
    from qwen3_rerank_integrations import LocalScorer

    servers = [VLLMStandIn("legacy", model=reference_model[0], tokenizer=vllm_standin_tokenizer, max_model_len=n)
               for n in (4096, 300)]
    long_doc = "Beijing is the capital of China and an old, large city. " * 120  # ~1,500 tokens
    docs = [long_doc, "short", long_doc + " again"] * 2
    try:
        expected = LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", max_length=300).score(QUERY, docs)
        with scorer_for(servers, max_length=None, batch_size=1) as scorer:
            assert scorer.score(QUERY, docs) == pytest.approx(expected, abs=1e-5)
            assert await scorer.ascore(QUERY, docs) == pytest.approx(expected, abs=1e-5)
            assert scorer.cache_identity()["context"] == 300
        for server in servers:
            assert server.scoring_requests(), "both replicas scored"
            assert max(len(ids) for batch in server.scored_ids for ids in batch) == 300
            assert [r.path for r in server.requests].count("/v1/models") == 1  # asked once, of each
    finally:
        for server in servers:
            server.close()


# ------------------------------------------------------------------------------------------------ failures
@pytest.mark.parametrize("run", ["sync", "async"])
async def test_a_replica_killed_and_restarted_mid_call_loses_no_document(fleet, run):
    for server in fleet:
        server.latency, server.capacity = 0.05, 1
    victim = fleet[1]
    seen: dict[str, int] = {}

    def kill_then_restart() -> None:
        give_up = time.monotonic() + 5
        while not victim.scoring_requests() and time.monotonic() < give_up:  # mid-call: once it has work
            time.sleep(0.01)
        time.sleep(0.05)
        seen["at kill"] = len(victim.scoring_requests())
        victim.kill()
        time.sleep(0.2)
        victim.restart()
        seen["at restart"] = len(victim.scoring_requests())

    # 60 requests over 3 replicas that each answer 20 a second: about 1 s, long enough for the victim to die,
    # come back and be taken back in after its cool-down (0.2 s), all inside one call.
    with scorer_for(fleet, batch_size=1, max_retries=0, replica_cooldown=0.2) as scorer:
        scorer.cache_identity()  # the survey of the replicas, done first, so that the kill falls in the scoring
        thread = threading.Thread(target=kill_then_restart, daemon=True)
        thread.start()
        scores = scorer.score(QUERY, DOCS) if run == "sync" else await scorer.ascore(QUERY, DOCS)
        thread.join()
        assert scores == EXPECTED  # all 60, in order, each once: results are placed by index
        replica = scorer._state.connections.pool.replicas[1]
        assert isinstance(replica.last_error, ServerConnectionError)  # it did fail requests
        assert seen["at kill"] >= 1 and len(victim.scoring_requests()) > seen["at restart"]  # and came back
        assert replica.failures == 0


@pytest.mark.parametrize("run", ["sync", "async"])
async def test_a_replica_is_set_aside_with_growing_cooldowns_then_tried_once(fleet, run):
    alive, victim = fleet[0], fleet[1]
    victim.kill()

    async def call(scorer: VLLMScorer) -> list[float]:
        return scorer.score(QUERY, DOCS[:8]) if run == "sync" else await scorer.ascore(QUERY, DOCS[:8])

    def set_aside_for(replica, seconds: float, started: float) -> bool:
        """Whether ``replica`` was set aside for ``seconds`` by a fault since ``started``."""
        return started + seconds <= replica.until <= time.monotonic() + seconds

    with scorer_for([alive, victim], batch_size=2, max_retries=0, replica_cooldown=0.3) as scorer:
        started = time.monotonic()
        assert await call(scorer) == EXPECTED[:8]
        replica = scorer._state.connections.pool.replicas[1]
        assert replica.failures == 1 and set_aside_for(replica, 0.3, started)
        victim.restart()
        assert await call(scorer) == EXPECTED[:8]  # within its cooldown: not asked even though it is back
        assert counts([alive, victim]) == [8, 0] and not [r for r in victim.requests if r.path == "/tokenize"]
        victim.kill()
        time.sleep(0.35)
        started = time.monotonic()
        assert await call(scorer) == EXPECTED[:8]  # the trial fails: a doubled cooldown
        assert replica.failures == 2 and set_aside_for(replica, 0.6, started)
        victim.restart()
        time.sleep(0.65)
        assert await call(scorer) == EXPECTED[:8]  # the trial succeeds: back in
        assert replica.failures == 0 and len(victim.scoring_requests()) >= 1


@pytest.mark.parametrize("status", [503, 429])
async def test_an_overloaded_replica_hands_its_chunk_to_another_at_once(fleet, status):
    fleet[0].inject("status", status=status, times=100, headers={"Retry-After": "30"})
    with scorer_for(fleet[:2], batch_size=10, max_retries=3) as scorer:
        started = time.monotonic()
        assert scorer.score(QUERY, DOCS) == EXPECTED
        assert await scorer.ascore(QUERY, DOCS) == EXPECTED
        assert time.monotonic() - started < 5  # failover does not wait for Retry-After (30 s)
    assert len(fleet[1].scoring_requests()) == 12  # every chunk answered by the healthy one


async def test_when_every_replica_is_down_the_error_lists_each(closed_ports, caplog):
    urls = [f"http://u:s3cret-pw@127.0.0.1:{port}" for port in closed_ports]
    scorer = VLLMScorer(urls, backoff=0.001, max_retries=1)
    for attempt in ("sync", "async"):
        with pytest.raises(ServerConnectionError) as caught:
            if attempt == "sync":
                scorer.score(QUERY, DOCS[:3])
            else:
                await scorer.ascore(QUERY, DOCS[:3])
        message = str(caught.value)
        assert "no replica could answer" in message and "s3cret" not in message
        for i, port in enumerate(closed_ports):
            assert f"base_url[{i}] http://127.0.0.1:{port}: could not reach" in message
    assert "s3cret" not in caplog.text


async def test_every_replica_overloaded_raises_the_status_error(fleet):
    for server in fleet[:2]:
        server.inject("status", status=503, times=100, message="engine is overloaded")
    with scorer_for(fleet[:2], max_retries=1) as scorer, pytest.raises(ServerError) as caught:
        scorer.score(QUERY, DOCS[:3])
    assert caught.value.status_code == 503 and caught.value.server_message == "engine is overloaded"
    assert counts(fleet[:2]) == [2, 2]  # each replica, in each of the two rounds


async def test_a_replica_answering_500_is_set_aside_and_its_chunks_go_elsewhere(fleet):
    fleet[0].inject("status", status=500, message="engine dead", times=100)
    with scorer_for(fleet[:2], batch_size=10, replica_cooldown=5.0) as scorer:
        assert scorer.score(QUERY, DOCS) == EXPECTED
        assert await scorer.ascore(QUERY, DOCS) == EXPECTED
        assert scorer._state.connections.pool.replicas[0].failures == 1
    # Only the first call's first wave reached it (3 of 6 requests in flight), then it was set aside; the other
    # answered every chunk of both calls.
    broken, healthy = counts(fleet[:2])
    assert 1 <= broken <= 3 and healthy == 12
    fleet[1].inject("status", status=500, message="engine dead", times=100)
    with scorer_for(fleet[:2]) as scorer, pytest.raises(ServerError, match="no replica could answer") as caught:
        scorer.score(QUERY, DOCS[:3])
    assert caught.value.status_code == 500 and counts(fleet[:2]) == [broken + 1, 13]  # each once, never retried


@pytest.mark.parametrize("kind", ["non_json", "missing_index", "nan_score"])
async def test_a_replica_answering_malformed_200s_is_set_aside_like_a_failing_one(fleet, kind):
    """Before: every call that touched it failed with InvalidResponseError, and it was never set aside."""
    fleet[0].inject(kind, times=100)
    with scorer_for(fleet[:2], batch_size=10, replica_cooldown=5.0) as scorer:
        assert scorer.score(QUERY, DOCS) == EXPECTED
        assert await scorer.ascore(QUERY, DOCS) == EXPECTED
        replica = scorer._state.connections.pool.replicas[0]
        assert replica.failures == 1 and isinstance(replica.last_error, InvalidResponseError)
    broken, healthy = counts(fleet[:2])
    assert 1 <= broken <= 3 and healthy == 12  # set aside after its first wave, as a 500 would be


async def test_when_every_replica_answers_malformed_200s_the_error_names_each(fleet):
    for server in fleet[:2]:
        server.inject("non_json", times=100)
    with scorer_for(fleet[:2]) as scorer, pytest.raises(InvalidResponseError) as caught:
        scorer.score(QUERY, DOCS[:3])
    message = str(caught.value)
    assert "no replica could answer" in message and "not JSON" in message
    assert f"base_url[0] {fleet[0].base_url}" in message and f"base_url[1] {fleet[1].base_url}" in message
    assert counts(fleet[:2]) == [1, 1]  # each once, never retried


@pytest.mark.parametrize("run", ["sync", "async"])
async def test_a_deadline_bounds_the_whole_call_over_trickling_replicas(fleet, run):
    """Before: three trickling replicas held a call for timeout x attempts x replicas (12 minutes by default)."""
    for server in fleet:
        server.inject("trickle", delay=0.2, times=100)
    with scorer_for(fleet, deadline=1.5, max_retries=3) as scorer:
        started = time.monotonic()
        with pytest.raises(ServerTimeoutError) as caught:
            if run == "sync":
                scorer.score(QUERY, DOCS[:3])
            else:
                await scorer.ascore(QUERY, DOCS[:3])
        elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 2.5, elapsed
    message = str(caught.value)
    assert "deadline=1.5s" in message and "base_url[0]" in message, message


def test_a_deadline_leaves_room_for_failover_and_retries_that_fit(fleet):
    fleet[0].inject("status", status=503, times=100)
    with scorer_for(fleet[:2], deadline=30, batch_size=10) as scorer:
        assert scorer.score(QUERY, DOCS) == EXPECTED  # the other replica answers within the deadline


def test_a_request_error_is_not_sent_to_another_replica(fleet):
    fleet[0].inject("status", status=400, message="nope", times=100)
    fleet[1].inject("status", status=400, message="nope", times=100)
    with scorer_for(fleet[:2]) as scorer, pytest.raises(BadRequestError):
        scorer.score(QUERY, DOCS[:3])
    assert sum(counts(fleet[:2])) == 1


async def test_fitting_asks_a_replica_that_answers(closed_ports, tokenizer_small_context):
    """/v1/models and /tokenize (fitting) go through the pool too: a dead first replica costs nothing."""
    server = tokenizer_small_context
    urls = [f"http://127.0.0.1:{closed_ports[0]}", server.base_url]
    long_doc = "The quick brown fox jumps over the lazy dog. " * 80
    with VLLMScorer(server.base_url, backoff=0.001) as single:
        expected = single.score(QUERY, [long_doc, "short"])
    async with VLLMScorer(urls, backoff=0.001) as scorer:
        assert await scorer.ascore(QUERY, [long_doc, "short"]) == expected
    assert any(r.path == "/tokenize" for r in server.requests)


@pytest.fixture
def tokenizer_small_context(reference_model, vllm_standin_tokenizer):
    server = VLLMStandIn("legacy", model=reference_model[0], tokenizer=vllm_standin_tokenizer, max_model_len=256)
    yield server
    server.close()


# ------------------------------------------------------------------------------------------------ check()
def twin_servers(tokenizer, **second) -> list[VLLMStandIn]:
    """Two stand-ins with a perfect canary; the second one differs by ``second``."""
    first = VLLMStandIn("legacy", tokenizer=tokenizer, score_override=canary)
    other = VLLMStandIn("legacy", tokenizer=tokenizer, score_override=second.pop("score", canary), **second)
    return [first, other]


@pytest.fixture
def twins(request, vllm_standin_tokenizer):
    servers = twin_servers(vllm_standin_tokenizer, **getattr(request, "param", {}))
    yield servers
    for server in servers:
        server.close()


async def test_check_reports_each_replica_and_passes_when_they_agree(twins):
    with scorer_for(twins, max_length=None) as scorer:
        result = scorer.check()
        aresult = await scorer.acheck()
    for report in (result, aresult):
        assert isinstance(report, ServerCheck) and report.ok, report.summary()
        assert [r.base_url for r in report.replicas] == [s.base_url for s in twins]
        assert all(r.ok and r.replicas == [] for r in report.replicas)
        assert report.model == "Qwen/Qwen3-Reranker-0.6B" and report.max_model_len == 4096
    text = str(result)
    assert text.startswith("vLLM replicas (2): OK")
    assert f"base_url[0]: vLLM server {twins[0].base_url}: OK" in text and f"base_url[1]: vLLM server {twins[1].base_url}" in text


@pytest.mark.parametrize(
    ("twins", "words"),
    [
        ({"served_model_name": "Qwen/Qwen3-Reranker-4B"}, "disagree on the served model"),
        ({"max_model_len": 2048}, "disagree on the context length"),
        ({"score": lambda q, d: canary(q, d) + (2e-5 if CANARY_RELEVANT in d else 0)},
         "score the relevant canary document differently"),
    ],
    indirect=["twins"],
)
async def test_check_fails_when_replicas_disagree(twins, words):
    with scorer_for(twins, max_length=None) as scorer:
        for result in (scorer.check(), await scorer.acheck()):
            assert not result.ok and all(r.ok for r in result.replicas), result.summary()
            (warning,) = result.warnings
            assert words in warning and twins[0].base_url in warning and twins[1].base_url in warning
            assert "PROBLEMS FOUND" in result.summary() and words in result.summary()


async def test_check_over_replicas_of_two_template_setups_names_both_problems(
    vllm_legacy_server, vllm_template_server
):
    for server in (vllm_legacy_server, vllm_template_server):
        server.score_override = canary
    with scorer_for([vllm_legacy_server, vllm_template_server], template="client") as scorer:
        result = scorer.check()
    assert not result.ok and result.replicas[0].ok and not result.replicas[1].ok
    assert any("disagree on the canary's prompt tokens" in w for w in result.warnings), result.warnings
    assert any(w.startswith("base_url[1]") and "double template" in w for w in result.warnings)


async def test_check_reports_a_dead_replica_and_hides_credentials(fleet, closed_ports, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    fleet[0].score_override = canary
    urls = [f"http://u:pa55word@{fleet[0].base_url.split('://')[1]}", f"http://u:pa55word@127.0.0.1:{closed_ports[0]}"]
    scorer = VLLMScorer(urls, backoff=0.001, max_retries=0, max_length=None)
    result = await scorer.acheck()
    assert not result.ok and result.replicas[0].ok and result.replicas[1].error is not None
    assert "could not reach" in result.error and result.error.startswith("base_url[1]")
    assert "pa55word" not in result.summary() and "pa55word" not in result.model_dump_json()


# ------------------------------------------------------------------------------------------------ the decision
def transient(retry_after: float | None = None) -> TransientError:
    return TransientError(ServerConnectionError("down"), retry_after=retry_after)


def test_decide_fails_over_then_retries_then_raises():
    attempt = Attempt()
    options = {"replicas": 2, "max_retries": 1, "backoff": 0.5, "urls": ["http://a", "http://b"], "rand": lambda: 0}
    assert decide({"ok": 1}, 0, attempt, **options).value == {"ok": 1}
    assert decide(transient(), 0, attempt, **options).action == "failover"
    step = decide(transient(retry_after=2.0), 1, attempt, **options)
    assert step.action == "retry" and step.wait == 2.0 and attempt.tried == set()  # Retry-After wins
    assert decide(transient(), 1, attempt, **options).action == "failover"
    step = decide(transient(), 0, attempt, **options)
    assert step.action == "raise" and "base_url[0] http://a: down; base_url[1] http://b: down" in str(step.error)
    final = BadRequestError("bad", status_code=400)
    assert decide(final, 0, Attempt(), **options).error is final  # not a replica's fault: no failover
    crash, attempt = ServerError("boom", status_code=500), Attempt()
    assert decide(crash, 0, attempt, **options).action == "failover"
    assert decide(crash, 1, attempt, **options).action == "raise" and attempt.retries == 0  # 500s: no retry


def test_decide_stops_at_the_deadline_rather_than_wait_past_it():
    options = {"replicas": 2, "max_retries": 3, "backoff": 0.5, "urls": ["http://a", "http://b"], "rand": lambda: 0,
               "deadline": 10.0}
    attempt = Attempt()
    assert decide(transient(), 0, attempt, **options, time_left=5.0).action == "failover"
    step = decide(transient(retry_after=8.0), 1, attempt, **options, time_left=4.0)  # the wait would pass it
    assert step.action == "raise" and isinstance(step.error, ServerTimeoutError)
    assert "deadline=10s" in str(step.error) and "base_url[0] http://a: down; base_url[1] http://b: down" in str(step.error)
    step = decide(ServerError("boom", status_code=500), 0, Attempt(), **options, time_left=0.0)
    assert step.action == "raise" and isinstance(step.error, ServerTimeoutError)  # no time left to fail over
    assert decide({"ok": 1}, 0, Attempt(), **options, time_left=-1.0).value == {"ok": 1}  # an answer is an answer
    malformed = InvalidResponseError("not JSON")
    assert decide(malformed, 0, Attempt(), **{**options, "deadline": None}).action == "failover"


def test_one_replica_retries_with_backoff_and_raises_its_own_error():
    attempt, error = Attempt(), transient()
    options = {"replicas": 1, "max_retries": 2, "backoff": 0.5, "rand": lambda: 1.0}
    assert decide(error, 0, attempt, **options).wait == 1.0  # 0.5 + 0.5 of jitter
    assert decide(error, 0, attempt, **options).wait == 1.5
    assert decide(error, 0, attempt, **options).error is error.error
    assert backoff_wait(40, 0.5) == 30.0 and backoff_wait(2000, 0.5) == 30.0 and backoff_wait(3, 0) == 0


def test_the_pool_picks_the_least_outstanding_replica_ties_in_turn():
    pool = ReplicaPool(["http://a", "http://b", "http://c"])
    first = [pool.acquire(set()).index for _ in range(3)]
    assert first == [0, 1, 2]
    pool.release(pool.replicas[1], {"ok": 1}, cooldown=1.0)
    assert pool.acquire(set()).index == 1  # the only one with nothing outstanding
    assert pool.acquire({0}).index in (1, 2)
    pool.release(pool.replicas[2], transient(), cooldown=1.0)
    pool.release(pool.replicas[2], transient(), cooldown=1.0)  # a second in-flight failure: no longer cooldown
    assert pool.replicas[2].failures == 1
    assert all(pool.acquire(set()).index != 2 for _ in range(4))
    assert pool.acquire({0, 1}).index == 2  # only the set-aside one is left: tried rather than failing the call


def test_adapters_from_vllm_take_a_list_of_replicas(fleet):
    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor
    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    urls = [server.base_url for server in fleet[:2]]
    for adapter in (Qwen3RerankCompressor, Qwen3RerankPostprocessor):
        reranker = adapter.from_vllm(urls, top_n=2, max_retries=0)
        assert reranker.scorer.base_urls == urls and reranker.top_n == 2
