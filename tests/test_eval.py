"""qwen3-rerank eval and run_evaluation: the shipped BEIR set, bad data in one line naming file and line, metrics
equal to ir-measures' on the written run files, reranked order equal to the scorer's (and the official method's)
scores, and a run killed with SIGKILL that resumes to identical files, scoring only what it had not scored."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import ir_measures
import pytest
from typer.testing import CliRunner

from qwen3_rerank_integrations.cli import app
from qwen3_rerank_integrations.evaluation import (
    DataError,
    EvalConfig,
    load_beir,
    read_run,
    run_evaluation,
)
from tests.test_engine import fake_vllm  # noqa: F401  (the stand-in vllm module, a fixture)

ROOT = Path(__file__).resolve().parent.parent
BEIR_MINI = ROOT / "examples" / "beir_mini"
DEFAULT_MEASURES = ["nDCG@10", "RR@10", "R@10"]

runner = CliRunner()


class HashScorer:
    """A deterministic stand-in reranker: a score per (instruction, query, document) from a hash, calls counted."""

    model = "hash-scorer"

    def __init__(self) -> None:
        self.pairs = 0

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]:
        self.pairs += len(documents)
        return [self.value(query, document, instruction) for document in documents]

    async def ascore(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]:
        return self.score(query, documents, instruction=instruction)

    @staticmethod
    def value(query: str, document: str, instruction: str | None) -> float:
        digest = hashlib.sha256(f"{instruction}\x00{query}\x00{document}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32

    def cache_identity(self) -> dict[str, str]:
        return {"scorer": "hash-scorer"}


# ------------------------------------------------------------------------------------------------ helpers
def qrels_from_tsv(path: Path) -> dict[str, dict[str, int]]:
    """The qrels read here, not by the package: the check must not share the code it checks."""
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        query_id, doc_id, grade = line.split("\t")
        qrels.setdefault(query_id, {})[doc_id] = int(grade)
    return qrels


def trec_lines(path: Path) -> list[tuple[str, str, int, float, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        query_id, q0, doc_id, rank, score, tag = line.split(" ")
        assert q0 == "Q0"
        rows.append((query_id, doc_id, int(rank), float(score), tag))
    return rows


def by_query(rows: list[tuple[str, str, int, float, str]]) -> dict[str, list[tuple[str, float]]]:
    grouped: dict[str, list[tuple[str, float]]] = {}
    for query_id, doc_id, rank, score, _ in rows:
        grouped.setdefault(query_id, []).append((doc_id, score))
        assert rank == len(grouped[query_id])  # ranks count 1, 2, 3... in file order
    return grouped


def trec_eval_order(items: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """trec_eval's reading of a run: score descending, ties by document id descending."""
    return sorted(items, key=lambda item: (item[1], item[0]), reverse=True)


