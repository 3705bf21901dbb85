"""The example scripts run end to end offline: MiniLM stands in for bge, the tiny Qwen3 for the reranker.

Each pipeline's table is checked against an independent computation: the top-k by cosine similarity straight
from sentence-transformers, scored by the official reference method, best first, cut to top-n.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PIPELINES = ("langchain_two_stage", "llama_index_two_stage")
QUERY = "How do attackers steal data from a server?"
SECURITY_INSTRUCTION = "Given a question about computer security, retrieve passages that answer it"
TABLE_ROW = re.compile(r"^\s*(\d+)\s+(-?\d+\.\d{4})\s+(\d\.\d{4})\s+(.+)$")


@pytest.fixture(scope="module")
def examples_module():
    """Import an example by name the way `python examples/NAME.py` would (examples/ first on sys.path)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(EXAMPLES))


@functools.cache
def corpus_texts() -> list[str]:
    """The bundled corpus's texts, read here without the examples' code."""
    return [json.loads(line)["text"] for line in (EXAMPLES / "corpus.jsonl").read_text("utf-8").splitlines()]


@functools.cache
def embedded_corpus(minilm_dir: Path):
    """The sentence-transformers model and the corpus's unit-length embeddings, computed once."""
    from sentence_transformers import SentenceTransformer

    minilm = SentenceTransformer(str(minilm_dir), device="cpu")
    return minilm, minilm.encode(corpus_texts(), normalize_embeddings=True, convert_to_tensor=True)


def expected_rows(minilm_dir, reference_scorer, query, *, top_k, top_n, instruction=None):
    """(text, retrieval score, rerank score) best first, computed without the package or the frameworks."""
    from sentence_transformers import util

    minilm, corpus = embedded_corpus(minilm_dir)
    question = minilm.encode([query], normalize_embeddings=True, convert_to_tensor=True)
    hits = util.semantic_search(question, corpus, top_k=top_k)[0]
    texts = [corpus_texts()[hit["corpus_id"]] for hit in hits]
    rerank = reference_scorer.score(query, texts, instruction=instruction)
    rows = [(text, hit["score"], score) for text, hit, score in zip(texts, hits, rerank)]
    return sorted(rows, key=lambda row: -row[2])[:top_n]


def parse_table(output: str) -> list[tuple[int, float, float, str]]:
    return [
        (int(m[1]), float(m[2]), float(m[3]), m[4])
        for m in (TABLE_ROW.match(line) for line in output.splitlines())
        if m
    ]


