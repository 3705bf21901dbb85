"""``qwen3-rerank rerank``: score documents against a query and print them best first."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .._ranking import rank
from ..scorer import validate_inputs
from .app import app, exit_on_error
from .backends import open_scorer, require_backend
from .io import print_ranking, read_documents
from .options import (
    LOCAL_PANEL,
    PROGRESS_MIN_DOCUMENTS,
    Backend,
    BaseUrlOption,
    CaBundleOption,
    DType,
    InputFormat,
    LocalDTypeOption,
    LocalSourceOption,
    OutputFormat,
    RetriesOption,
    Source,
    TemplateMode,
    TemplateOption,
    TimeoutOption,
    backend_option,
    device_option,
    reject_other_backend_options,
    rerank_model_option,
)

__all__ = ["rerank"]


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
    backend: Annotated[Backend, backend_option("Score")] = Backend.local,
    model: Annotated[str | None, rerank_model_option("--model", "-m")] = None,
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
    device: Annotated[str, device_option(rich_help_panel=LOCAL_PANEL)] = "auto",
    dtype: LocalDTypeOption = DType.auto,
    source: LocalSourceOption = Source.huggingface,
    progress: Annotated[
        bool | None,
        typer.Option(rich_help_panel=LOCAL_PANEL, show_default=False,
                     help=f"Progress bar on stderr (default: on for {PROGRESS_MIN_DOCUMENTS}+ documents on a "
                     "terminal)."),
    ] = None,
    base_url: BaseUrlOption = None,
    template: TemplateOption = TemplateMode.auto,
    timeout: TimeoutOption = 60.0,
    max_retries: RetriesOption = 3,
    ca_bundle: CaBundleOption = None,
) -> None:
    """Score documents against QUERY and print them best first.

    JSON output is a list of {"index", "score", "text"} sorted by score (ties keep input order); "index" is
    the document's position in FILE, blank lines not counted. Scores are P("yes") in [0, 1]. A vLLM server
    started with --api-key needs the key in $VLLM_API_KEY.
    """
    with exit_on_error():
        validate_inputs(query, [], instruction)  # before reading stdin or loading anything
        reject_other_backend_options(ctx, backend)
        require_backend(backend)
        if backend is Backend.vllm and not base_url:  # before reading stdin
            raise ValueError("--backend vllm needs --base-url, e.g. --base-url http://localhost:8000")
        if documents_file == "-" and sys.stdin.isatty():  # otherwise a bare `qwen3-rerank rerank Q` seems to hang
            typer.echo("reading documents from stdin, one per line; end with Ctrl-D", err=True)
        documents = read_documents(documents_file, input_format.value)
        show_progress = progress if progress is not None else (
            len(documents) >= PROGRESS_MIN_DOCUMENTS and sys.stderr.isatty()
        )
        with open_scorer(backend, model=model, max_length=max_length, device=device, dtype=dtype, source=source,
                         show_progress=show_progress, base_url=base_url, template=template, timeout=timeout,
                         max_retries=max_retries, ca_bundle=ca_bundle) as scorer:
            scores = scorer.score(query, documents, instruction=instruction)
    ranking = [
        {"index": kept.index, "score": kept.score, "text": documents[kept.index]}
        for kept in rank(scores, top_n=top_n, score_threshold=threshold)
    ]
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(ranking, ensure_ascii=False, indent=2))
    else:
        print_ranking(ranking)
