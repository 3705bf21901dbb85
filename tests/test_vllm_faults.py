"""VLLMScorer under faults (retries, final errors, broken responses) and its server check, on the stand-in."""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest

from qwen3_rerank_integrations import (
    BadRequestError,
    InvalidResponseError,
    RateLimitError,
    RouteNotFoundError,
    ServerConnectionError,
    ServerError,
    ServerTimeoutError,
    VLLMScorer,
)
from qwen3_rerank_integrations.vllm import ServerCheck
from qwen3_rerank_integrations.vllm.check import CANARY_RELEVANT
from tests.vllm_standin import VLLMStandIn

QUERY = "What is the capital of China?"
DOCS = ["Beijing is the capital of China.", "Gravity pulls things down.", "北京是首都。"]
SERVERS = ["vllm_legacy_server", "vllm_template_server"]


def fast(server: VLLMStandIn, **options) -> VLLMScorer:
    """A scorer for the stand-in with near-zero retry waits; the template follows the server's mode."""
    options.setdefault("template", "client" if server.mode == "legacy" else "server")
    options.setdefault("max_length", 4096)
    return VLLMScorer(server.base_url, backoff=0.001, **options)


@pytest.fixture(params=SERVERS)
def server(request) -> VLLMStandIn:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def clean_scores(vllm_legacy_server) -> list[float]:
    with fast(vllm_legacy_server) as scorer:
        scores = scorer.score(QUERY, DOCS)
    vllm_legacy_server.reset()  # the test that first asks for these counts only its own requests
    return scores


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------ retried faults
@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_transient_statuses_are_retried(vllm_legacy_server, clean_scores, status):
    vllm_legacy_server.inject("status", status=status, times=2)
    with fast(vllm_legacy_server, max_retries=2) as scorer:
        assert scorer.score(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)
    vllm_legacy_server.inject("status", status=status, times=2)
    async with fast(vllm_legacy_server, max_retries=2) as scorer:
        assert await scorer.ascore(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)
    assert len(vllm_legacy_server.scoring_requests()) == 6


@pytest.mark.parametrize(("status", "error_type"), [(503, ServerError), (429, RateLimitError)])
async def test_exhausted_retries_raise_with_status_and_server_message(server, status, error_type):
    """Both error formats (flat on the legacy server, nested on the template server) give the message."""
    server.inject("status", status=status, times=10, message="engine is overloaded")
    with fast(server, max_retries=2) as scorer, pytest.raises(error_type) as caught:
        scorer.score(QUERY, DOCS)
    assert caught.value.status_code == status and caught.value.server_message == "engine is overloaded"
    assert len(server.scoring_requests()) == 3
    async with fast(server, max_retries=1) as scorer:
        with pytest.raises(error_type):
            await scorer.ascore(QUERY, DOCS)
    assert len(server.scoring_requests()) == 5


async def test_max_retries_zero_sends_once(vllm_legacy_server):
    vllm_legacy_server.inject("status", status=503, times=2)
    with fast(vllm_legacy_server, max_retries=0) as scorer, pytest.raises(ServerError):
        scorer.score(QUERY, DOCS)
    async with fast(vllm_legacy_server, max_retries=0) as scorer:
        with pytest.raises(ServerError):
            await scorer.ascore(QUERY, DOCS)
    assert len(vllm_legacy_server.scoring_requests()) == 2


async def test_retry_after_is_honoured(vllm_legacy_server, clean_scores):
    vllm_legacy_server.inject("status", status=429, headers={"Retry-After": "0.4"})
    async with fast(vllm_legacy_server) as scorer:
        started = time.perf_counter()
        assert await scorer.ascore(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)
        assert time.perf_counter() - started >= 0.4  # the backoff alone would be ~1 ms


async def test_dropped_connections_are_retried(vllm_legacy_server, clean_scores):
    vllm_legacy_server.inject("drop")
    with fast(vllm_legacy_server) as scorer:
        assert scorer.score(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)
    vllm_legacy_server.inject("drop")
    async with fast(vllm_legacy_server) as scorer:
        assert await scorer.ascore(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)


async def test_timeouts_are_retried_then_raised(vllm_legacy_server, clean_scores):
    # timeout bounds the whole request, so it leaves room for the real model's scoring on a busy machine.
    vllm_legacy_server.inject("delay", delay=1.5)
    with fast(vllm_legacy_server, timeout=0.8) as scorer:
        assert scorer.score(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)
    vllm_legacy_server.inject("delay", delay=1.5, times=2)
    async with fast(vllm_legacy_server, timeout=0.8, max_retries=1) as scorer:
        with pytest.raises(ServerTimeoutError, match="timed out after 0.8s"):
            await scorer.ascore(QUERY, DOCS)


