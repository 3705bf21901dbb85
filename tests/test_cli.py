"""The qwen3-rerank command line: scores equal the official method, input formats, exit codes, one-line errors,
the precision check (end to end and its pure comparison), and one run of the installed console script."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from qwen3_rerank_integrations.cli import app, read_documents
from qwen3_rerank_integrations.precision import (
    PRECISION_SET,
    check_device,
    compare_scores,
    default_max_abs_diff,
    rank_agreement,
)
from tests.test_engine import fake_vllm  # noqa: F401  (the stand-in vllm module, a fixture)

QUERY = "What is the capital of China?"
TOLERANCE = 1e-5

runner = CliRunner()


def invoke(*args: object, stdin: str | None = None, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(arg) for arg in args], input=stdin, env=env)


def local_args(model_dir) -> list[str]:
    return ["--model", str(model_dir), "--device", "cpu", "--dtype", "float32"]


def assert_one_line_error(result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_matches_reference(ranking: list[dict], documents: list[str], expected: list[float]) -> None:
    for row in ranking:
        assert row["text"] == documents[row["index"]]
        assert abs(row["score"] - expected[row["index"]]) <= TOLERANCE
    scores = [row["score"] for row in ranking]
    assert scores == sorted(scores, reverse=True)


# ------------------------------------------------------------------------------------------------ rerank
def test_rerank_jsonl_top_n_equals_official_method(tmp_path, tiny_model_dir, reference_scorer, documents):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": doc}) for i, doc in enumerate(documents)), "utf-8")
    result = invoke("rerank", QUERY, path, "--top-n", 5, *local_args(tiny_model_dir))
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.stdout)
    expected = reference_scorer.score(QUERY, documents)  # JSONL keeps the empty and whitespace documents
    assert [row["score"] for row in ranking] == pytest.approx(sorted(expected, reverse=True)[:5], abs=TOLERANCE)
    assert_matches_reference(ranking, documents, expected)


def test_rerank_lines_table_instruction_progress(tmp_path, tiny_model_dir, reference_scorer):
    documents = ["Beijing is the capital of China.", "[bold]Gravity[/bold] pulls.", "北京是首都。", "Paris is in France."]
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(documents) + "\n", "utf-8")  # blank lines between documents
    instruction = "Find the city that answers the question"
    result = invoke("rerank", QUERY, path, "--instruction", instruction, "--format", "table", "--progress",
                    *local_args(tiny_model_dir))
    assert result.exit_code == 0, result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.stdout.splitlines() if "│" in line]
    ranking = [{"index": int(index), "score": float(score), "text": text} for _, index, score, text in rows]
    assert sorted(row["index"] for row in ranking) == [0, 1, 2, 3]
    # indexes count documents, not file lines; "[bold]" is printed as written; scores shown to 6 decimals.
    assert_matches_reference(ranking, documents, reference_scorer.score(QUERY, documents, instruction=instruction))
    assert "reranking" in result.stderr  # LocalScorer's tqdm bar, on stderr so stdout stays parseable


def test_rerank_table_fits_a_narrow_terminal(tmp_path, tiny_model_dir, reference_scorer):
    # A document wider than the terminal once squeezed the rank, index and score columns out of the table.
    documents = ["Beijing is the capital of the People's Republic of China. " * 8, "Gravity\npulls.", "北京是首都。" * 20]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": doc}) for doc in documents), "utf-8")
    result = invoke("rerank", QUERY, path, "--format", "table", *local_args(tiny_model_dir), env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines)
    assert [cell.strip() for cell in lines[1].split("┃")[1:-1]] == ["rank", "index", "score", "text"]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "│" in line]
    assert len(rows) == 3  # one line per document, its newline included
    expected = reference_scorer.score(QUERY, documents)
    for position, (rank, index, score, text) in enumerate(rows, 1):
        assert int(rank) == position and abs(float(score) - expected[int(index)]) <= TOLERANCE
        original = " ".join(documents[int(index)].split())
        assert text == original or (text.endswith("…") and original.startswith(text[:-1].rstrip()))


def test_rerank_with_a_model_folder_without_tokenizer_files_fails_in_one_line(tmp_path, tiny_model_dir):
    # Once a ZeroDivisionError traceback from the scoring loop (transformers builds an empty tokenizer).
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("tokenizer*", "vocab.json", "merges.txt"))
    path = tmp_path / "docs.txt"
    path.write_text("Beijing\n", "utf-8")
    result = invoke("rerank", QUERY, path, *local_args(folder))
    assert_one_line_error(result, 3, "has no tokenizer files", "hf download")


def vllm_args(server, *extra: str) -> list[str]:
    return ["--backend", "vllm", "--base-url", server.base_url, "--max-retries", "0", *extra]


def test_rerank_vllm_legacy_server_equals_official_method(vllm_legacy_server, reference_scorer, documents):
    # JSONL on stdin keeps the empty and whitespace documents; the client formats the prompts itself.
    lines = "\n".join(json.dumps({"text": doc}) for doc in documents)
    result = invoke("rerank", QUERY, *vllm_args(vllm_legacy_server), stdin=lines)
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.stdout)
    assert len(ranking) == len(documents)
    assert_matches_reference(ranking, documents, reference_scorer.score(QUERY, documents))


def test_rerank_vllm_template_server_with_instruction_and_threshold(vllm_template_server, reference_scorer):
    documents = ["Beijing is the capital of China.", "Gravity pulls.", "北京是首都。"]
    instruction = "Find the city that answers the question"
    expected = reference_scorer.score(QUERY, documents, instruction=instruction)
    low, middle, _ = sorted(expected)
    assert middle - low > 10 * TOLERANCE
    threshold = (low + middle) / 2  # keeps the best two; not a score itself, which the server may miss by 1e-7
    result = invoke("rerank", QUERY, "--instruction", instruction, "--threshold", threshold,
                    *vllm_args(vllm_template_server, "--template", "server"), stdin="\n".join(documents))
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.stdout)
    assert len(ranking) == 2
    assert_matches_reference(ranking, documents, expected)


def test_read_documents_formats(tmp_path):
    jsonl = tmp_path / "docs.txt"
    jsonl.write_text('{"text": "a"}\n\n{"text": "", "id": 2}\n', "utf-8")
    assert read_documents(str(jsonl)) == ["a", ""]  # auto: the first line is a JSON object with "text"
    assert read_documents(str(jsonl), "lines") == ['{"text": "a"}', '{"text": "", "id": 2}']
    plain = tmp_path / "plain.txt"
    plain.write_text("\ufeff{not json}\r\nsecond\n", "utf-8")
    assert read_documents(str(plain)) == ["{not json}", "second"]  # BOM and CRLF handled


def test_a_documents_file_that_is_not_utf8_is_named_by_line(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("first\nsecond\nCaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt' line 3 is not UTF-8 text \(byte 0xe9"):
        read_documents(str(latin))


@pytest.mark.parametrize(
    ("args", "stdin", "exit_code", "fragment"),
    [
        (["rerank", QUERY, "{tmp}/missing.txt"], None, 2, "cannot read documents file"),
        (["rerank", "   ", "-"], "doc\n", 2, "query must not be empty"),
        (["rerank", QUERY, "-"], "\n  \n", 2, "no documents in stdin"),
        (["rerank", QUERY, "-", "--input-format", "jsonl"], '{"text": "a"}\n{"title": "b"}\n', 2, "line 2"),
        (["rerank", QUERY, "-", "--input-format", "jsonl"], '{"text": "a"}\n{oops\n', 2, "line 2 is not valid JSON"),
        (["rerank", QUERY, "-", "--input-format", "jsonl"], '{"text": "a"}\n{"text": "b \\ud800"}\n', 2,
         "documents[1] is not valid Unicode text: a lone surrogate U+D800"),
        (["rerank", QUERY, "-", "--model", "{tmp}/no-such-model"], "doc\n", 3, "no such folder"),
        (["rerank", QUERY, "-", "--base-url", "http://localhost:9"], "doc\n", 2,
         "--base-url only applies to --backend vllm"),
        (["rerank", QUERY, "-", "--backend", "vllm"], "doc\n", 2, "needs --base-url"),
        (["rerank", QUERY, "-", "--backend", "vllm", "--base-url", "http://localhost:9", "--device", "cpu"], "doc\n",
         2, "--device only applies to --backend local"),
        (["check-device", "--model", "{tmp}/no-such-model", "--device", "npu:7"], None, 3, "npu"),
    ],
)
def test_bad_input_exits_with_one_line(tmp_path, args, stdin, exit_code, fragment):
    result = invoke(*(arg.replace("{tmp}", str(tmp_path)) for arg in args), stdin=stdin)
    assert_one_line_error(result, exit_code, fragment)


def test_usage_errors_and_version():
    assert invoke("rerank", QUERY, "--format", "xml").exit_code == 2  # typer's own usage error
    assert invoke("rerank", QUERY, "--top-n", 0).exit_code == 2
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("qwen3-rerank ")
    help_text = " ".join(invoke("check-device", "--help").stdout.split())
    assert all(text in help_text for text in ("(default: 0.0001 for", "0.02 for", "[default: 0.9]"))  # thresholds


# ------------------------------------------------------------------------------------------------ engine backend
# vLLM's engine in this process, run by the stand-in vllm module (tests/test_engine.py): it answers
# (prompt length % 97) / 97, so each score shows which prompt it came from.
def test_rerank_engine_backend_scores_with_the_engine_and_stops_it(tmp_path, tiny_model_dir, fake_vllm):
    from qwen3_rerank_integrations.engine import VLLMEngineScorer
    from tests.test_engine import FakeLLM

    documents = ["Beijing is the capital of China.", "Gravity pulls.", "北京是中国的首都。"]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(documents), "utf-8")
    result = invoke("rerank", QUERY, path, "--backend", "engine", "--model", tiny_model_dir, "--dtype", "float32",
                    "--max-length", 2048, "--instruction", "Find the capital", "--top-n", 2)
    assert result.exit_code == 0, result.output
    expected = VLLMEngineScorer(str(tiny_model_dir), dtype="float32", max_length=2048).score(
        QUERY, documents, instruction="Find the capital"
    )
    (llm, _) = FakeLLM.created  # the CLI's engine, then the one above
    assert llm.kwargs["dtype"] == "float32" and llm.kwargs["max_model_len"] == 2048
    ranking = json.loads(result.stdout)
    assert [row["score"] for row in ranking] == sorted(expected, reverse=True)[:2]
    assert all(row["score"] == expected[row["index"]] and row["text"] == documents[row["index"]] for row in ranking)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--device", "cpu"], "--device only applies to --backend local"),
        (["--progress"], "--progress only applies to --backend local"),
        (["--base-url", "http://localhost:9"], "--base-url only applies to --backend vllm"),
        (["--device", "cpu", "--template", "server"], "--device, --template do not apply to --backend engine"),
    ],
)
def test_rerank_engine_backend_refuses_other_backends_options(tiny_model_dir, fake_vllm, options, fragment):
    from tests.test_engine import FakeLLM

    result = invoke("rerank", QUERY, "-", "--backend", "engine", "--model", tiny_model_dir, *options, stdin="doc\n")
    assert_one_line_error(result, 2, fragment)
    assert FakeLLM.created == []  # refused before any engine started


def test_engine_only_options_are_refused_on_the_vllm_backend():
    result = invoke("rerank", QUERY, "-", "--backend", "vllm", "--base-url", "http://localhost:9", "--dtype",
                    "float32", stdin="doc\n")
    assert_one_line_error(result, 2, "--dtype only applies to --backend local or engine")


@pytest.mark.slow  # fast: test_eval.py::test_engine_backend_through_the_python_api, rerank's engine backend here
def test_eval_engine_backend(tmp_path, tiny_model_dir, fake_vllm):
    from tests.test_engine import FakeLLM
    from tests.test_eval import BEIR_MINI, by_query, hashed_first_stage, trec_lines

    first = hashed_first_stage(tmp_path / "first.trec")
    args = ["eval", BEIR_MINI, "-o", tmp_path / "out", "--run", first, "--top-k", 3, "--backend", "engine",
            "--rerank-model", tiny_model_dir, "--dtype", "float32", "--max-length", 2048]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "scored 60 of 60 pairs" in result.stderr
    assert sum(len(llm.prompts) for llm in FakeLLM.created) == 60
    for documents in by_query(trec_lines(tmp_path / "out" / "runs" / "rerank.trec")).values():
        assert all(round(score * 97) == pytest.approx(score * 97) for _, score in documents)  # the engine's
    refused = invoke(*args, "--template", "server")
    assert refused.exit_code == 2 and "--template only applies to --backend vllm" in refused.stderr


# ------------------------------------------------------------------------------------------------ check-server
def test_check_server_passes_on_a_working_server(vllm_legacy_server):
    # The tiny random model cannot tell Beijing from gravity; a real reranker scores the canary like this.
    vllm_legacy_server.score_override = lambda query, doc: 0.99 if "Beijing" in doc else 0.01
    result = invoke("check-server", vllm_legacy_server.base_url)
    assert result.exit_code == 0, result.output
    assert ": OK" in result.stdout and "context 4096 tokens" in result.stdout and "gap 0.9800" in result.stdout


def test_check_server_fails_on_embed_mode(vllm_legacy_server):
    vllm_legacy_server.embed_mode = True  # served with --convert embed: every document ~0.8
    result = invoke("check-server", vllm_legacy_server.base_url, "--format", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False and any("embed mode" in warning for warning in report["warnings"])


def test_api_key_comes_from_the_environment_and_is_never_printed(vllm_legacy_server):
    vllm_legacy_server.api_key = "server-key-1234"
    vllm_legacy_server.score_override = lambda query, doc: 0.99 if "Beijing" in doc else 0.01
    assert invoke("check-server", vllm_legacy_server.base_url, env={"VLLM_API_KEY": "server-key-1234"}).exit_code == 0
    wrong_key = {"VLLM_API_KEY": "client-key-5678"}
    result = invoke("check-server", vllm_legacy_server.base_url, env=wrong_key)
    assert result.exit_code == 1, result.output
    assert "401" in result.stdout
    assert "client-key-5678" not in result.output and "server-key-1234" not in result.output
    rerank_result = invoke("rerank", QUERY, *vllm_args(vllm_legacy_server), stdin="doc\n", env=wrong_key)
    assert_one_line_error(rerank_result, 3, "401")
    assert "client-key-5678" not in rerank_result.output
    assert invoke("check-server", vllm_legacy_server.base_url, "--api-key", "x").exit_code == 2  # no such flag


@pytest.fixture
def second_legacy_server(reference_model, vllm_standin_tokenizer):
    """Another stand-in of the legacy server's configuration (a replica)."""
    from tests.vllm_standin import VLLMStandIn

    server = VLLMStandIn("legacy", model=reference_model[0], tokenizer=vllm_standin_tokenizer)
    yield server
    server.close()


