"""check-device on CPU in bf16: the canary set's score difference, Kendall's tau and top-k overlap on the user's
model (here the tiny random one), and the CPU's bf16 units with the dtype recommendation (CPU flags mocked)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qwen3_rerank_integrations import devices
from qwen3_rerank_integrations.cli import app
from qwen3_rerank_integrations.precision import CANARY_SET, PRECISION_SET, compare_scores, top_k_overlap

from .test_devices import SAPPHIRE_RAPIDS, ZEN3


@pytest.fixture
def cpu_flags(monkeypatch):
    def use(cpuinfo: str) -> None:
        monkeypatch.setattr(devices, "_system_cpu_bf16_support", lambda: devices.cpu_bf16_support(cpuinfo))

    return use


def test_canary_set_gives_every_query_twenty_shared_documents():
    assert [item.query for item in CANARY_SET] == [item.query for item in PRECISION_SET]
    assert all(len(item.documents) == 20 and item.documents == CANARY_SET[0].documents for item in CANARY_SET)
    assert len(set(CANARY_SET[0].documents)) == 20


def test_top_k_overlap_counts_shared_members_of_the_two_top_k():
    reference = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert top_k_overlap(reference, reference, 5) == 1.0
    swapped = [0.9, 0.8, 0.7, 0.6, 0.3, 0.4, 0.5]  # 5th and 7th swap: one of the top-5 leaves it
    assert top_k_overlap(reference, swapped, 5) == pytest.approx(0.8)
    assert top_k_overlap(reference, swapped, 7) is None  # every document is in both: nothing to measure
    with pytest.raises(ValueError, match="k must"):
        top_k_overlap(reference, swapped, 0)


def test_report_averages_top_k_overlap_over_queries_with_enough_documents():
    reference = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.5, 0.4]]
    candidate = [[0.9, 0.8, 0.7, 0.6, 0.3, 0.4], [0.5, 0.4]]
    report = compare_scores(reference, candidate, max_abs_diff=0.5)
    assert report.top5_overlap == pytest.approx(0.8) and report.top10_overlap is None
    assert report.queries[1].top5_overlap is None


def test_check_device_bfloat16_on_cpu_measures_the_canary_set(tiny_model_dir, cpu_flags):
    cpu_flags(ZEN3)
    result = CliRunner().invoke(app, ["check-device", "--model", str(tiny_model_dir), "--device", "cpu",
                                      "--dtype", "bfloat16", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dtype"] == "bfloat16" and len(report["queries"]) == 4
    assert all(len(q["device_scores"]) == 20 for q in report["queries"])
    assert 0 < report["max_abs_diff"] <= 0.02  # bf16 moves the scores, within the documented bound
    assert 0 <= report["top5_overlap"] <= 1 and 0 <= report["top10_overlap"] <= 1
    assert -1 <= report["rank_agreement"] <= 1
    assert report["cpu"]["recommended_dtype"] == "float32" and report["cpu"]["has_bf16_units"] is False


def test_check_device_recommends_bfloat16_on_a_cpu_with_amx(tiny_model_dir, cpu_flags):
    cpu_flags(SAPPHIRE_RAPIDS)
    result = CliRunner().invoke(app, ["check-device", "--model", str(tiny_model_dir), "--device", "cpu",
                                      "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "CPU bf16 units: AMX-BF16, AVX512-BF16" in text and "recommended dtype: bfloat16" in text
    assert "top-5 overlap 1.00" in text and "--dtype bfloat16" in text


def test_check_device_does_not_recommend_bfloat16_without_units(tiny_model_dir, cpu_flags):
    cpu_flags(ZEN3)
    result = CliRunner().invoke(app, ["check-device", "--model", str(tiny_model_dir), "--device", "cpu",
                                      "--dtype", "float32"])
    text = " ".join(result.stdout.split())
    assert "CPU bf16 units: none" in text and "recommended dtype: float32" in text and "slower" in text