def hashed_first_stage(path: Path) -> Path:
    """A first-stage TREC run over the whole mini corpus, scored by a hash (the rank column deliberately
    shuffled: trec_eval ignores it)."""
    data = load_beir(BEIR_MINI)
    lines = []
    for query_id, query in data.queries.items():
        for rank, doc_id in enumerate(sorted(data.corpus, reverse=True), 1):
            lines.append(f"{query_id} Q0 {doc_id} {rank} {HashScorer.value(query, doc_id, 'first')} bm25")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def output_files(folder: Path) -> dict[str, bytes]:
    """Every output file but the score cache, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "score-cache" not in path.relative_to(folder).parts
    }


# ------------------------------------------------------------------------------------------------ the shipped set
def test_shipped_set_is_the_bundled_corpus_with_graded_judgments():
    data = load_beir(BEIR_MINI)
    bundled = [json.loads(line) for line in (ROOT / "examples" / "corpus.jsonl").read_text("utf-8").splitlines()]
    assert data.corpus == {passage["id"]: passage["text"] for passage in bundled}
    assert 12 <= len(data.queries) <= 20
    assert data.qrels == qrels_from_tsv(BEIR_MINI / "qrels" / "test.tsv")
    grades = {grade for judged in data.qrels.values() for grade in judged.values()}
    assert grades == {0, 1, 2}
    assert all(2 in judged.values() for judged in data.qrels.values())  # every query has a fully relevant passage
    assert any(text.isascii() is False for text in data.queries.values())  # Chinese queries too


# ------------------------------------------------------------------------------------------------ bad data
def make_beir(folder: Path, corpus: str | None, queries: str | None, qrels: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels/test.tsv", qrels)):
        if content is not None:
            (folder / name).parent.mkdir(exist_ok=True)
            (folder / name).write_text(textwrap.dedent(content).lstrip(), encoding="utf-8")
    return folder


GOOD_CORPUS = '{"_id": "d1", "title": "", "text": "alpha"}\n{"_id": "d2", "text": "beta"}\n'
GOOD_QUERIES = '{"_id": "q1", "text": "what is alpha"}\n{"_id": "q2", "text": "what is beta"}\n'
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td2\t1\n"


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "file", "fragments"),
    [
        (None, GOOD_QUERIES, GOOD_QRELS, "corpus.jsonl", ["no such file"]),
        (GOOD_CORPUS, None, GOOD_QRELS, "queries.jsonl", ["no such file"]),
        (GOOD_CORPUS, GOOD_QUERIES, None, "qrels/test.tsv", ["no such file"]),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q2\tnope\t1\n", "qrels/test.tsv line 4",
         ["corpus id 'nope' is not in corpus.jsonl"]),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q9\td1\t1\n", "qrels/test.tsv line 4",
         ["query id 'q9' is not in queries.jsonl"]),
        (GOOD_CORPUS, GOOD_QUERIES + '{"_id": "q3", "text": "  "}\n', GOOD_QRELS, "queries.jsonl line 3",
         ["query 'q3' has an empty text"]),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q2\td1\tvery\n", "qrels/test.tsv line 4", ["must be an integer"]),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q2\td1\n", "qrels/test.tsv line 4", ["expected 3 columns"]),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q1\td1\t0\n", "qrels/test.tsv line 4", ["'d1' twice"]),
        (GOOD_CORPUS + "{not json\n", GOOD_QUERIES, GOOD_QRELS, "corpus.jsonl line 3", ["not valid JSON"]),
        (GOOD_CORPUS + '{"_id": "d1", "text": "again"}\n', GOOD_QUERIES, GOOD_QRELS, "corpus.jsonl line 3",
         ["'d1' appears twice"]),
        (GOOD_CORPUS + '{"_id": "d 3", "text": "x"}\n', GOOD_QUERIES, GOOD_QRELS, "corpus.jsonl line 3",
         ["contains whitespace"]),
        (GOOD_CORPUS + '{"_id": "d3"}\n', GOOD_QUERIES, GOOD_QRELS, "corpus.jsonl line 3", ["no 'text' field"]),
        (GOOD_CORPUS + '{"_id": "d3", "text": 7}\n', GOOD_QUERIES, GOOD_QRELS, "corpus.jsonl line 3",
         ["'text' must be a string"]),
        (GOOD_CORPUS, '{"text": "no id"}\n', GOOD_QRELS, "queries.jsonl line 1", ["needs an '_id'"]),
        (GOOD_CORPUS + '{"_id": "d3", "text": "broken \\ud800"}\n', GOOD_QUERIES, GOOD_QRELS, "corpus.jsonl line 3",
         ["lone surrogate U+D800"]),
        (GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\n", "qrels/test.tsv", ["no judgments"]),
        # A headerless file's malformed first line is an error, not a header to drop (it was dropped, exit 0).
        (GOOD_CORPUS, GOOD_QUERIES, "q1\td1\tX\nq2\td2\t1\n", "qrels/test.tsv line 1",
         ["the score must be an integer, got 'X'", "a header line must name the columns"]),
        (GOOD_CORPUS, GOOD_QUERIES, "q1 d1 X\n", "qrels/test.tsv line 1", ["must be an integer, got 'X'"]),
        (GOOD_CORPUS, GOOD_QUERIES, "query corpus stuff\nq1\td1\t1\n", "qrels/test.tsv line 1",
         ["must be an integer, got 'stuff'"]),
    ],
)
def test_bad_data_is_one_line_naming_file_and_line(tmp_path, corpus, queries, qrels, file, fragments):
    folder = make_beir(tmp_path / "data", corpus, queries, qrels)
    with pytest.raises(DataError) as caught:
        load_beir(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(folder / file)), message
    for fragment in fragments:
        assert fragment in message

    # The command line: the same message as one "Error:" line, exit 2, before any model is loaded.
    result = runner.invoke(app, ["eval", str(folder), "-o", str(tmp_path / "out"), "--rerank-model",
                                 str(tmp_path / "no-such-model")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"Error: {message}"]


@pytest.mark.parametrize(
    ("file", "content", "line"),
    [
        ("corpus.jsonl", GOOD_CORPUS.encode() + b'{"_id": "d3", "text": "caf\xe9"}\n', 3),
        ("queries.jsonl", b'{"_id": "q1", "text": "what is alpha"}\n\n{"_id": "q2", "text": "\xff"}\n', 3),
        ("qrels/test.tsv", b"query-id\tcorpus-id\tscore\nq1\td1\t2\r\nq2\td2\t1\x80\n", 3),
    ],
)
def test_a_byte_that_is_not_utf8_is_named_by_file_and_line(tmp_path, file, content, line):
    # It was "not UTF-8 text (invalid start byte at byte 62)": a byte offset nobody can find in an editor.
    folder = make_beir(tmp_path / "data", GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS)
    (folder / file).write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_beir(folder)
    assert str(caught.value).startswith(f"{folder / file} line {line}: not UTF-8 text (byte 0x"), caught.value
    result = runner.invoke(app, ["eval", str(folder), "-o", str(tmp_path / "out"), "--rerank-model", "x"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [f"Error: {caught.value}"]


def test_lines_end_at_newlines_only(tmp_path):
    # U+2028 and U+0085 are allowed inside a JSON string: they neither cut a record nor shift the
    # line numbers of the next ones (str.splitlines() did both).
    corpus = '{"_id": "d1", "text": "a\u2028b\u0085c"}\n{"_id": "d2", "text": "beta"}\n{broken\n'
    folder = make_beir(tmp_path / "data", None, GOOD_QUERIES, GOOD_QRELS)
    (folder / "corpus.jsonl").write_text(corpus, encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus.jsonl line 3: not valid JSON"):
        load_beir(folder)
    (folder / "corpus.jsonl").write_text("\ufeff" + corpus.replace("{broken\n", ""), encoding="utf-8")
    assert load_beir(folder).corpus == {"d1": "a\u2028b\u0085c", "d2": "beta"}


@pytest.mark.parametrize("header", ["query-id\tcorpus-id\tscore", "query_id corpus_id relevance", "qid\tdocid\trel",
                                    "Query-ID\tCorpus-ID\tScore"])
def test_a_header_is_known_by_its_column_names(tmp_path, header):
    folder = make_beir(tmp_path / "data", GOOD_CORPUS, GOOD_QUERIES, f"{header}\nq1\td1\t2\nq2\td2\t1\n")
    assert load_beir(folder).qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}


@pytest.mark.parametrize("where", ["file", "parent", "runs", "score-cache"])
def test_an_output_path_that_is_not_a_folder_is_one_line_and_exit_2(tmp_path, where):
    # It was exit 3 with a raw "[Errno 17] File exists", after the data had been read.
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder", encoding="utf-8")
    output = {"file": blocker, "parent": blocker / "out"}.get(where, tmp_path / "out")
    if where in ("runs", "score-cache"):
        output.mkdir()
        (output / where).write_text("not a folder", encoding="utf-8")
    result = runner.invoke(app, ["eval", str(BEIR_MINI), "-o", str(output), "--rerank-model", "x"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: --output: {output} "), lines
    assert "is a file, not a folder" in lines[0]
    with pytest.raises(ValueError, match="is a file, not a folder"):
        EvalConfig(data=BEIR_MINI, output=output)
    assert blocker.read_text(encoding="utf-8") == "not a folder"


def test_good_data_loads_titles_and_numeric_ids(tmp_path):
    corpus = '{"_id": 1, "title": "Alpha", "text": "the first letter"}\n{"_id": "d2", "text": "beta"}\n'
    folder = make_beir(tmp_path / "data", corpus, GOOD_QUERIES + '{"_id": "q9", "text": "unjudged"}\n',
                       "q1\t1\t2\nq2\td2\t0\n")  # no header line
    data = load_beir(folder)
    assert data.corpus == {"1": "Alpha the first letter", "d2": "beta"}  # title and text, as BEIR embeds them
    assert data.queries == {"q1": "what is alpha", "q2": "what is beta"}  # only the judged queries
    assert data.qrels == {"q1": {"1": 2}, "q2": {"d2": 0}}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("q01 Q0 sec-01 1 0.5", "expected 6 columns"),
        ("q01 Q0 nope 1 0.5 tag", "corpus id 'nope' is not in the corpus"),
        ("q01 Q0 sec-02 2 0.5 tag", "query 'q01' lists corpus id 'sec-02' twice"),
        ("q01 Q0 sec-01 1 high tag", "the score must be a number"),
        ("q01 Q0 sec-01 1 nan tag", "the score must be finite"),
    ],
)
def test_bad_run_file_is_one_line_naming_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "first.trec"
    path.write_text(f"q01 Q0 sec-02 1 0.9 tag\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path} line 2: .*{fragment}"):
        read_run(path, load_beir(BEIR_MINI).corpus)
    result = runner.invoke(app, ["eval", str(BEIR_MINI), "-o", str(tmp_path / "out"), "--run", str(path),
                                 "--rerank-model", str(tmp_path / "no-such-model"), "--no-cache"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path} line 2: ") and fragment in lines[0], lines


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--label", "a", "--label", "b"], "2 labels (--label) for 1 instructions"),
        (["--instruction", "x", "--label", "a b"], "label 'a b' must be letters"),
        (["--instruction", "x", "--label", "first_stage"], "not 'first_stage'"),
        (["--instruction", "x", "--instruction", "y", "--label", "s", "--label", "s"], "labels must be unique"),
        (["--instruction", "x", "--instruction", "x"], "the same instruction twice"),
        (["--instruction", " "], "--instruction must not be empty"),
        (["--measure", "nDCG@ten"], "--measure: measure 'nDCG@ten' is not one ir-measures knows"),
        (["--top-k", "5", "--top-k", "5"], "--top-k: top_k lists a depth twice"),
        (["--run", "x.trec", "--embed-model", "m"], "two first stages: give one"),
        (["--backend", "vllm"], "--backend vllm needs --base-url"),
        (["--dtype", "float32", "--backend", "vllm", "--base-url", "http://localhost:1"], "--dtype only applies"),
        (["--base-url", "http://localhost:1"], "--base-url only applies"),
    ],
)
def test_bad_settings_fail_in_one_line_before_any_work(tmp_path, options, fragment):
    result = runner.invoke(app, ["eval", str(BEIR_MINI), "-o", str(tmp_path / "out"), *options])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_system_names_and_default_measures():
    config = EvalConfig(data=BEIR_MINI, output="out")
    assert config.systems() == [("rerank", 0, 100)]
    assert config.measure_names() == ["nDCG@10", "RR@10", "R@10", "R@100"]
    several = EvalConfig(data=BEIR_MINI, output="out", instructions=[None, "Find answers"], top_k=[20, 5],
                         measures=["MAP", "AP", "nDCG@10"])
    assert several.systems() == [("rerank-1@20", 0, 20), ("rerank-1@5", 0, 5), ("rerank-2@20", 1, 20),
                                 ("rerank-2@5", 1, 5)]
    assert several.measure_names() == ["AP", "nDCG@10"]  # ir-measures' names, each once
    labelled = EvalConfig(data=BEIR_MINI, output="out", instructions=["Find answers"], labels=["answers"])
    assert labelled.systems() == [("answers", 0, 100)]


# ------------------------------------------------------------------------------------------------ the pipeline
def test_metrics_are_ir_measures_on_the_written_runs_and_order_is_the_scorers(tmp_path):
    first = hashed_first_stage(tmp_path / "first.trec")
    scorer = HashScorer()
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=first, top_k=[8],
                        instructions=[None, "Find passages that answer the question"], labels=["default", "answers"])
    report = run_evaluation(config, scorer, cache=False)
    out = tmp_path / "out"

    # metrics.json: the systems in order, each measure as ir-measures names and computes it on the written file.
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    assert list(metrics) == ["first_stage", "default", "answers"]
    assert report.metrics() == metrics
    qrels = qrels_from_tsv(BEIR_MINI / "qrels" / "test.tsv")
    measures = [ir_measures.parse_measure(name) for name in [*DEFAULT_MEASURES, "R@8"]]
    for system, values in metrics.items():
        assert list(values) == [*DEFAULT_MEASURES, "R@8"]
        expected = ir_measures.calc_aggregate(measures, qrels, ir_measures.read_trec_run(str(out / "runs" /
                                                                                             f"{system}.trec")))
        assert values == {str(measure): expected[measure] for measure in measures}
    assert metrics["first_stage"]["R@8"] == metrics["default"]["R@8"] == metrics["answers"]["R@8"]
    assert metrics["default"] != metrics["answers"]  # the instruction changes the scores, so the ranking

    # first_stage.trec: the given run's top 8 per query, in trec_eval's order.
    data = load_beir(BEIR_MINI)
    given = by_query(trec_lines(first))
    first_stage = by_query(trec_lines(out / "runs" / "first_stage.trec"))
    assert list(first_stage) == list(data.queries)
    for query_id, documents in first_stage.items():
        assert documents == trec_eval_order(given[query_id])[:8]

    # Each reranked run: the same 8 documents, ordered and scored by the scorer with its instruction.
    for system, instruction in (("default", None), ("answers", "Find passages that answer the question")):
        rows = trec_lines(out / "runs" / f"{system}.trec")
        assert {tag for *_, tag in rows} == {system}
        for query_id, documents in by_query(rows).items():
            expected = [(doc_id, HashScorer.value(data.queries[query_id], data.corpus[doc_id], instruction))
                        for doc_id, _ in first_stage[query_id]]
            assert documents == trec_eval_order(expected)
    assert scorer.pairs == report.pairs == report.pairs_scored == 2 * 20 * 8

    # The table (printed and saved) and the chart.
    table = (out / "metrics.md").read_text("utf-8")
    assert table == report.table
    assert table.splitlines()[0] == "| system | nDCG@10 | RR@10 | R@10 | R@8 |"
    assert "| answers | " in table and "instruction 'Find passages that answer the question'" in table
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_depths_rerank_the_head_and_keep_the_tail(tmp_path):
    first = hashed_first_stage(tmp_path / "first.trec")
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=first, top_k=[3, 6])
    run_evaluation(config, HashScorer(), cache=False)
    data = load_beir(BEIR_MINI)
    first_stage = by_query(trec_lines(tmp_path / "out" / "runs" / "first_stage.trec"))
    shallow = by_query(trec_lines(tmp_path / "out" / "runs" / "rerank@3.trec"))
    deep = by_query(trec_lines(tmp_path / "out" / "runs" / "rerank@6.trec"))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text("utf-8"))
    assert list(metrics) == ["first_stage", "rerank@3", "rerank@6"]
    for query_id, query in data.queries.items():
        candidates = [doc_id for doc_id, _ in first_stage[query_id]]
        assert len(candidates) == 6
        for documents, k in ((shallow[query_id], 3), (deep[query_id], 6)):
            head = trec_eval_order([(doc_id, HashScorer.value(query, data.corpus[doc_id], None))
                                    for doc_id in candidates[:k]])
            assert documents[:k] == head
            assert [doc_id for doc_id, _ in documents[k:]] == candidates[k:]  # the tail keeps first-stage order
            assert all(score < head[-1][1] for _, score in documents[k:])
    assert metrics["first_stage"]["R@6"] == metrics["rerank@3"]["R@6"] == metrics["rerank@6"]["R@6"]


def test_queries_missing_from_the_run_file_count_as_zero(tmp_path):
    first = tmp_path / "first.trec"
    first.write_text("q01 Q0 sec-01 1 0.9 bm25\nq01 Q0 geo-01 2 0.5 bm25\nq99 Q0 geo-01 1 0.5 bm25\n", "utf-8")
    notices: list[str] = []
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=first, top_k=[5])
    report = run_evaluation(config, HashScorer(), cache=False, log=notices.append)
    assert ("warning: the run file first.trec has documents for only 1 of the 20 queries the qrels judge; queries "
            "without documents (19, e.g. 'q02') count as 0 in every system") in notices
    assert "note: the run file lists queries the qrels do not judge (1, e.g. 'q99'); they are left out" in notices
    assert "`first_stage`: run file first.trec (documents for 1 of the 20 queries), top 5" in report.table
    qrels = qrels_from_tsv(BEIR_MINI / "qrels" / "test.tsv")
    rr = ir_measures.calc_aggregate([ir_measures.parse_measure("RR@10")], qrels,
                                    ir_measures.read_trec_run(str(tmp_path / "out" / "runs" / "rerank.trec")))
    assert report.metrics()["rerank"]["RR@10"] == list(rr.values())[0] <= 1 / 20
    assert report.pairs == 2


# ------------------------------------------------------------------------------------------------ real models
@pytest.mark.slow
def test_dense_first_stage_and_local_rerank_equal_the_official_method(tmp_path, minilm_dir, local_scorer,
                                                                      reference_scorer):
    from sentence_transformers import SentenceTransformer

    instruction = "Given a question, retrieve passages that answer it"
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", embed_model=str(minilm_dir), top_k=[6],
                        instructions=[None, instruction], device="cpu")
    report = run_evaluation(config, local_scorer, cache=False)
    out = tmp_path / "out"
    data = load_beir(BEIR_MINI)

    # The first stage: each query's 6 nearest passages by MiniLM cosine similarity, embedded here directly.
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    doc_ids = list(data.corpus)
    documents = model.encode(list(data.corpus.values()), normalize_embeddings=True)
    first_stage = by_query(trec_lines(out / "runs" / "first_stage.trec"))
    for query_id, query in data.queries.items():
        similarities = documents @ model.encode(query, normalize_embeddings=True)
        expected = sorted(zip(doc_ids, similarities.tolist()), key=lambda item: -item[1])[:6]
        assert [doc_id for doc_id, _ in first_stage[query_id]] == [doc_id for doc_id, _ in expected]
        assert [score for _, score in first_stage[query_id]] == pytest.approx([s for _, s in expected], abs=1e-5)

    # Each reranked run orders those 6 by the scorer's scores for its instruction, which are the official
    # method's to 1e-5 (checked on a few queries: the official method is slow, and its fidelity has its own tests).
    for system, system_instruction in (("rerank-1", None), ("rerank-2", instruction)):
        reranked = by_query(trec_lines(out / "runs" / f"{system}.trec"))
        for number, (query_id, query) in enumerate(data.queries.items()):
            candidates = [doc_id for doc_id, _ in first_stage[query_id]]
            texts = [data.corpus[doc_id] for doc_id in candidates]
            scores = local_scorer.score(query, texts, instruction=system_instruction)
            assert reranked[query_id] == trec_eval_order(list(zip(candidates, scores)))
            if number < 3:
                official = reference_scorer.score(query, texts, instruction=system_instruction)
                assert scores == pytest.approx(official, abs=1e-5)

    qrels = qrels_from_tsv(BEIR_MINI / "qrels" / "test.tsv")
    measures = [ir_measures.parse_measure(name) for name in [*DEFAULT_MEASURES, "R@6"]]
    for system in ("first_stage", "rerank-1", "rerank-2"):
        expected = ir_measures.calc_aggregate(measures, qrels,
                                              ir_measures.read_trec_run(str(out / "runs" / f"{system}.trec")))
        assert report.metrics()[system] == {str(measure): expected[measure] for measure in measures}


# ------------------------------------------------------------------------------------------------ resume
def test_a_second_run_scores_nothing_and_writes_the_same_files(tmp_path):
    first = hashed_first_stage(tmp_path / "first.trec")
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=first, top_k=[5, 8],
                        instructions=[None, "Find answers"])
    report = run_evaluation(config, HashScorer())
    assert report.pairs == report.pairs_scored == 2 * 20 * 8  # the depths share their scores
    written = output_files(tmp_path / "out")
    assert (tmp_path / "out" / "score-cache").is_dir()

    again, notices = HashScorer(), []
    report = run_evaluation(config, again, log=notices.append)
    assert again.pairs == report.pairs_scored == 0
    assert output_files(tmp_path / "out") == written
    assert any("first stage: reusing" in notice for notice in notices)

    # A new instruction scores only its own pairs; the old ones come from the cache.
    more = HashScorer()
    config = config.model_copy(update={"instructions": [None, "Find answers", "Find definitions"]})
    report = run_evaluation(config, more)
    assert more.pairs == report.pairs_scored == 20 * 8
    assert json.loads((tmp_path / "out" / "metrics.json").read_text("utf-8")).keys() == {
        "first_stage", "rerank-1@5", "rerank-1@8", "rerank-2@5", "rerank-2@8", "rerank-3@5", "rerank-3@8"}


def test_another_first_stage_is_not_mistaken_for_the_saved_one(tmp_path):
    first = hashed_first_stage(tmp_path / "first.trec")
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=first, top_k=[5])
    run_evaluation(config, HashScorer())
    before = (tmp_path / "out" / "runs" / "first_stage.trec").read_text("utf-8")
    notices: list[str] = []
    run_evaluation(config.model_copy(update={"top_k": [3]}), HashScorer(), log=notices.append)
    assert not any("reusing" in notice for notice in notices)  # another depth: computed again
    after = (tmp_path / "out" / "runs" / "first_stage.trec").read_text("utf-8")
    assert after.count("\n") == 20 * 3 and before.count("\n") == 20 * 5


def cli_args(out: Path, minilm_dir: Path, tiny_model_dir: Path, *, data: Path = BEIR_MINI, top_k: int = 5) -> list[str]:
    return ["eval", str(data), "--output", str(out), "--embed-model", str(minilm_dir), "--rerank-model",
            str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--top-k", str(top_k),
            "--instruction", "default", "--instruction", "Given a question, retrieve passages that answer it",
            "--label", "default", "--label", "qa"]


@pytest.mark.slow
def test_cli_prints_the_documented_sample_and_a_second_run_rescores_nothing(tmp_path, monkeypatch, minilm_dir,
                                                                          tiny_model_dir):
    # The sample of docs/evaluation.md: its first command, with the offline stand-ins under the names it shows.
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "beir_mini").symlink_to(BEIR_MINI)
    (tmp_path / "all-MiniLM-L6-v2").symlink_to(minilm_dir)
    (tmp_path / "tiny-random-reranker").symlink_to(tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    args = cli_args(Path("eval-out"), Path("all-MiniLM-L6-v2"), Path("tiny-random-reranker"),
                    data=Path("examples/beir_mini"), top_k=20)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "eval-out"
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    assert_terminal_table(result.stdout, metrics, notes=3)
    # Nothing came from the cache, and the message says so (it said "..., the rest from the score cache").
    assert result.stderr.strip().splitlines()[-1].endswith("; scored 800 of 800 pairs")
    assert "score cache" not in result.stderr
    assert sorted(path.name for path in (out / "runs").iterdir()) == ["default.trec", "first_stage.trec", "qa.trec"]
    assert list(metrics) == ["first_stage", "default", "qa"]
    page = (ROOT / "docs/evaluation.md").read_text("utf-8")
    assert (out / "metrics.md").read_text("utf-8") in page, "docs/evaluation.md's sample is not this run's metrics.md"
    written = output_files(out)

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "first stage: reusing" in result.stderr
    assert "the score cache holds 800 of 800 pairs from an earlier run; scoring the other 0" in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "; scored 0 of 800 pairs; all came from the score cache")
    assert output_files(out) == written


def assert_terminal_table(stdout: str, metrics: dict[str, dict[str, float]], notes: int) -> None:
    """``stdout`` is a box-drawn terminal table, a row per system with its values to 4 decimals, then the notes
    as plain lines: no markdown (``|---|``, ``**``, backticks), which a terminal shows as raw characters."""
    assert "**" not in stdout and "|---|" not in stdout and "`" not in stdout, stdout
    lines = stdout.splitlines()
    header = next(line for line in lines if "system" in line)
    assert header.split()[3::2] == list(next(iter(metrics.values()))), header  # ┃ system ┃ nDCG@10 ┃ ...
    for system, values in metrics.items():
        row = next(line for line in lines if line.split()[1:2] == [system])
        assert row.split()[3::2] == [f"{value:.4f}" for value in values.values()], row
    assert [line.startswith("- ") for line in lines[-notes:]] == [True] * notes  # one line each, never wrapped
    assert not lines[-notes - 1].startswith("- ")


KILLING_CLI = """
import os, signal, sys