@pytest.mark.slow  # ~10 s CPU; fast: test_replicas.py, test_rerank_vllm_template_server_with_instruction_and_threshold
def test_replicas_rerank_and_check_server(vllm_legacy_server, second_legacy_server, reference_scorer, documents):
    docs = [doc for doc in documents if doc.strip()] * 12  # more than one batch (64), so two requests
    args = ["--backend", "vllm", "--base-url", vllm_legacy_server.base_url, "--base-url",
            second_legacy_server.base_url, "--max-retries", "0", "--format", "json", "--top-n", str(len(docs))]
    result = invoke("rerank", QUERY, *args, stdin="\n".join(docs))
    assert result.exit_code == 0, result.output
    expected = reference_scorer.score(QUERY, docs)
    assert {row["index"]: row["score"] for row in json.loads(result.stdout)} == pytest.approx(
        dict(enumerate(expected)), abs=1e-5)
    assert vllm_legacy_server.scoring_requests() and second_legacy_server.scoring_requests()  # both served
    urls = [vllm_legacy_server.base_url, second_legacy_server.base_url]
    agreeing = invoke("check-server", *urls, "--min-gap", "-1")
    assert agreeing.exit_code == 0, agreeing.output
    assert all(url in agreeing.stdout for url in urls)
    second_legacy_server.max_model_len = 2048  # a replica started with another context: incomparable cuts
    disagreeing = invoke("check-server", *urls, "--min-gap", "-1")
    assert disagreeing.exit_code == 1, disagreeing.output
    assert "disagree" in disagreeing.stdout.lower()


