"""Which accelerator to run on, and in which dtype.

``auto`` prefers Ascend NPU (through ``torch_npu``) > CUDA > Apple MPS > CPU. Explicit names
(``"npu"``, ``"npu:1"``, ``"cuda:0"``, ``"mps"``, ``"cpu"``) are checked, and an unavailable one raises
:class:`~qwen3_rerank_integrations.errors.DeviceNotAvailableError` rather than failing later inside torch.

dtype ``auto``: bf16 on NPU/CUDA (fp16 where the chip lacks bf16, e.g. Ascend 910A or pre-Ampere GPUs),
fp16 on MPS, fp32 on CPU. On CPU ``auto`` stays fp32 even where the CPU has bf16 matrix units, because fp32 is
the only dtype whose scores equal the official method's (to 1e-5); bf16 there is opt-in. Whether it pays off
depends on the CPU: with AMX-BF16 (Intel Sapphire Rapids and later) bf16 matrix products run several times faster
than fp32; with AVX512-BF16 alone (Intel Cooper Lake, AMD Zen 4 and later) about twice; without either (AVX2 or
plain AVX-512) torch converts bf16 in software and it is usually *slower* than fp32, as well as inexact.
:func:`cpu_bf16_support` reads which of these this CPU has; ``qwen3-rerank check-device`` reports it and
recommends bf16 only where the units exist.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from .errors import DeviceNotAvailableError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CpuBf16Support",
    "DTypeName",
    "cpu_bf16_support",
    "empty_cache",
    "npu_available",
    "resolve_device",
    "resolve_dtype",
]

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


_CPUINFO = Path("/proc/cpuinfo")


class CpuBf16Support(BaseModel):
    """What this CPU offers for bfloat16 matrix products, and the dtype advice that follows from it.

    Read from the CPU's flags (``/proc/cpuinfo`` on Linux); elsewhere (macOS, Windows) the flags are unknown and
    every unit reads False, so nothing recommends bf16 on a guess.
    """

    model_config = ConfigDict(frozen=True)

    has_amx: bool = Field(
        description="AMX-BF16 tile units (flags amx_bf16 and amx_tile; Intel Sapphire Rapids and later): bf16 "
        "matrix products several times faster than fp32."
    )
    has_avx512_bf16: bool = Field(
        description="AVX512-BF16 dot-product instructions (flag avx512_bf16; Intel Cooper Lake, AMD Zen 4 and "
        "later): bf16 matrix products about twice fp32."
    )
    has_arm_bf16: bool = Field(
        False, description="Arm BF16 instructions (feature bf16; Neoverse V1/N2, Graviton 3 and later)."
    )
    torch_capability: str | None = Field(
        None, description="The SIMD level torch's own CPU kernels use (torch.backends.cpu.get_cpu_capability()), "
        "e.g. 'AVX512' or 'AVX2'; None when torch is not importable."
    )
    flags_source: str = Field(description="Where the flags came from: '/proc/cpuinfo', or 'unknown'.")

    @computed_field(description="True when the CPU has any bf16 matrix unit (AMX, AVX512-BF16 or Arm BF16).")
    @property
    def has_bf16_units(self) -> bool:
        return self.has_amx or self.has_avx512_bf16 or self.has_arm_bf16

    @computed_field(description="What dtype='auto' picks on this CPU: always float32 (the exact one).")
    @property
    def auto_dtype(self) -> str:
        return "float32"

    @computed_field(description="The dtype check-device recommends for speed on this CPU.")
    @property
    def recommended_dtype(self) -> str:
        return "bfloat16" if self.has_bf16_units else "float32"

    @computed_field(description="Why: what 'auto' picks, and whether bf16 would pay off here.")
    @property
    def reason(self) -> str:
        auto = "dtype='auto' stays float32 on CPU: the only dtype that gives the official scores (to 1e-5)"
        if self.has_amx:
            return (f"{auto}; this CPU has AMX-BF16, so dtype='bfloat16' runs the matrix products several times "
                    "faster (opt-in: scores move by ~1e-2, measure with check-device --dtype bfloat16)")
        if self.has_avx512_bf16 or self.has_arm_bf16:
            unit = "AVX512-BF16" if self.has_avx512_bf16 else "Arm BF16"
            return (f"{auto}; this CPU has {unit} (no AMX), so dtype='bfloat16' may run up to ~2x faster "
                    "(opt-in: scores move by ~1e-2, measure speed with qwen3-rerank bench --dtype bfloat16)")
        if self.flags_source == "unknown":
            return f"{auto}; this CPU's bf16 units are unknown (no /proc/cpuinfo), so bf16 is not recommended"
        return (f"{auto}; this CPU has no bf16 units (no AMX, no AVX512-BF16), so torch converts bf16 in software: "
                "far slower than float32 (~60x on an AVX2 EPYC), and inexact")


def cpu_bf16_support(cpuinfo: str | None = None) -> CpuBf16Support:
    """Which bf16 units this CPU has. ``cpuinfo``: the text of ``/proc/cpuinfo`` (read from the system if None)."""
    if cpuinfo is None:
        return _system_cpu_bf16_support()
    return _parse_cpuinfo(cpuinfo, "/proc/cpuinfo", _torch_capability())


@functools.lru_cache(maxsize=1)
def _system_cpu_bf16_support() -> CpuBf16Support:
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return _parse_cpuinfo("", "unknown", _torch_capability())
    return _parse_cpuinfo(text, "/proc/cpuinfo", _torch_capability())


def _parse_cpuinfo(text: str, source: str, capability: str | None) -> CpuBf16Support:
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):  # x86 says flags, Arm says Features
            flags.update(value.split())
    return CpuBf16Support(
        has_amx="amx_bf16" in flags and "amx_tile" in flags,
        has_avx512_bf16="avx512_bf16" in flags,
        has_arm_bf16="bf16" in flags,
        torch_capability=capability,
        flags_source=source,
    )


def _torch_capability() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    getter = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return str(getter()) if getter is not None else None
