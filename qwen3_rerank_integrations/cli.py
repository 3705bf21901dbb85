"""The ``qwen3-rerank`` command line: rerank documents, check a vLLM server or an accelerator, benchmark.

Needs the ``cli`` extra (typer, rich); each backend needs its own extra (``local`` or ``remote``). Each command
checks the packages it needs (:mod:`qwen3_rerank_integrations.extras`) before it reads input or loads anything, and
names the missing one and its extra in one line (exit code 3).

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
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from . import __version__
from ._ranking import rank
from ._secrets import redact
from .errors import RerankError
from .extras import require, require_vllm
from .evaluation import DEFAULT_EMBED_MODEL, DEFAULT_TOP_K, EvalConfig, run_evaluation
from .local import DEFAULT_MODEL
from .precision import DEFAULT_MAX_ABS_DIFF, DEFAULT_MIN_RANK_AGREEMENT, DEFAULT_MIN_TOP1_AGREEMENT
from .scorer import validate_inputs

__all__ = ["app", "main", "read_documents"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME_ERROR = 3

# A progress bar pays off once scoring takes more than a few batches.
_PROGRESS_MIN_DOCUMENTS = 100

app = typer.Typer(
    name="qwen3-rerank",
    help="Rerank documents with Qwen3-Reranker (locally or via vLLM); check servers and accelerators; benchmark.",
    epilog="Exit codes: 0 ok, 1 check failed, 2 bad usage or input, 3 model/device/server error.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs; "[default: x]" in help would be eaten as markup
    # Expected faults are caught and printed in one line; anything else is a bug and shows a plain traceback.
    pretty_exceptions_enable=False,
)


class Backend(str, Enum):
    local = "local"
    vllm = "vllm"
    engine = "engine"


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
    # Errors of the package are masked already; this also covers a ValueError or OSError quoting a secret.
    typer.echo(f"Error: {redact(message)}", err=True)
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
    """Rerank documents with Qwen3-Reranker (locally or via vLLM); check servers and accelerators; benchmark."""


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
        raw = sys.stdin.read() if source == "-" else Path(source).expanduser().read_text(encoding="utf-8-sig")
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


# ------------------------------------------------------------------------------------------------ output
def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _print_ranking(ranking: list[dict[str, Any]]) -> None:
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
    _console().print(table)


def _verdict(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]FAIL[/red]"


# ------------------------------------------------------------------------------------------------ shared options
_LOCAL_PANEL = "Local backend"
_VLLM_PANEL = "vLLM backend"
# Options typed for the backend not in use are rejected (see _reject_other_backend_options). The engine backend
# (vLLM's engine in this process) loads the model as the local one does, but vLLM picks its own device.
_LOCAL_ONLY = ("device", "dtype", "source", "progress")
_VLLM_ONLY = ("base_url", "template", "timeout", "max_retries", "ca_bundle")
_ENGINE_ONLY = ("dtype", "source")


def _device_option(**extra: Any) -> Any:
    return typer.Option(help="'auto' (NPU > CUDA > MPS > CPU), 'npu', 'npu:1', 'cuda:0', 'mps' or 'cpu'.", **extra)


def _dtype_option(**extra: Any) -> Any:
    return typer.Option(help="'auto' is bf16 on NPU/CUDA (fp16 where unsupported, and on MPS), fp32 on CPU.", **extra)


def _source_option(**extra: Any) -> Any:
    return typer.Option(help="Where to download a hub id from ('modelscope' for mainland China).", **extra)


def _template_option(**extra: Any) -> Any:
    return typer.Option(
        help="'client' formats prompts here (server started without the reranker --chat-template: older vLLM, "
        "vllm-ascend); 'server' sends raw text (server started with it).",
        **extra,
    )


def _timeout_option(**extra: Any) -> Any:
    return typer.Option(
        min=0.001, help="Seconds each HTTP request may take in all, from connecting to the answer's last byte.",
        **extra,
    )


def _retries_option(**extra: Any) -> Any:
    return typer.Option(min=0, help="Retries of connect errors, timeouts, 429 and 5xx.", **extra)


def _ca_bundle_option(**extra: Any) -> Any:
    return typer.Option(
        show_default=False, help="CA bundle (PEM) to verify the server's TLS certificate (default: system CAs).",
        **extra,
    )


# The backend options as rerank and eval take them, grouped in their help panels.
def _backend_option(verb: str) -> Any:
    return typer.Option(help=f"{verb} in this process (local: transformers; engine: vLLM's engine, needs vLLM "
                        "installed), or on a vLLM server.")


def _rerank_model_option(*names: str) -> Any:
    return typer.Option(*names, show_default=False,
                        help=f"Local and engine backends: a checkpoint folder or hub id (default {DEFAULT_MODEL}). "
                        "vLLM backend: the served model name (default: the one the server serves).")


_LocalDTypeOption = Annotated[DType, _dtype_option(rich_help_panel=_LOCAL_PANEL)]
_LocalSourceOption = Annotated[Source, _source_option(rich_help_panel=_LOCAL_PANEL)]
_BaseUrlOption = Annotated[
    list[str] | None,
    typer.Option(rich_help_panel=_VLLM_PANEL, show_default=False,
                 help="The server, e.g. http://localhost:8000 (required with --backend vllm); repeat it for "
                 "replicas of one configuration (requests go to the least busy one, a failing one is set aside)."),
]
_TemplateOption = Annotated[Template, _template_option(rich_help_panel=_VLLM_PANEL)]
_TimeoutOption = Annotated[float, _timeout_option(rich_help_panel=_VLLM_PANEL)]
_RetriesOption = Annotated[int, _retries_option(rich_help_panel=_VLLM_PANEL)]
_CaBundleOption = Annotated[str | None, _ca_bundle_option(rich_help_panel=_VLLM_PANEL)]


def _vllm_scorer(
    base_url: str | list[str], *, model: str | None, template: Template, timeout: float, max_retries: int,
    ca_bundle: str | None, max_length: int | None = None,
) -> Any:
    """A VLLMScorer; its API key comes from $VLLM_API_KEY only: a --api-key flag would show in `ps` and
    shell history."""
    from .vllm import VLLMScorer

    options: dict[str, Any] = {"model": model, "template": template.value, "timeout": timeout,
                               "max_retries": max_retries, "max_length": max_length}
    if ca_bundle is not None:
        if not Path(ca_bundle).is_file():
            raise ValueError(f"--ca-bundle {ca_bundle!r} is not a file")
        options["verify"] = ca_bundle
    # One URL stays a string, so messages and reprs read as they did before replicas.
    return VLLMScorer(base_url[0] if isinstance(base_url, list) and len(base_url) == 1 else base_url, **options)


# ------------------------------------------------------------------------------------------------ rerank
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
    backend: Annotated[Backend, _backend_option("Score")] = Backend.local,
    model: Annotated[str | None, _rerank_model_option("--model", "-m")] = None,
    instruction: Annotated[
        str | None,
        typer.Option(help="Task instruction (default: the model card's web-search instruction).", show_default=False),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(min=1, show_default=False,
                     help="Most tokens per prompt; longer documents lose their tail, the question is kept "
                     "(default: 8192 locally and on the engine, the server's context on vLLM)."),
    ] = None,
    top_n: Annotated[
        int | None, typer.Option(min=1, help="Output only the best N (default: all).", show_default=False)
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, show_default=False, help="Output only documents scoring at least this."),
    ] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="JSON list or a table.")] = OutputFormat.json,
    input_format: Annotated[InputFormat, typer.Option(help="How to read FILE.")] = InputFormat.auto,
    device: Annotated[str, _device_option(rich_help_panel=_LOCAL_PANEL)] = "auto",
    dtype: _LocalDTypeOption = DType.auto,
    source: _LocalSourceOption = Source.huggingface,
    progress: Annotated[
        bool | None,
        typer.Option(rich_help_panel=_LOCAL_PANEL, show_default=False,
                     help=f"Progress bar on stderr (default: on for {_PROGRESS_MIN_DOCUMENTS}+ documents on a "
                     "terminal)."),
    ] = None,
    base_url: _BaseUrlOption = None,
    template: _TemplateOption = Template.client,
    timeout: _TimeoutOption = 60.0,
    max_retries: _RetriesOption = 3,
    ca_bundle: _CaBundleOption = None,
) -> None:
    """Score documents against QUERY and print them best first.

    JSON output is a list of {"index", "score", "text"} sorted by score (ties keep input order); "index" is
    the document's position in FILE, blank lines not counted. Scores are P("yes") in [0, 1]. A vLLM server
    started with --api-key needs the key in $VLLM_API_KEY.
    """
    with _exit_on_error():
        validate_inputs(query, [], instruction)  # before reading stdin or loading anything
        _reject_other_backend_options(ctx, backend)
        _require_backend(backend)
        if backend is Backend.vllm and not base_url:
            raise ValueError("--backend vllm needs --base-url, e.g. --base-url http://localhost:8000")
        if documents_file == "-" and sys.stdin.isatty():  # otherwise a bare `qwen3-rerank rerank Q` seems to hang
            typer.echo("reading documents from stdin, one per line; end with Ctrl-D", err=True)
        documents = read_documents(documents_file, input_format.value)
        if backend is Backend.local:
            from .local import LocalScorer

            show_progress = progress if progress is not None else (
                len(documents) >= _PROGRESS_MIN_DOCUMENTS and sys.stderr.isatty()
            )
            local_options: dict[str, Any] = {"max_length": max_length} if max_length is not None else {}
            scorer = LocalScorer(model or DEFAULT_MODEL, device=device, dtype=dtype.value, source=source.value,
                                 show_progress_bar=show_progress, **local_options)
            scores = scorer.score(query, documents, instruction=instruction)
        elif backend is Backend.engine:
            with _engine_scorer(model, dtype=dtype, source=source, max_length=max_length) as engine:
                scores = engine.score(query, documents, instruction=instruction)
        else:
            assert base_url is not None  # checked above
            with _vllm_scorer(base_url, model=model, template=template, timeout=timeout,
                              max_retries=max_retries, ca_bundle=ca_bundle, max_length=max_length) as remote:
                scores = remote.score(query, documents, instruction=instruction)
    ranking = [
        {"index": kept.index, "score": kept.score, "text": documents[kept.index]}
        for kept in rank(scores, top_n=top_n, score_threshold=threshold)
    ]
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(ranking, ensure_ascii=False, indent=2))
    else:
        _print_ranking(ranking)


def _reject_other_backend_options(
    ctx: typer.Context, backend: Backend, local_only: tuple[str, ...] = _LOCAL_ONLY
) -> None:
    """An option typed for another backend is a mistake: say so rather than silently ignore it.

    ``local_only``: the local backend's own options in this command (eval's embedder takes --device and
    --progress whatever the backend, so they are nobody's there)."""
    owners = {Backend.local: local_only, Backend.vllm: _VLLM_ONLY,
              Backend.engine: tuple(name for name in _ENGINE_ONLY if name in local_only)}
    other = dict.fromkeys(name for options in owners.values() for name in options if name not in owners[backend])
    typed = [name for name in other if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if typed:
        flags = ", ".join("--" + name.replace("_", "-") for name in typed)
        where = " or ".join(b.value for b in Backend if all(name in owners[b] for name in typed))
        if not where:  # flags of different backends: name each one's
            where = "; ".join(f"--{name.replace('_', '-')} is for --backend "
                              + " or ".join(b.value for b in Backend if name in owners[b]) for name in typed)
            raise ValueError(f"{flags} do not apply to --backend {backend.value} ({where})")
        verb = "applies" if len(typed) == 1 else "apply"
        raise ValueError(f"{flags} only {verb} to --backend {where}")


_BACKEND_CLASSES = {Backend.local: "LocalScorer", Backend.vllm: "VLLMScorer", Backend.engine: "VLLMEngineScorer"}


def _require_backend(backend: Backend) -> None:
    """The packages the backend needs are installed (MissingDependencyError, one line, otherwise)."""
    label = f"--backend {backend.value}"
    require(_BACKEND_CLASSES[backend], label=label)
    if backend is Backend.engine:
        require_vllm(label)


def _engine_scorer(model: str | None, *, dtype: DType, source: Source, max_length: int | None) -> Any:
    """A VLLMEngineScorer (vLLM's engine in this process); used as a context manager, so the engine stops."""
    from .engine import VLLMEngineScorer

    options: dict[str, Any] = {"max_length": max_length} if max_length is not None else {}
    return VLLMEngineScorer(model or DEFAULT_MODEL, dtype=dtype.value, source=source.value, **options)


# ------------------------------------------------------------------------------------------------ check-server
@app.command("check-server")
def check_server(
    url: Annotated[
        list[str],
        typer.Argument(metavar="URL...", show_default=False,
                       help="The vLLM server, e.g. http://localhost:8000; several URLs check each replica and that "
                       "they agree."),
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", show_default=False,
                     help="The served model name you will use (default: the one the server serves)."),
    ] = None,
    template: Annotated[Template, _template_option()] = Template.client,
    min_gap: Annotated[
        float,
        typer.Option(min=-1.0, max=1.0,
                     help="Smallest accepted canary gap: P(yes) of a relevant minus an irrelevant document; "
                     "-1 switches the canary off (a test model with random weights)."),
    ] = 0.5,
    timeout: Annotated[float, _timeout_option()] = 60.0,
    max_retries: Annotated[int, _retries_option()] = 3,
    ca_bundle: Annotated[str | None, _ca_bundle_option()] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="A readable report or JSON.")] = (
        OutputFormat.table
    ),
) -> None:
    """Check that a vLLM server gives official Qwen3-Reranker scores, the way this client will call it.

    Reports the health, the served models and context length, a canary pair's scores and gap, and the
    known misconfigurations (embed mode, a missing, doubled or wrong prompt template — with --template server
    the server's rendering is compared token by token with the official prompt —, another model, an ignored
    instruction). The template to start vLLM with ships with this package: `python -c "from
    qwen3_rerank_integrations.templates import RERANKER_TEMPLATE; print(RERANKER_TEMPLATE)"`. Exits 1 when
    the server would give wrong scores, 3 when it cannot be reached. A server
    started with --api-key needs the key in $VLLM_API_KEY.
    """
    with _exit_on_error():
        require("qwen3-rerank check-server")
        with _vllm_scorer(url, model=model, template=template, timeout=timeout, max_retries=max_retries,
                          ca_bundle=ca_bundle) as scorer:
            report = scorer.check(min_gap=min_gap)
    if report.error and report.healthy is None:  # never reached the server: there is nothing to report
        _fail(" ".join(report.error.split()), EXIT_RUNTIME_ERROR)
    if output_format is OutputFormat.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


