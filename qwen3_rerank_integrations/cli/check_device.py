"""``qwen3-rerank check-device``: does a device and dtype score like CPU float32 on the user's own model?"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..extras import require
from ..local import DEFAULT_MODEL
from ..precision import DEFAULT_MAX_ABS_DIFF, DEFAULT_MIN_RANK_AGREEMENT, DEFAULT_MIN_TOP1_AGREEMENT
from .app import EXIT_CHECK_FAILED, app, exit_on_error
from .io import console, verdict
from .options import DType, OutputFormat, Source, device_option, dtype_option, source_option

__all__ = ["check_device"]


@app.command("check-device")
def check_device(
    model: Annotated[
        str, typer.Option("--model", "-m", help="A checkpoint folder or hub id, scored on both sides.")
    ] = DEFAULT_MODEL,
    device: Annotated[str, device_option()] = "auto",
    dtype: Annotated[DType, dtype_option()] = DType.auto,
    source: Annotated[Source, source_option()] = Source.huggingface,
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
    """Check that DEVICE/DTYPE scores like CPU float32: 80 built-in English and Chinese pairs, same model.

    Four queries, each against the same 20 documents (relevant, near-miss, unrelated); reports the score
    difference, Kendall's tau and the top-5/top-10 overlap per query. On CPU it also reports the CPU's bf16 units
    (AMX, AVX512-BF16) and recommends --dtype bfloat16 where they exist: `--device cpu --dtype bfloat16` measures
    what bf16 does to your model's scores.

    Fails (exit 1) when the largest score difference exceeds --max-abs-diff, the mean per-query Kendall's
    tau is below --min-rank-agreement, or the share of queries with the same best document is below
    --min-top1-agreement. Documents whose CPU scores are within --max-abs-diff of each other count as ties.
    The model is loaded twice, one copy after the other; the CPU fp32 copy needs ~4 bytes per parameter of RAM.
    """
    from ..precision import check_device as run_check

    with exit_on_error():
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

    out = console()
    out.print(Text(f"Precision check of {model}: {report.device} {report.dtype} vs {report.reference}"))
    if report.device == "cpu" and report.dtype == "float32":
        out.print("note: this compares CPU float32 with itself; pass --device to check an accelerator, or "
                  "--dtype bfloat16 to measure bf16 on this CPU")
    table = Table("query", "max|Δ|", "tau", "top-1", "top-5", "top-10")  # tau: Kendall's, per query
    for item in report.queries:
        table.add_row(Text(item.query), f"{item.max_abs_diff:.3g}", f"{item.rank_agreement:.3f}",
                      "same" if item.top1_match else "[red]differs[/red]", _share(item.top5_overlap),
                      _share(item.top10_overlap))
    out.print(table)
    out.print(f"max abs diff    {report.max_abs_diff:.3g} (<= {report.threshold_max_abs_diff:g}) "
                  f"{verdict(report.max_abs_diff <= report.threshold_max_abs_diff)}")
    out.print(f"mean abs diff   {report.mean_abs_diff:.3g}")
    out.print(f"rank agreement  {report.rank_agreement:.3f} (>= {report.threshold_rank_agreement:g}) "
                  f"{verdict(report.rank_agreement >= report.threshold_rank_agreement)}")
    out.print(f"top-1 agreement {report.top1_agreement:.3f} (>= {report.threshold_top1_agreement:g}) "
                  f"{verdict(report.top1_agreement >= report.threshold_top1_agreement)}")
    out.print(f"top-5 overlap   {_share(report.top5_overlap)}   top-10 overlap {_share(report.top10_overlap)}")
    out.print("[green]PASS[/green]" if report.passed else f"[red]FAIL[/red]: {'; '.join(report.failures)}")
    if report.cpu is not None:
        cpu = report.cpu
        units = ", ".join(name for name, present in (("AMX-BF16", cpu.has_amx), ("AVX512-BF16", cpu.has_avx512_bf16),
                                                     ("Arm BF16", cpu.has_arm_bf16)) if present) or "none"
        out.print(Text(f"CPU bf16 units: {units} (torch kernels: {cpu.torch_capability or 'unknown'}); "
                       f"recommended dtype: {cpu.recommended_dtype}"))
        out.print(Text(f"why: {cpu.reason}"))


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
