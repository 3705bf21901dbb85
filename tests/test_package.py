"""Package surface: light base import, lazy backends, one exception root, `python -m` runs the CLI."""

from __future__ import annotations

import subprocess
import sys

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