# ------------------------------------------------------------------------------------------------ serve
@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", show_default=False,
                            help=f"A checkpoint folder or hub id, e.g. {DEFAULT_MODEL}.")
    ],
    vllm_args: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- VLLM_ARGS", show_default=False,
                       help="More vLLM arguments after --, passed through (e.g. -- --gpu-memory-utilization 0.5).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8000,
    template: Annotated[
        Template,
        typer.Option(help="'server': start vLLM with the reranker --chat-template (clients send raw text); 'client': "
                     "without it (clients format the prompt, VLLMScorer's default)."),
    ] = Template.client,
    dtype: Annotated[
        DType,
        typer.Option(help="vLLM's --dtype, always passed explicitly; 'auto': float32 on CPU (the official scores), "
                     "the checkpoint's own on an accelerator."),
    ] = DType.auto,
    max_model_len: Annotated[
        int | None,
        typer.Option("--max-length", "--max-model-len", min=1, show_default=False,
                     help="Most tokens per prompt, vLLM's --max-model-len (default: the reranker's 8192, or the "
                     "model's context when smaller)."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(show_default=False, help="The model name clients use (default: MODEL).")
    ] = None,
    python: Annotated[
        str | None,
        typer.Option(show_default=False,
                     help="The interpreter that has vLLM, e.g. a venv's bin/python (default: this one)."),
    ] = None,
    startup_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for the server to become healthy.")
    ] = 900.0,
) -> None:
    """Start a vLLM (or vllm-ascend) server for a Qwen3-Reranker and keep it running; Ctrl-C stops it.

    Picks the flags for the installed vLLM (--runner pooling, or --task score before 0.10.1), the reranker's
    --hf-overrides, safetensors loading and, with --template server, the package's reranker chat template. Once
    /health answers it prints the base URL, the matching VLLMScorer(...) and check-server command. The server's
    log goes to stderr. An API key comes from $VLLM_API_KEY only, which vLLM reads itself.
    """
    from .errors import ServerStartError
    from .vllm.server import ServeConfig
    from .vllm.server import serve as run_server

    with _exit_on_error():
        options: dict[str, Any] = {"python": python} if python else {}
        config = ServeConfig(
            model=model, host=host, port=port, template=template.value, dtype=dtype.value,
            max_model_len=max_model_len, served_model_name=served_model_name, vllm_args=vllm_args or [],
            startup_timeout=startup_timeout, **options,
        )
        try:
            run_server(config, out=typer.echo, log=lambda line: typer.echo(line, err=True))
        except ServerStartError as exc:  # its log (with the tail) went to stderr already
            _fail(exc.reason, EXIT_RUNTIME_ERROR)


