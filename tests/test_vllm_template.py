"""Right scores by default: VLLMScorer's template="auto" finds out, once per scorer, whether the server renders the
reranker template, and an explicit template= that the server contradicts raises instead of scoring wrong. On the
loopback stand-ins (tests/vllm_standin.py); tests/test_real_vllm.py does the same against real vLLM servers."""

from __future__ import annotations

import logging

import pytest

from qwen3_rerank_integrations import RerankError, VLLMScorer
from qwen3_rerank_integrations.cli import app
from qwen3_rerank_integrations.prompt import DEFAULT_INSTRUCTION, document_side
from tests.vllm_standin import VLLMStandIn

QUERY = "What is the capital of China?"
INSTRUCTION = "Given a question, find the passage that names a capital city"
FIX_COMMAND = "from qwen3_rerank_integrations.templates import RERANKER_TEMPLATE"
SERVERS = {"client": "vllm_legacy_server", "server": "vllm_template_server"}


def scorer_for(server: VLLMStandIn, **options) -> VLLMScorer:
    return VLLMScorer(server.base_url, backoff=0.001, **options)


def rendered(server: VLLMStandIn) -> list:
    """The survey's requests: /tokenize of the canary's chat messages."""
    return [r for r in server.requests if r.path == "/tokenize" and "messages" in (r.json or {})]


