"""How vLLM must run a Qwen3-Reranker checkpoint, whether as a server (:mod:`.server`, ``qwen3-rerank serve``)
or in-process (:class:`~qwen3_rerank_integrations.VLLMEngineScorer`): the one recipe both follow.

- the checkpoint is served as a one-row classifier (:data:`HF_OVERRIDES`), whose sigmoid is the official P("yes");
- the pooling runner is ``--runner pooling`` from vLLM 0.10.1 on, ``--task score`` before (:func:`runner_flag_for`);
- the dtype is always explicit (:func:`default_dtype`): vLLM's ``auto`` runs 16 bits on CPU and moves scores by
  ~1e-3, so float32 there; on an accelerator the checkpoint's own;
- the context is the reranker's 8,192 tokens (:data:`DEFAULT_CONTEXT`), not the checkpoints' 40,960;
- an API key travels in :data:`API_KEY_ENV`, never on a command line.

Pure: imports neither vLLM nor httpx.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_CONTEXT",
    "HF_OVERRIDES",
    "RUNNER_FLAG_SINCE",
    "checkpoint_config",
    "checkpoint_dtype",
    "default_dtype",
    "runner_flag_for",
]

# vLLM serves the original checkpoint as a one-row classifier, W[yes] - W[no] with a sigmoid: the official P("yes").
HF_OVERRIDES: dict[str, object] = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
# vLLM PR #21470 replaced --task with --runner/--convert; 0.10.1 is the first release with --runner.
RUNNER_FLAG_SINCE = (0, 10, 1)
API_KEY_ENV = "VLLM_API_KEY"

# The official method cuts prompts at 8,192 tokens; the checkpoints' own context (40,960) needs ~4.4 GiB of KV cache
# for one prompt of the 0.6B, more than vLLM's CPU default leaves, and no reranker prompt uses it.
DEFAULT_CONTEXT = 8192
_DTYPES = ("float32", "bfloat16", "float16")  # a real model on a CPU, or a first download, takes minutes


def runner_flag_for(version: str | None) -> bool | None:
    """Whether this vLLM version takes ``--runner pooling`` (None: the version does not say)."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not found:
        return None
    parsed = tuple(int(part or 0) for part in found.groups())
    if parsed < (0, 2, 0):  # source builds without tags report 0.1.devN; no real release this old serves pooling
        return None
    return parsed >= RUNNER_FLAG_SINCE


def default_dtype(device_type: str | None, checkpoint: Any) -> tuple[str, str]:
    """The dtype vLLM should run in when none was chosen, and why: float32 on CPU (vLLM's ``auto`` would run 16
    bits there and move scores by ~1e-3) or on an unknown device; on an accelerator the checkpoint's own
    (``config.json``), float32 when it names none."""
    if device_type == "cpu":
        return "float32", "on CPU: the official scores"
    if device_type is None:
        return "float32", "device unknown: float32 keeps the official scores"
    own = checkpoint_dtype(checkpoint)
    return (own, f"the checkpoint's own, on {device_type}") if own else ("float32", "config.json names no dtype")


def checkpoint_config(model: str) -> dict[str, Any] | None:
    """The checkpoint's ``config.json``: from its folder, or for a hub id from the Hugging Face cache or hub
    (``huggingface_hub``, which honours ``HF_HUB_OFFLINE``); None when it cannot be read."""
    expanded = os.path.expanduser(model)
    path: str | None = os.path.join(expanded, "config.json") if os.path.isdir(expanded) else None
    if path is None:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            return None
        try:
            path = hf_hub_download(model, "config.json")
        except Exception:  # offline, unknown id, no network: the choice falls back to float32 / 8,192
            return None
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def checkpoint_dtype(checkpoint: Any) -> str | None:
    """The dtype a checkpoint was saved in ('float32', 'bfloat16' or 'float16'), from its ``config.json`` (a dict)
    or a transformers config (``dtype``, ``torch_dtype`` before transformers 4.56); None when it names none."""
    if isinstance(checkpoint, dict):
        value = checkpoint.get("dtype") or checkpoint.get("torch_dtype")
    else:
        value = getattr(checkpoint, "dtype", None) or getattr(checkpoint, "torch_dtype", None)
    name = str(value).removeprefix("torch.") if value else None
    return name if name in _DTYPES else None