# ------------------------------------------------------------------------------------------------ check-device
@app.command("check-device")
def check_device(
    model: Annotated[
        str, typer.Option("--model", "-m", help="A checkpoint folder or hub id, scored on both sides.")
    ] = DEFAULT_MODEL,
    device: Annotated[str, _device_option()] = "auto",
    dtype: Annotated[DType, _dtype_option()] = DType.auto,
    source: Annotated[Source, _source_option()] = Source.huggingface,
    max_abs_diff: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, show_default=False,
                     help=f"Largest score difference accepted (default: {DEFAULT_MAX_ABS_DIFF['float32']:g} for "
                     f"float32, {DEFAULT_MAX_ABS_DIFF['bfloat16']:g} for bfloat16/float16)."),
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
        require("qwen3-rerank check-device")
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
                  f"{_verdict(report.max_abs_diff <= report.threshold_max_abs_diff)}")
    console.print(f"mean abs diff   {report.mean_abs_diff:.3g}")
    console.print(f"rank agreement  {report.rank_agreement:.3f} (>= {report.threshold_rank_agreement:g}) "
                  f"{_verdict(report.rank_agreement >= report.threshold_rank_agreement)}")
    console.print(f"top-1 agreement {report.top1_agreement:.3f} (>= {report.threshold_top1_agreement:g}) "
                  f"{_verdict(report.top1_agreement >= report.threshold_top1_agreement)}")
    console.print("[green]PASS[/green]" if report.passed else f"[red]FAIL[/red]: {'; '.join(report.failures)}")


