"""Which accelerator to run on, and in which dtype.

``auto`` prefers Ascend NPU (through ``torch_npu``) > CUDA > Apple MPS > CPU. Explicit names
(``"npu"``, ``"npu:1"``, ``"cuda:0"``, ``"mps"``, ``"cpu"``) are checked, and an unavailable one raises
:class:`~qwen3_rerank_integrations.errors.DeviceNotAvailableError` rather than failing later inside torch.

dtype ``auto``: bf16 on NPU/CUDA (fp16 where the chip lacks bf16, e.g. Ascend 910A or pre-Ampere GPUs),
fp16 on MPS, fp32 on CPU (CPU half precision is slow and inexact).
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Literal

from .errors import DeviceNotAvailableError

if TYPE_CHECKING:
    import torch

__all__ = ["DTypeName", "resolve_device", "resolve_dtype", "npu_available", "empty_cache"]

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda|npu)(?::(\d+))?$")


def npu_available() -> bool:
    """True when ``torch_npu`` imports and reports at least one Ascend NPU."""
    try:
        importlib.import_module("torch_npu")  # registers torch.npu
    except Exception:  # a broken CANN install must not break CPU/CUDA users
        return False
    import torch

    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def _device_count(kind: str) -> int:
    import torch

    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "npu":
        return torch.npu.device_count() if npu_available() else 0  # type: ignore[attr-defined]
    if kind == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    return 1


def resolve_device(device: str) -> torch.device:
    """Turn ``"auto"`` or an explicit device name into a ``torch.device`` that exists here."""
    import torch

    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'auto', 'cuda:0', 'npu:1', 'mps' or 'cpu', got {device!r}")
    match = _DEVICE_PATTERN.match(device.strip().lower())
    if match is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'mps', 'cuda[:N]' or 'npu[:N]', got {device!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if index is not None:
            raise ValueError(f"device 'auto' takes no index, got {device!r}")
        for candidate in ("npu", "cuda", "mps"):
            if _device_count(candidate) > 0:
                return torch.device(candidate, 0) if candidate != "mps" else torch.device("mps")
        return torch.device("cpu")
    if kind in ("cpu", "mps") and index is not None and index != "0":
        raise ValueError(f"device {kind!r} takes no index, got {device!r}")
    count = _device_count(kind)
    wanted = int(index or 0)
    if wanted >= count:
        hints = {
            "npu": "install torch_npu matching your torch and CANN, and check ASCEND_RT_VISIBLE_DEVICES",
            "cuda": "install a CUDA build of torch and check CUDA_VISIBLE_DEVICES",
            "mps": "MPS needs Apple silicon and a macOS build of torch",
        }
        seen = f"{count} {kind} device(s) visible" if count else f"no {kind} device visible"
        raise DeviceNotAvailableError(f"device={device!r} is not available: {seen}; {hints.get(kind, '')}".rstrip("; "))
    if kind in ("cpu", "mps"):
        return torch.device(kind)
    return torch.device(kind, wanted)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Turn ``"auto"`` or a dtype name into a ``torch.dtype`` suitable for ``device``."""
    import torch

    explicit = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype != "auto":
        if dtype not in explicit:
            raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}")
        return explicit[dtype]
    if device.type == "cpu":
        return torch.float32
    if device.type == "mps":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "npu":
        supported = getattr(torch.npu, "is_bf16_supported", None)  # type: ignore[attr-defined]
        return torch.bfloat16 if supported is None or supported() else torch.float16
    return torch.float32


def empty_cache(device: torch.device) -> None:
    """Return the device's cached free memory to it (CUDA, NPU, MPS); nothing on CPU."""
    import torch

    backend = getattr(torch, device.type, None)
    if backend is not None and hasattr(backend, "empty_cache"):
        backend.empty_cache()
