"""What the commands read and print: documents from a file or stdin, rankings and verdicts in the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["console", "print_ranking", "read_documents", "verdict"]


def read_documents(source: str, input_format: str = "auto") -> list[str]:
    """Read documents from a file (``"-"`` = stdin): one per line, or JSONL objects with a ``"text"`` field.

    ``auto`` picks JSONL when the file name ends in ``.jsonl`` or the first non-blank line is a JSON object
    with a ``"text"`` field. Blank lines are skipped in both formats (in JSONL an empty ``"text"`` is kept).

    Raises:
        ValueError: the file cannot be read, holds no document, or a JSONL line is malformed (named by number).
    """
    where = "stdin" if source == "-" else repr(source)
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read documents file {where}: {exc.strerror or exc}") from exc
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # named by line, as an editor shows it, not by byte offset
        number = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"documents file {where} line {number} is not UTF-8 text (byte 0x{data[exc.start]:02x}: "
                         f"{exc.reason}); save it as UTF-8") from None
    lines = [(number, line) for number, line in enumerate(raw.lstrip("\ufeff").splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"no documents in {where}: give one per line, or JSONL objects with a 'text' field")
    if input_format == "auto":
        input_format = "jsonl" if source.endswith(".jsonl") or _is_jsonl_record(lines[0][1]) else "lines"
    if input_format == "lines":
        return [line for _, line in lines]
    documents = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} line {number} is not valid JSON: {exc.msg}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            # Malformed input data, not a wrong argument type: a ValueError like the other file faults.
            raise ValueError(f"{where} line {number} must be a JSON object with a string 'text' field")
        documents.append(record["text"])
    return documents


def _is_jsonl_record(line: str) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "text" in record


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def print_ranking(ranking: list[dict[str, Any]]) -> None:
    from rich.table import Column, Table
    from rich.text import Text

    # The number columns never wrap; the text column takes what is left and is the one that shrinks: a rich
    # column that may not wrap would keep its full width and squeeze the numbers out of a narrow terminal.
    table = Table(
        Column("rank", justify="right", no_wrap=True),
        Column("index", justify="right", no_wrap=True),
        Column("score", no_wrap=True),
        Column("text", ratio=1),
    )
    for position, row in enumerate(ranking, 1):
        # Text(), not a markup string: a document may contain "[bold]" and must print as written. One line per
        # document, cut with "…" at the column's width (--format json has the whole text).
        text = Text(" ".join(row["text"].split()), no_wrap=True, overflow="ellipsis")
        table.add_row(str(position), str(row["index"]), f"{row['score']:.6f}", text)
    console().print(table)


def verdict(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]FAIL[/red]"