from qwen3_rerank_integrations.cli import main
from qwen3_rerank_integrations.local import LocalScorer

kill_after, calls, score = int(os.environ["KILL_AFTER_CALLS"]), 0, LocalScorer._score_texts


def killing_score(self, *args, **kwargs):
    # The backend hook every path reaches (score(), or score_validated from the batch runner). The cache calls
    # the model once per (query, instruction) it lacks: die, as a crash or an OOM kill would,
    # when the next one starts. What the earlier calls scored must already be on disk.
    global calls
    calls += 1
    if calls > kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return score(self, *args, **kwargs)


LocalScorer._score_texts = killing_score
sys.argv[0] = "qwen3-rerank"
main()
"""


@pytest.mark.slow
def test_a_run_killed_halfway_resumes_to_the_same_files_scoring_only_the_rest(tmp_path, minilm_dir,
                                                                               tiny_model_dir):
    script = tmp_path / "killing_cli.py"
    script.write_text(KILLING_CLI, encoding="utf-8")
    out = tmp_path / "resumed"
    env = {**os.environ, "KILL_AFTER_CALLS": "15", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, str(script), *cli_args(out, minilm_dir, tiny_model_dir)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "metrics.json").exists()
    assert (out / "runs" / "first_stage.trec").is_file()  # the first stage was saved before reranking

    env["KILL_AFTER_CALLS"] = "1000000"
    resumed = subprocess.run([sys.executable, str(script), *cli_args(out, minilm_dir, tiny_model_dir)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "first stage: reusing" in resumed.stderr  # not embedded again
    # 20 queries x 2 instructions x 5 documents; 15 calls of 5 were on disk before the kill, and the resumed run
    # says so before it scores.
    assert "the score cache holds 75 of 200 pairs from an earlier run; scoring the other 125" in resumed.stderr
    assert "scored 125 of 200 pairs; 75 came from the score cache" in resumed.stderr, resumed.stderr

    fresh = tmp_path / "fresh"
    result = runner.invoke(app, cli_args(fresh, minilm_dir, tiny_model_dir))
    assert result.exit_code == 0, result.output
    assert output_files(out) == output_files(fresh)
    assert resumed.stdout == result.stdout


def test_cli_table_and_messages_say_what_happened(tmp_path, monkeypatch):
    # A terminal table, not markdown with ** (metrics.md keeps that); "scored N of N pairs" without "the rest from
    # the score cache" when nothing came from it; a second run says first what the cache holds.
    from contextlib import nullcontext

    monkeypatch.setattr("qwen3_rerank_integrations.cli.eval.open_scorer", lambda *a, **k: nullcontext(HashScorer()))
    first = hashed_first_stage(tmp_path / "first.trec")
    args = ["eval", str(BEIR_MINI), "-o", str(tmp_path / "out"), "--run", str(first), "--top-k", "4",
            "--instruction", "default", "--instruction", "Find answers"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text("utf-8"))
    assert_terminal_table(result.stdout, metrics, notes=3)
    assert "**" in (tmp_path / "out" / "metrics.md").read_text("utf-8")  # the file keeps the markdown
    assert result.stderr.strip().splitlines()[-1].endswith("(3 systems); scored 160 of 160 pairs")

    result = runner.invoke(app, [*args, "--instruction", "Find definitions"])
    assert result.exit_code == 0, result.output
    assert "the score cache holds 160 of 240 pairs from an earlier run; scoring the other 80" in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("scored 80 of 240 pairs; 160 came from the score cache")


def test_a_text_repeated_among_a_querys_candidates_is_scored_once_and_counted_as_such(tmp_path):
    corpus = '{"_id": "d1", "text": "alpha"}\n{"_id": "d2", "text": "alpha"}\n{"_id": "d3", "text": "beta"}\n'
    folder = make_beir(tmp_path / "data", corpus, '{"_id": "q1", "text": "what is alpha"}\n', "q1\td1\t1\n")
    run = tmp_path / "first.trec"
    run.write_text("q1 Q0 d1 1 0.9 x\nq1 Q0 d2 2 0.8 x\nq1 Q0 d3 3 0.7 x\n", encoding="utf-8")
    scorer = HashScorer()
    for cache in (False, True):
        report = run_evaluation(EvalConfig(data=folder, output=tmp_path / f"out-{cache}", run_file=run, top_k=[3]),
                                scorer, cache=cache)
        assert (report.pairs, report.pairs_scored, report.pairs_cached) == (3, 2, 0)
        assert report.scoring_summary() == "scored 2 of 3 pairs; 1 repeated a text already among the query's candidates"
    assert scorer.pairs == 4  # "alpha" once, "beta" once, in each run
    scores = {doc_id: score for doc_id, score in by_query(trec_lines(tmp_path / "out-True/runs/rerank.trec"))["q1"]}
    assert scores["d1"] == scores["d2"]


# ------------------------------------------------------------------------------------------------ progress, interrupt
def test_progress_bar_counts_queries_on_stderr(tmp_path, capsys):
    first = hashed_first_stage(tmp_path / "first.trec")
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=first, top_k=[3])
    run_evaluation(config, HashScorer(), cache=False, progress=True)
    captured = capsys.readouterr()
    assert "reranking" in captured.err and "20/20" in captured.err and captured.out == ""


def test_interrupt_says_how_to_resume(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("qwen3_rerank_integrations.cli.eval.run_evaluation", interrupted)
    result = runner.invoke(app, ["eval", str(BEIR_MINI), "-o", str(tmp_path / "out"), "--rerank-model", "x"])
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [
        "Error: interrupted; the scores computed so far are kept: run the same command again to resume"]


# ------------------------------------------------------------------------------------------------ vLLM backend
@pytest.mark.slow
def test_vllm_backend_reranks_with_the_servers_official_scores_and_caches_them(tmp_path, vllm_legacy_server,
                                                                               reference_scorer):
    first = hashed_first_stage(tmp_path / "first.trec")
    out = tmp_path / "out"
    args = ["eval", str(BEIR_MINI), "-o", str(out), "--run", str(first), "--top-k", "3", "--backend", "vllm",
            "--base-url", vllm_legacy_server.base_url, "--template", "client"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(vllm_legacy_server.scoring_requests()) == 20  # one request per query
    assert "scored 60 of 60 pairs" in result.stderr
    # The notes name the server (they said "VLLMScorer reranks ..."); no model was named, so the served one.
    note = f"rerank: the model served at {vllm_legacy_server.base_url} reranks the top 3, default instruction"
    assert note in result.stdout and f"`{note.replace(':', '`:', 1)}" in (out / "metrics.md").read_text("utf-8")
    data = load_beir(BEIR_MINI)
    reranked = by_query(trec_lines(out / "runs" / "rerank.trec"))
    for query_id in list(data.queries)[:4]:
        candidates = [doc_id for doc_id, _ in reranked[query_id]]
        official = reference_scorer.score(data.queries[query_id], [data.corpus[doc_id] for doc_id in candidates])
        assert [score for _, score in reranked[query_id]] == pytest.approx(official, abs=1e-5)
        assert [doc_id for doc_id, _ in trec_eval_order(list(zip(candidates, official)))] == candidates
    written = output_files(out)

    vllm_legacy_server.reset()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert vllm_legacy_server.scoring_requests() == [] and "scored 0 of 60 pairs" in result.stderr
    assert output_files(out) == written


def test_vllm_notes_name_the_model_and_the_server_without_credentials(tmp_path, vllm_legacy_server):
    from qwen3_rerank_integrations import VLLMScorer

    first = hashed_first_stage(tmp_path / "first.trec")
    host = vllm_legacy_server.base_url.removeprefix("http://")
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=first, top_k=[2])
    with VLLMScorer(f"http://user:s3cret-pw@{host}", model="Qwen/Qwen3-Reranker-0.6B", template="client") as scorer:
        report = run_evaluation(config, scorer, cache=False)
    assert report.notes[1] == (f"rerank: Qwen/Qwen3-Reranker-0.6B at http://{host} reranks the top 2, default "
                               "instruction")
    written = "".join(path.read_text("utf-8") for path in (tmp_path / "out").rglob("*.*") if path.suffix != ".png")
    assert "s3cret-pw" not in written and "user" not in written


# ------------------------------------------------------------------------------------------------ engine backend
def test_engine_backend_through_the_python_api(tmp_path, fake_vllm, tiny_model_dir):
    from qwen3_rerank_integrations.engine import VLLMEngineScorer
    from tests.test_engine import FakeLLM

    first = hashed_first_stage(tmp_path / "first.trec")
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "out", run_file=first, top_k=[3])
    report = run_evaluation(config, VLLMEngineScorer(str(tiny_model_dir), dtype="float32", max_length=2048))
    assert report.pairs_scored == 60 and sum(len(llm.prompts) for llm in FakeLLM.created) == 60
    # The stand-in engine answers (prompt length % 97) / 97: each file score is one of those, best first.
    for documents in by_query(trec_lines(tmp_path / "out" / "runs" / "rerank.trec")).values():
        assert all(round(score * 97) == pytest.approx(score * 97) for _, score in documents)
        assert documents == trec_eval_order(documents)

    FakeLLM.created.clear()
    again = run_evaluation(config, VLLMEngineScorer(str(tiny_model_dir), dtype="float32", max_length=2048))
    assert again.pairs_scored == 0 and sum(len(llm.prompts) for llm in FakeLLM.created) == 0
