"""The local benchmark's parts that need no 0.6B-shaped model: the stand-in tokenizer, worker failures as typed
errors, the CLI's exit code, the report table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwen3_rerank_integrations import RerankError, benchmark
from qwen3_rerank_integrations.benchmark import BenchmarkError, BenchmarkReport, MethodResult
from qwen3_rerank_integrations.cli import app
from qwen3_rerank_integrations.prompt import DEFAULT_INSTRUCTION, PromptEncoder

ROOT = Path(__file__).resolve().parent.parent


def test_word_tokenizer_has_the_qwen3_ids_and_about_a_token_a_word(tmp_path, qwen_tokenizer):
    from transformers import AutoTokenizer

    benchmark._save_word_tokenizer(tmp_path)
    stand_in = AutoTokenizer.from_pretrained(tmp_path)
    encoder = PromptEncoder(stand_in, 8192)  # refuses a tokenizer without distinct yes/no or prompt tokens
    assert (encoder.yes_id, encoder.no_id, stand_in.pad_token_id) == (9693, 2152, 151643)
    assert encoder.prefix_ids[0] == 151644 and encoder.suffix_ids[-2:] == [151667, 151668]
    assert stand_in.unk_token_id not in encoder.encode(benchmark._QUERY, ["ocean water"], DEFAULT_INSTRUCTION).ids[0]
    # On the workload it counts tokens within 25% of the real Qwen3 tokenizer (speed is per token).
    real = qwen_tokenizer
    docs = benchmark._workload(8, 1)
    counts = [sum(len(x) for x in PromptEncoder(t, 8192).encode(benchmark._QUERY, docs, DEFAULT_INSTRUCTION).ids)
              for t in (stand_in, real)]
    assert 0.75 < counts[0] / counts[1] < 1.25


def test_a_failing_worker_is_a_benchmark_error_with_its_last_line(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": str(tmp_path / "missing"), "device": "cpu", "dtype_name": "torch.float32",
                                "query": "q", "documents": ["d"], "official_batch_size": 2}))
    with pytest.raises(BenchmarkError, match="worker 'official' failed: .*missing") as info:
        benchmark._run_workers(spec, 1, log=lambda line: None)
    assert isinstance(info.value, RerankError)


def test_cli_turns_a_benchmark_error_into_exit_code_3(monkeypatch):
    def broken(config, log):
        raise BenchmarkError("benchmark worker 'crossencoder' failed: boom")

    monkeypatch.setattr(benchmark, "run_benchmark", broken)
    result = CliRunner().invoke(app, ["bench", "--layers", "1", "--docs", "2"])
    assert result.exit_code == 3 and "Error: benchmark worker 'crossencoder' failed: boom" in result.output


def test_table_has_ratios_and_load_average():
    results = [MethodResult(name=n, seconds=s, tokens_per_s=100 / s, pairs_per_s=1 / s, peak_gib=g,
                            max_abs_diff_vs_official=None if n == "official" else 1e-6, all_seconds=[s, s + 1])
               for n, s, g in (("official", 4.0, 8.0), ("crossencoder", 2.0, 3.0), ("local_scorer", 1.0, 2.5))]
    report = BenchmarkReport(device="cpu", dtype="float32", model="m", documents=1, real_tokens=100,
                             results=results, load_average=(1.5, 2.25))
    table = report.table()
    assert "load average=1.5 -> 2.25" in table
    local_row = table.splitlines()[-1].split()
    assert local_row[0] == "local_scorer" and local_row[5:7] == ["4.00", "2.00"]


def test_rag_workload_is_twenty_documents_of_150_words():
    documents = benchmark._workload(benchmark.RAG_DOCUMENTS, 1, "rag")
    assert len(documents) == 20 and {len(doc.split()) for doc in documents} == {150}
    assert len({len(doc.split()) for doc in benchmark._workload(20, 1, "mixed")}) > 1


def test_cli_passes_dtype_and_workload_to_the_benchmark(monkeypatch):
    seen = {}

    def fake(config, log):
        seen["config"] = config
        raise BenchmarkError("stop here")

    monkeypatch.setattr(benchmark, "run_benchmark", fake)
    CliRunner().invoke(app, ["bench", "--dtype", "bfloat16", "--workload", "rag", "--layers", "28", "--fused"])
    config = seen["config"]
    assert (config.dtype, config.workload, config.layers, config.docs) == ("bfloat16", "rag", 28, None)
    assert config.fused is True


def _report(**fields):
    results = [MethodResult(name=n, seconds=2.0, tokens_per_s=50, pairs_per_s=1, peak_gib=1, all_seconds=[2, 2])
               for n in benchmark.METHODS]
    return BenchmarkReport(**{"device": "cpu", "dtype": "bfloat16", "model": "m", "documents": 20,
                              "real_tokens": 100, "results": results, **fields})


def test_table_has_a_row_for_the_fused_path():
    results = [MethodResult(name=n, seconds=s, tokens_per_s=100 / s, pairs_per_s=1 / s, peak_gib=1, all_seconds=[s, s])
               for n, s in (("official", 4.0), ("crossencoder", 2.0), ("local_scorer", 1.0), ("local_fused", 0.8))]
    report = BenchmarkReport(device="cpu", dtype="float32", model="m", documents=40, real_tokens=100, results=results)
    fused_row = report.table().splitlines()[-1].split()
    assert fused_row[0] == benchmark.FUSED_METHOD and fused_row[5:7] == ["5.00", "2.50"]


def test_table_says_when_cpu_bf16_runs_without_bf16_units():
    report = _report(workload="rag", cpu_bf16_units=False)
    assert any("no bf16 units" in note for note in report.caveats)
    assert "workload=rag" in report.table() and "software" in report.table()
    # The uniform RAG call is 20 documents by design: no "do not fill a batch" note for it.
    assert not any("fill a batch" in note for note in report.caveats)
    assert not any("bf16 units" in note for note in _report(workload="rag", cpu_bf16_units=True).caveats)
