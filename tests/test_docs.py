"""The documentation: README.md and the MkDocs site in docs/ stay buildable, linked and executed.

Every python block of README.md and docs/*.md is run here (or in the test module ``RUN_BY`` names) with offline
stand-ins for the models, or is marked ``<!-- not-run: REASON -->``; the site builds with ``mkdocs build --strict``
(broken links, anchors, pages missing from the nav and API names that no longer resolve all fail it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.doc_blocks import PAGES, ROOT, RUN_BY, blocks_to_run, python_blocks, run_blocks

HUB_ID = "Qwen/Qwen3-Reranker-0.6B"
README_MAX_LINES = 250


# ------------------------------------------------------------------------------------------------ the blocks
def test_every_python_block_is_run_or_says_why_not():
    unmarked, unknown = [], []
    for page in PAGES:
        for block in python_blocks(page):
            if block.marker is None or not block.value:
                unmarked.append(block.where)
            elif block.marker == "run" and block.value not in RUN_BY:
                unknown.append(f"{block.where}: {block.value}")
    assert not unmarked, f"python blocks without <!-- run: NAME --> or <!-- not-run: REASON --> right above: {unmarked}"
    assert not unknown, f"run: names no test runs (add them to tests/doc_blocks.RUN_BY and run them): {unknown}"


def test_every_run_name_is_used_and_run_by_its_test():
    used = {block.value for page in PAGES for block in python_blocks(page) if block.marker == "run"}
    assert used == set(RUN_BY), f"RUN_BY names no page uses: {set(RUN_BY) - used}"
    for name, module in RUN_BY.items():
        assert f'"{name}")' in (ROOT / module).read_text("utf-8"), f"{module} does not run the {name!r} blocks"


def test_the_markers_are_seen():
    # The checks above would pass on pages where the block parser found nothing.
    blocks = [block for page in PAGES for block in python_blocks(page)]
    assert len(blocks) >= 10 and {block.marker for block in blocks} <= {"run", "not-run"}
    assert sum(block.marker == "run" for block in blocks) >= 10
    assert python_blocks_of("<!-- not-run: no server here -->\n```python\nx = 1\n```\n")[0].value == "no server here"


def python_blocks_of(text: str):
    """The blocks of ``text``, parsed as a page."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "page.md"
        page.write_text(text, "utf-8")
        return python_blocks(page)


@pytest.fixture
def hub_model_is_the_tiny_model(monkeypatch, tiny_model_dir):
    """``LocalScorer("Qwen/Qwen3-Reranker-0.6B")`` in a documentation block loads the offline tiny random model."""
    import qwen3_rerank_integrations
    from qwen3_rerank_integrations.local import LocalScorer

    def stand_in(model=None, /, **kwargs):
        return LocalScorer(tiny_model_dir if model == HUB_ID else model, **kwargs)

    monkeypatch.setattr(qwen3_rerank_integrations, "LocalScorer", stand_in, raising=False)


def test_quickstart_is_the_same_on_both_pages_and_runs(hub_model_is_the_tiny_model, capsys):
    readme, index = blocks_to_run(ROOT / "README.md", "quickstart"), blocks_to_run(ROOT / "docs/index.md", "quickstart")
    assert [block.code for block in readme] == [block.code for block in index]
    with run_blocks(readme, "docs_quickstart") as namespace:
        scores = namespace["scores"]
    assert len(scores) == 2 and all(isinstance(s, float) and 0 <= s <= 1 for s in scores)
    assert capsys.readouterr().out == f"{scores}\n"


def test_score_cache_page_runs_and_prints_what_its_comments_say(hub_model_is_the_tiny_model, tmp_path, monkeypatch,
                                                                capsys):
    from qwen3_rerank_integrations import ByteStoreScoreCache, DiskScoreCache, InMemoryScoreCache

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the page's DiskScoreCache("~/.cache/...") lands here
    with run_blocks(blocks_to_run(ROOT / "docs/cache.md", "cache"), "docs_cache") as namespace:
        assert isinstance(namespace["scorer"].cache, InMemoryScoreCache)  # cache=True
        assert namespace["in_memory"].cache.max_entries == 1_000_000
        assert isinstance(namespace["on_disk"].cache, DiskScoreCache)
        assert isinstance(namespace["in_store"].cache, ByteStoreScoreCache)
    # As the page's comments say: the LocalScorer's cache=True, then a protocol-only scorer wrapped for cache=.
    assert capsys.readouterr().out.count("hits=1 misses=3 hit_rate=0.25") == 2


# ------------------------------------------------------------------------------------------------ README
def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text("utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_links_point_at_files_that_exist():
    readme = (ROOT / "README.md").read_text("utf-8")
    targets = re.findall(r"\]\(((?!https?://)[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links to the documentation"
    missing = [target for target in targets if not (ROOT / target).exists()]
    assert not missing, missing


# ------------------------------------------------------------------------------------------------ the site
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.docs
@pytest.mark.slow  # a whole mkdocs build; the pages' links and blocks: the fast tests here
def test_site_builds_strict_with_the_api_reference(tmp_path):
    missing = [name for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers") if not _installed(name)]
    if missing:
        skip_or_fail("docs", f"the documentation build needs {', '.join(missing)}: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (site / "reference/index.html").read_text("utf-8")
    for name in ("LocalScorer", "VLLMScorer", "Qwen3RerankCompressor", "Qwen3RerankPostprocessor", "ScorerBase",
                 "DiskScoreCache", "RerankError"):
        assert re.search(rf'id="qwen3_rerank_integrations\.(?:\w+\.)*{name}"', reference), name
    # The benchmark log is included from benchmarks/README.md, and the evaluation sample's chart is shipped.
    assert "Full size (28 layers of the 0.6B shape" in (site / "benchmarks/index.html").read_text("utf-8")
    assert (site / "eval-sample.png").is_file()
    assert 'src="../eval-sample.png"' in (site / "evaluation/index.html").read_text("utf-8")
