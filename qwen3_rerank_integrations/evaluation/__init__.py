"""Does the reranker improve my retrieval, by how much, at which depth, with which instruction?

``qwen3-rerank eval DATA --output DIR`` and :func:`run_evaluation` answer it on your own labelled data (a BEIR
folder), with the backend you deploy: a dense first stage (or your own TREC run), reranked by any
:class:`~qwen3_rerank_integrations.Scorer` for one or several instructions, measured by ir-measures.

    from qwen3_rerank_integrations import LocalScorer
    from qwen3_rerank_integrations.evaluation import EvalConfig, run_evaluation

    report = run_evaluation(EvalConfig(data="examples/beir_mini", output="eval-out", top_k=[20]),
                            LocalScorer("Qwen/Qwen3-Reranker-0.6B"), progress=True)
    print(report.table)

Needs the ``eval`` extra (ir-measures, pytrec-eval-terrier, sentence-transformers, matplotlib, tqdm, diskcache);
importing this package imports none of them, nor torch: they load when a run needs them, and a run checks first
that those its options need are installed (:mod:`.needs`).
"""

from __future__ import annotations

from .data import BeirData, DataError, load_beir, read_run, write_run
from .pipeline import (
    DEFAULT_EMBED_MODEL,
    DEFAULT_TOP_K,
    FIRST_STAGE,
    EvalConfig,
    EvalReport,
    SystemResult,
    dense_first_stage,
    run_evaluation,
)
from .report import DEFAULT_MEASURES, compute_metrics

__all__ = [
    "BeirData",
    "DataError",
    "DEFAULT_EMBED_MODEL",
    "DEFAULT_MEASURES",
    "DEFAULT_TOP_K",
    "EvalConfig",
    "EvalReport",
    "FIRST_STAGE",
    "SystemResult",
    "compute_metrics",
    "dense_first_stage",
    "load_beir",
    "read_run",
    "run_evaluation",
    "write_run",
]