# ------------------------------------------------------------------------------------------------ bench
@app.command()
def bench(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", show_default=False,
                     help="A checkpoint folder or hub id (default: random weights of the 0.6B shape, no download)."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(show_default=False,
                     help="The real Qwen3 tokenizer's folder for random weights (default: a built-in word-level "
                     "stand-in with Qwen3's control-token ids, no download)."),
    ] = None,
    layers: Annotated[
        int | None,
        typer.Option(min=1, show_default=False,
                     help="Decoder layers of the random model (default: 4 on CPU, 28 else)."),
    ] = None,
    docs: Annotated[
        int | None,
        typer.Option(min=1, show_default=False, help="Documents to score (default: 48 on CPU, 512 on accelerators)."),
    ] = None,
    device: Annotated[str, _device_option()] = "cpu",
    dtype: Annotated[DType, _dtype_option()] = DType.auto,
    reps: Annotated[int, typer.Option(min=1, help="Timed repetitions per method; the best is reported.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random workload.")] = 1,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="A table or JSON.")] = OutputFormat.table,
) -> None:
    """Benchmark LocalScorer against the official method and sentence-transformers' CrossEncoder.

    Each method scores the same documents with the same weights on the same device, in its own process; the
    three take turns (each repetition runs every method once), so other load on the machine hits all alike.
    Prints tokens/s, pairs/s, peak memory, speed ratios, each method's largest score difference from the
    official method and the load average. Progress goes to stderr.
    """
    from .benchmark import BenchmarkConfig, run_benchmark

    with _exit_on_error():
        require("qwen3-rerank bench")
        config = BenchmarkConfig(model=model, tokenizer=tokenizer, layers=layers, docs=docs, device=device,
                                 dtype=dtype.value, reps=reps, seed=seed)
        report = run_benchmark(config, log=lambda line: typer.echo(line, err=True))
    typer.echo(report.model_dump_json(indent=2) if output_format is OutputFormat.json else report.table())


