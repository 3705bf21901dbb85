"""Evaluation data in, runs out: BEIR folders and TREC run files, read with checks that name the file and line.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line), ``queries.jsonl`` (``{"_id",
"text"}``) and ``qrels/<split>.tsv`` (query id, corpus id, graded relevance; a header line is optional). The
queries evaluated are those the split's qrels judge, in ``queries.jsonl`` order. A document's text is its title
and text joined by a space, as BEIR's own evaluation embeds it.

A run maps each query id to its documents, best first, with their scores. Runs are ordered the way trec_eval
(and so ir-measures) reads a TREC file: score descending, equal scores by document id descending; so the rank
column of a written file is the order the metrics see.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BeirData", "DataError", "Run", "load_beir", "ranked", "read_run", "write_atomic", "write_run"]

Run = dict[str, list[tuple[str, float]]]


class DataError(ValueError):
    """Evaluation data that cannot be used; the message names the file (and line) and what is wrong."""


class BeirData(BaseModel):
    """A BEIR-format test collection, checked: every judged query has a text, every judged document exists."""

    model_config = ConfigDict(frozen=True)

    corpus: dict[str, str] = Field(description="Document id to text (title and text joined by a space).")
    queries: dict[str, str] = Field(
        description="The evaluated queries (those the qrels judge), id to text, in queries.jsonl order."
    )
    qrels: dict[str, dict[str, int]] = Field(description="Query id to {document id: graded relevance}.")


# ------------------------------------------------------------------------------------------------ BEIR
def load_beir(folder: str | os.PathLike[str], split: str = "test") -> BeirData:
    """Read and check a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    Raises:
        DataError: a file is missing or malformed, an id is repeated or holds whitespace, a query is empty, or
            the qrels name a query or document that does not exist. The message names the file and line.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; give a BEIR folder with corpus.jsonl, queries.jsonl, qrels/")
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path, qrels_path):
        if not path.is_file():
            raise DataError(f"{path}: no such file (a BEIR folder has corpus.jsonl, queries.jsonl, qrels/{split}.tsv)")

    corpus: dict[str, str] = {}
    for where, record in _jsonl_records(corpus_path):
        doc_id = _new_id(where, record, corpus, "document")
        title, text = (_optional_text(where, record, key) for key in ("title", "text"))
        if "text" not in record:
            raise DataError(f"{where}: document {doc_id!r} has no 'text' field")
        corpus[doc_id] = f"{title} {text}" if title.strip() else text
    if not corpus:
        raise DataError(f"{corpus_path}: no documents")

    all_queries: dict[str, str] = {}
    for where, record in _jsonl_records(queries_path):
        query_id = _new_id(where, record, all_queries, "query")
        text = _optional_text(where, record, "text")
        if not text.strip():
            raise DataError(f"{where}: query {query_id!r} has an empty text")
        all_queries[query_id] = text

    qrels = _read_qrels(qrels_path, corpus, all_queries, corpus_path.name, queries_path.name)
    queries = {query_id: text for query_id, text in all_queries.items() if query_id in qrels}
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``"FILE line N"``, object) for each non-blank line."""
    for where, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{where}: must be a JSON object, got {type(record).__name__}")
        yield where, record


def _lines(path: Path) -> Iterator[tuple[str, str]]:
    r"""(``"FILE line N"``, line) for each non-blank line of a UTF-8 text file (a leading BOM is dropped).

    Lines end at ``\n`` (and a ``\r`` before it) only: ``str.splitlines`` would also cut at U+2028, U+0085 or a
    form feed, which JSON allows inside a string, and then number the lines differently from an editor."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path} line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x}: {exc.reason}); save it as UTF-8"
        ) from None
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if line.strip():
            yield f"{path} line {number}", line


def _new_id(where: str, record: Mapping[str, Any], seen: Mapping[str, object], kind: str) -> str:
    """The record's ``_id`` as a string (BEIR files sometimes hold numbers): present, one token, not seen yet."""
    value = record.get("_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: the {kind} needs an '_id' string, got {value!r}")
    _check_id(where, value, kind)
    if value in seen:
        raise DataError(f"{where}: {kind} id {value!r} appears twice")
    return value


def _check_id(where: str, value: str, kind: str) -> None:
    # A TREC run file separates its columns by whitespace, so an id holding any could not be written back.
    if len(value.split()) != 1 or value.strip() != value:
        raise DataError(f"{where}: {kind} id {value!r} contains whitespace")


def _optional_text(where: str, record: Mapping[str, Any], key: str) -> str:
    value = record.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON "\ud800" escape: no tokenizer or request body can carry it
        raise DataError(f"{where}: '{key}' holds a lone surrogate U+{ord(value[exc.start]):04X}, not text") from None
    return value