@pytest.mark.parametrize("run", ["sync", "async"])
async def test_a_deadline_ends_the_call_retries_included(vllm_legacy_server, run):
    vllm_legacy_server.inject("trickle", delay=0.2, times=10)  # every attempt runs into its timeout
    async with fast(vllm_legacy_server, timeout=1.0, max_retries=3, deadline=1.6) as scorer:
        started = time.monotonic()
        with pytest.raises(ServerTimeoutError, match=r"deadline=1.6s") as caught:
            scorer.score(QUERY, DOCS) if run == "sync" else await scorer.ascore(QUERY, DOCS)
        elapsed = time.monotonic() - started
    # Without the deadline: 4 attempts of 1 s. With it: one of 1 s, a second cut to what is left.
    assert 1.5 <= elapsed < 2.2, elapsed
    assert re.search(r"cut to the 0\.\d+s left of deadline=1\.6s", str(caught.value.__cause__)), caught.value.__cause__


def test_the_deadline_is_per_call(vllm_legacy_server, clean_scores):
    with fast(vllm_legacy_server, deadline=5) as scorer:
        for _ in range(3):
            assert scorer.score(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)


async def test_a_refused_connection_raises_after_retries(closed_port):
    scorer = VLLMScorer(f"http://127.0.0.1:{closed_port}", backoff=0.001, max_retries=2)
    with pytest.raises(ServerConnectionError, match="could not reach"):
        scorer.score(QUERY, DOCS)
    with pytest.raises(ServerConnectionError):
        await scorer.ascore(QUERY, DOCS)


# ------------------------------------------------------------------------------------------------ final faults
@pytest.mark.parametrize(
    ("status", "body", "error_type", "words"),
    [
        (400, None, BadRequestError, "nope"),
        (500, None, ServerError, "nope"),
        (404, {"detail": "Not Found"}, RouteNotFoundError, "pooling"),
    ],
)
def test_other_errors_are_not_retried(server, status, body, error_type, words):
    server.inject("status", status=status, body=body, message="nope", times=10)
    with fast(server) as scorer, pytest.raises(error_type, match=words) as caught:
        scorer.score(QUERY, DOCS)
    assert caught.value.status_code == status
    assert len(server.scoring_requests()) == 1


def test_an_unknown_model_is_named(vllm_template_server):
    with fast(vllm_template_server, model="Qwen/Qwen3-Reranker-8B") as scorer, pytest.raises(
        RouteNotFoundError, match="Qwen3-Reranker-8B` does not exist"
    ):
        scorer.score(QUERY, DOCS)


@pytest.mark.parametrize("template", ["auto", None])
async def test_an_unknown_model_fails_first_with_a_clear_error_and_no_misleading_log(server, template, caplog):
    """Before: "reports no max_model_len; long documents will not be cut" was logged, then the 404 came."""
    options = {"template": template} if template else {}
    caplog.set_level(logging.DEBUG, logger="qwen3_rerank_integrations")
    async with fast(server, model="Qwen/Qwen3-Reranker-8B", max_length=None, **options) as scorer:
        with pytest.raises(RouteNotFoundError) as caught:
            await scorer.ascore(QUERY, DOCS)
    message = str(caught.value)
    assert "model='Qwen/Qwen3-Reranker-8B' is not served by" in message and server.served_model_name in message
    assert caught.value.status_code == 404 and "max_model_len" not in caplog.text
    assert server.scoring_requests() == []


def test_an_over_long_prompt_the_server_rejects_is_a_bad_request(vllm_legacy_server):
    """max_length above the server's context: the server's own 400 comes back with a hint."""
    with fast(vllm_legacy_server, max_length=100_000) as scorer, pytest.raises(BadRequestError) as caught:
        scorer.score(QUERY, ["word " * 5000])
    assert "maximum context length is 4096" in caught.value.server_message
    assert "max_length" in str(caught.value)


async def test_a_shuffled_response_is_mapped_by_index(vllm_legacy_server, clean_scores):
    vllm_legacy_server.inject("shuffle", times=2)
    with fast(vllm_legacy_server) as scorer:
        assert scorer.score(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)
        assert await scorer.ascore(QUERY, DOCS) == pytest.approx(clean_scores, abs=1e-6)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("missing_index", "missing 1 of 3"),
        ("duplicate_index", "twice"),
        ("out_of_range_index", "index 3"),
        ("nan_score", "not a finite number"),
        ("string_score", "not a finite number"),
        ("non_json", "not JSON"),
    ],
)
async def test_a_broken_response_is_an_error_never_a_partial_list(vllm_legacy_server, kind, words):
    vllm_legacy_server.inject(kind)
    with fast(vllm_legacy_server) as scorer, pytest.raises(InvalidResponseError, match=words):
        scorer.score(QUERY, DOCS)
    vllm_legacy_server.inject(kind)
    async with fast(vllm_legacy_server) as scorer:
        with pytest.raises(InvalidResponseError, match=words):
            await scorer.ascore(QUERY, DOCS)
    assert len(vllm_legacy_server.scoring_requests()) == 2  # not retried


