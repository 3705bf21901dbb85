"""LocalScorer(fused=True): the fused decoder path (torch.compile of RMSNorm and the SwiGLU MLP with dynamic shapes;
torch_npu's fused kernels on Ascend, here with a stand-in torch_npu). Scores equal the default path's in fp32, the
compile count stays bounded over varied lengths and batch sizes, and the warm-up is logged with its time."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from qwen3_rerank_integrations import LocalScorer, fused

QUERY = "What is the capital of China?"


@pytest.fixture(scope="module")
def fused_scorer(tiny_model_dir):
    return LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", fused=True).load()


def test_fused_scores_equal_the_default_path_and_the_official_method_in_float32(
    fused_scorer, local_scorer, reference_scorer, documents
):
    for query, docs in ((QUERY, documents), ("重力", documents[:1]), (QUERY, documents[::-1] * 3)):
        got = fused_scorer.score(query, docs)
        for expected in (local_scorer.score(query, docs), reference_scorer.score(query, docs)):
            assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-5


def test_compile_count_stays_bounded_over_varied_lengths_and_batches(fused_scorer, documents):
    report = fused_scorer.fused_report
    assert report.kind == "inductor" and report.layers == 2 and report.warmup_seconds > 0
    after_warm_up = report.compiles
    assert 1 <= after_warm_up <= 4  # norm (hidden and head widths) + MLP; nothing per length or batch size
    for n in (1, 2, 5, 13):
        fused_scorer.score("query " * n, (documents * n)[: 1 + n])
        fused_scorer.score(QUERY, ["same document"] * (n + 1))  # tails of one token
    assert fused_scorer.fused_report.compiles == after_warm_up


def test_warm_up_is_logged_with_its_time(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="qwen3_rerank_integrations.fused"):
        LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", fused=True).load()
    assert any("fused decoder (inductor): warmed up in" in r.getMessage() for r in caplog.records)


def test_unfused_scorer_has_no_report_and_unchanged_cache_key(local_scorer, tiny_model_dir):
    assert local_scorer.fused_report is None and "fused" not in local_scorer.cache_identity()
    assert LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", fused=True).cache_identity()["fused"]


def test_fused_path_refuses_a_non_swiglu_model():
    model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_act="gelu"))
    with pytest.raises(ValueError, match="hidden_act"):
        fused.fuse_decoder(model, "inductor")


def test_kind_follows_the_device():
    assert [fused.fused_kind(t) for t in ("npu", "cuda", "cpu")] == ["npu", "inductor", "inductor"]


# ------------------------------------------------------------------------------------------------ Ascend NPU
def _fake_torch_npu(calls: list[str]) -> types.ModuleType:
    """torch_npu's three fused ops, computed with torch on CPU, recording that they ran."""
    module = types.ModuleType("torch_npu")

    def npu_rms_norm(x, gamma, epsilon=1e-6):
        calls.append("rms_norm")
        return fused.rms_norm(x, gamma, epsilon), None

    def npu_swiglu(x, dim=-1):
        calls.append("swiglu")
        gate, up = x.chunk(2, dim=dim)
        return torch.nn.functional.silu(gate) * up

    def npu_rotary_mul(x, cos, sin):
        calls.append("rotary_mul")
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    module.npu_rms_norm, module.npu_swiglu, module.npu_rotary_mul = npu_rms_norm, npu_swiglu, npu_rotary_mul
    return module


def test_npu_path_uses_torch_npu_fused_ops_and_scores_like_the_default(
    tiny_model_dir, local_scorer, documents, monkeypatch
):
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "torch_npu", _fake_torch_npu(calls))
    monkeypatch.setattr(fused, "_NPU_ROTARY_DEVICE_TYPES", {"npu", "cpu"})  # CPU tensors stand in for the NPU's
    from transformers.models.qwen3 import modeling_qwen3

    monkeypatch.setattr(modeling_qwen3, "apply_rotary_pos_emb", modeling_qwen3.apply_rotary_pos_emb)  # restored after
    scorer = LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32").load()
    report, counter = fused.fuse_decoder(scorer._model, "npu")
    assert report.kind == "npu" and counter is None
    got = scorer.score(QUERY, documents)
    assert {"rms_norm", "swiglu", "rotary_mul"} <= set(calls)
    assert max(abs(a - b) for a, b in zip(got, local_scorer.score(QUERY, documents))) <= 1e-5


def test_fused_bfloat16_scores_stay_within_the_bf16_residue_of_the_default_bf16_path(tiny_model_dir, documents):
    default = LocalScorer(str(tiny_model_dir), device="cpu", dtype="bfloat16").score(QUERY, documents)
    fused_bf16 = LocalScorer(str(tiny_model_dir), device="cpu", dtype="bfloat16", fused=True)
    got = fused_bf16.score(QUERY, documents)
    assert fused_bf16.fused_report.compiles <= 4
    assert max(abs(a - b) for a, b in zip(got, default)) <= 0.02  # docs/local-scorer.md#stable-scores
