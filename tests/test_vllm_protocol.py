"""vLLM protocol rules without a server: token-exact client rendering, response checks, error mapping."""

from __future__ import annotations

import json
import math

import pytest

from qwen3_rerank_integrations.vllm import protocol
from qwen3_rerank_integrations.errors import (
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    RateLimitError,
    RouteNotFoundError,
    ServerError,
    ServerResponseError,
)
from qwen3_rerank_integrations.prompt import PREFIX, SUFFIX, document_part, query_part
from tests.conftest import DOCUMENTS
from tests.reference import DEFAULT_INSTRUCTION, format_instruction, official_input_ids

QUERIES = ["What is the capital of China?", "trailing spaces  ", "北京?", "ends in newline\n", "🗼"]
EXTRA_DOCUMENTS = ["  leading spaces", "\n\nnewlines first", ":) punctuation first", "trailing space ", "🦩𠀀🦩"]


@pytest.fixture(scope="module")
def tokenizer(qwen_tokenizer):
    return qwen_tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("instruction", [DEFAULT_INSTRUCTION, "Find code that fixes the bug  "])
def test_client_rendering_gives_the_official_token_ids(tokenizer, instruction):
    """What template='client' sends tokenizes to the official ids on every vLLM generation: concatenated
    token lists (old servers), one concatenated string (later legacy servers) and text pairs alike."""
    for query in QUERIES:
        sent_query = PREFIX + query_part(query, instruction)
        for doc in DOCUMENTS + EXTRA_DOCUMENTS:
            official = official_input_ids(tokenizer, [format_instruction(instruction, query, doc)], 8192)[0]
            sent_doc = document_part(doc) + SUFFIX
            assert _ids(tokenizer, sent_query) + _ids(tokenizer, sent_doc) == official, (query, doc)
            assert _ids(tokenizer, sent_query + sent_doc) == official, (query, doc)
            pair = tokenizer(text=sent_query, text_pair=sent_doc, add_special_tokens=False)["input_ids"]
            assert list(pair) == official, (query, doc)


def test_byte_bound_never_undercounts(tokenizer):
    for text in DOCUMENTS + EXTRA_DOCUMENTS + [PREFIX, SUFFIX, "e\u0301" * 20, "ﬁ" * 10]:
        assert protocol.max_tokens_bound(text) >= len(_ids(tokenizer, text)), text


def test_payloads_send_only_known_fields():
    rerank = protocol.rerank_payload("q", ["a", "b"], model=None, instruction=None)
    assert rerank == {"query": "q", "documents": ["a", "b"], "top_n": 2}
    score = protocol.score_payload("q", ("a",), model="m", instruction="i")
    assert score == {"text_1": "q", "text_2": ["a"], "model": "m", "instruction": "i"}
    assert "truncate_prompt_tokens" not in rerank and "truncate_prompt_tokens" not in score


@pytest.mark.parametrize(
    ("url", "root"),
    [("http://h:8000", "http://h:8000"), ("http://h:8000/", "http://h:8000"), ("https://h/v1/", "https://h"),
     ("http://h:8000/prefix/v1", "http://h:8000/prefix")],
)
def test_base_url_is_the_server_root(url, root):
    assert protocol.normalize_base_url(url) == root


def test_results_are_placed_by_index_not_position():
    body = {"results": [{"index": 2, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.5},
                        {"index": 1, "relevance_score": 0.1}]}
    assert protocol.parse_scores(body, 3, "rerank") == [0.5, 0.1, 0.9]
    score_body = {"data": [{"index": 1, "score": 0.25}, {"index": 0, "score": 1}]}
    assert protocol.parse_scores(score_body, 2, "score") == [1.0, 0.25]


@pytest.mark.parametrize(
    ("results", "words"),
    [
        ([{"index": 0, "relevance_score": 0.5}], "missing 1 of 2"),
        ([{"index": 0, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.4}], "index 0 twice"),
        ([{"index": 0, "relevance_score": 0.5}, {"index": 2, "relevance_score": 0.4}], "index 2"),
        ([{"index": 0, "relevance_score": 0.5}, {"index": -1, "relevance_score": 0.4}], "index -1"),
        ([{"index": 0, "relevance_score": 0.5}, {"index": True, "relevance_score": 0.4}], "index True"),
        ([{"index": 0, "relevance_score": math.nan}, {"index": 1, "relevance_score": 0.4}], "finite"),
        ([{"index": 0, "relevance_score": math.inf}, {"index": 1, "relevance_score": 0.4}], "finite"),
        ([{"index": 0, "relevance_score": "0.5"}, {"index": 1, "relevance_score": 0.4}], "finite"),
        ([{"index": 0}, {"index": 1, "relevance_score": 0.4}], "finite"),
        (["junk", {"index": 1, "relevance_score": 0.4}], "index None"),
    ],
)
def test_incomplete_or_invalid_results_raise(results, words):
    with pytest.raises(InvalidResponseError, match=words):
        protocol.parse_scores({"results": results}, 2, "rerank")


@pytest.mark.parametrize("body", [None, [], {"data": []}, {"results": "no"}])
def test_a_body_without_results_raises(body):
    with pytest.raises(InvalidResponseError, match="no 'results' list"):
        protocol.parse_scores(body, 1, "rerank")


