"""The fused decoder path of :class:`~qwen3_rerank_integrations.LocalScorer` (``fused=True``, opt-in).

In low precision the matrix products stop dominating a Qwen3 decoder layer: RMSNorm (four elementwise passes and a
reduction, three times a layer counting the per-head q/k norms), SwiGLU (``silu(gate) * up``) and the casts around
them read and write the activations several times each. Fusing them makes each one pass over memory.

Two ways, picked by the device:

- **inductor** (CPU, CUDA; ``torch.compile``): the RMSNorm and the whole MLP (gate and up products, SwiGLU, down
  product) of every layer go through two compiled functions shared by all layers (the weights are arguments, so 28
  layers compile once). They are compiled with dynamic shapes, so documents of any length and batches of any size
  reuse the same code: the activations go in as one row per token with that count marked unbacked (no
  specialisation for 1), so each function compiles once per dtype and device, by a warm-up at load that logs its
  time. Keys/values and the prefix cache never enter a compiled graph, so
  their strides cannot trigger recompilation. Should torch still want to recompile past its limit, it raises instead
  of silently running the rest uncompiled (``fail_on_recompile_limit_hit``).
- **npu** (Ascend, ``torch_npu``): torch_npu's fused kernels, as vllm-ascend uses them: ``npu_rms_norm`` for every
  RMSNorm, ``npu_swiglu`` on one merged gate/up product, ``npu_rotary_mul`` for the rotary embedding.

Attention stays torch's SDPA. In float32 the fused path gives the default path's scores to about 1e-7 (another
summation order in the norm's mean); in bfloat16 the fused norm keeps its statistics in float32 as the default does.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["FusedDecoder", "fuse_decoder", "fused_kind", "rms_norm", "swiglu_mlp", "warm_up"]

logger = logging.getLogger(__name__)

FusedKind = Literal["inductor", "npu"]
# Device types whose rotary embedding goes through torch_npu.npu_rotary_mul once an NPU model is fused.
_NPU_ROTARY_DEVICE_TYPES = {"npu"}
_rotary_lock = threading.Lock()


class FusedDecoder(BaseModel):
    """What the fused path did to a loaded model: how, how often it compiled, and what its warm-up took."""

    kind: FusedKind = Field(description="'inductor' (torch.compile) or 'npu' (torch_npu's fused kernels).")
    layers: int = Field(description="Decoder layers whose RMSNorms and MLP were replaced.")
    compiles: int = Field(0, description="Graphs compiled so far (inductor; 0 for npu): bounded by the shapes seen.")
    warmup_seconds: float | None = Field(None, description="Time of the warm-up at load (compiling), seconds.")

    def refresh(self, counter: Any) -> FusedDecoder:
        return self.model_copy(update={"compiles": counter.compiles}) if counter is not None else self


def fused_kind(device_type: str) -> FusedKind:
    """Which fused path a device type gets: torch_npu's kernels on ``npu``, torch.compile elsewhere."""
    return "npu" if device_type == "npu" else "inductor"


class _CountingInductor:
    """torch.compile's default backend, counting the graphs it compiles (the test of a bounded count)."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, graph: Any, example_inputs: Any) -> Any:
        from torch._inductor.compile_fx import compile_fx

        self.compiles += 1
        return compile_fx(graph, example_inputs)


def rms_norm(hidden: Any, weight: Any, eps: float) -> Any:
    """Qwen3's RMSNorm, the same operations as transformers' (statistics in float32, then the input dtype)."""
    import torch

    dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(dtype)


def swiglu_mlp(hidden: Any, gate: Any, up: Any, down: Any) -> Any:
    """Qwen3's MLP: ``down(silu(gate(x)) * up(x))``."""
    import torch.nn.functional as F

    return F.linear(F.silu(F.linear(hidden, gate)) * F.linear(hidden, up), down)


def fuse_decoder(model: Any, kind: FusedKind) -> tuple[FusedDecoder, Any]:
    """Replace the RMSNorm and MLP forwards of a loaded Qwen3 model (in place) by fused ones.

    Returns the report and, for inductor, the compile counter (read its ``compiles``). Raises ``ValueError`` for a
    model whose MLP is not SwiGLU (``hidden_act`` other than ``silu``).
    """
    act = getattr(model.config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"fused=True needs a SwiGLU MLP (hidden_act 'silu'), this model has {act!r}")
    layers = model.base_model.layers
    norms = [module for module in model.modules() if type(module).__name__.endswith("RMSNorm")]
    if kind == "npu":
        _fuse_npu(model, norms, layers)
        return FusedDecoder(kind=kind, layers=len(layers)), None
    import torch

    counter = _CountingInductor()
    compiled_norm = torch.compile(rms_norm, backend=counter, dynamic=True, fullgraph=True)
    compiled_mlp = torch.compile(swiglu_mlp, backend=counter, dynamic=True, fullgraph=True)
    guarded_norm, guarded_mlp = _never_silently_eager(compiled_norm), _never_silently_eager(compiled_mlp)
    for norm in norms:
        norm.forward = functools.partial(_norm_forward, guarded_norm, norm)
    for layer in layers:
        mlp = layer.mlp
        mlp.forward = functools.partial(_mlp_forward, guarded_mlp, mlp)
    return FusedDecoder(kind=kind, layers=len(layers)), counter


