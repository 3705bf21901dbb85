"""``qwen3-rerank eval``: measure the reranker on labelled data (first stage, rerank per instruction, metrics)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from ..evaluation import DEFAULT_EMBED_MODEL, DEFAULT_TOP_K, EvalConfig, EvalReport, run_evaluation
from ..evaluation.needs import require_packages
from .app import app, exit_on_error, fail
from .backends import open_scorer, require_backend
from .io import console
from .options import (
    Backend,
    BaseUrlOption,
    CaBundleOption,
    DType,
    LocalDTypeOption,
    LocalSourceOption,
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

__all__ = ["eval_command"]


EVAL_PANEL = "Evaluation"
# In eval the embedder runs here whatever the backend, so --device and --progress apply to both.
_EVALLOCAL_ONLY = ("dtype", "source")
# An --instruction with this value stands for the scorer's default (the model card's web-search instruction).
DEFAULT_INSTRUCTION_FLAG = "default"


def _eval_option(*names: str, **extra: Any) -> Any:
    return typer.Option(*names, rich_help_panel=EVAL_PANEL, show_default=False, **extra)


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
    split: Annotated[str, typer.Option(rich_help_panel=EVAL_PANEL, help="Evaluate qrels/SPLIT.tsv.")] = "test",
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
        _eval_option(help=f"Task instruction; repeat to compare several in one run. '{DEFAULT_INSTRUCTION_FLAG}' "
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
        typer.Option(rich_help_panel=EVAL_PANEL,
                     help="Keep scores in DIR/score-cache and reuse them; --no-cache rescores everything."),
    ] = True,
    concurrency: Annotated[
        int | None,
        _eval_option(min=1, help="Rerank calls (query x instruction) in flight at once (default: 8 with --backend "
                     "vllm, 2 per replica past 4; 1 locally, where the model batches each call). The metrics do "
                     "not depend on it."),
    ] = None,
    ray: Annotated[
        str | None,
        _eval_option("--ray", metavar="ADDRESS",
                     help="Rerank on Ray actors (the ray extra), each holding a copy of the reranker: 'local' starts "
                     "a cluster on this machine for the run; 'auto' joins the one this machine belongs to; "
                     "ray://HEAD:10001 a remote one (Ray Client)."),
    ] = None,
    ray_actors: Annotated[
        int, _eval_option(min=1, help="With --ray: actors, each with its own copy of the reranker.")
    ] = 2,
    ray_gpus: Annotated[
        float, _eval_option(min=0.0, help="With --ray: GPUs per actor (1: a local model per GPU).")
    ] = 0.0,
    backend: Annotated[Backend, backend_option("Rerank")] = Backend.local,
    rerank_model: Annotated[str | None, rerank_model_option("--model", "-m", "--rerank-model")] = None,
    max_length: Annotated[
        int | None,
        typer.Option(min=1, show_default=False,
                     help="Most tokens per prompt (default: 8192 locally and on the engine, the server's context "
                     "on vLLM)."),
    ] = None,
    device: Annotated[str, device_option()] = "auto",
    progress: Annotated[
        bool | None,
        typer.Option(show_default=False, help="Progress bars on stderr (default: on a terminal)."),
    ] = None,
    dtype: LocalDTypeOption = DType.auto,
    source: LocalSourceOption = Source.huggingface,
    base_url: BaseUrlOption = None,
    template: TemplateOption = TemplateMode.auto,
    timeout: TimeoutOption = 60.0,
    max_retries: RetriesOption = 3,
    ca_bundle: CaBundleOption = None,
) -> None:
    """Measure the reranker on your labelled data: first stage, reranked per instruction, IR metrics.

    Retrieves each query's top K (dense, or your --run file), reranks them for each --instruction, and writes
    to DIR: metrics.json ({system: {measure: value}}, computed by ir-measures), runs/SYSTEM.trec, metrics.md
    (the table, also printed), metrics.png (a chart) and settings.json. Systems: first_stage, then one per
    instruction (and depth). --device is where the embedder runs, and the reranker on the local backend (vLLM
    picks the engine's).
    """
    with exit_on_error():
        reject_other_backend_options(ctx, backend, local_only=_EVALLOCAL_ONLY)
        if backend is Backend.vllm and not base_url:
            raise ValueError("--backend vllm needs --base-url, e.g. --base-url http://localhost:8000")
        # Every package these options need, before anything is read or loaded (not after the first stage).
        require_backend(backend)
        require_packages(dense_first_stage=run_file is None, cache=cache, needed_by="qwen3-rerank eval")
        if ray is not None and concurrency is not None:
            raise ValueError("--concurrency applies without --ray; with --ray the work is spread over --ray-actors")
        ray_options = _ray_options(ctx, ray, ray_actors, ray_gpus)
        options: dict[str, Any] = {"top_k": top_k, "labels": label, "measures": measure, "run_file": run_file,
                                   "embed_model": embed_model}
        if instruction:
            if not all(text.strip() for text in instruction):
                raise ValueError(f"--instruction must not be empty; '{DEFAULT_INSTRUCTION_FLAG}' is the model "
                                 "card's instruction")
            options["instructions"] = [None if text == DEFAULT_INSTRUCTION_FLAG else text for text in instruction]
        config = _eval_config(data=data, output=output, split=split, device=device,
                              **{key: value for key, value in options.items() if value is not None})
        show_progress = progress if progress is not None else sys.stderr.isatty()
        log = lambda line: typer.echo(line, err=True)  # noqa: E731
        try:
            with open_scorer(backend, model=rerank_model, max_length=max_length, device=device, dtype=dtype,
                             source=source, base_url=base_url, template=template, timeout=timeout,
                             max_retries=max_retries, ca_bundle=ca_bundle) as scorer:
                report = run_evaluation(config, scorer, cache=cache, progress=show_progress, log=log,
                                        concurrency=concurrency, ray=ray_options)
        except KeyboardInterrupt:
            fail("interrupted; the scores computed so far are kept: run the same command again to resume", 130)
    _print_metrics(report)
    typer.echo(f"wrote {output}/metrics.json, metrics.md, metrics.png and runs/ ({len(report.systems)} systems); "
               f"{report.scoring_summary()}", err=True)


def _ray_options(ctx: typer.Context, address: str | None, actors: int, gpus: float) -> Any:
    """RayOptions for --ray (None without it); --ray-actors/--ray-gpus without --ray are refused. Ray itself is
    checked here, before anything is read or loaded."""
    if address is None:
        given = [flag for flag, name in (("--ray-actors", "ray_actors"), ("--ray-gpus", "ray_gpus"))
                 if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
        if given:
            raise ValueError(f"{' and '.join(given)}: only with --ray ADDRESS")
        return None
    from ..batch import RayOptions
    from ..extras import require_extra

    require_extra("ray", needed_by="qwen3-rerank eval --ray", modules=["ray", "ray.data"])
    return RayOptions(address=None if address == "local" else address, num_actors=actors, num_gpus=gpus)


def _print_metrics(report: EvalReport) -> None:
    """The metrics as a terminal table (metrics.md keeps the markdown): a row per system, the best of each
    column in bold (when several systems), then the notes."""
    import math

    from rich.table import Column, Table
    from rich.text import Text

    metrics = report.metrics()
    columns = list(next(iter(metrics.values())))
    table = Table(Column("system", no_wrap=True), *(Column(name, justify="right", no_wrap=True) for name in columns))
    for system, values in metrics.items():
        cells = []
        for column, value in values.items():
            best = len(metrics) > 1 and math.isclose(value, max(row[column] for row in metrics.values()))
            cells.append(Text(f"{value:.4f}", style="bold" if best else ""))
        table.add_row(Text(system), *cells)  # Text: a label or an instruction is never read as markup
    out = console()
    out.print(table)
    for note in report.notes:  # one line each (the terminal wraps it), so it can be searched for when piped
        out.print(Text(f"- {note}"), soft_wrap=True)


EVAL_FLAGS = {"top_k": "--top-k", "instructions": "--instruction", "labels": "--label", "measures": "--measure",
               "run_file": "--run", "embed_model": "--embed-model", "split": "--split", "data": "DATA",
              "output": "--output"}


def _eval_config(**fields: Any) -> EvalConfig:
    """EvalConfig, its first complaint in flag terms ("--measure: ...") rather than pydantic's field terms."""
    try:
        return EvalConfig(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = EVAL_FLAGS.get(str(error["loc"][0])) if error["loc"] else None
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        raise ValueError(f"{flag}: {message}" if flag else message) from None
