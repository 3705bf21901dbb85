"""Rerank a few documents with Qwen3-Reranker, in this process.

    python examples/quickstart.py                                  # downloads Qwen/Qwen3-Reranker-0.6B once
    python examples/quickstart.py --model ~/models/Qwen3-Reranker-0.6B --device cpu
    python examples/quickstart.py --query "什么是重排序模型？"

Prints the documents best first with their score, P("yes") in [0, 1].
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from _pipeline_common import (
    DEFAULT_RERANK_MODEL,
    UsageError,
    check_model_location,
    check_offline_cache,
    fit_to_width,
    run_cli,
)

QUERY = "What is the capital of China?"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Shanghai is China's largest city, but it is not the capital.",
    "北京是中华人民共和国的首都。",
    "Gravity is a force that attracts two bodies towards each other.",
    "Server hardening reduces the attack surface of a machine.",
]


def run(argv: Sequence[str] | None = None) -> list[tuple[float, str]]:
    """Score :data:`DOCUMENTS` against the query and print them best first; returns (score, document) pairs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", default=DEFAULT_RERANK_MODEL,
                        help=f"a Qwen3-Reranker hub id or local folder (default {DEFAULT_RERANK_MODEL})")
    parser.add_argument("--device", default="auto", help="auto (NPU > CUDA > MPS > CPU), npu[:N], cuda[:N], mps, cpu")
    parser.add_argument("--query", default=QUERY, help=f"the query (default {QUERY!r})")
    args = parser.parse_args(argv)
    if not args.query.strip():
        raise UsageError("--query must not be empty")
    check_model_location("--model", args.model)  # before torch loads: a typo should fail in a blink
    check_offline_cache("--model", args.model, "reranker")

    from qwen3_rerank_integrations import LocalScorer

    scorer = LocalScorer(args.model, device=args.device)
    scores = scorer.score(args.query, DOCUMENTS)
    ranked = sorted(zip(scores, DOCUMENTS), key=lambda pair: -pair[0])  # stable: ties keep input order

    print(f"Query: {args.query}   (model {args.model} on {scorer.torch_device})\n")
    for rank, (score, document) in enumerate(ranked, start=1):
        print(f"{rank:>2}. {score:.4f}  {fit_to_width(document, 90)}")
    return ranked


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
