"""``qwen3-rerank bench``: LocalScorer against the official method and CrossEncoder, taking turns."""

from __future__ import annotations

from typing import Annotated

import typer

from ..benchmark import BenchmarkConfig
from ..extras import require
from .app import app, exit_on_error
from .options import DType, OutputFormat, device_option, dtype_option, literal_enum

Workload = literal_enum("Workload", BenchmarkConfig.model_fields["workload"].annotation)

__all__ = ["bench"]


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
    device: Annotated[str, device_option()] = "cpu",
    dtype: Annotated[DType, dtype_option()] = DType.auto,
    workload: Annotated[
        Workload,
        typer.Option(help="'mixed': documents of 20-360 words; 'rag': 1 query x 20 documents of 150 words (a RAG "
                     "pipeline's call; --docs changes the count)."),
    ] = Workload.mixed,
    fused: Annotated[
        bool, typer.Option(help="Also time LocalScorer(fused=True) (row local_fused; its compile warm-up is untimed).")
    ] = False,
    reps: Annotated[int, typer.Option(min=1, help="Timed repetitions per method; the best is reported.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random workload.")] = 1,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="A table or JSON.")] = OutputFormat.table,
) -> None:
    """Benchmark LocalScorer against the official method and sentence-transformers' CrossEncoder.

    Each method scores the same documents with the same weights on the same device, in its own process; the
    three take turns (each repetition runs every method once), so other load on the machine hits all alike.
    Prints tokens/s, pairs/s, peak memory, speed ratios, each method's largest score difference from the
    official method and the load average. Progress goes to stderr. With --dtype bfloat16 on a CPU without bf16
    units (AMX, AVX512-BF16) a note says the figures are those of software bf16.
    """
    from ..benchmark import run_benchmark

    with exit_on_error():
        require("qwen3-rerank bench")
        config = BenchmarkConfig(model=model, tokenizer=tokenizer, layers=layers, docs=docs, device=device,
                                 dtype=dtype.value, workload=workload.value, fused=fused, reps=reps, seed=seed)
        report = run_benchmark(config, log=lambda line: typer.echo(line, err=True))
    typer.echo(report.model_dump_json(indent=2) if output_format is OutputFormat.json else report.table())