# ------------------------------------------------------------------------------------------------ eval
_EVAL_PANEL = "Evaluation"
# In eval the embedder runs here whatever the backend, so --device and --progress apply to both.
_EVAL_LOCAL_ONLY = ("dtype", "source")
# An --instruction with this value stands for the scorer's default (the model card's web-search instruction).
_DEFAULT_INSTRUCTION_FLAG = "default"


def _eval_option(*names: str, **extra: Any) -> Any:
    return typer.Option(*names, rich_help_panel=_EVAL_PANEL, show_default=False, **extra)


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Argument(metavar="DATA", show_default=False,
                       help="A BEIR folder: corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv."),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", show_default=False,
                     help="Folder for the results. Run the same command again to resume: scores already computed "
                     "are read from DIR/score-cache, not recomputed."),
    ],
    split: Annotated[str, typer.Option(rich_help_panel=_EVAL_PANEL, help="Evaluate qrels/SPLIT.tsv.")] = "test",
    embed_model: Annotated[
        str | None,
        _eval_option(help=f"First stage: a sentence-transformers id or folder (default {DEFAULT_EMBED_MODEL})."),
    ] = None,
    run_file: Annotated[
        Path | None,
        _eval_option("--run", help="First stage: a TREC run file you already have (query Q0 doc rank score tag), "
                     "instead of dense retrieval."),
    ] = None,
    top_k: Annotated[
        list[int] | None,
        _eval_option(min=1, help=f"First-stage documents to rerank per query (default {DEFAULT_TOP_K}). Repeat to "
                     "compare depths: systems are then named LABEL@K."),
    ] = None,
    instruction: Annotated[
        list[str] | None,
        _eval_option(help=f"Task instruction; repeat to compare several in one run. '{_DEFAULT_INSTRUCTION_FLAG}' "
                     "(and no --instruction) is the model card's web-search instruction."),
    ] = None,
    label: Annotated[
        list[str] | None,
        _eval_option(help="A system name per --instruction, in order (default: 'rerank', or 'rerank-1', "
                     "'rerank-2'... for several)."),
    ] = None,
    measure: Annotated[
        list[str] | None,
        _eval_option(help="An ir-measures measure, e.g. nDCG@10, RR@10, R@100, AP; repeatable (default: "
                     "nDCG@10, RR@10, R@10 and R@K for each --top-k)."),
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(rich_help_panel=_EVAL_PANEL,
                     help="Keep scores in DIR/score-cache and reuse them; --no-cache rescores everything."),
    ] = True,
    backend: Annotated[Backend, _backend_option("Rerank")] = Backend.local,
    rerank_model: Annotated[str | None, _rerank_model_option("--model", "-m", "--rerank-model")] = None,
    max_length: Annotated[
        int | None,
        typer.Option(min=1, show_default=False,
                     help="Most tokens per prompt (default: 8192 locally and on the engine, the server's context "
                     "on vLLM)."),
    ] = None,
    device: Annotated[str, _device_option()] = "auto",
    progress: Annotated[
        bool | None,
        typer.Option(show_default=False, help="Progress bars on stderr (default: on a terminal)."),
    ] = None,
    dtype: _LocalDTypeOption = DType.auto,
    source: _LocalSourceOption = Source.huggingface,
    base_url: _BaseUrlOption = None,
    template: _TemplateOption = Template.client,
    timeout: _TimeoutOption = 60.0,
    max_retries: _RetriesOption = 3,
    ca_bundle: _CaBundleOption = None,
) -> None:
    """Measure the reranker on your labelled data: first stage, reranked per instruction, IR metrics.

    Retrieves each query's top K (dense, or your --run file), reranks them for each --instruction, and writes
    to DIR: metrics.json ({system: {measure: value}}, computed by ir-measures), runs/SYSTEM.trec, metrics.md
    (the table, also printed), metrics.png (a chart) and settings.json. Systems: first_stage, then one per
    instruction (and depth). --device is where the embedder runs, and the reranker on the local backend (vLLM
    picks the engine's).
    """
    with _exit_on_error():
        _reject_other_backend_options(ctx, backend, local_only=_EVAL_LOCAL_ONLY)
        if backend is Backend.vllm and not base_url:
            raise ValueError("--backend vllm needs --base-url, e.g. --base-url http://localhost:8000")
        options: dict[str, Any] = {"top_k": top_k, "labels": label, "measures": measure, "run_file": run_file,
                                   "embed_model": embed_model}
        if instruction:
            if not all(text.strip() for text in instruction):
                raise ValueError(f"--instruction must not be empty; '{_DEFAULT_INSTRUCTION_FLAG}' is the model "
                                 "card's instruction")
            options["instructions"] = [None if text == _DEFAULT_INSTRUCTION_FLAG else text for text in instruction]
        config = _eval_config(data=data, output=output, split=split, device=device,
                              **{key: value for key, value in options.items() if value is not None})
        show_progress = progress if progress is not None else sys.stderr.isatty()
        log = lambda line: typer.echo(line, err=True)  # noqa: E731
        try:
            if backend is Backend.local:
                from .local import LocalScorer

                scorer = LocalScorer(rerank_model or DEFAULT_MODEL, device=device, dtype=dtype.value,
                                     source=source.value, **({"max_length": max_length} if max_length else {}))
                report = run_evaluation(config, scorer, cache=cache, progress=show_progress, log=log)
            elif backend is Backend.engine:
                with _engine_scorer(rerank_model, dtype=dtype, source=source, max_length=max_length) as engine:
                    report = run_evaluation(config, engine, cache=cache, progress=show_progress, log=log)
            else:
                assert base_url is not None  # checked above
                with _vllm_scorer(base_url, model=rerank_model, template=template, timeout=timeout,
                                  max_retries=max_retries, ca_bundle=ca_bundle, max_length=max_length) as remote:
                    report = run_evaluation(config, remote, cache=cache, progress=show_progress, log=log)
        except KeyboardInterrupt:
            _fail("interrupted; the scores computed so far are kept: run the same command again to resume", 130)
    typer.echo(report.table, nl=False)
    typer.echo(f"wrote {output}/metrics.json, metrics.md, metrics.png and runs/ ({len(report.systems)} systems); "
               f"scored {report.pairs_scored} of {report.pairs} pairs, the rest from the score cache", err=True)


_EVAL_FLAGS = {"top_k": "--top-k", "instructions": "--instruction", "labels": "--label", "measures": "--measure",
               "run_file": "--run", "embed_model": "--embed-model", "split": "--split", "data": "DATA"}


def _eval_config(**fields: Any) -> EvalConfig:
    """EvalConfig, its first complaint in flag terms ("--measure: ...") rather than pydantic's field terms."""
    try:
        return EvalConfig(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = _EVAL_FLAGS.get(str(error["loc"][0])) if error["loc"] else None
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        raise ValueError(f"{flag}: {message}" if flag else message) from None


def main() -> None:
    """The ``qwen3-rerank`` console script."""
    app()


if __name__ == "__main__":
    main()
