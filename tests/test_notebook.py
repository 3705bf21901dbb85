"""examples/rag_two_stage.ipynb runs top to bottom offline (nbclient), on MiniLM and the tiny Qwen3, and its
reranked passages are the official method's top-n of the embedding top-k."""

from __future__ import annotations

import json
import re

import pytest

from tests.test_examples import EXAMPLES, expected_rows

NOTEBOOK = EXAMPLES / "rag_two_stage.ipynb"


def probe(label: str) -> str:
    """A cell run after the notebook's own, in its kernel: what it computed, at full precision."""
    return f"""import json
print({label!r} + json.dumps({{
    "query": QUERY, "top_k": TOP_K, "top_n": TOP_N, "scorer": type(reranker.scorer).__name__,
    "reranked": [[d.page_content, d.metadata["retrieval_score"], d.metadata["relevance_score"]] for d in reranked],
    "prompt": prompt,
}}))"""


@pytest.fixture(scope="module")
def executed(tiny_model_dir, minilm_dir, vllm_template_server):
    """The notebook run as saved (local model), then its reranking cell again with RERANK_BASE_URL pointing at
    the vLLM stand-in (the notebook's other branch), in the same kernel."""
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell_count = len(notebook.cells)
    rerank_cell = next(cell.source for cell in notebook.cells if "from_vllm" in cell.source)
    prompt_cell = next(cell.source for cell in notebook.cells if "prompt = (" in cell.source)
    notebook.cells += [
        new_code_cell(probe("LOCAL")),
        new_code_cell(f'RERANK_BASE_URL, RERANK_TEMPLATE, RERANK_MODEL = {vllm_template_server.base_url!r}, "server", None'),
        new_code_cell(rerank_cell),
        new_code_cell(prompt_cell),
        new_code_cell(probe("VLLM")),
    ]
    with pytest.MonkeyPatch.context() as env:  # the kernel inherits this process's environment
        env.setenv("EMBED_MODEL", str(minilm_dir))
        env.setenv("RERANK_MODEL", str(tiny_model_dir))
        env.setenv("RERANK_DEVICE", "cpu")
        env.delenv("RERANK_BASE_URL", raising=False)
        env.setenv("HF_HUB_OFFLINE", "1")
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    return notebook, cell_count


def probed(notebook, label: str) -> dict:
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("name") == "stdout" and output["text"].startswith(label):
                return json.loads(output["text"][len(label):])
    raise AssertionError(f"no {label} probe output")


def test_notebook_is_saved_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["LOCAL", "VLLM"])
def test_notebook_runs_and_reranks_like_the_reference(executed, minilm_dir, reference_scorer, backend):
    notebook, _ = executed
    result = probed(notebook, backend)
    assert result["scorer"] == {"LOCAL": "LocalScorer", "VLLM": "VLLMScorer"}[backend]
    expected = expected_rows(minilm_dir, reference_scorer, result["query"], top_k=result["top_k"], top_n=result["top_n"])
    assert [row[0] for row in result["reranked"]] == [row[0] for row in expected]
    for (_, retrieval, rerank), (_, expected_retrieval, expected_rerank) in zip(result["reranked"], expected):
        assert rerank == pytest.approx(expected_rerank, abs=1e-5)
        assert retrieval == pytest.approx(expected_retrieval, abs=1e-5)
    assert all(f"[{i}] {row[0]}" in result["prompt"] for i, row in enumerate(expected, start=1))


def _html_tables(notebook, cell_count: int) -> list[str]:
    """The HTML the notebook's own cells displayed (their results), in order."""
    return [output["data"]["text/html"] for cell in notebook.cells[:cell_count] for output in cell.get("outputs", [])
            if "text/html" in output.get("data", {})]


@pytest.mark.slow
def test_notebook_shows_its_tables_as_html(executed):
    import html

    notebook, cell_count = executed
    local = probed(notebook, "LOCAL")
    tables = _html_tables(notebook, cell_count)
    assert len(tables) == 3 and all(table.startswith("<table>") for table in tables)  # candidates, reranked, tuning
    reranked = next(t for t in tables if "<th>rerank</th>" in t)
    assert "<th>rank</th><th>retrieval</th><th>rerank</th><th>text</th>" in reranked
    cells = re.findall(r"<td[^>]*>(.*?)</td>", reranked)
    rows = [cells[i:i + 4] for i in range(0, len(cells), 4)]
    assert len(rows) == len(local["reranked"])
    for rank, ((text, _, rerank), row) in enumerate(zip(local["reranked"], rows), start=1):
        assert row[0] == str(rank) and row[2] == f"{rerank:.4f}" and html.unescape(row[3]) == text
    # no fixed-width text table any more
    stdout = "".join(o.get("text", "") for c in notebook.cells[:cell_count] for o in c.get("outputs", []))
    assert "rank  retrieval  rerank  text" not in stdout


@pytest.mark.slow
def test_notebook_runs_without_warnings(executed):
    notebook, cell_count = executed
    stderr = "".join(o.get("text", "") for c in notebook.cells[:cell_count] for o in c.get("outputs", [])
                     if o.get("name") == "stderr")
    # tqdm.auto in a kernel without ipywidgets: "TqdmWarning: IProgress not found" (the examples extra brings them)
    assert "Warning" not in stderr and "IProgress" not in stderr, stderr
