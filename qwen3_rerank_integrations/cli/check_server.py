"""``qwen3-rerank check-server``: check that vLLM servers give the official scores, the way this client calls them."""

from __future__ import annotations

from typing import Annotated

import typer

from ..extras import require
from .app import EXIT_CHECK_FAILED, EXIT_RUNTIME_ERROR, app, exit_on_error, fail
from .backends import open_scorer
from .options import (
    Backend,
    OutputFormat,
    TemplateMode,
    ca_bundle_option,
    retries_option,
    template_option,
    timeout_option,
)

__all__ = ["check_server"]


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
    template: Annotated[TemplateMode, template_option()] = TemplateMode.auto,
    min_gap: Annotated[
        float,
        typer.Option(min=-1.0, max=1.0,
                     help="Smallest accepted canary gap: P(yes) of a relevant minus an irrelevant document; "
                     "-1 switches the canary off (a test model with random weights)."),
    ] = 0.5,
    timeout: Annotated[float, timeout_option()] = 60.0,
    max_retries: Annotated[int, retries_option()] = 3,
    ca_bundle: Annotated[str | None, ca_bundle_option()] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="A readable report or JSON.")] = (
        OutputFormat.table
    ),
) -> None:
    """Check that a vLLM server gives official Qwen3-Reranker scores, the way this client will call it.

    Reports the health, the served models and context length, the serving dtype where vLLM tells it, the
    template mode (--template auto: the one found, as `rerank` finds it), a canary pair's scores and gap, and
    the known misconfigurations (embed mode, a missing, doubled or wrong prompt template — in server mode the
    server's rendering is compared token by token with the official prompt —, another model, an ignored
    instruction). The template to start vLLM with ships with this package: `python -c "from
    qwen3_rerank_integrations.templates import RERANKER_TEMPLATE; print(RERANKER_TEMPLATE)"`. Exits 1 when
    the server would give wrong scores, 3 when it cannot be reached. A server
    started with --api-key needs the key in $VLLM_API_KEY.
    """
    with exit_on_error():
        require("qwen3-rerank check-server")
        with open_scorer(Backend.vllm, base_url=url, model=model, template=template, timeout=timeout,
                         max_retries=max_retries, ca_bundle=ca_bundle) as scorer:
            report = scorer.check(min_gap=min_gap)
    if report.error and report.healthy is None:  # never reached the server: there is nothing to report
        fail(" ".join(report.error.split()), EXIT_RUNTIME_ERROR)
    if output_format is OutputFormat.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)
