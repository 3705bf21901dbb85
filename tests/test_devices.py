"""Device and dtype resolution, with accelerator availability simulated."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from qwen3_rerank_integrations import DeviceNotAvailableError, LocalScorer, devices
from qwen3_rerank_integrations.devices import resolve_device, resolve_dtype


# The renaming below cannot be undone in this process, and torch then looks for `torch.npu` whenever it asks for
# the current accelerator (torch.compile does, in later tests): an NPU module that reports no device stays behind.
_NO_NPU = types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0, is_bf16_supported=lambda: False)


def _register_npu_device_type() -> None:
    # What torch_npu does on import: torch.device("npu") only parses once privateuse1 is named "npu".
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    if getattr(torch, "npu", None) is None:
        torch.npu = _NO_NPU  # type: ignore[attr-defined]


@pytest.fixture
def machine(monkeypatch):
    """Simulate which accelerators exist: machine(npu=2, cuda=1, mps=True, bf16=True)."""

    def configure(npu: int = 0, cuda: int = 0, mps: bool = False, bf16: bool = True) -> None:
        if npu:
            _register_npu_device_type()
            fake_npu = types.SimpleNamespace(
                is_available=lambda: True, device_count=lambda: npu, is_bf16_supported=lambda: bf16
            )
            monkeypatch.setattr(torch, "npu", fake_npu, raising=False)
            monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
        else:
            monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu -> ImportError
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return configure


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ({"npu": 1, "cuda": 1, "mps": True}, "npu:0"),
        ({"cuda": 2, "mps": True}, "cuda:0"),
        ({"mps": True}, "mps"),
        ({}, "cpu"),
    ],
)
def test_auto_prefers_npu_then_cuda_then_mps_then_cpu(machine, available, expected):
    machine(**available)
    assert str(resolve_device("auto")) == expected


def test_npu_absent_when_torch_npu_missing(machine):
    machine(cuda=1)
    assert not devices.npu_available()


def test_broken_torch_npu_install_falls_back(machine, monkeypatch):
    machine(cuda=1)

    def broken_import(name):
        raise OSError("libascendcl.so: cannot open shared object file")

    monkeypatch.setattr(devices.importlib, "import_module", broken_import)
    assert str(resolve_device("auto")) == "cuda:0"


@pytest.mark.parametrize(
    ("name", "available", "expected"),
    [
        ("npu", {"npu": 2}, "npu:0"),
        ("npu:1", {"npu": 2}, "npu:1"),
        ("cuda:0", {"cuda": 1}, "cuda:0"),
        ("CUDA", {"cuda": 1}, "cuda:0"),
        ("mps", {"mps": True}, "mps"),
        ("cpu", {"npu": 1, "cuda": 1}, "cpu"),
    ],
)
def test_explicit_devices(machine, name, available, expected):
    machine(**available)
    assert str(resolve_device(name)) == expected


@pytest.mark.parametrize(
    ("name", "available", "pattern"),
    [
        ("npu", {}, r"device='npu' is not available: no npu device visible; install torch_npu"),
        ("npu:1", {"npu": 1}, r"device='npu:1' is not available: 1 npu device\(s\) visible.*ASCEND_RT_VISIBLE_DEVICES"),
        ("cuda", {}, r"no cuda device visible.*CUDA_VISIBLE_DEVICES"),
        ("cuda:3", {"cuda": 2}, r"2 cuda device\(s\) visible"),
        ("mps", {}, r"no mps device visible.*Apple silicon"),
    ],
)
def test_unavailable_explicit_device(machine, name, available, pattern):
    machine(**available)
    with pytest.raises(DeviceNotAvailableError, match=pattern):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", "auto:1", "cpu:3", ""])
def test_malformed_device_names(name):
    with pytest.raises(ValueError, match="device"):
        resolve_device(name)


def test_device_must_be_a_string():
    with pytest.raises(TypeError, match="device must be a str"):
        resolve_device(0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("device", "bf16", "expected"),
    [
        ("cpu", True, torch.float32),
        ("mps", True, torch.float16),
        ("cuda:0", True, torch.bfloat16),
        ("cuda:0", False, torch.float16),
        ("npu:0", True, torch.bfloat16),
        ("npu:0", False, torch.float16),
    ],
)
def test_auto_dtype(machine, device, bf16, expected):
    machine(npu=1, cuda=1, mps=True, bf16=bf16)
    assert resolve_dtype("auto", torch.device(device)) is expected


@pytest.mark.parametrize(
    ("name", "expected"), [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)]
)
def test_explicit_dtype(name, expected):
    assert resolve_dtype(name, torch.device("cpu")) is expected


def test_unavailable_device_fails_before_weights_load(machine, tiny_model_dir):
    machine()
    scorer = LocalScorer(str(tiny_model_dir), device="cuda")
    with pytest.raises(DeviceNotAvailableError):
        scorer.score("q", ["a"])
    assert not scorer.loaded


def test_bfloat16_on_cpu_stays_close(tiny_model_dir, local_scorer, documents):
    # A real non-fp32 path: loads and scores in bf16; not exact, but close and finite.
    bf16 = LocalScorer(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    got = bf16.score("What is the capital of China?", documents)
    expected = local_scorer.score("What is the capital of China?", documents)
    assert bf16._model.dtype is torch.bfloat16
    assert max(abs(a - b) for a, b in zip(got, expected)) < 0.05


# ------------------------------------------------------------------------------------------------ CPU bf16 units
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "amx", "avx512_bf16", "arm_bf16", "recommended", "why"),
    [
        (SAPPHIRE_RAPIDS, True, True, False, "bfloat16", "has AMX-BF16"),
        (ZEN4, False, True, False, "bfloat16", "has AVX512-BF16 (no AMX)"),
        (ZEN3, False, False, False, "float32", "no bf16 units"),
        (GRAVITON3, False, False, True, "bfloat16", "has Arm BF16"),
    ],
    ids=["amx", "avx512-bf16", "avx2-only", "arm-bf16"],
)
def test_cpu_bf16_units_are_read_from_the_cpu_flags(cpuinfo, amx, avx512_bf16, arm_bf16, recommended, why):
    support = devices.cpu_bf16_support(cpuinfo)
    assert (support.has_amx, support.has_avx512_bf16, support.has_arm_bf16) == (amx, avx512_bf16, arm_bf16)
    assert support.has_bf16_units is (recommended == "bfloat16")
    assert support.recommended_dtype == recommended and why in support.reason
    # auto stays exact whatever the CPU: bf16 is recommended, never picked silently.
    assert support.auto_dtype == "float32" and "official scores" in support.reason


def test_amx_tile_without_amx_bf16_is_not_amx():
    support = devices.cpu_bf16_support("flags\t: avx2 amx_tile amx_int8\n")
    assert not support.has_amx and support.recommended_dtype == "float32"


def test_auto_dtype_on_cpu_is_float32_even_with_amx(monkeypatch):
    monkeypatch.setattr(devices, "_system_cpu_bf16_support", lambda: devices.cpu_bf16_support(SAPPHIRE_RAPIDS))
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32


def test_unreadable_cpuinfo_recommends_nothing(monkeypatch, tmp_path):
    devices._system_cpu_bf16_support.cache_clear()
    monkeypatch.setattr(devices, "_CPUINFO", tmp_path / "missing")
    try:
        support = devices.cpu_bf16_support()
    finally:
        devices._system_cpu_bf16_support.cache_clear()
    assert support.flags_source == "unknown" and not support.has_bf16_units and "unknown" in support.reason


def test_cpu_bf16_support_reports_torch_capability():
    assert devices.cpu_bf16_support(ZEN3).torch_capability == torch.backends.cpu.get_cpu_capability()