def test_unreachable_server_exits_3_with_one_line(unused_port_url):
    assert_one_line_error(invoke("check-server", unused_port_url, "--max-retries", "0"), 3, "127.0.0.1")
    result = invoke("rerank", QUERY, "--backend", "vllm", "--base-url", unused_port_url, "--max-retries", "0",
                    stdin="doc\n")
    assert_one_line_error(result, 3, "127.0.0.1")


@pytest.fixture
def unused_port_url() -> str:
    with socket.socket() as probe:  # bind, learn the port, close: nothing listens there afterwards
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------------ check-device
def test_check_device_cpu_float32_passes(tiny_model_dir):
    result = invoke("check-device", *local_args(tiny_model_dir))
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "compares CPU float32 with itself" in result.stdout
    assert all(item.query in result.stdout for item in PRECISION_SET if len(item.query) < 30)  # long ones wrap


@pytest.mark.slow  # end to end; fast: test_check_device_cpu_float32_passes, test_compare_scores_fails_*
def test_check_device_fails_on_bfloat16_held_to_a_tight_threshold(tiny_model_dir):
    result = invoke("check-device", "--model", tiny_model_dir, "--device", "cpu", "--dtype", "bfloat16",
                    "--max-abs-diff", "1e-9", "--format", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is False and report["dtype"] == "bfloat16" and report["device"] == "cpu"
    assert report["max_abs_diff"] > 1e-9 and report["failures"][0].startswith("max abs diff")
    # bf16 on this model stays inside the documented bf16 default: the same run passes without the override.
    assert report["max_abs_diff"] <= default_max_abs_diff("bfloat16")


def test_check_device_rejects_bad_thresholds_before_loading():
    with pytest.raises(ValueError, match="min_rank_agreement"):
        check_device("/nonexistent/model", max_abs_diff=0.01, min_rank_agreement=2.0)


# ------------------------------------------------------------------------------------------------ precision math
REFERENCE = [[0.9, 0.5, 0.1, 0.001], [0.2, 0.8, 0.4, 0.0005]]


def test_compare_scores_passes_within_tolerance():
    candidate = [[s + 0.01 for s in row] for row in REFERENCE]
    report = compare_scores(REFERENCE, candidate, max_abs_diff=0.02, device="npu:0", dtype="bfloat16")
    assert report.passed and report.failures == []
    assert report.max_abs_diff == pytest.approx(0.01) and report.mean_abs_diff == pytest.approx(0.01)
    assert report.rank_agreement == 1.0 and report.top1_agreement == 1.0


def test_compare_scores_fails_on_a_large_difference():
    candidate = [list(REFERENCE[0]), [0.2, 0.8, 0.45, 0.0005]]
    report = compare_scores(REFERENCE, candidate, max_abs_diff=0.02)
    assert not report.passed
    assert report.failures == ["max abs diff 0.05 > 0.02"]
    assert report.mean_abs_diff == pytest.approx(0.05 / 8)


def test_compare_scores_fails_on_swapped_order_and_top1():
    # Query 1's best two documents swap (each moved by 0.25, held to a loose 0.3 tolerance).
    candidate = [[0.65, 0.75, 0.1, 0.001], list(REFERENCE[1])]
    report = compare_scores(REFERENCE, candidate, max_abs_diff=0.3, min_rank_agreement=0.95)
    # 0.1 vs 0.001 is within the tolerance (a tie); of the other 5 pairs 1 is swapped: (4 - 1) / 5.
    assert report.queries[0].rank_agreement == pytest.approx(0.6)
    assert report.queries[0].top1_match is False and report.queries[1].top1_match is True
    assert report.rank_agreement == pytest.approx(0.8)
    assert report.failures == ["rank agreement 0.800 < 0.95", "top-1 agreement 0.500 < 1"]


def test_near_ties_within_tolerance_do_not_count_as_disagreement():
    # The two unrelated documents (0.001 vs 0.0012) swap: noise a bf16 device may show; not a failure.
    reference, candidate = [[0.9, 0.1, 0.0012, 0.001]], [[0.9, 0.1, 0.001, 0.0012]]
    assert compare_scores(reference, candidate, max_abs_diff=0.02).passed
    assert rank_agreement(reference[0], candidate[0]) < 1.0  # counted when no tolerance is given


def test_rank_agreement_extremes():
    assert rank_agreement([3, 2, 1], [30, 20, 10]) == 1.0
    assert rank_agreement([3, 2, 1], [1, 2, 3]) == -1.0
    assert rank_agreement([1, 1], [0, 1]) == 1.0  # nothing to order


@pytest.mark.parametrize(
    ("reference", "candidate", "kwargs", "message"),
    [
        ([[0.1, 0.2]], [[0.1]], {}, "same documents"),
        ([[0.1]], [[0.1], [0.2]], {}, "same number"),
        ([[0.1]], [[float("nan")]], {}, "finite"),
        ([[0.1]], [[0.1]], {"max_abs_diff": -1.0}, "max_abs_diff"),
        ([[0.1]], [[0.1]], {"queries": ["a", "b"]}, "queries"),
    ],
)
def test_compare_scores_rejects_bad_input(reference, candidate, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare_scores(reference, candidate, **kwargs)


def test_precision_set_is_english_and_chinese_relevant_and_not():
    assert sum(len(item.documents) for item in PRECISION_SET) == 16
    assert any(item.query.isascii() for item in PRECISION_SET)
    assert any(not item.query.isascii() for item in PRECISION_SET)
    with pytest.raises(ValueError, match="dtype"):
        default_max_abs_diff("int8")


# ------------------------------------------------------------------------------------------------ bench
def _bench_report():
    from qwen3_rerank_integrations.benchmark import BenchmarkReport, MethodResult

    results = [
        MethodResult(name=name, seconds=seconds, tokens_per_s=1000 / seconds, pairs_per_s=4 / seconds, peak_gib=0.5,
                     max_abs_diff_vs_official=None if name == "official" else 3e-8)
        for name, seconds in (("official", 4.0), ("crossencoder", 2.0), ("local_scorer", 1.0))
    ]
    return BenchmarkReport(device="cpu", dtype="float32", model="m", documents=4, real_tokens=1000, results=results)


def test_bench_passes_options_and_prints_the_table(monkeypatch):
    # A real run takes minutes on 2 cores (three worker processes); here the CLI's part: options in, table out.
    seen = {}

    def fake_run_benchmark(config, *, log):
        seen["config"] = config
        log("running official ...")
        return _bench_report()

    monkeypatch.setattr("qwen3_rerank_integrations.benchmark.run_benchmark", fake_run_benchmark)
    result = invoke("bench", "--model", "m", "--docs", 4, "--layers", 2, "--reps", 1, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert seen["config"].model_dump(include={"model", "docs", "layers", "reps", "dtype", "device"}) == {
        "model": "m", "docs": 4, "layers": 2, "reps": 1, "dtype": "float32", "device": "cpu"}
    assert result.stdout.strip() == _bench_report().table()
    assert result.stderr.strip() == "running official ..."  # progress stays off stdout


def test_bench_errors_exit_with_one_line(monkeypatch, tiny_model_dir):
    # Unmocked: the real benchmark resolves the device first.
    assert_one_line_error(invoke("bench", "--device", "npu:7"), 3, "npu")

    real_popen = subprocess.Popen

    def failing_worker(command, **kwargs):  # every worker process dies with an import error
        code = "import sys; sys.stderr.write('Traceback ...\\nImportError: no module x\\n'); sys.exit(1)"
        return real_popen([sys.executable, "-c", code], **kwargs)

    monkeypatch.setattr("qwen3_rerank_integrations.benchmark.subprocess.Popen", failing_worker)
    result = invoke("bench", "--model", str(tiny_model_dir))
    assert result.stderr.startswith("loading official")  # progress, then the one error line
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == "Error: benchmark worker 'official' failed: ImportError: no module x"


# ------------------------------------------------------------------------------------------------ installed script
@pytest.mark.slow
def test_installed_console_script(tmp_path, vllm_legacy_server, reference_scorer):
    # Against the vLLM stand-in, so the child process needs no torch and starts fast.
    script = shutil.which("qwen3-rerank")
    assert script, "the qwen3-rerank console script is not installed: python -m pip install -e ."
    documents = ["Beijing is the capital of China.", "Gravity pulls.", "北京是首都。"]
    completed = subprocess.run(
        [script, "rerank", QUERY, "-", *vllm_args(vllm_legacy_server)],
        input="\n".join(documents), capture_output=True, text=True, encoding="utf-8", timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert_matches_reference(json.loads(completed.stdout), documents, reference_scorer.score(QUERY, documents))
    failed = subprocess.run([script, "rerank", QUERY, str(tmp_path / "missing.txt")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 2 and failed.stderr.startswith("Error: ") and "Traceback" not in failed.stderr


def test_package_import_does_not_import_typer():
    code = "import sys, qwen3_rerank_integrations; sys.exit('typer' in sys.modules or 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0


# ------------------------------------------------------------------------------------------------ one vocabulary
def _options(command: str) -> dict[str, list[str]]:
    """Each parameter of ``command`` and the option names it answers to."""
    import typer.main

    click_command = typer.main.get_command(app).commands[command]
    return {param.name: list(param.opts) for param in click_command.params}


def test_the_reranker_model_is_model_in_every_command():
    for command in ("rerank", "eval", "check-server", "check-device", "bench"):
        names = [opts for opts in _options(command).values() if "--model" in opts]
        assert len(names) == 1 and "-m" in names[0], command
    assert "--rerank-model" in _options("eval")["rerank_model"]  # the old name stays an alias
    assert "--embed-model" in _options("eval")["embed_model"]


def test_eval_takes_model_as_rerank_model_did(tmp_path, monkeypatch):
    import qwen3_rerank_integrations.cli as cli

    seen = []

    class Stop(Exception):
        pass

    def fake_local_scorer(model, **kwargs):
        seen.append(model)
        raise Stop

    monkeypatch.setattr("qwen3_rerank_integrations.local.LocalScorer", fake_local_scorer)
    from tests.test_eval import BEIR_MINI

    for flag in ("--model", "-m", "--rerank-model"):
        with pytest.raises(Stop):
            cli.app(["eval", str(BEIR_MINI), "-o", str(tmp_path / flag), flag, "my/model"], standalone_mode=False)
    assert seen == ["my/model"] * 3


def test_one_flag_of_another_backend_reads_as_a_sentence():
    result = invoke("rerank", QUERY, "-", "--timeout", "5", stdin="doc\n")
    assert_one_line_error(result, 2, "--timeout only applies to --backend vllm")
    several = invoke("rerank", QUERY, "-", "--timeout", "5", "--template", "server", stdin="doc\n")
    assert_one_line_error(several, 2, "--template, --timeout only apply to --backend vllm")
    mixed = invoke("rerank", QUERY, "-", "--backend", "engine", "--device", "cpu", "--timeout", "5", stdin="doc\n")
    assert_one_line_error(mixed, 2, "--device, --timeout do not apply to --backend engine (--device is for "
                          "--backend local; --timeout is for --backend vllm)")


# ------------------------------------------------------------------------------------------------ bench, small runs
def test_bench_says_its_ratios_mean_little_at_small_sizes():
    from qwen3_rerank_integrations.benchmark import BenchmarkReport, MethodResult

    def report(documents, reps, seconds):
        results = [MethodResult(name=name, seconds=seconds * factor, tokens_per_s=1.0, pairs_per_s=1.0, peak_gib=0.1,
                                all_seconds=[seconds * factor] * reps)
                   for name, factor in (("official", 4), ("crossencoder", 2), ("local_scorer", 1))]
        return BenchmarkReport(device="cpu", dtype="float32", model="m", documents=documents, real_tokens=10,
                               results=results)

    small = report(4, 1, 0.05)
    assert len(small.caveats) == 3 and "4 documents" in small.caveats[0] and "1 repetition" in small.caveats[1]
    assert small.table().splitlines()[1].startswith("note: the speed ratios below mean little: 4 documents")
    assert json.loads(small.model_dump_json())["caveats"] == small.caveats
    steady = report(48, 2, 3.0)  # the CPU default's size
    assert steady.caveats == [] and "note:" not in steady.table()
