"""The ``qwen3-rerank`` command line: rerank documents, check a vLLM server, check an accelerator's precision.

Needs the ``cli`` extra (typer); the backends need their own extras (``local`` or ``remote``).

Exit codes, the same for every command:

- 0: success (the check passed);
- 1: the check ran and failed (``check-server``: the server would give wrong scores; ``check-device``: the
  device's scores are off);
- 2: bad usage or input (an unknown option, a missing or malformed documents file, an empty query);
- 3: the work could not be done (the model could not be loaded, the device is not available, the server is
  unreachable or answered an error).

Expected faults print one line, ``Error: ...``, on stderr and never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from . import __version__
from .errors import RerankError
from .precision import DEFAULT_MAX_ABS_DIFF, DEFAULT_MIN_RANK_AGREEMENT, DEFAULT_MIN_TOP1_AGREEMENT
from .scorer import validate_inputs

__all__ = ["app", "main", "read_documents", "rank"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME_ERROR = 3

# A progress bar pays off once scoring takes more than a few batches.
_PROGRESS_MIN_DOCUMENTS = 100
_DEFAULT_LOCAL_MODEL = "Qwen/Qwen3-Reranker-0.6B"

app = typer.Typer(
    name="qwen3-rerank",
    help="Rerank documents with Qwen3-Reranker (locally or via vLLM), and check servers and accelerators.",
    epilog="Exit codes: 0 ok, 1 check failed, 2 bad usage or input, 3 model/device/server error.",
    no_args_is_help=True,
    rich_markup_mode="markdown",  # reflows docstring paragraphs; "[default: x]" would be eaten as rich markup
    add_completion=False,
    # Expected faults are caught and printed in one line; anything else is a bug and shows a plain traceback.
    pretty_exceptions_enable=False,
)


class Backend(str, Enum):
    local = "local"
    vllm = "vllm"


class OutputFormat(str, Enum):
    json = "json"
    table = "table"


class InputFormat(str, Enum):
    auto = "auto"
    lines = "lines"
    jsonl = "jsonl"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Template(str, Enum):
    client = "client"
    server = "server"


class Source(str, Enum):
    huggingface = "huggingface"
    modelscope = "modelscope"


# ------------------------------------------------------------------------------------------------ edge
def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in exc.errors())
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _exit_on_error() -> Iterator[None]:
    """Turn the faults a user can cause or meet into one ``Error:`` line and an exit code."""
    try:
        yield
    except (ValueError, TypeError) as exc:  # bad arguments, a malformed file (ValidationError is a ValueError)
        _fail(_one_line(exc), EXIT_BAD_INPUT)
    except (RerankError, OSError) as exc:  # model, device, server
        _fail(_one_line(exc), EXIT_RUNTIME_ERROR)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qwen3-rerank {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Rerank documents with Qwen3-Reranker (locally or via vLLM), and check servers and accelerators."""


# ------------------------------------------------------------------------------------------------ input
def read_documents(source: str, input_format: str = "auto") -> list[str]:
    """Read documents from a file (``"-"`` = stdin): one per line, or JSONL objects with a ``"text"`` field.

    ``auto`` picks JSONL when the file name ends in ``.jsonl`` or the first non-blank line is a JSON object
    with a ``"text"`` field. Blank lines are skipped in both formats (in JSONL an empty ``"text"`` is kept).

    Raises:
        ValueError: the file cannot be read, holds no document, or a JSONL line is malformed (named by number).
    """
    where = "stdin" if source == "-" else repr(source)
    try:
        if source == "-":
            raw = sys.stdin.read()
        else:
            raw = Path(source).expanduser().read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"documents file {where} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ValueError(f"cannot read documents file {where}: {exc.strerror or exc}") from exc
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
            raise ValueError(f"{where} line {number} must be a JSON object with a string 'text' field")
        documents.append(record["text"])
    return documents


def _is_jsonl_record(line: str) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "text" in record


def rank(documents: Sequence[str], scores: Sequence[float], top_n: int | None = None) -> list[dict[str, Any]]:
    """``{index, score, text}`` per document, best first; equal scores keep their input order."""
    order = sorted(range(len(documents)), key=lambda i: -scores[i])  # sorted() is stable: ties keep input order
    return [{"index": i, "score": scores[i], "text": documents[i]} for i in order[:top_n]]


