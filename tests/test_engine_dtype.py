"""VLLMEngineScorer's precision: an explicit dtype always reaches vLLM (issue 17: with vLLM's own 'auto' an fp32
checkpoint ran in fp16 on CPU, 1.3e-3 away from the official scores). Against a stand-in ``vllm`` module."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest

from qwen3_rerank_integrations.engine import VLLMEngineScorer

QUERY = "What is the capital of China?"


class _RecordingLLM:
    created: list[_RecordingLLM] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        _RecordingLLM.created.append(self)

    def classify(self, prompts, *, use_tqdm=True):
        return [types.SimpleNamespace(error=None, prompt_token_ids=p["prompt_token_ids"],
                                      outputs=types.SimpleNamespace(probs=[0.5])) for p in prompts]


def _fake_vllm(monkeypatch, device: str | None) -> None:
    module = types.ModuleType("vllm")
    module.__version__ = "0.32.0"
    module.LLM = _RecordingLLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    if device is None:  # an older vLLM without vllm.platforms
        monkeypatch.setitem(sys.modules, "vllm.platforms", None)
    else:
        platforms = types.ModuleType("vllm.platforms")
        platforms.current_platform = types.SimpleNamespace(device_type=device)
        monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    _RecordingLLM.created = []


@pytest.fixture
def bf16_model_dir(tiny_model_dir, tmp_path):
    """The tiny checkpoint with a config.json that says it was saved in bfloat16, as the real ones do."""
    folder = tmp_path / "bf16"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("torch_dtype", None)
    config["dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("device", "options", "dtype"),
    [("cpu", {}, "float32"), (None, {}, "float32"), ("cuda", {}, "bfloat16"), ("npu", {}, "bfloat16"),
     ("cuda", {"dtype": "float16"}, "float16"), ("cpu", {"dtype": "bfloat16"}, "bfloat16")],
)
def test_the_engine_always_gets_an_explicit_dtype(monkeypatch, bf16_model_dir, device, options, dtype):
    _fake_vllm(monkeypatch, device)
    scorer = VLLMEngineScorer(str(bf16_model_dir), max_length=512, **options)
    scorer.score(QUERY, ["Beijing is the capital of China."])
    (llm,) = _RecordingLLM.created
    assert llm.kwargs["dtype"] == dtype


def test_a_checkpoint_without_a_dtype_runs_in_float32_on_an_accelerator(monkeypatch, bf16_model_dir):
    config = json.loads((bf16_model_dir / "config.json").read_text())
    config.pop("dtype")
    (bf16_model_dir / "config.json").write_text(json.dumps(config))
    _fake_vllm(monkeypatch, "cuda")
    VLLMEngineScorer(str(bf16_model_dir), max_length=512).score(QUERY, ["x"])
    assert _RecordingLLM.created[0].kwargs["dtype"] == "float32"


def test_the_cache_identity_names_the_dtype_that_scores_not_auto(tiny_model_dir):
    # This machine has no accelerator: 'auto' is float32, as the engine would run it.
    assert VLLMEngineScorer(str(tiny_model_dir)).cache_identity()["dtype"] == "float32"
    assert VLLMEngineScorer(str(tiny_model_dir), dtype="bfloat16").cache_identity()["dtype"] == "bfloat16"