async def test_one_failed_batch_fails_the_whole_call(vllm_legacy_server):
    vllm_legacy_server.inject("missing_index")  # hits one of the concurrent requests
    with fast(vllm_legacy_server, batch_size=2) as scorer, pytest.raises(InvalidResponseError):
        scorer.score(QUERY, DOCS * 4)
    # The call fails at its first bad answer; its other requests finish in the background: let them, so that
    # none of them takes the next fault.
    give_up = time.monotonic() + 10
    while vllm_legacy_server.in_flight and time.monotonic() < give_up:
        time.sleep(0.01)
    time.sleep(0.2)
    vllm_legacy_server.inject("status", status=400)
    async with fast(vllm_legacy_server, batch_size=2) as scorer:
        with pytest.raises(BadRequestError):
            await scorer.ascore(QUERY, DOCS * 4)


def test_the_score_route_is_checked_too(vllm_legacy_server):
    vllm_legacy_server.inject("duplicate_index", route="score")
    with fast(vllm_legacy_server, route="score") as scorer, pytest.raises(InvalidResponseError, match="twice"):
        scorer.score(QUERY, DOCS)


# ------------------------------------------------------------------------------------------------ check()
def _answers_the_canary(query: str, document: str) -> float:
    """What a working Qwen3-Reranker does with the canary (the tiny random model scores at random)."""
    return 0.995 if CANARY_RELEVANT in document else 0.002


async def test_check_passes_on_a_well_configured_server(server):
    server.score_override = _answers_the_canary
    with fast(server, max_length=None) as scorer:
        result = scorer.check()
    assert isinstance(result, ServerCheck)
    assert result.ok and result.warnings == [] and result.error is None, result.summary()
    assert result.healthy and result.served_models == [server.served_model_name]
    assert result.model == server.served_model_name and result.max_model_len == 4096
    assert result.canary_gap == pytest.approx(0.993)
    assert result.prompt_tokens == result.expected_prompt_tokens is not None
    async with fast(server, route="score") as scorer:
        assert (await scorer.acheck()).ok
    text = str(result)
    assert "OK" in text and "gap 0.9930" in text and server.base_url in text


def test_check_flags_a_server_in_embed_mode(vllm_legacy_server):
    vllm_legacy_server.embed_mode = True
    with fast(vllm_legacy_server) as scorer:
        result = scorer.check()
    assert not result.ok and len(result.warnings) == 1 and "embed mode" in result.warnings[0]
    assert 0.7 < result.irrelevant_score < 0.9 and abs(result.canary_gap) < 0.1


def test_check_flags_a_missing_template(vllm_legacy_server):
    vllm_legacy_server.score_override = _answers_the_canary
    with fast(vllm_legacy_server, template="server") as scorer:
        result = scorer.check()
    assert not result.ok and result.prompt_tokens < result.expected_prompt_tokens
    assert any("renders no reranker template" in w for w in result.warnings), result.warnings


def test_check_flags_a_double_template(vllm_template_server):
    vllm_template_server.score_override = _answers_the_canary
    with fast(vllm_template_server, template="client") as scorer:
        result = scorer.check()
    assert not result.ok and result.prompt_tokens > result.expected_prompt_tokens
    assert any("double template" in w for w in result.warnings), result.warnings


@pytest.mark.parametrize(("instruction", "ok"), [(None, True), ("Find passages about capitals", False)])
def test_check_reports_a_server_that_ignores_instruction(vllm_template_server, instruction, ok):
    vllm_template_server.score_override = _answers_the_canary
    vllm_template_server.honour_instruction = False
    with fast(vllm_template_server, instruction=instruction) as scorer:
        result = scorer.check()
    assert result.ok is ok and any("ignores the request's `instruction`" in w for w in result.warnings)


def test_check_flags_a_small_canary_gap(vllm_legacy_server):
    vllm_legacy_server.score_override = lambda query, document: 0.4 if CANARY_RELEVANT in document else 0.3
    with fast(vllm_legacy_server) as scorer:
        result = scorer.check()
    assert not result.ok and any("canary gap is 0.100" in w for w in result.warnings)
    assert scorer.check(min_gap=0.05).ok


def test_check_flags_a_model_that_is_not_served(vllm_legacy_server):
    with fast(vllm_legacy_server, model="Qwen/Qwen3-Reranker-8B") as scorer:
        result = scorer.check()
    assert not result.ok and any("not served" in w for w in result.warnings)
    assert result.error is not None and "does not exist" in result.error


async def test_check_never_raises_for_an_unreachable_server(closed_port):
    scorer = VLLMScorer(f"http://127.0.0.1:{closed_port}", backoff=0.001, max_retries=1)
    result = await scorer.acheck()
    assert not result.ok and result.healthy is None and "could not reach" in result.error
    assert "error: could not reach" in result.summary()


def test_check_reports_a_missing_rerank_route(vllm_legacy_server):
    vllm_legacy_server.inject("status", status=404, body={"detail": "Not Found"})
    with fast(vllm_legacy_server) as scorer:
        result = scorer.check()
    assert not result.ok and "pooling" in result.error
