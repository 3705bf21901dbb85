"""VLLMScorer against hostile servers: every request bounded in time and size, no secret ever shown.

The stand-in plays the hostile server (faults "trickle", "trickle_headers", "gzip_bomb", "echo_headers",
"redirect" in tests/vllm_standin.py). Secrets are the API key, custom header values and credentials in the URL;
none may reach an exception, a log record (the package's, httpx's or httpcore's), a check() report, a repr,
a model dump or the CLI's output.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from qwen3_rerank_integrations import (
    BadRequestError,
    InvalidResponseError,
    RerankError,
    ServerResponseError,
    ServerTimeoutError,
    VLLMScorer,
)
from qwen3_rerank_integrations.vllm import protocol
from qwen3_rerank_integrations.cli import app
from qwen3_rerank_integrations.errors import ResponseTooLargeError
from tests.vllm_standin import VLLMStandIn

QUERY = "What is the capital of China?"
DOCS = ["Beijing is the capital of China.", "Gravity pulls things down."]
API_KEY = "sk-hostile-KEY-1234"
HEADER_SECRET = "tenant-secret-5678"
URL_USER, URL_PASSWORD = "alice", "pa55-word-9012"
BASIC = base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode()


def scorer_for(server: VLLMStandIn, **options) -> VLLMScorer:
    options.setdefault("template", "client" if server.mode == "legacy" else "server")
    options.setdefault("max_length", 4096)
    options.setdefault("backoff", 0.001)
    return VLLMScorer(server.base_url, **options)


def with_secrets(server: VLLMStandIn, **options) -> VLLMScorer:
    return scorer_for(server, api_key=API_KEY, headers={"X-Tenant-Token": HEADER_SECRET}, **options)


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        text = str(text)
        for secret in (API_KEY, HEADER_SECRET, URL_PASSWORD, BASIC):
            assert secret not in text, f"{secret!r} leaked in: {text[:500]}"


@pytest.fixture
def logs(caplog):
    """Every record at DEBUG, httpx's request lines and httpcore's header traces included."""
    caplog.set_level(logging.DEBUG)
    return caplog


def logged(caplog) -> str:
    return "\n".join(caplog.text.splitlines() + [r.getMessage() for r in caplog.records])


# ------------------------------------------------------------------------------------------------ time
@pytest.mark.parametrize("kind", ["trickle", "trickle_headers"])
async def test_a_trickle_cannot_stretch_a_request_past_timeout(vllm_legacy_server, kind):
    """One byte every 0.4 s never trips a per-read timeout of 1.5 s; the deadline ends it at 1.5 s."""
    timeout = 1.5
    vllm_legacy_server.inject(kind, delay=0.4, times=2)
    with scorer_for(vllm_legacy_server, timeout=timeout, max_retries=0) as scorer:
        started = time.monotonic()
        with pytest.raises(ServerTimeoutError, match="timed out after 1.5s"):
            scorer.score(QUERY, DOCS)
        assert time.monotonic() - started < timeout + 1.0
    async with scorer_for(vllm_legacy_server, timeout=timeout, max_retries=0) as scorer:
        started = time.monotonic()
        with pytest.raises(ServerTimeoutError, match="timed out after 1.5s"):
            await scorer.ascore(QUERY, DOCS)
        assert time.monotonic() - started < timeout + 1.0


async def test_each_retry_gets_its_own_deadline(vllm_legacy_server):
    """A trickled attempt times out, the retry gets a fresh `timeout` and succeeds."""
    vllm_legacy_server.inject("trickle", delay=0.3)
    with scorer_for(vllm_legacy_server, timeout=1.0, max_retries=1) as scorer:
        started = time.monotonic()
        assert len(scorer.score(QUERY, DOCS)) == 2
        assert 1.0 <= time.monotonic() - started < 3.0
    vllm_legacy_server.inject("trickle_headers", delay=0.3)
    async with scorer_for(vllm_legacy_server, timeout=1.0, max_retries=1) as scorer:
        assert len(await scorer.ascore(QUERY, DOCS)) == 2


def test_a_slow_but_honest_answer_within_timeout_is_fine(vllm_legacy_server):
    vllm_legacy_server.inject("delay", delay=0.5)
    with scorer_for(vllm_legacy_server, timeout=1.5, max_retries=0) as scorer:
        assert len(scorer.score(QUERY, DOCS)) == 2


# ------------------------------------------------------------------------------------------------ size
BOMB = 256 << 20  # inflated bytes; about 260 KB on the wire
CAP = 4 << 20


class PeakMemory:
    """Peak Python allocations inside the block (tracemalloc)."""

    def __enter__(self) -> PeakMemory:
        tracemalloc.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


async def test_a_gzip_bomb_is_stopped_at_the_size_cap(vllm_legacy_server):
    # Held at most: the cap, plus what one network read of 16 KiB inflates to (zlib: ~1000x, so 16 MiB) and
    # zlib's output blocks while it does. Before the cap, the whole bomb was held, more than twice over.
    bound = CAP + (64 << 20)
    vllm_legacy_server.inject("gzip_bomb", size=BOMB, times=2)
    with scorer_for(vllm_legacy_server, max_response_bytes=CAP) as scorer:
        with PeakMemory() as memory, pytest.raises(ResponseTooLargeError) as caught:
            scorer.score(QUERY, DOCS)
    assert memory.peak < bound, f"peak {memory.peak / 2**20:.0f} MiB"
    assert isinstance(caught.value, InvalidResponseError)
    assert "max_response_bytes" in str(caught.value) and "decompressed" in str(caught.value)
    async with scorer_for(vllm_legacy_server, max_response_bytes=CAP) as scorer:
        with PeakMemory() as memory, pytest.raises(ResponseTooLargeError):
            await scorer.ascore(QUERY, DOCS)
    assert memory.peak < bound, f"async peak {memory.peak / 2**20:.0f} MiB"
    assert len(vllm_legacy_server.scoring_requests()) == 2  # not retried


async def test_an_oversized_plain_body_is_refused(vllm_legacy_server):
    padding = {"results": [], "padding": "x" * 200_000}
    vllm_legacy_server.inject("echo_headers", status=200, body=padding, times=2)
    with scorer_for(vllm_legacy_server, max_response_bytes=100_000) as scorer:
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=100000"):
            scorer.score(QUERY, DOCS)
        with pytest.raises(ResponseTooLargeError):
            await scorer.ascore(QUERY, DOCS)


async def test_answers_echoing_big_documents_fit_whatever_the_cap(vllm_legacy_server):
    """A rerank answer echoes the documents sent: the cap grows with the request (8x its size)."""
    docs = ["word " * 2000, "other " * 2000]  # ~22 KB sent, ~22 KB echoed back
    with scorer_for(vllm_legacy_server, max_response_bytes=1000) as scorer:
        assert len(scorer.score(QUERY, docs)) == 2
        assert len(await scorer.ascore(QUERY, docs)) == 2


def test_error_bodies_are_read_only_in_part(vllm_legacy_server):
    vllm_legacy_server.inject("status", status=400, body={"error": {"message": "no"}, "padding": "x" * 10**6})
    with scorer_for(vllm_legacy_server, max_response_bytes=100_000) as scorer, pytest.raises(BadRequestError):
        scorer.score(QUERY, DOCS)


async def test_a_body_that_does_not_decompress_is_an_invalid_response(vllm_legacy_server):
    """httpx's DecodingError is not a transport error: it must still come out as the package's own error."""
    vllm_legacy_server.inject("echo_headers", status=200, body=b"not gzip at all", times=2,
                              headers={"Content-Encoding": "gzip"})
    with scorer_for(vllm_legacy_server) as scorer:
        with pytest.raises(InvalidResponseError, match="could not be decompressed"):
            scorer.score(QUERY, DOCS)
        with pytest.raises(InvalidResponseError, match="could not be decompressed"):
            await scorer.ascore(QUERY, DOCS)
    assert len(vllm_legacy_server.scoring_requests()) == 2  # not retried


def test_max_response_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_response_bytes"):
        VLLMScorer("http://localhost:8000", max_response_bytes=0)


# ------------------------------------------------------------------------------------------------ secrets echoed
ECHO_BODIES = {
    "rerank 200 body": ("rerank", 200, {"results": "{headers}"}),
    "rerank 200 non-JSON": ("rerank", 200, b"<html>{headers}</html>"),
    "rerank 400 message": ("rerank", 400, {"error": {"message": "{headers}", "type": "BadRequestError"}}),
    "rerank 401 flat": ("rerank", 401, {"object": "error", "message": "bad key: {headers}"}),
    "rerank 503 retried": ("rerank", 503, {"error": {"message": "{headers}"}}),
    "tokenize 200 body": ("tokenize", 200, {"tokens": "{headers}"}),
}


@pytest.mark.parametrize("case", list(ECHO_BODIES))
async def test_echoed_headers_never_reach_errors_or_logs(vllm_legacy_server, logs, case):
    route, status, body = ECHO_BODIES[case]
    long_docs = [" ".join(["word"] * 300)] if route == "tokenize" else DOCS  # /tokenize only for long ones
    vllm_legacy_server.inject("echo_headers", route=route, status=status, body=body, times=10)
    with with_secrets(vllm_legacy_server, max_length=128, max_retries=1) as scorer:
        with pytest.raises(RerankError) as caught:
            scorer.score(QUERY, long_docs)
        async_error = None
        try:
            await scorer.ascore(QUERY, long_docs)
        except RerankError as exc:
            async_error = exc
    assert async_error is not None and type(async_error) is type(caught.value)
    assert "***" in str(caught.value) or "***" in str(getattr(caught.value, "server_message", "")), caught.value
    for error in (caught.value, async_error):
        assert_no_secret(str(error), repr(error), error.args, getattr(error, "server_message", None))
    assert any(r.name == "httpx" for r in logs.records), "httpx's INFO request log was not captured"
    assert_no_secret(logged(logs))


MODELS_ECHO = {"object": "list", "data": [{"id": "{headers}", "max_model_len": 4096}]}


async def test_check_never_shows_echoed_secrets(vllm_legacy_server, logs):
    vllm_legacy_server.inject("echo_headers", route="models", status=200, body=MODELS_ECHO, times=10)
    vllm_legacy_server.inject("echo_headers", route="health", status=500, body={"detail": "{headers}"}, times=10)
    with with_secrets(vllm_legacy_server, max_length=None) as scorer:
        result = scorer.check()
    async with with_secrets(vllm_legacy_server, max_length=None) as scorer:
        async_result = await scorer.acheck()
    for report in (result, async_result):
        assert not report.ok and "***" in str(report.served_models)
        assert_no_secret(report.summary(), report.model_dump_json(), repr(report), report.model_dump())
    assert_no_secret(logged(logs))


def test_check_server_cli_never_prints_echoed_secrets(vllm_legacy_server):
    vllm_legacy_server.inject("echo_headers", route="models", status=200, body=MODELS_ECHO, times=10)
    env = {"VLLM_API_KEY": API_KEY}
    for output_format in ("table", "json"):
        result = CliRunner().invoke(app, ["check-server", vllm_legacy_server.base_url, "--format", output_format],
                                    env=env)
        assert result.exit_code == 1, result.output
        assert "***" in result.stdout
        assert_no_secret(result.stdout, result.stderr)
    vllm_legacy_server.inject("echo_headers", route="health", status=401, body={"error": "{headers}"}, times=20)
    vllm_legacy_server.inject("echo_headers", route="rerank", status=401, body={"error": "{headers}"}, times=20)
    result = CliRunner().invoke(app, ["check-server", vllm_legacy_server.base_url], env=env)
    assert result.exit_code in (1, 3) and "***" in result.output
    assert_no_secret(result.stdout, result.stderr)


def test_secrets_echoed_in_response_headers_stay_out_of_httpcore_logs(vllm_legacy_server, logs):
    vllm_legacy_server.inject("echo_headers", status=200, body={"results": []}, headers={"X-Echo": f"Bearer {API_KEY}"})
    with with_secrets(vllm_legacy_server) as scorer, pytest.raises(InvalidResponseError):
        scorer.score(QUERY, DOCS)
    assert any(r.name.startswith("httpcore") for r in logs.records)
    assert_no_secret(logged(logs))


def test_every_package_httpx_and_httpcore_logger_redacts(vllm_legacy_server, logs):
    with with_secrets(vllm_legacy_server):
        pass
    for name in ("qwen3_rerank_integrations", "qwen3_rerank_integrations.vllm", "httpx", "httpcore.http11",
                 "httpcore.connection"):
        logging.getLogger(name).warning("header %s and Bearer %s", HEADER_SECRET, API_KEY)
    try:
        raise RuntimeError(f"wrapped {API_KEY}")
    except RuntimeError:
        logging.getLogger("qwen3_rerank_integrations.vllm").exception("failed")
    assert len(logs.records) == 6
    assert_no_secret(logged(logs))


def test_secrets_are_masked_whatever_their_escaping():
    from qwen3_rerank_integrations import _secrets

    secret = 'odd"key\\é/+'
    _secrets.register(secret)
    for form in (secret, json.dumps(secret), json.dumps(secret, ensure_ascii=False), repr(secret),
                 quote(secret, safe=""), quote(secret)):
        assert secret not in _secrets.redact(f"x {form} y") and "***" in _secrets.redact(f"x {form} y"), form
    assert _secrets.redact("short 1 and on") == "short 1 and on"  # values under 4 characters are not masked


def test_a_secret_cut_by_a_snippet_does_not_leak_its_head(vllm_legacy_server):
    """Snippets are cut after redaction, so a cut through the key never leaves its first characters."""
    cut_inside_the_key = 0
    for padding in range(240, 300, 2):
        body = {"tokens": "x" * padding + "{authorization}"}
        vllm_legacy_server.inject("echo_headers", route="tokenize", status=200, body=body)
        with with_secrets(vllm_legacy_server, max_length=128) as scorer, pytest.raises(InvalidResponseError) as c:
            scorer.score(QUERY, [" ".join(["word"] * 300)])
        after_padding = str(c.value).rpartition("x")[2]
        assert set(after_padding) <= set("*'}"), after_padding  # never "Bear", "sk-h"...: masked, then cut
        cut_inside_the_key += after_padding in ("*", "**")
    assert cut_inside_the_key  # some paddings did cut through the (masked) key


# ------------------------------------------------------------------------------------------------ Retry-After
GARBAGE_RETRY_AFTER = ["nan", "NaN", "inf", "-inf", "-5", "1e12", "soon", "", " ", "0x10", "9" * 400,
                       "Wed, 99 Foo 2024 99:99:99 GMT"]


@pytest.mark.parametrize("value", GARBAGE_RETRY_AFTER)
def test_garbage_retry_after_means_none(value):
    assert protocol._retry_after(value) is None


@pytest.mark.parametrize(("value", "seconds"), [("0.4", 0.4), ("7", 7.0), ("120", 60.0), (" 3 ", 3.0),
                                                ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_valid_retry_after_is_honoured_and_capped(value, seconds):
    assert protocol._retry_after(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "1e12", "soon", ""])
async def test_garbage_retry_after_falls_back_to_the_backoff_sync_and_async(vllm_legacy_server, value):
    expected = None
    for run in ("sync", "async"):
        vllm_legacy_server.inject("status", status=503, headers={"Retry-After": value})
        started = time.monotonic()
        async with scorer_for(vllm_legacy_server, max_retries=1) as scorer:
            scores = scorer.score(QUERY, DOCS) if run == "sync" else await scorer.ascore(QUERY, DOCS)
        assert time.monotonic() - started < 2.0, run
        expected = expected or scores
        assert scores == pytest.approx(expected) and all(math.isfinite(s) for s in scores)
    assert len(vllm_legacy_server.scoring_requests()) == 4


# ------------------------------------------------------------------------------------------------ redirects
class Recorder:
    """An HTTP server on another loopback host that records what reaches it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                recorder.requests.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST

        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        except OSError:  # no 127.0.0.2 here: another port is another origin all the same
            self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def elsewhere():
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_refused_and_the_key_never_leaves(vllm_legacy_server, elsewhere, status):
    location = f"{elsewhere.url}/v1/rerank"
    vllm_legacy_server.inject("redirect", status=status, location=location, times=2)
    with with_secrets(vllm_legacy_server) as scorer:
        with pytest.raises(ServerResponseError, match="redirect") as caught:
            scorer.score(QUERY, DOCS)
        with pytest.raises(ServerResponseError, match="redirect"):
            await scorer.ascore(QUERY, DOCS)
    assert caught.value.status_code == status and location in str(caught.value)
    assert "base_url" in str(caught.value)
    assert elsewhere.requests == []
    assert len(vllm_legacy_server.scoring_requests()) == 2  # not retried