# ------------------------------------------------------------------------------------------------ output
def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _print_ranking(ranking: list[dict[str, Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("rank", "index", "score", "text")
    table.columns[3].overflow = "ellipsis"
    table.columns[3].no_wrap = True
    for position, row in enumerate(ranking, 1):
        # Text(), not a markup string: a document may contain "[bold]" and must print as written.
        table.add_row(str(position), str(row["index"]), f"{row['score']:.6f}", Text(row["text"]))
    _console().print(table)


def _check_mark(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]FAIL[/red]"


# ------------------------------------------------------------------------------------------------ rerank
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", "-m",
        help=f"Local backend: a checkpoint folder or hub id (default {_DEFAULT_LOCAL_MODEL}). "
        "vLLM backend: the served model name (default: the server's only model).",
        show_default=False,
    ),
]


def _device_option(**extra: Any) -> Any:
    return typer.Option(help="'auto' (NPU > CUDA > MPS > CPU), 'npu', 'npu:1', 'cuda:0', 'mps' or 'cpu'.", **extra)


def _dtype_option(**extra: Any) -> Any:
    return typer.Option(help="'auto' is bf16 on NPU/CUDA (fp16 where unsupported, and on MPS), fp32 on CPU.", **extra)


def _source_option(**extra: Any) -> Any:
    return typer.Option(help="Where to download a hub id from ('modelscope' for mainland China).", **extra)

_LOCAL_PANEL = "Local backend"
_VLLM_PANEL = "vLLM backend"
_LOCAL_OPTIONS = ("device", "dtype", "max_length", "source", "progress")
_VLLM_OPTIONS = ("base_url", "api_key", "template")


@app.command()
def rerank(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(metavar="QUERY", help="The search query.", show_default=False)],
    documents_file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="Documents, one per line, or JSONL objects with a 'text' field. '-' or nothing reads stdin.",
        ),
    ] = "-",
    backend: Annotated[Backend, typer.Option(help="Score in this process, or on a vLLM server.")] = Backend.local,
    model: ModelOption = None,
    instruction: Annotated[
        str | None,
        typer.Option(help="Task instruction (default: the model card's web-search instruction).", show_default=False),
    ] = None,
    top_n: Annotated[
        int | None, typer.Option(min=1, help="Output only the best N (default: all).", show_default=False)
    ] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="JSON list or a table.")] = OutputFormat.json,
    input_format: Annotated[InputFormat, typer.Option(help="How to read FILE.")] = InputFormat.auto,
    device: Annotated[str, _device_option(rich_help_panel=_LOCAL_PANEL)] = "auto",
    dtype: Annotated[DType, _dtype_option(rich_help_panel=_LOCAL_PANEL)] = DType.auto,
    max_length: Annotated[
        int,
        typer.Option(min=1, rich_help_panel=_LOCAL_PANEL,
                     help="Most tokens per prompt; longer documents lose their tail (the question is kept)."),
    ] = 8192,
    source: Annotated[Source, _source_option(rich_help_panel=_LOCAL_PANEL)] = Source.huggingface,
    progress: Annotated[
        bool | None,
        typer.Option(rich_help_panel=_LOCAL_PANEL, show_default=False,
                     help=f"Progress bar on stderr (default: on for {_PROGRESS_MIN_DOCUMENTS}+ documents on a terminal)."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(rich_help_panel=_VLLM_PANEL, show_default=False,
                     help="The server, e.g. http://localhost:8000 (required with --backend vllm)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="QWEN3_RERANK_API_KEY", rich_help_panel=_VLLM_PANEL, show_default=False,
                     help="The server's --api-key; prefer the environment variable (command lines are visible to "
                     "other users)."),
    ] = None,
    template: Annotated[
        Template,
        typer.Option(rich_help_panel=_VLLM_PANEL,
                     help="'client' formats prompts here (server started without the reranker --chat-template); "
                     "'server' sends raw text (server started with it)."),
    ] = Template.client,
) -> None:
    """Score documents against QUERY and print them best first.

    JSON output is a list of {"index", "score", "text"} sorted by score (ties keep input order); "index" is
    the document's position in FILE, blank lines not counted. Scores are P("yes") in [0, 1].
    """
    with _exit_on_error():
        validate_inputs(query, [], instruction)  # before reading stdin or loading anything
        _reject_other_backend_options(ctx, backend)
        if backend is Backend.vllm and not base_url:
            raise ValueError("--backend vllm needs --base-url, e.g. --base-url http://localhost:8000")
        documents = read_documents(documents_file, input_format.value)
        if backend is Backend.local:
            from .local import LocalScorer

            show_progress = progress if progress is not None else (
                len(documents) >= _PROGRESS_MIN_DOCUMENTS and sys.stderr.isatty()
            )
            scorer: Any = LocalScorer(
                model or _DEFAULT_LOCAL_MODEL, device=device, dtype=dtype.value, max_length=max_length,
                source=source.value, show_progress_bar=show_progress,
            )
        else:
            from .vllm import VLLMScorer

            scorer = VLLMScorer(base_url, model=model, api_key=api_key, template=template.value)
        scores = scorer.score(query, documents, instruction=instruction)
    ranking = rank(documents, scores, top_n)
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(ranking, ensure_ascii=False, indent=2))
    else:
        _print_ranking(ranking)