def test_usage_reads_both_generations():
    assert protocol.usage_tokens({"usage": {"prompt_tokens": 7, "total_tokens": 7}}) == 7
    assert protocol.usage_tokens({"usage": {"total_tokens": 9}}) == 9
    assert protocol.usage_tokens({"results": []}) is None


NESTED = {"error": {"message": "nested says no", "type": "BadRequestError", "param": None, "code": 400}}
FLAT = {"object": "error", "message": "flat says no", "type": "BadRequestError", "param": None, "code": 400}


@pytest.mark.parametrize(
    ("body", "message"),
    [(NESTED, "nested says no"), (FLAT, "flat says no"), ({"detail": "Not Found"}, "Not Found"),
     ({"error": "Unauthorized"}, "Unauthorized"), ("plain text", "plain text")],
)
def test_server_message_reads_every_error_format(body, message):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert protocol.server_message(raw) == message


def _read(status, body=b"", headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return protocol.read_response(status, headers or {}, raw, method="POST", url="http://h/v1/rerank")


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, BadRequestError), (422, BadRequestError), (401, AuthenticationError), (403, AuthenticationError),
     (404, RouteNotFoundError), (500, ServerError), (418, ServerResponseError)],
)
def test_final_statuses_raise_at_once_with_the_server_message(status, error_type):
    with pytest.raises(error_type) as caught:
        _read(status, NESTED)
    assert caught.value.status_code == status
    assert caught.value.server_message == "nested says no"
    assert "nested says no" in str(caught.value)


@pytest.mark.parametrize(("status", "error_type"), [(429, RateLimitError), (502, ServerError), (503, ServerError),
                                                    (504, ServerError)])
def test_retryable_statuses_are_transient(status, error_type):
    with pytest.raises(protocol.TransientError) as caught:
        _read(status, FLAT, {"retry-after": "2"})
    assert isinstance(caught.value.error, error_type)
    assert caught.value.error.status_code == status and caught.value.retry_after == 2.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0.25", 0.25), ("3", 3.0), ("99999", protocol.MAX_RETRY_AFTER_S), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
     # Garbage means no Retry-After (the backoff applies), never an exception or a NaN/endless wait.
     ("-5", None), ("soon", None), ("nan", None), ("inf", None), ("1e12", None), ("", None)],
)
def test_retry_after_header(value, seconds):
    with pytest.raises(protocol.TransientError) as caught:
        _read(429, b"", {"retry-after": value})
    assert caught.value.retry_after == seconds


def test_hints_for_route_auth_and_context_errors():
    with pytest.raises(RouteNotFoundError, match="pooling"):
        _read(404, {"detail": "Not Found"})
    with pytest.raises(AuthenticationError, match="VLLM_API_KEY"):
        _read(401, {"error": "Unauthorized"})
    with pytest.raises(BadRequestError, match="max_length"):
        _read(400, {"error": {"message": "This model's maximum context length is 4096 tokens."}})


def test_secrets_are_redacted_from_server_messages():
    from qwen3_rerank_integrations import _secrets

    _secrets.register("sk-very-secret")  # what a scorer does with its key
    with pytest.raises(BadRequestError) as caught:
        _read(400, {"message": "bad header: Bearer sk-very-secret"})
    assert "sk-very-secret" not in str(caught.value) and "***" in caught.value.server_message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_errors_naming_the_target(status):
    with pytest.raises(ServerResponseError, match="not followed") as caught:
        _read(status, b"", {"location": "http://user:pw-secret@other:9000/v1/rerank"})
    assert caught.value.status_code == status
    assert "http://other:9000/v1/rerank" in str(caught.value) and "pw-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "clean", "credentials"),
    [("http://h:8000", "http://h:8000", None),
     ("http://u:p%40ss@h:8000/v1", "http://h:8000/v1", ("u", "p@ss")),
     ("https://token@h/x@y", "https://h/x@y", ("token", "")),
     ("u:p@h:8000", "h:8000", ("u", "p"))],
)
def test_credentials_are_split_from_urls(url, clean, credentials):
    assert protocol.split_credentials(url) == (clean, credentials)
    assert protocol.display_url(url) == clean


def test_non_json_success_is_invalid():
    with pytest.raises(InvalidResponseError, match="not JSON"):
        _read(200, b"<html>gateway</html>")


# ------------------------------------------------------------------------------------------------ score range
@pytest.mark.parametrize("route", ["rerank", "score"])
@pytest.mark.parametrize("value", [-0.031, 1.0000001, 7.5, -1])
def test_scores_outside_0_1_raise_and_name_embed_mode(route, value):
    """A classifier answers probabilities; an embed-mode server answers cosine similarities (seen: -0.031)."""
    key, score_key = ("results", "relevance_score") if route == "rerank" else ("data", "score")
    body = {key: [{"index": 0, score_key: 0.5}, {"index": 1, score_key: value}]}
    with pytest.raises(InvalidResponseError) as caught:
        protocol.parse_scores(body, 2, route)
    message = str(caught.value)
    assert f"{score_key}={value!r} for index 1, outside [0, 1]" in message
    assert "embed mode" in message and "--convert embed" in message and "--runner pooling" in message


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 5e-324])
def test_scores_on_the_bounds_are_accepted(value):
    body = {"results": [{"index": 0, "relevance_score": value}]}
    assert protocol.parse_scores(body, 1, "rerank") == [float(value)]
