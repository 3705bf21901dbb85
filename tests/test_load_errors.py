"""Load errors that point somewhere: a model that cannot be loaded is named with the option that takes a folder,
the `hf download` command and the offline switch; with the switch on, nothing says "check your internet
connection"; and no text of the package, README, docs or examples suggests `huggingface-cli`, which
huggingface-hub 1.x refuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qwen3_rerank_integrations import LocalScorer, ModelLoadError
from qwen3_rerank_integrations.errors import hub_load_error

ROOT = Path(__file__).resolve().parent.parent
GENERIC = OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
                  "cached files. Check your internet connection or see how to run the library in offline mode at "
                  "'https://huggingface.co/docs/transformers/installation#offline-mode'.")


def test_offline_the_reranker_error_says_not_in_the_cache_not_check_your_connection():
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:  # tests/conftest.py sets HF_HUB_OFFLINE=1
        LocalScorer("Qwen/Qwen3-Reranker-does-not-exist").score("q", ["a"])
    message = str(info.value)
    assert time.perf_counter() - started < 10
    assert "internet connection" not in message and "couldn't connect" not in message
    for fragment in ("model='Qwen/Qwen3-Reranker-does-not-exist'", "HF_HUB_OFFLINE=1: no download",
                     "Qwen/Qwen3-Reranker-does-not-exist is not in the Hugging Face cache",
                     "hf download Qwen/Qwen3-Reranker-does-not-exist"):
        assert fragment in message, message


def test_hub_load_error_online_and_offline():
    online = str(hub_load_error("the embedder --embed-model 'BAAI/x'", "BAAI/x", GENERIC,
                                folder_option="--embed-model PATH"))
    assert "Check your internet connection" in online  # online, the library's own advice is right
    assert "hf download BAAI/x" in online and "--embed-model PATH" in online
    assert "set HF_HUB_OFFLINE=1 to get this error at once" in online
    offline = str(hub_load_error("the embedder --embed-model 'BAAI/x'", "BAAI/x", GENERIC,
                                 folder_option="--embed-model PATH", offline_switch="HF_HUB_OFFLINE=1"))
    assert "internet" not in offline and "BAAI/x is not in the Hugging Face cache" in offline
    assert "HF_HUB_OFFLINE=1: no download" in offline and "hf download BAAI/x" in offline
    other = str(hub_load_error("m", "BAAI/x", ValueError("config.json is not valid JSON"), folder_option="F",
                               offline_switch="HF_HUB_OFFLINE=1"))
    assert "config.json is not valid JSON" in other  # any other reason is kept


def test_no_text_suggests_huggingface_cli():
    paths = [p for p in ROOT.joinpath("qwen3_rerank_integrations").rglob("*.py")]
    paths += [ROOT / "README.md", *ROOT.joinpath("docs").rglob("*.md"), *ROOT.joinpath("examples").glob("*.py"),
              ROOT / "examples/rag_two_stage.ipynb"]
    offenders = [str(p.relative_to(ROOT)) for p in paths if "huggingface-cli" in p.read_text()]
    assert offenders == []