def _never_silently_eager(compiled: Any) -> Any:
    """Call ``compiled`` with dynamo set to raise, not fall back to eager, when it would recompile past its limit."""
    import torch

    @functools.wraps(compiled)
    def call(*args: Any) -> Any:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            return compiled(*args)

    return call


def _tokens(hidden: Any) -> Any:
    """``hidden`` as one row per token (a view), its row count marked unbacked: every batch size and length,
    1 included, then runs the same compiled graph (no rank change between the layer's [rows, width, hidden] and
    the q/k norms' [rows, width, heads, head_dim], no 0/1 specialisation)."""
    import torch

    flat = hidden.reshape(-1, hidden.shape[-1])
    torch._dynamo.decorators.mark_unbacked(flat, 0)
    return flat


def _norm_forward(fn: Any, norm: Any, hidden: Any) -> Any:
    return fn(_tokens(hidden), norm.weight, norm.variance_epsilon).view(hidden.shape)


def _mlp_forward(fn: Any, mlp: Any, hidden: Any) -> Any:
    out = fn(_tokens(hidden), mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    return out.view(*hidden.shape[:-1], out.shape[-1])


# ------------------------------------------------------------------------------------------------ Ascend NPU
def _fuse_npu(model: Any, norms: list[Any], layers: Any) -> None:
    import torch
    import torch_npu  # the caller checked the device is an NPU: torch_npu is there

    for norm in norms:
        norm.forward = functools.partial(_npu_norm_forward, torch_npu, norm)
    for layer in layers:
        mlp = layer.mlp
        # One product for gate and up (npu_swiglu splits its input in halves: silu(first) * second). The merged
        # weight is a copy: gate and up are kept as they are (the model stays a plain transformers model).
        merged = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=0).detach()
        mlp.forward = functools.partial(_npu_mlp_forward, torch_npu, merged, mlp)
    _install_npu_rotary(type(layers[0].self_attn).__module__)


def _npu_norm_forward(torch_npu: Any, norm: Any, hidden: Any) -> Any:
    return torch_npu.npu_rms_norm(hidden, norm.weight, epsilon=norm.variance_epsilon)[0]


def _npu_mlp_forward(torch_npu: Any, merged: Any, mlp: Any, hidden: Any) -> Any:
    import torch.nn.functional as F

    return mlp.down_proj(torch_npu.npu_swiglu(F.linear(hidden, merged), dim=-1))


def _install_npu_rotary(module_name: str) -> None:
    """Route the modeling module's ``apply_rotary_pos_emb`` through ``npu_rotary_mul`` for tensors on an NPU (the
    module's attention calls it by its global name); tensors elsewhere keep the original function."""
    import importlib

    module = importlib.import_module(module_name)
    with _rotary_lock:
        original = module.apply_rotary_pos_emb
        if getattr(original, "_qwen3_rerank_npu_rotary", False):
            return

        def apply_rotary_pos_emb(q: Any, k: Any, cos: Any, sin: Any, unsqueeze_dim: int = 1) -> Any:
            if q.device.type not in _NPU_ROTARY_DEVICE_TYPES:
                return original(q, k, cos, sin, unsqueeze_dim)
            import torch_npu

            cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
            return torch_npu.npu_rotary_mul(q, cos, sin), torch_npu.npu_rotary_mul(k, cos, sin)

        apply_rotary_pos_emb._qwen3_rerank_npu_rotary = True  # type: ignore[attr-defined]
        module.apply_rotary_pos_emb = apply_rotary_pos_emb


def warm_up(score: Any, report: FusedDecoder, counter: Any) -> FusedDecoder:
    """Run ``score()`` (a callable that scores a few representative calls) once, timed, and log the line."""
    start = time.perf_counter()
    score()
    seconds = time.perf_counter() - start
    report = report.refresh(counter).model_copy(update={"warmup_seconds": seconds})
    logger.warning(
        "fused decoder (%s): warmed up in %.1f s (%d graphs compiled, %d layers)",
        report.kind, seconds, report.compiles, report.layers,
    )
    return report