@pytest.fixture
def standin(reference_model, vllm_standin_tokenizer):
    """A fresh stand-in of either mode (the test sets its behaviours), closed afterwards."""
    servers: list[VLLMStandIn] = []

    def make(mode: str, **options) -> VLLMStandIn:
        server = VLLMStandIn(mode, model=reference_model[0], tokenizer=vllm_standin_tokenizer, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


# ------------------------------------------------------------------------------------------------ the default
@pytest.mark.parametrize("mode", ["client", "server"])
async def test_the_default_gives_official_scores_on_both_server_kinds(request, mode, local_scorer, documents):
    """Before: the default was template="client", and a server with the template got the prompt twice."""
    server = request.getfixturevalue(SERVERS[mode])
    expected = local_scorer.score(QUERY, documents)
    expected_custom = local_scorer.score(QUERY, documents, instruction=INSTRUCTION)
    async with scorer_for(server) as scorer:
        assert scorer.template == "auto"
        assert scorer.score(QUERY, documents) == pytest.approx(expected, abs=1e-5)
        assert await scorer.ascore(QUERY, documents) == pytest.approx(expected, abs=1e-5)
        assert scorer.score(QUERY, documents, instruction=INSTRUCTION) == pytest.approx(expected_custom, abs=1e-5)
    sent = [r.json for r in server.scoring_requests()][-1]
    if mode == "server":  # raw text and the instruction, for the server's template to render
        assert sent["query"] == QUERY and sent["instruction"] == INSTRUCTION
    else:  # the official prompt's two sides
        assert sent["documents"][0] == document_side(documents[0]) and "instruction" not in sent
    # Found once per scorer: one rendering, whatever the number of calls.
    assert len(rendered(server)) == 1


def test_a_legacy_server_costs_one_round_and_no_scoring(vllm_legacy_server):
    with scorer_for(vllm_legacy_server, max_length=4096) as scorer:
        scorer.score(QUERY, ["Beijing.", "Gravity."])
    paths = [r.path for r in vllm_legacy_server.requests]
    assert sorted(paths[:2]) == ["/tokenize", "/v1/embeddings"] and paths[2:] == ["/v1/rerank"], paths


@pytest.mark.parametrize("template", ["auto", "client", "server"])
def test_a_server_in_embed_mode_is_refused_before_scoring(vllm_legacy_server, template):
    """Before: its cosine similarities came back as scores (~0.8 each) unless one fell outside [0, 1]."""
    vllm_legacy_server.embed_mode = True
    with scorer_for(vllm_legacy_server, template=template) as scorer, pytest.raises(RerankError) as caught:
        scorer.score(QUERY, ["Beijing.", "Gravity."])
    assert "embed mode" in str(caught.value) and "--runner pooling" in str(caught.value)
    assert vllm_legacy_server.scoring_requests() == []


def test_a_template_server_is_confirmed_by_one_scored_canary_pair(vllm_template_server):
    """auto makes sure the score path applies the template and honours `instruction`: one short pair."""
    with scorer_for(vllm_template_server, max_length=4096) as scorer:
        scorer.score(QUERY, ["Beijing.", "Gravity."])
        scorer.score(QUERY, ["Paris."])
    scored = vllm_template_server.scoring_requests()
    assert len(scored) == 3 and len(scored[0].json["documents"]) == 1  # the probe, then the two calls
    assert scored[0].json["instruction"] != DEFAULT_INSTRUCTION
    # The rendering, then the official ids (two instructions, one document side) side by side with the probe.
    assert [r.path for r in vllm_template_server.requests].count("/tokenize") == 4


def test_parallel_plans_share_rounds():
    from qwen3_rerank_integrations.vllm.protocol import Call
    from qwen3_rerank_integrations.vllm.transport import parallel

    def plan(name: str, rounds: int):
        got = []
        for r in range(rounds):
            (answer,) = yield [Call("GET", f"/{name}/{r}")]
            got.append(answer)
        return got

    def nothing():
        return "none"
        yield

    combined = parallel(plan("a", 2), nothing(), plan("b", 1))
    assert [c.path for c in next(combined)] == ["/a/0", "/b/0"]
    assert [c.path for c in combined.send(["a0", "b0"])] == ["/a/1"]
    with pytest.raises(StopIteration) as done:
        combined.send(["a1"])
    assert done.value.value == [["a0", "a1"], "none", ["b0"]]


# ------------------------------------------------------------------------------------------------ contradictions
def test_template_client_on_a_server_with_the_template_raises_naming_the_fix(vllm_template_server):
    """Before: 0.946/0.879/0.860 instead of 0.143/0.015/0.007, exit 0 (issue 17, item 3)."""
    with scorer_for(vllm_template_server, template="client") as scorer, pytest.raises(RerankError) as caught:
        scorer.score(QUERY, ["Beijing."])
    message = str(caught.value)
    assert "template='client'" in message and "wrapped twice" in message and "template='server'" in message
    assert "template='auto'" in message
    assert vllm_template_server.scoring_requests() == []  # nothing scored wrong


async def test_template_server_on_a_server_without_it_raises_naming_the_fix(vllm_legacy_server):
    async with scorer_for(vllm_legacy_server, template="server") as scorer:
        with pytest.raises(RerankError) as caught:
            await scorer.ascore(QUERY, ["Beijing."])
    message = str(caught.value)
    assert "template='server'" in message and "applies no reranker template" in message
    assert "template='client'" in message and FIX_COMMAND in message
    assert vllm_legacy_server.scoring_requests() == []


@pytest.mark.parametrize("template", ["auto", "client", "server"])
def test_a_template_that_lost_its_final_newline_raises_whatever_the_setting(vllm_template_server, template):
    vllm_template_server.drop_final_newline = True  # vLLM's published qwen3_reranker.jinja
    with scorer_for(vllm_template_server, template=template) as scorer, pytest.raises(RerankError) as caught:
        scorer.score(QUERY, ["Beijing."])
    assert "token 198" in str(caught.value) and FIX_COMMAND in str(caught.value)


def test_the_verdict_is_kept_per_scorer_and_an_explicit_match_costs_no_scoring(vllm_template_server):
    with scorer_for(vllm_template_server, template="server") as scorer:
        scorer.score(QUERY, ["Beijing."])
        scorer.score(QUERY, ["Paris."])
    assert len(rendered(vllm_template_server)) == 1 and len(vllm_template_server.scoring_requests()) == 2


# ------------------------------------------------------------------------------------------------ hard cases
def test_a_server_that_drops_instruction_scores_the_default_and_refuses_another(vllm_template_server, local_scorer):
    vllm_template_server.honour_instruction = False  # a vLLM with score templates but no `instruction` field
    with scorer_for(vllm_template_server) as scorer:
        assert scorer.score(QUERY, ["Beijing."]) == pytest.approx(local_scorer.score(QUERY, ["Beijing."]), abs=1e-5)
        with pytest.raises(RerankError, match="drops the request's `instruction`"):
            scorer.score(QUERY, ["Beijing."], instruction=INSTRUCTION)


@pytest.mark.parametrize("mode", ["legacy", "template"])
def test_without_tokenize_auto_decides_by_the_scored_canarys_token_count(standin, mode, local_scorer, caplog):
    """A proxy hiding /tokenize, or an old server: a raw canary pair is scored once; a count at most its UTF-8
    bytes means no template."""
    server = standin(mode)
    server.tokenize_route = False
    caplog.set_level(logging.WARNING)
    docs = ["Beijing is the capital.", "Gravity pulls."]
    with scorer_for(server, max_length=4096) as scorer:
        assert scorer.score(QUERY, docs) == pytest.approx(local_scorer.score(QUERY, docs), abs=1e-5)
    expected_mode = "client" if mode == "legacy" else "server"
    sent = server.scoring_requests()[-1].json
    assert ("instruction" in sent) is (expected_mode == "server")
    if mode == "template":  # the ids could not be compared: said once
        assert "has no /tokenize to compare" in caplog.text


def test_without_tokenize_an_explicit_setting_is_taken_as_it_is(standin):
    server = standin("legacy", score_override=lambda q, d: 0.5)
    server.tokenize_route = False
    with scorer_for(server, template="client", max_length=4096) as scorer:
        assert scorer.score(QUERY, ["a", "b"]) == [0.5, 0.5]
    assert len(server.scoring_requests()) == 1  # no probe


@pytest.mark.parametrize("rendering", ["chatml", "refuse"])
def test_a_legacy_servers_own_chat_template_is_not_mistaken_for_the_reranker_one(standin, rendering, local_scorer):
    """vLLM's /tokenize falls back to the tokenizer's chat template, which its score path never uses."""
    server = standin("legacy")
    server.legacy_rendering = rendering
    docs = ["Beijing is the capital.", "Gravity pulls."]
    with scorer_for(server, max_length=4096) as scorer:
        assert scorer.score(QUERY, docs) == pytest.approx(local_scorer.score(QUERY, docs), abs=1e-5)
    assert "instruction" not in server.scoring_requests()[-1].json  # client mode


def test_replicas_configured_differently_are_refused_naming_each(vllm_legacy_server, vllm_template_server):
    urls = [vllm_legacy_server.base_url, vllm_template_server.base_url]
    with VLLMScorer(urls, backoff=0.001, max_length=4096) as scorer, pytest.raises(RerankError) as caught:
        scorer.score(QUERY, ["Beijing."])
    message = str(caught.value)
    assert "not configured alike" in message
    assert f"base_url[0] {urls[0]}: template 'client'" in message and f"base_url[1] {urls[1]}: template 'server'" in message


# ------------------------------------------------------------------------------------------------ check, CLI
@pytest.mark.parametrize("mode", ["client", "server"])
def test_check_and_check_server_report_the_mode_auto_finds(request, mode):
    from typer.testing import CliRunner

    server = request.getfixturevalue(SERVERS[mode])
    with scorer_for(server) as scorer:
        result = scorer.check(min_gap=-1)
    assert result.ok and result.template == mode and result.template_setting == "auto", result.summary()
    assert result.template_evidence and f"template: {mode} (found: " in result.summary()
    cli = CliRunner().invoke(app, ["check-server", server.base_url, "--min-gap", "-1"])
    assert cli.exit_code == 0 and f"template: {mode} (found: " in cli.stdout, cli.output


def test_check_reports_a_template_neither_mode_scores_right(vllm_template_server):
    vllm_template_server.drop_final_newline = True
    with scorer_for(vllm_template_server) as scorer:
        result = scorer.check(min_gap=-1)
    assert not result.ok and result.template is None and result.error is None
    (warning,) = result.warnings
    assert "token 198" in warning


def test_the_rerank_command_defaults_to_auto(vllm_template_server, tmp_path):
    from typer.testing import CliRunner

    docs = tmp_path / "docs.txt"
    docs.write_text("Beijing is the capital of China.\nGravity pulls.\n")
    cli = CliRunner().invoke(app, ["rerank", QUERY, str(docs), "--backend", "vllm",
                                   "--base-url", vllm_template_server.base_url])
    assert cli.exit_code == 0, cli.output
    assert vllm_template_server.scoring_requests()[-1].json["query"] == QUERY  # raw text: server mode


def test_the_adapters_default_to_auto(vllm_template_server):
    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor
    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    for adapter in (Qwen3RerankCompressor, Qwen3RerankPostprocessor):
        assert adapter.from_vllm(vllm_template_server.base_url).scorer.template == "auto"