def _reject_other_backend_options(ctx: typer.Context, backend: Backend) -> None:
    """An option typed for the other backend is a mistake: say so rather than silently ignore it."""
    other = _VLLM_OPTIONS if backend is Backend.local else _LOCAL_OPTIONS
    typed = [name for name in other if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if typed:
        flags = ", ".join("--" + name.replace("_", "-") for name in typed)
        other_backend = "vllm" if backend is Backend.local else "local"
        raise ValueError(f"{flags} only apply to --backend {other_backend}")


# ------------------------------------------------------------------------------------------------ check-device
@app.command("check-device")
def check_device(
    model: Annotated[
        str, typer.Option("--model", "-m", help="A checkpoint folder or hub id, scored on both sides.")
    ] = _DEFAULT_LOCAL_MODEL,
    device: Annotated[str, _device_option()] = "auto",
    dtype: Annotated[DType, _dtype_option()] = DType.auto,
    source: Annotated[Source, _source_option()] = Source.huggingface,
    max_abs_diff: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Largest score difference accepted (default: "
                     f"{DEFAULT_MAX_ABS_DIFF['float32']:g} for float32, {DEFAULT_MAX_ABS_DIFF['bfloat16']:g} for "
                     "bfloat16/float16).", show_default=False),
    ] = None,
    min_rank_agreement: Annotated[
        float, typer.Option(min=-1.0, max=1.0, help="Lowest mean Kendall's tau (per-query ranking) accepted.")
    ] = DEFAULT_MIN_RANK_AGREEMENT,
    min_top1_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Lowest share of queries with the same best document accepted.")
    ] = DEFAULT_MIN_TOP1_AGREEMENT,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="A readable report or JSON.")] = (
        OutputFormat.table
    ),
) -> None:
    """Check that DEVICE/DTYPE scores like CPU float32: 16 built-in English and Chinese pairs, same model.

    Fails (exit 1) when the largest score difference exceeds --max-abs-diff, the mean per-query Kendall's
    tau is below --min-rank-agreement, or the share of queries with the same best document is below
    --min-top1-agreement. Documents whose CPU scores are within --max-abs-diff of each other count as ties.
    The model is loaded twice, one copy after the other; the CPU fp32 copy needs ~4 bytes per parameter of RAM.
    """
    from .precision import check_device as run_check

    with _exit_on_error():
        report = run_check(
            model, device=device, dtype=dtype.value, source=source.value, max_abs_diff=max_abs_diff,
            min_rank_agreement=min_rank_agreement, min_top1_agreement=min_top1_agreement,
        )
    if output_format is OutputFormat.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        _print_precision_report(report, model)
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _print_precision_report(report: Any, model: str) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    console.print(Text(f"Precision check of {model}: {report.device} {report.dtype} vs {report.reference}"))
    if report.device == "cpu" and report.dtype == "float32":
        console.print("note: this compares CPU float32 with itself; pass --device to check an accelerator")
    table = Table("query", "max abs diff", "Kendall tau", "top-1")
    for item in report.queries:
        table.add_row(Text(item.query), f"{item.max_abs_diff:.3g}", f"{item.rank_agreement:.3f}",
                      "same" if item.top1_match else "[red]differs[/red]")
    console.print(table)
    console.print(f"max abs diff    {report.max_abs_diff:.3g} (<= {report.threshold_max_abs_diff:g}) "
                  f"{_check_mark(report.max_abs_diff <= report.threshold_max_abs_diff)}")
    console.print(f"mean abs diff   {report.mean_abs_diff:.3g}")
    console.print(f"rank agreement  {report.rank_agreement:.3f} (>= {report.threshold_rank_agreement:g}) "
                  f"{_check_mark(report.rank_agreement >= report.threshold_rank_agreement)}")
    console.print(f"top-1 agreement {report.top1_agreement:.3f} (>= {report.threshold_top1_agreement:g}) "
                  f"{_check_mark(report.top1_agreement >= report.threshold_top1_agreement)}")
    if report.passed:
        console.print("[green]PASS[/green]")
    else:
        console.print(f"[red]FAIL[/red]: {'; '.join(report.failures)}")


def main() -> None:
    """The ``qwen3-rerank`` console script."""
    app()


if __name__ == "__main__":
    main()
