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
    argv = ["--query", QUERY, "--model", str(tiny_model_dir), "--embed-model", str(minilm_dir),
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
    # --device auto, resolved: the header names the device the reranker runs on
    assert f"Top 20 by {common.DEFAULT_EMBED_MODEL}, reranked by {common.DEFAULT_RERANK_MODEL} (local, device cpu)" \
        in output
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
        (["--model", "/no/such/reranker"], ["--model", "/no/such/reranker", "no such folder"]),
        (["--embed-model", "./missing-embedder"], ["--embed-model", "no such folder"]),
        (["--top-n", "0"], ["--top-n must be at least 1"]),
        (["--top-k", "3", "--top-n", "4"], ["--top-n (4) cannot exceed --top-k (3)"]),
        (["--backend", "vllm"], ["--base-url"]),
    ],
    ids=["empty-query", "missing-model", "missing-embed-model", "zero-top-n", "top-n-over-top-k",
         "vllm-without-url"],
)
def test_bad_flags_fail_in_one_line(script, flags, fragments):
    assert_one_line_error(run_script(script, *flags), *fragments)


@pytest.mark.slow
def test_unreachable_base_url_fails_in_one_line(minilm_dir):
    # One script is enough: both reach the server through _pipeline_common.prepare_scorer.
    url = closed_port_url()
    result = run_script("langchain_two_stage", "--backend", "vllm", "--base-url", url, "--query", "q",
                        "--embed-model", str(minilm_dir))
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
        "--model", str(folder), "--embed-model", str(minilm_dir), "--query", "q"]
    assert_one_line_error(run_script(script, *flags, "--device", "cpu"), "has no tokenizer files", "--local-dir")


# ------------------------------------------------------------------------------------------- one vocabulary
@pytest.mark.parametrize("flag", ["--model", "--rerank-model", "-m"])
def test_the_reranker_is_model_with_rerank_model_kept_as_an_alias(examples_module, tiny_model_dir, minilm_dir, flag):
    common = examples_module("_pipeline_common")
    args = common.parse_args(common.build_parser("x"), [flag, str(tiny_model_dir), "--embed-model", str(minilm_dir)])
    assert args.model == str(tiny_model_dir)
    help_text = common.build_parser("x").format_help()
    assert "--model MODEL, --rerank-model MODEL, -m MODEL" in help_text and "--embed-model" in help_text


def test_the_header_names_the_device_used_not_auto(examples_module, local_scorer, tiny_model_dir):
    import argparse

    common = examples_module("_pipeline_common")
    args = argparse.Namespace(backend="local", model=str(tiny_model_dir), device="auto")
    assert common.describe_backend(args, local_scorer).endswith("(local, device cpu)")  # loaded: resolved
    assert common.describe_backend(args).endswith("(local, device auto)")  # nothing loaded yet: the flag


# ------------------------------------------------------------------------------------------- packages, embedder
_REFUSE = """
import importlib.abc, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Refuse())
"""


@pytest.mark.slow
@pytest.mark.parametrize(("script", "blocked", "package"),
                         [("langchain_two_stage", "langchain_huggingface", "langchain-huggingface"),
                          ("llama_index_two_stage", "llama_index", "llama-index-core"),
                          ("webui", "gradio", "gradio")])
def test_a_missing_package_is_named_with_its_extra_before_any_model_loads(tmp_path, script, blocked, package):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_REFUSE.format(blocked={blocked}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    # A reranker that does not exist: were it loaded first, the error would be about it.
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{script}.py"), "--model", "no-org/no-such-reranker"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert_one_line_error(done, f"examples/{script}.py needs {package}, which is not installed", '[examples]"')


def _empty_hub_cache(tmp_path) -> dict[str, str]:
    cache = tmp_path / "hf-home"
    cache.mkdir()
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub")}


@pytest.mark.slow
@pytest.mark.parametrize("script", PIPELINES)
def test_an_embedder_missing_offline_fails_at_once_naming_it_the_option_and_the_switch(tmp_path, tiny_model_dir,
                                                                                     script):
    env = {**os.environ, **_empty_hub_cache(tmp_path)}
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{script}.py"), "--model", str(tiny_model_dir),
                           "--device", "cpu"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert_one_line_error(done, "the embedder --embed-model 'BAAI/bge-small-en-v1.5'", "HF_HUB_OFFLINE=1",
                          "hf download BAAI/bge-small-en-v1.5", "--embed-model PATH")
    assert "internet connection" not in done.stderr
    assert "Loading weights" not in done.stderr  # no model was loaded before the check


@pytest.mark.slow
def test_a_reranker_missing_offline_is_named_before_the_embedder_loads(tmp_path, minilm_dir):
    env = {**os.environ, **_empty_hub_cache(tmp_path)}
    done = subprocess.run([sys.executable, str(EXAMPLES / "langchain_two_stage.py"), "--embed-model", str(minilm_dir)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert_one_line_error(done, "the reranker --model 'Qwen/Qwen3-Reranker-0.6B'", "hf download", "--model PATH")


def test_an_embedder_that_fails_to_load_is_named_with_option_and_switch(examples_module, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from qwen3_rerank_integrations import ModelLoadError

    common = examples_module("_pipeline_common")
    generic = OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
                      "the cached files. Check your internet connection or see how to run the library in offline mode")

    def fail():
        raise generic

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelLoadError) as online:
        common.load_embedder("BAAI/bge-small-en-v1.5", fail)
    for fragment in ("--embed-model 'BAAI/bge-small-en-v1.5'", "hf download BAAI/bge-small-en-v1.5",
                     "--embed-model PATH", "set HF_HUB_OFFLINE=1 to get this error at once"):
        assert fragment in str(online.value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as offline:
        common.load_embedder("BAAI/bge-small-en-v1.5", fail)
    assert "HF_HUB_OFFLINE=1: no download" in str(offline.value) and "internet" not in str(offline.value)
    with pytest.raises(ModelLoadError, match=r"--embed-model '.*' \(a local folder\): .*sentence-transformers"):
        common.load_embedder(str(tmp_path), fail)
