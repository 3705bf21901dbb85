"""VLLMScorer against the loopback stand-in: parity with LocalScorer, tail cuts, long lists, secrets, bad input."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys

import pytest

from qwen3_rerank_integrations import AuthenticationError, LocalScorer, VLLMScorer
from qwen3_rerank_integrations.prompt import document_part
from tests.reference import SUFFIX, format_instruction, official_input_ids
from tests.vllm_standin import VLLMStandIn

QUERY = "What is the capital of China?"
INSTRUCTION = "Given a question, find the passage that names a capital city"
LONG_EN = "The quick brown fox jumps over the lazy dog near the river bank. " * 40
LONG_ZH = "北京是中华人民共和国的首都，也是全国的政治和文化中心。" * 30
SMALL_CONTEXT = 256
MODES = [("vllm_legacy_server", "client"), ("vllm_template_server", "server")]


def fast(server: VLLMStandIn, **options) -> VLLMScorer:
    """A scorer for the stand-in with near-zero retry waits."""
    return VLLMScorer(server.base_url, backoff=0.001, **options)


def official(tokenizer, docs, max_length=8192, instruction=None) -> list[list[int]]:
    return official_input_ids(tokenizer, [format_instruction(instruction, QUERY, d) for d in docs], max_length)


def sent_documents(server: VLLMStandIn) -> list[str]:
    return [d for r in server.scoring_requests() for d in r.json["documents"]]


@pytest.fixture(scope="module")
def tokenizer(reference_model):
    return reference_model[1]


@pytest.fixture(scope="module")
def small_servers(reference_model, vllm_standin_tokenizer):
    """Stand-ins of both modes whose context is only SMALL_CONTEXT tokens."""
    servers = {
        template: VLLMStandIn(mode, model=reference_model[0], tokenizer=vllm_standin_tokenizer,
                              max_model_len=SMALL_CONTEXT)
        for mode, template in (("legacy", "client"), ("template", "server"))
    }
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture(scope="module")
def small_local(tiny_model_dir):
    return LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", max_length=SMALL_CONTEXT).load()


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("route", ["rerank", "score"])
@pytest.mark.parametrize(("server_name", "template"), MODES)
async def test_scores_equal_local_scorer_both_generations(request, server_name, template, route, local_scorer,
                                                          documents):
    server = request.getfixturevalue(server_name)
    expected = local_scorer.score(QUERY, documents)
    async with fast(server, template=template, route=route, batch_size=4) as scorer:
        assert scorer.score(QUERY, documents) == pytest.approx(expected, abs=1e-5)
        assert await scorer.ascore(QUERY, documents) == pytest.approx(expected, abs=1e-5)
    assert {r.path for r in server.scoring_requests()} == {f"/v1/{route}"}
    assert len(server.scoring_requests()) == 6  # 10 documents in batches of 4, twice


@pytest.mark.parametrize(("server_name", "template"), MODES)
def test_the_server_scores_the_official_token_ids(request, server_name, template, tokenizer, documents):
    server = request.getfixturevalue(server_name)
    with fast(server, template=template, batch_size=len(documents)) as scorer:
        scorer.score(QUERY, documents, instruction=INSTRUCTION)
    assert server.scored_ids[-1] == official(tokenizer, documents, instruction=INSTRUCTION)


@pytest.mark.parametrize(("server_name", "template"), MODES)
async def test_instructions_per_call_and_per_scorer(request, server_name, template, local_scorer, documents):
    server = request.getfixturevalue(server_name)
    expected = local_scorer.score(QUERY, documents, instruction=INSTRUCTION)
    default = local_scorer.score(QUERY, documents)
    assert max(abs(a - b) for a, b in zip(expected, default)) > 1e-3  # the instruction matters
    with fast(server, template=template) as per_call, fast(server, template=template, instruction=INSTRUCTION) as own:
        assert per_call.score(QUERY, documents, instruction=INSTRUCTION) == pytest.approx(expected, abs=1e-5)
        assert await own.ascore(QUERY, documents) == pytest.approx(expected, abs=1e-5)
    sent = server.scoring_requests()[-1].json
    if template == "server":
        assert sent["instruction"] == INSTRUCTION and sent["query"] == QUERY
    else:
        assert "instruction" not in sent and INSTRUCTION in sent["query"]


# ------------------------------------------------------------------------------------------------ long documents
@pytest.mark.parametrize("template", ["client", "server"])
async def test_long_documents_are_cut_at_the_tail_to_the_servers_context(small_servers, small_local, tokenizer,
                                                                        template):
    server = small_servers[template]
    docs = ["A short document.", LONG_EN, LONG_ZH, "Another short one."]
    expected = small_local.score(QUERY, docs)
    async with fast(server, template=template) as scorer:
        assert await scorer.ascore(QUERY, docs) == pytest.approx(expected, abs=1e-5)
        assert scorer.score(QUERY, docs) == pytest.approx(expected, abs=1e-5)
    assert server.scored_ids[-1] == official(tokenizer, docs, SMALL_CONTEXT)
    assert [len(ids) for ids in server.scored_ids[-1]][1:3] == [SMALL_CONTEXT, SMALL_CONTEXT]
    tokenized = [r.json["prompt"] for r in server.requests if r.path == "/tokenize" and "prompt" in r.json]
    assert tokenized and not any("short" in text for text in tokenized)  # short documents are never counted
    assert [r.path for r in server.requests].count("/v1/models") == 1  # the context is learned once


def test_a_local_tokenizer_replaces_the_servers_tokenize(small_servers, qwen_tokenizer_dir, tokenizer):
    server = small_servers["client"]
    docs = [LONG_EN, "short"]
    with fast(server, tokenizer=str(qwen_tokenizer_dir)) as scorer:
        scorer.score(QUERY, docs)
    assert server.scored_ids[-1] == official(tokenizer, docs, SMALL_CONTEXT)
    # Nothing is counted or cut by the server (its /tokenize only renders the survey's canary messages).
    assert not [r for r in server.requests if r.path == "/detokenize" or (r.path == "/tokenize" and "prompt" in r.json)]


def test_max_length_overrides_the_server_context(vllm_legacy_server, tokenizer):
    docs = [LONG_EN, LONG_ZH]
    with fast(vllm_legacy_server, max_length=200) as scorer:
        scorer.score(QUERY, docs)
    assert vllm_legacy_server.scored_ids[-1] == official(tokenizer, docs, 200)
    assert "/v1/models" not in {r.path for r in vllm_legacy_server.requests}


def test_a_cut_inside_a_character_moves_back_to_its_start(vllm_legacy_server, tokenizer):
    """🦩 is two byte-level tokens. When the official cut keeps only its first half, text cannot carry that
    half: the client drops it (one token fewer than the official prompt) instead of sending U+FFFD."""
    doc = "🦩" * 150
    suffix_len = len(tokenizer(SUFFIX, add_special_tokens=False)["input_ids"])
    for limit in range(150, 200):
        ids = official(tokenizer, [doc], limit)[0]
        if tokenizer.decode(ids[-suffix_len - 1 :][:1]) == "\ufffd":  # the cut ends on half a flamingo
            break
    else:
        pytest.fail("no limit cuts inside a character")
    with fast(vllm_legacy_server, max_length=limit) as scorer:
        (score,) = scorer.score(QUERY, [doc])
    assert 0.0 < score < 1.0
    assert vllm_legacy_server.scored_ids[-1][0] == ids[: -suffix_len - 1] + ids[-suffix_len:]
    assert "\ufffd" not in sent_documents(vllm_legacy_server)[0]


def test_a_query_that_leaves_no_room_raises_before_scoring(vllm_legacy_server):
    with fast(vllm_legacy_server, max_length=60) as scorer, pytest.raises(ValueError, match="too small"):
        scorer.score(QUERY * 5, ["doc"])
    assert not vllm_legacy_server.scoring_requests()


# ------------------------------------------------------------------------------------------------ long lists
DOCS_300 = [f"Document {i}: " + "Beijing is the capital of China. " * (1 + i % 3) for i in range(300)]


def _score_by_number(query: str, document: str) -> float:
    """A score that names its document, so any mix-up in the merge shows (and no model time is spent)."""
    return int(re.search(r"Document (\d+):", document)[1]) / 1000


async def test_300_documents_in_overlapping_requests_merge_in_order(vllm_legacy_server):
    vllm_legacy_server.score_override = _score_by_number
    vllm_legacy_server.latency = 0.02  # requests overlap while the server "computes"
    expected = [i / 1000 for i in range(300)]
    async with fast(vllm_legacy_server, batch_size=10, max_concurrency=4) as scorer:
        assert scorer.score(QUERY, DOCS_300) == expected
        sync_peak, vllm_legacy_server.max_in_flight = vllm_legacy_server.max_in_flight, 0
        assert await scorer.ascore(QUERY, DOCS_300) == expected
    assert 2 <= sync_peak <= 4 and 2 <= vllm_legacy_server.max_in_flight <= 4
    requests = vllm_legacy_server.scoring_requests()
    assert len(requests) == 60 and all(len(r.json["documents"]) == 10 for r in requests)
    assert sorted(sent_documents(vllm_legacy_server)) == sorted(document_part(d) + SUFFIX for d in DOCS_300 * 2)


def test_async_works_across_event_loops(vllm_legacy_server, local_scorer, documents):
    """Frameworks that call asyncio.run per request get a fresh client per loop, not a dead pool."""
    scorer = fast(vllm_legacy_server)
    first = asyncio.run(scorer.ascore(QUERY, documents))
    second = asyncio.run(scorer.ascore(QUERY, documents))
    assert first == second == pytest.approx(local_scorer.score(QUERY, documents), abs=1e-5)


# ------------------------------------------------------------------------------------------------ secrets, TLS
def test_the_api_key_is_sent_but_never_shown(vllm_legacy_server, caplog):
    vllm_legacy_server.api_key = "sk-right-key-123"
    caplog.set_level(logging.DEBUG)
    scorer = fast(vllm_legacy_server, api_key="sk-right-key-123", headers={"X-Tenant": "t-1"})
    assert len(scorer.score(QUERY, ["a", "b"])) == 2
    sent = vllm_legacy_server.scoring_requests()[-1].headers
    assert sent["authorization"] == "Bearer sk-right-key-123" and sent["x-tenant"] == "t-1"
    assert "sk-right-key-123" not in repr(scorer) + str(scorer) + str(scorer.model_dump()) + caplog.text
    scorer.close()


def test_a_rejected_key_raises_without_the_key(vllm_legacy_server, caplog):
    vllm_legacy_server.api_key = "sk-right-key-123"
    caplog.set_level(logging.DEBUG)
    with fast(vllm_legacy_server, api_key="sk-wrong-key-456") as scorer, pytest.raises(AuthenticationError) as caught:
        scorer.score(QUERY, ["a"])
    assert caught.value.status_code == 401 and "rejected the API key" in str(caught.value)
    assert "sk-wrong-key-456" not in str(caught.value) + repr(caught.value) + caplog.text
    # The first /v1 request is refused (the survey's /v1/models), and a 401 is not retried.
    assert [r.path for r in vllm_legacy_server.requests].count("/v1/models") == 1


def test_the_api_key_falls_back_to_the_environment(vllm_legacy_server, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-from-env")
    vllm_legacy_server.api_key = "sk-from-env"
    with fast(vllm_legacy_server) as scorer:
        assert scorer.api_key is not None and scorer.api_key.get_secret_value() == "sk-from-env"
        assert len(scorer.score(QUERY, ["a"])) == 1
    monkeypatch.delenv("VLLM_API_KEY")
    assert VLLMScorer("http://localhost:8000").api_key is None


def test_tls_is_verified_by_default():
    import ssl

    import certifi

    from qwen3_rerank_integrations.vllm.transport import client_options

    default = client_options(VLLMScorer("https://vllm.example"))["verify"]
    assert isinstance(default, ssl.SSLContext) and default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert default.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded
    # Built once: every client with verify=True shares it (loading the CA bundle is most of a client's cost).
    assert client_options(VLLMScorer("https://other.example"), is_async=True)["verify"] is default
    context = client_options(VLLMScorer("https://vllm.example", verify=certifi.where()))["verify"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context is not default  # a CA bundle of the caller's gets its own context
    assert client_options(VLLMScorer("https://vllm.example", verify=False))["verify"] is False


def test_tls_default_follows_ssl_cert_file_as_httpx_does(monkeypatch, tmp_path):
    import shutil
    import ssl

    import certifi

    from qwen3_rerank_integrations.vllm.transport import client_options

    default = client_options(VLLMScorer("https://vllm.example"))["verify"]
    bundle = shutil.copy(certifi.where(), tmp_path / "ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    context = client_options(VLLMScorer("https://vllm.example"))["verify"]
    assert context is not default and context.verify_mode == ssl.CERT_REQUIRED
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError):  # read when the client is made, as httpx reads it
        client_options(VLLMScorer("https://vllm.example"))


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.score("", ["a"]), ValueError),
        (lambda s: s.score("q", "a single string"), TypeError),
        (lambda s: s.score("q", ["a", 3]), TypeError),
        (lambda s: s.score("q", ["a"], instruction="  "), ValueError),
        (lambda s: asyncio.run(s.ascore(None, ["a"])), TypeError),
    ],
)
def test_bad_input_raises_before_any_network_work(call, error):
    scorer = VLLMScorer("http://127.0.0.1:9", max_retries=0)  # nothing listens on port 9
    with pytest.raises(error):
        call(scorer)
    assert scorer._state.connections.client is None and scorer._state.connections.aclient is None


def test_no_documents_means_no_request():
    scorer = VLLMScorer("http://127.0.0.1:9", max_retries=0)
    assert scorer.score("q", []) == [] and asyncio.run(scorer.ascore("q", ())) == []


@pytest.mark.parametrize(
    "options",
    [{"base_url": "localhost:8000"}, {"base_url": "ftp://h"}, {"template": "both"}, {"route": "embed"},
     {"batch_size": 0}, {"max_concurrency": 0}, {"max_retries": -1}, {"timeout": 0}, {"max_length": 0},
     {"truncate_prompt_tokens": 100}],
)
def test_bad_settings_name_the_field(options):
    base_url = options.pop("base_url", "http://localhost:8000")
    with pytest.raises(ValueError) as caught:
        VLLMScorer(base_url, **options)
    assert (next(iter(options), None) or "base_url") in str(caught.value)


def test_importing_vllmscorer_imports_neither_torch_nor_httpx():
    code = (
        "import sys; from qwen3_rerank_integrations import VLLMScorer; VLLMScorer('http://h:1');"
        "print(sorted(m for m in ('torch', 'transformers', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------ transport=
async def test_an_httpx_mock_transport_serves_score_and_ascore():
    import httpx

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        body = json.loads(request.content)
        if request.url.path == "/tokenize":  # the survey: a server without the reranker template renders nothing
            return httpx.Response(200, json={"count": 0, "max_model_len": 4096, "tokens": []})
        if request.url.path != "/v1/rerank":  # the survey's /v1/embeddings: a reranker has no such route
            return httpx.Response(404, json={"detail": "Not Found"})
        results = [{"index": i, "relevance_score": 0.5 + i / 10} for i in range(len(body["documents"]))]
        return httpx.Response(200, json={"results": results[::-1]})

    scorer = VLLMScorer("http://vllm.test", transport=httpx.MockTransport(handler), max_length=4096)
    assert scorer.score(QUERY, ["a", "b"]) == [0.5, 0.6]
    assert await scorer.ascore(QUERY, ["a", "b", "c"]) == [0.5, 0.6, 0.7]
    assert sorted(seen[:2]) == ["/tokenize", "/v1/embeddings"]  # surveyed once, sync and async alike
    assert seen[2:] == ["/v1/rerank", "/v1/rerank"]
    assert "transport" not in repr(scorer) and "transport" not in scorer.model_dump()
    await scorer.aclose()


async def test_a_sync_only_transport_is_refused_by_ascore_with_a_clear_error():
    import httpx

    scorer = VLLMScorer("http://vllm.test", transport=httpx.HTTPTransport(), max_length=4096)
    with pytest.raises(TypeError, match="transport= must be an httpx.AsyncBaseTransport for ascore"):
        await scorer.ascore(QUERY, ["a"])