def assert_matches(rows, printed, expected, top_n):
    """The returned rows equal the independent computation, and the printed table shows them in order."""
    assert len(rows) == len(printed) == top_n
    assert [r.text for r in rows] == [e[0] for e in expected]
    for row, (_, retrieval, rerank) in zip(rows, expected):
        assert row.rerank_score == pytest.approx(rerank, abs=1e-5)
        assert row.retrieval_score == pytest.approx(retrieval, abs=1e-5)
    assert [p[0] for p in printed] == list(range(1, top_n + 1))
    shown = [p[2] for p in printed]
    assert shown == sorted(shown, reverse=True)
    for row, (_, retrieval, rerank, text) in zip(rows, printed):
        assert rerank == pytest.approx(row.rerank_score, abs=5.1e-5)  # printed with 4 decimals
        assert retrieval == pytest.approx(row.retrieval_score, abs=5.1e-5)
        assert " ".join(row.text.split()).startswith(text.rstrip("…"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pipeline", "top_k", "top_n", "instruction"),
    [("langchain_two_stage", 8, 3, None), ("llama_index_two_stage", 10, 4, SECURITY_INSTRUCTION)],
)
def test_pipeline_local_backend(examples_module, capsys, tiny_model_dir, minilm_dir, reference_scorer,
                                pipeline, top_k, top_n, instruction):
    argv = ["--query", QUERY, "--rerank-model", str(tiny_model_dir), "--embed-model", str(minilm_dir),
            "--device", "cpu", "--top-k", str(top_k), "--top-n", str(top_n)]
    if instruction:
        argv += ["--instruction", instruction]
    rows = examples_module(pipeline).run(argv)
    output = capsys.readouterr().out
    assert output.startswith(f"Query: {QUERY}\n")
    expected = expected_rows(minilm_dir, reference_scorer, QUERY, top_k=top_k, top_n=top_n, instruction=instruction)
    assert_matches(rows, parse_table(output), expected, top_n)


@pytest.mark.slow
def test_readme_command_works_with_defaults(examples_module, capsys, monkeypatch, tmp_path, tiny_model_dir,
                                           minilm_dir, reference_scorer):
    """`python examples/langchain_two_stage.py` with no flags: the default hub ids resolve through the hub
    cache, here one that holds the tiny Qwen3 and MiniLM under those names (no download)."""
    import huggingface_hub.constants

    common = examples_module("_pipeline_common")
    for hub_id, folder in ((common.DEFAULT_RERANK_MODEL, tiny_model_dir), (common.DEFAULT_EMBED_MODEL, minilm_dir)):
        repo = tmp_path / f"models--{hub_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        (repo / "snapshots").mkdir()
        (repo / "snapshots" / ("0" * 40)).symlink_to(folder, target_is_directory=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    rows = examples_module("langchain_two_stage").run([])
    output = capsys.readouterr().out
    assert f"Top 20 by {common.DEFAULT_EMBED_MODEL}, reranked by {common.DEFAULT_RERANK_MODEL} (local" in output
    expected = expected_rows(minilm_dir, reference_scorer, common.DEFAULT_QUERY, top_k=20, top_n=5)
    assert_matches(rows, parse_table(output), expected, 5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pipeline", "server", "template", "instruction"),
    [
        ("langchain_two_stage", "vllm_template_server", "server", SECURITY_INSTRUCTION),
        ("llama_index_two_stage", "vllm_legacy_server", "client", None),
    ],
)
def test_pipeline_vllm_backend(request, examples_module, capsys, minilm_dir, reference_scorer,
                               pipeline, server, template, instruction):
    base_url = request.getfixturevalue(server).base_url
    argv = ["--query", QUERY, "--backend", "vllm", "--base-url", base_url, "--template", template,
            "--embed-model", str(minilm_dir), "--device", "cpu", "--top-k", "6", "--top-n", "2"]
    if instruction:
        argv += ["--instruction", instruction]
    rows = examples_module(pipeline).run(argv)
    output = capsys.readouterr().out
    assert f"vLLM at {base_url}, {template} template" in output
    expected = expected_rows(minilm_dir, reference_scorer, QUERY, top_k=6, top_n=2, instruction=instruction)
    assert_matches(rows, parse_table(output), expected, 2)


@pytest.mark.slow
def test_quickstart_ranks_its_documents(examples_module, capsys, tiny_model_dir, reference_scorer):
    quickstart = examples_module("quickstart")
    assert quickstart.main(["--model", str(tiny_model_dir), "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"^\s*\d+\. ", line)]
    expected = sorted(zip(reference_scorer.score(quickstart.QUERY, quickstart.DOCUMENTS), quickstart.DOCUMENTS),
                      reverse=True)
    assert len(lines) == len(quickstart.DOCUMENTS)
    for line, (score, document) in zip(lines, expected):
        _, shown_score, shown_document = line.split(maxsplit=2)
        assert float(shown_score) == pytest.approx(score, abs=5.1e-5)
        assert shown_document == document


def test_table_cuts_wide_characters_by_terminal_columns(examples_module):
    common = examples_module("_pipeline_common")
    assert common.fit_to_width("北京是中华人民共和国的首都。", 11) == "北京是中华…"  # 5 CJK = 10 columns + "…"
    assert common.fit_to_width("short  text\n", 40) == "short text"


# ------------------------------------------------------------------------------------------- bad input
def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an example the way a user does; bad flags must fail fast, so a short timeout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(EXAMPLES / f"{script}.py"), *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env, cwd=EXAMPLES.parent)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once the socket closes


@pytest.mark.slow
@pytest.mark.parametrize("script", PIPELINES)
@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--query", "  "], ["--query must not be empty"]),
        (["--rerank-model", "/no/such/reranker"], ["--rerank-model", "/no/such/reranker", "no such folder"]),
        (["--embed-model", "./missing-embedder"], ["--embed-model", "no such folder"]),
        (["--top-n", "0"], ["--top-n must be at least 1"]),
        (["--top-k", "3", "--top-n", "4"], ["--top-n (4) cannot exceed --top-k (3)"]),
        (["--backend", "vllm"], ["--base-url"]),
    ],
    ids=["empty-query", "missing-rerank-model", "missing-embed-model", "zero-top-n", "top-n-over-top-k",
         "vllm-without-url"],
)
def test_bad_flags_fail_in_one_line(script, flags, fragments):
    assert_one_line_error(run_script(script, *flags), *fragments)


@pytest.mark.slow
def test_unreachable_base_url_fails_in_one_line():
    # One script is enough: both reach the server through _pipeline_common.prepare_scorer.
    url = closed_port_url()
    result = run_script("langchain_two_stage", "--backend", "vllm", "--base-url", url, "--query", "q")
    assert_one_line_error(result, "vLLM server cannot be used", "could not reach")


@pytest.mark.slow
def test_quickstart_missing_model_folder_fails_in_one_line(tmp_path):
    missing = str(tmp_path / "no-model-here")
    assert_one_line_error(run_script("quickstart", "--model", missing, "--device", "cpu"), missing)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["quickstart", "langchain_two_stage"])
def test_a_model_folder_without_tokenizer_files_fails_in_one_line(tmp_path, tiny_model_dir, minilm_dir, script):
    # Once a ZeroDivisionError traceback from deep in the scoring loop.
    import shutil

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("tokenizer*", "vocab.json", "merges.txt"))
    flags = ["--model", str(folder)] if script == "quickstart" else [
        "--rerank-model", str(folder), "--embed-model", str(minilm_dir), "--query", "q"]
    assert_one_line_error(run_script(script, *flags, "--device", "cpu"), "has no tokenizer files", "--local-dir")
