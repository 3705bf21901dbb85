"""Measuring runs and showing the numbers: IR metrics from ir-measures, a markdown table, a PNG bar chart.

No metric is computed here: ir-measures (pytrec_eval underneath) reads each written TREC run file and
computes them, so the numbers are those any other tool reading the same files gets. A query the qrels judge
but a run does not list counts as 0, as ir-measures counts it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MEASURES", "compute_metrics", "markdown_table", "parse_measures", "render_chart"]

# The model card's MTEB-R reports nDCG@10; RR@10 is what a RAG pipeline that reads the first hit feels; recall at
# the reranked depth (added by the caller) is the ceiling no reranker can pass.
DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@10")


def parse_measures(names: Sequence[str]) -> list[Any]:
    """ir-measures measures for ``names`` (e.g. ``"nDCG@10"``, ``"RR@10"``, ``"R@100"``, ``"AP"``), duplicates
    dropped, in the order given.

    Raises:
        ValueError: a name ir-measures does not know (the message names it).
    """
    import ir_measures

    measures: list[Any] = []
    for name in names:
        try:
            measure = ir_measures.parse_measure(name)
        except (ValueError, NameError, SyntaxError, TypeError) as exc:
            raise ValueError(f"measure {name!r} is not one ir-measures knows; e.g. nDCG@10, RR@10, R@100, AP") from exc
        if measure not in measures:
            measures.append(measure)
    return measures


def compute_metrics(
    measures: Sequence[Any], qrels: Mapping[str, Mapping[str, int]], run_file: Path
) -> dict[str, float]:
    """Each measure's mean over the judged queries, computed by ir-measures on the TREC file ``run_file``, keyed
    by the name ir-measures writes (``"nDCG@10"``), in the order of ``measures``."""
    import ir_measures

    values = ir_measures.calc_aggregate(measures, qrels, ir_measures.read_trec_run(str(run_file)))
    return {str(measure): float(values[measure]) for measure in measures}


def markdown_table(metrics: Mapping[str, Mapping[str, float]], notes: Sequence[str] = ()) -> str:
    """One row per system, one column per measure, 4 decimals, the best of each column in bold; ``notes``
    follow the table as a list."""
    systems = list(metrics)
    columns = list(next(iter(metrics.values()))) if metrics else []
    best = {column: max(metrics[system][column] for system in systems) for column in columns}
    lines = [
        "| system | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for system in systems:
        cells = [
            f"**{value:.4f}**" if len(systems) > 1 and math.isclose(value, best[column]) else f"{value:.4f}"
            for column, value in metrics[system].items()
        ]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines) + "\n"


def render_chart(metrics: Mapping[str, Mapping[str, float]], title: str) -> bytes:
    """A grouped bar chart as PNG bytes: one group per measure, one bar per system, values on the bars.

    Drawn on a bare Agg canvas, not pyplot, so it touches no global matplotlib state (a notebook's backend
    stays as it was) and needs no display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    systems = list(metrics)
    columns = list(next(iter(metrics.values()))) if metrics else []
    width = 0.8 / max(len(systems), 1)
    bars = len(columns) * len(systems)
    figure = Figure(figsize=(min(12.0, max(5.5, 3.0 + 0.32 * bars)), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for position, system in enumerate(systems):
        offsets = [index + (position - (len(systems) - 1) / 2) * width for index in range(len(columns))]
        values = [metrics[system][column] for column in columns]
        drawn = axes.bar(offsets, values, width * 0.92, label=system)
        if bars <= 30:  # past that, labels overlap into noise
            axes.bar_label(drawn, labels=[f"{value:.3f}" for value in values], fontsize=7, padding=1)
    axes.set_xticks(range(len(columns)), columns)
    axes.set_ylim(0, 1.1)
    axes.set_ylabel("score")
    axes.set_title(title, fontsize=10)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    buffer = io.BytesIO()
    # No "Software" stamp: the PNG depends on the numbers only, so a resumed run writes the same bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
