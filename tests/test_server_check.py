"""VLLMScorer.check() finds misconfigurations by signs that do not depend on the model's weights: token ids the
server's template renders, the routes it answers, exact prompt-token counts. On the stand-in (no vLLM needed);
tests/test_real_vllm.py proves the same against real vLLM servers."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qwen3_rerank_integrations import VLLMScorer
from qwen3_rerank_integrations.cli import app
from qwen3_rerank_integrations.vllm.check import CANARY_RELEVANT, CheckState

FIX_COMMAND = "from qwen3_rerank_integrations.templates import RERANKER_TEMPLATE"


def _answers_the_canary(query: str, document: str) -> float:
    """What a working Qwen3-Reranker does with the canary (the tiny random model scores at random)."""
    return 0.995 if CANARY_RELEVANT in document else 0.002


def scorer_for(server, **options) -> VLLMScorer:
    options.setdefault("template", "client" if server.mode == "legacy" else "server")
    return VLLMScorer(server.base_url, backoff=0.001, **options)


def test_a_template_that_lost_its_final_newline_is_found_by_token_ids(vllm_template_server):
    vllm_template_server.score_override = _answers_the_canary  # a perfect canary: scores cannot tell
    vllm_template_server.drop_final_newline = True
    with scorer_for(vllm_template_server) as scorer:
        result = scorer.check()
    assert not result.ok and result.prompt_ids_match is False
    assert result.prompt_tokens == result.expected_prompt_tokens  # a count-only check passes this server
    (warning,) = result.warnings
    assert "Jinja drops a template's final newline" in warning and "token 198" in warning and FIX_COMMAND in warning
    assert "template token ids: NOT the official ones" in result.summary()


async def test_the_official_rendering_passes_and_is_reported(vllm_template_server):
    vllm_template_server.score_override = _answers_the_canary
    async with scorer_for(vllm_template_server, instruction="Find passages that name a capital") as scorer:
        result = await scorer.acheck()
    assert result.ok and result.prompt_ids_match is True and result.embed_mode is False, result.summary()
    rendered = [r.json for r in vllm_template_server.requests if r.path == "/tokenize" and "messages" in r.json]
    assert len(rendered) == 2 and all(r["chat_template_kwargs"] == {"instruction": "Find passages that name a "
                                                                    "capital"} for r in rendered)
    assert "template token ids: official" in result.summary()


def test_a_server_that_cannot_render_messages_leaves_a_doubt(vllm_template_server, vllm_standin_tokenizer):
    vllm_template_server.score_override = _answers_the_canary
    vllm_template_server.inject("status", route="/tokenize", status=400, times=2, message="messages unsupported")
    # A local tokenizer counts the official prompts, so only the messages hit the server's /tokenize.
    with scorer_for(vllm_template_server, tokenizer=vllm_standin_tokenizer) as scorer:
        result = scorer.check()
    assert result.ok and result.prompt_ids_match is None
    (warning,) = result.warnings
    assert "messages unsupported" in warning and "only prompt-token counts were compared" in warning


def test_other_template_differences_name_the_first_differing_token(vllm_template_server):
    state = CheckState(VLLMScorer(vllm_template_server.base_url, template="server"))
    assert state.judge_rendered_ids([[1, 2, 3]], [[1, 2, 3]]) and state.warnings == []
    assert not state.judge_rendered_ids([[1, 2, 3], [1, 9, 3, 4]], [[1, 2, 3], [1, 2, 3, 4]])
    (warning,) = state.warnings
    assert "at token 1 (server [9, 3, 4], official [2, 3, 4]" in warning and FIX_COMMAND in warning
    assert state.problems == 1


def test_embed_mode_is_found_by_its_route_whatever_the_scores(vllm_legacy_server):
    vllm_legacy_server.embed_mode = True
    vllm_legacy_server.score_override = _answers_the_canary  # even a perfect canary cannot hide it
    with scorer_for(vllm_legacy_server) as scorer:
        result = scorer.check(min_gap=-1)
    assert not result.ok and result.embed_mode is True
    (warning,) = result.warnings
    assert "embed mode" in warning and "/v1/embeddings" in warning and "--runner pooling" in warning


@pytest.mark.parametrize("scores", [(0.8, 0.81), (0.3, 0.4), (0.1, 0.9)])
def test_without_the_canary_a_working_server_checks_ok_whatever_its_weights(vllm_legacy_server, scores):
    """min_gap=-1 (random weights): no score-based verdict, no embed-mode guess from scores alike."""
    vllm_legacy_server.score_override = lambda query, doc: scores[0] if CANARY_RELEVANT in doc else scores[1]
    with scorer_for(vllm_legacy_server) as scorer:
        result = scorer.check(min_gap=-1)
    assert result.ok and result.warnings == [] and result.embed_mode is False, result.summary()
    runner = CliRunner()
    cli = runner.invoke(app, ["check-server", vllm_legacy_server.base_url, "--min-gap", "-1"])
    assert cli.exit_code == 0 and ": OK" in cli.stdout, cli.output
    assert runner.invoke(app, ["check-server", vllm_legacy_server.base_url]).exit_code == 1  # default gap 0.5


def test_a_missing_template_names_the_packages_template(vllm_legacy_server):
    vllm_legacy_server.score_override = _answers_the_canary
    with scorer_for(vllm_legacy_server, template="server") as scorer:
        result = scorer.check()
    (warning,) = result.warnings
    assert "renders no reranker template" in warning and FIX_COMMAND in warning


# ------------------------------------------------------------------------------------------------ precision
def test_the_serving_dtype_is_unknown_unless_the_server_tells(vllm_legacy_server):
    vllm_legacy_server.score_override = _answers_the_canary
    with scorer_for(vllm_legacy_server) as scorer:
        result = scorer.check()
    assert result.ok and result.dtype is None
    assert "dtype: unknown (vLLM shows it only at /server_info, in its development mode)" in result.summary()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
async def test_a_development_mode_server_tells_its_dtype(vllm_legacy_server, dtype):
    vllm_legacy_server.score_override = _answers_the_canary
    vllm_legacy_server.dev_mode_dtype = dtype
    async with scorer_for(vllm_legacy_server) as scorer:
        result = await scorer.acheck()
    assert result.dtype == dtype and f"dtype: {dtype}" in result.summary()
    assert any(r.path == "/server_info" for r in vllm_legacy_server.requests)


def test_replicas_serving_different_dtypes_disagree(vllm_legacy_server, vllm_standin_tokenizer):
    from tests.vllm_standin import VLLMStandIn

    other = VLLMStandIn("legacy", tokenizer=vllm_standin_tokenizer, score_override=_answers_the_canary)
    try:
        vllm_legacy_server.score_override = _answers_the_canary
        vllm_legacy_server.dev_mode_dtype, other.dev_mode_dtype = "float32", "float16"
        with VLLMScorer([vllm_legacy_server.base_url, other.base_url], backoff=0.001) as scorer:
            result = scorer.check()
        assert not result.ok and any("disagree on the serving dtype" in w for w in result.warnings), result.warnings
    finally:
        other.close()


@pytest.mark.parametrize(
    ("body", "dtype"),
    [
        ({"vllm_config": {"model_config": {"dtype": "torch.float16"}}}, "float16"),
        ({"vllm_config": "model='m', speculative_config=None, dtype=torch.bfloat16, max_seq_len=2048"}, "bfloat16"),
        ({"vllm_config": {"model_config": {"dtype": "<script>alert(1)</script>"}}}, None),
        ({"detail": "Not Found"}, None),
        (None, None),
    ],
)
def test_serving_dtype_reads_both_forms_and_nothing_else(body, dtype):
    from qwen3_rerank_integrations.vllm.check import serving_dtype

    assert serving_dtype(body) == dtype