def _read_qrels(
    path: Path, corpus: Mapping[str, str], queries: Mapping[str, str], corpus_name: str, queries_name: str
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for index, (where, line) in enumerate(_lines(path)):
        query_id, doc_id, grade = fields = _columns(where, line, "query-id corpus-id score")
        if index == 0 and _is_qrels_header(fields):
            continue
        try:
            relevance = int(grade)
        except ValueError:
            hint = " (a header line must name the columns: query-id corpus-id score)" if index == 0 else ""
            raise DataError(f"{where}: the score must be an integer, got {grade!r}{hint}") from None
        if query_id not in queries:
            raise DataError(f"{where}: query id {query_id!r} is not in {queries_name}")
        _put(where, qrels, query_id, doc_id, relevance, corpus, corpus_name)
    if not qrels:
        raise DataError(f"{path}: no judgments")
    return qrels


# A qrels header names its columns (BEIR writes "query-id corpus-id score"); compared without case, '-', '_' or
# spaces. Read by content, not by position: a headerless file's malformed first line is an error, never dropped.
_QUERY_COLUMNS = {"queryid", "qid", "query"}
_DOCUMENT_COLUMNS = {"corpusid", "docid", "documentid", "did", "docno", "passageid", "pid", "corpus", "doc",
                     "document"}
_GRADE_COLUMNS = {"score", "relevance", "rel", "label", "grade", "judgment", "judgement"}


def _is_qrels_header(fields: list[str]) -> bool:
    names = [re.sub(r"[-_\s]", "", field).lower() for field in fields]
    return names[0] in _QUERY_COLUMNS and names[1] in _DOCUMENT_COLUMNS and names[2] in _GRADE_COLUMNS


def _columns(where: str, line: str, names: str) -> list[str]:
    """The whitespace-separated fields of a qrels or run line, as many as ``names`` names."""
    fields, expected = line.split(), len(names.split())
    if len(fields) != expected:
        raise DataError(f"{where}: expected {expected} columns ({names}), got {len(fields)}")
    return fields


def _put(
    where: str, table: dict[str, dict[str, Any]], query_id: str, doc_id: str, value: Any,
    corpus: Mapping[str, str], corpus_name: str,
) -> None:
    """table[query_id][doc_id] = value, for a document that exists and a pair not seen before."""
    if doc_id not in corpus:
        raise DataError(f"{where}: corpus id {doc_id!r} is not in {corpus_name}")
    row = table.setdefault(query_id, {})
    if doc_id in row:
        raise DataError(f"{where}: query {query_id!r} lists corpus id {doc_id!r} twice")
    row[doc_id] = value


# ------------------------------------------------------------------------------------------------ runs
def ranked(scored: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(document id, score) pairs best first, as trec_eval reads a run: score descending, ties by id descending."""
    return sorted(scored, key=lambda item: (item[1], item[0]), reverse=True)


def read_run(path: str | os.PathLike[str], corpus: Mapping[str, str]) -> Run:
    """Read a TREC run file (``query-id Q0 doc-id rank score tag`` per line), each query's documents ranked.

    The rank column is ignored, as trec_eval ignores it: the scores order the documents.

    Raises:
        DataError: the file is missing or malformed, a document is not in the corpus, or a query lists a
            document twice; the message names the file and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    scored: dict[str, dict[str, float]] = {}
    for where, line in _lines(path):
        query_id, _, doc_id, _, value, _ = _columns(where, line, "query-id Q0 doc-id rank score tag")
        try:
            score = float(value)
        except ValueError:
            raise DataError(f"{where}: the score must be a number, got {value!r}") from None
        if not math.isfinite(score):
            raise DataError(f"{where}: the score must be finite, got {value!r}")
        _put(where, scored, query_id, doc_id, score, corpus, "the corpus")
    if not scored:
        raise DataError(f"{path}: no results")
    return {query_id: ranked(documents.items()) for query_id, documents in scored.items()}


def write_run(path: Path, run: Mapping[str, list[tuple[str, float]]], tag: str) -> None:
    """Write ``run`` as a TREC run file, atomically. Scores are written with ``repr`` so they read back exactly."""
    lines = [
        f"{query_id} Q0 {doc_id} {position} {score!r} {tag}\n"
        for query_id, documents in run.items()
        for position, (doc_id, score) in enumerate(documents, 1)
    ]
    write_atomic(path, "".join(lines))


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a file whole or not at all: a run killed mid-write leaves the previous file (or none), never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    if isinstance(content, str):
        partial.write_text(content, encoding="utf-8")
    else:
        partial.write_bytes(content)
    os.replace(partial, path)
