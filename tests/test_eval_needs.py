"""qwen3-rerank eval finds a missing optional package before any work: one line naming the package, what it is
for and the extra that brings it (exit 3, as the other commands), where it used to stop after the first stage
(diskcache), after the progress bar had started (httpx) or with a traceback at the chart (matplotlib). And the
eval extra brings everything eval uses by default."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwen3_rerank_integrations.cli import app
from qwen3_rerank_integrations.errors import MissingDependencyError, RerankError
from qwen3_rerank_integrations.evaluation import EvalConfig, run_evaluation
from qwen3_rerank_integrations.evaluation.needs import needs, require_packages
from qwen3_rerank_integrations.extras import install_command
from tests.test_eval import BEIR_MINI, HashScorer, hashed_first_stage

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
EVAL = install_command("eval")  # pip install "...[eval]", in the form this copy was installed


def block(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``module`` unimportable for this test, as if it were not installed."""
    monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize(
    ("module", "options", "expected"),
    [
        ("diskcache", [], "qwen3-rerank eval needs diskcache for the score cache that lets a run resume, which is "
         f"not installed: {EVAL}, or use --no-cache"),
        ("matplotlib", ["--no-cache"],
         f"qwen3-rerank eval needs matplotlib for the chart (metrics.png), which is not installed: {EVAL}"),
        ("ir_measures", [], f"qwen3-rerank eval needs ir-measures for the metrics, which is not installed: {EVAL}"),
        ("pytrec_eval", [], "qwen3-rerank eval needs pytrec-eval-terrier for the metrics"),
        ("sentence_transformers", [], "qwen3-rerank eval needs sentence-transformers for the dense first stage, "
         f"which is not installed: {EVAL}, or use --run FILE (a first stage you have)"),
        # The backend's packages, checked by the command line's backend check, before the evaluation's.
        ("httpx", ["--backend", "vllm", "--base-url", "http://127.0.0.1:9"],
         f"--backend vllm needs httpx, which is not installed: {install_command('remote')}"),
        ("torch", ["--run", "RUN"], f"--backend local needs torch, which is not installed: {install_command('local')}"),
        ("transformers", ["--backend", "engine", "--run", "RUN"], '[local]"'),
        ("vllm", ["--backend", "engine", "--run", "RUN"], "--backend engine needs vLLM, which is not installed"),
    ],
)
def test_a_missing_package_is_one_line_before_any_work(tmp_path, monkeypatch, module, options, expected):
    block(monkeypatch, module)
    run_file = str(hashed_first_stage(tmp_path / "first.trec"))
    out = tmp_path / "out"
    # A model that does not exist: had anything been loaded first, that would be the error instead.
    result = runner.invoke(app, ["eval", str(BEIR_MINI), "-o", str(out), "--rerank-model", str(tmp_path / "none"),
                                 *(run_file if option == "RUN" else option for option in options)])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], lines
    assert not out.exists()  # nothing read, embedded or written


@pytest.mark.parametrize(
    ("module", "options"),
    [("diskcache", {"cache": False}), ("sentence_transformers", {}), ("torch", {}), ("httpx", {})],
)
def test_only_what_the_options_use_is_needed(tmp_path, monkeypatch, module, options):
    # --no-cache needs no diskcache, a run file no sentence-transformers; the Python API gets a scorer that is
    # built already, so no backend package is asked for.
    block(monkeypatch, module)
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=hashed_first_stage(tmp_path / "r.trec"),
                        top_k=[3])
    report = run_evaluation(config, HashScorer(), **options)
    assert report.pairs_scored == 60


def test_the_python_api_checks_before_reading_anything(tmp_path, monkeypatch):
    block(monkeypatch, "matplotlib")
    config = EvalConfig(data=tmp_path / "no-such-folder", output=tmp_path / "out", run_file=tmp_path / "r.trec")
    with pytest.raises(MissingDependencyError) as caught:
        run_evaluation(config, HashScorer(), cache=False)
    assert str(caught.value) == (f"run_evaluation needs matplotlib for the chart (metrics.png), which is not "
                                 f"installed: {EVAL}")
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, RerankError)
    assert (caught.value.package, caught.value.extra) == ("matplotlib", "eval")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    block(monkeypatch, "diskcache")
    with pytest.raises(MissingDependencyError, match=r"needs diskcache .*, or use cache=False$"):
        require_packages(dense_first_stage=False, cache=True)


def test_with_everything_installed_nothing_is_missing():
    require_packages(dense_first_stage=True, cache=True)


def extra_closure(extra: str) -> set[str]:
    """The distributions an extra of pyproject.toml installs, its references to other extras followed."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["optional-dependencies"]
    names: set[str] = set()
    for requirement in extras[extra]:
        name, _, rest = re.match(r"([A-Za-z0-9._-]+)(\[([^\]]*)\])?", requirement).groups()  # type: ignore[union-attr]
        if name == "qwen3-rerank-integrations":
            for inner in rest.split(","):
                names |= extra_closure(inner.strip())
        else:
            names.add(name.lower())
    return names


def test_the_eval_extra_brings_everything_eval_uses_by_default():
    # It lacked diskcache: `[eval,cli,local]` stopped after the whole first stage with "DiskScoreCache needs diskcache".
    brought = extra_closure("eval")
    for need in needs(dense_first_stage=True, cache=True):
        assert need.extra == "eval" and need.package.lower() in brought, need