def test_a_redirect_location_with_credentials_is_masked(vllm_legacy_server):
    vllm_legacy_server.inject("redirect", location="http://mallory:hunter2-secret@evil.example/v1/rerank")
    with scorer_for(vllm_legacy_server) as scorer, pytest.raises(ServerResponseError) as caught:
        scorer.score(QUERY, DOCS)
    assert "hunter2-secret" not in str(caught.value) and "evil.example" in str(caught.value)


# ------------------------------------------------------------------------------------------------ URL credentials
def url_with_credentials(server: VLLMStandIn) -> str:
    return server.base_url.replace("http://", f"http://{URL_USER}:{URL_PASSWORD}@")


async def test_url_credentials_become_basic_auth_and_are_never_shown(vllm_legacy_server, logs, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    scorer = VLLMScorer(url_with_credentials(vllm_legacy_server), max_length=4096)
    assert scorer.base_url == vllm_legacy_server.base_url
    assert_no_secret(repr(scorer), str(scorer), scorer.model_dump(), scorer.model_dump_json())
    assert URL_USER not in repr(scorer)
    with scorer:
        assert len(scorer.score(QUERY, DOCS)) == 2
    async with scorer:
        assert len(await scorer.ascore(QUERY, DOCS)) == 2
    sent = vllm_legacy_server.scoring_requests()
    assert [r.headers.get("authorization") for r in sent] == [f"Basic {BASIC}"] * 2
    vllm_legacy_server.inject("echo_headers", status=400, body={"error": {"message": "{headers}"}})
    with scorer, pytest.raises(BadRequestError) as caught:
        scorer.score(QUERY, DOCS)
    assert "***" in str(caught.value)
    assert_no_secret(str(caught.value), logged(logs))
    assert any(r.name == "httpx" for r in logs.records)


def test_url_credentials_and_an_api_key_are_refused_together(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    url = f"http://{URL_USER}:{URL_PASSWORD}@localhost:8000"
    with pytest.raises(ValueError, match="api_key") as caught:
        VLLMScorer(url, api_key=API_KEY)
    assert "base_url" in str(caught.value)
    assert_no_secret(str(caught.value))
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    with pytest.raises(ValueError, match="VLLM_API_KEY") as caught:
        VLLMScorer(url)
    assert_no_secret(str(caught.value))
    assert VLLMScorer(url, api_key=None).basic_auth is not None  # an explicit None opts out of the variable
    with pytest.raises(ValueError, match="Authorization"):
        VLLMScorer("http://localhost:8000", api_key=API_KEY, headers={"Authorization": "Bearer other-key"})


def test_url_credentials_are_never_in_validation_errors(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    for bad in (f"ftp://{URL_USER}:{URL_PASSWORD}@host", f"{URL_USER}:{URL_PASSWORD}@host:8000"):
        with pytest.raises(ValueError) as caught:
            VLLMScorer(bad)
        assert_no_secret(str(caught.value))
    scorer = VLLMScorer("http://localhost:8000")
    with pytest.raises(ValueError, match="basic_auth") as caught:
        scorer.base_url = f"http://{URL_USER}:{URL_PASSWORD}@localhost:8000"
    assert_no_secret(str(caught.value))
    with pytest.raises(ValueError, match="basic_auth"):
        VLLMScorer(f"http://{URL_USER}:{URL_PASSWORD}@localhost:8000", basic_auth="bob:other-password")


def test_header_values_are_never_in_repr_or_dumps(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    scorer = VLLMScorer("http://localhost:8000", api_key=API_KEY, headers={"X-Tenant-Token": HEADER_SECRET})
    assert_no_secret(repr(scorer), str(scorer), scorer.model_dump(), scorer.model_dump_json())
    assert scorer.headers["X-Tenant-Token"].get_secret_value() == HEADER_SECRET


def test_check_server_cli_hides_url_credentials(vllm_legacy_server, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["check-server", url_with_credentials(vllm_legacy_server)])
    assert vllm_legacy_server.base_url in result.stdout
    assert_no_secret(result.stdout, result.stderr)
    assert URL_USER not in result.output
    unreachable = f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:9/"
    result = CliRunner().invoke(app, ["check-server", unreachable, "--max-retries", "0"])
    assert result.exit_code == 3 and "127.0.0.1:9" in result.stderr
    assert_no_secret(result.stdout, result.stderr)


def test_examples_show_the_url_without_credentials():
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        from _pipeline_common import UsageError, check_reranker_args, describe_backend, display_url
    finally:
        sys.path.pop(0)
    url = f"http://{URL_USER}:{URL_PASSWORD}@gpu-box:8000/v1"
    assert display_url(url) == "http://gpu-box:8000/v1"
    text = describe_backend(argparse.Namespace(backend="vllm", model=None, base_url=url, template="client"))
    assert "gpu-box:8000" in text and URL_PASSWORD not in text and URL_USER not in text
    wrong_scheme = argparse.Namespace(backend="vllm", base_url=url.replace("http", "ftp"), instruction=None)
    with pytest.raises(UsageError, match="gpu-box") as caught:
        check_reranker_args(wrong_scheme)
    assert URL_PASSWORD not in str(caught.value)
