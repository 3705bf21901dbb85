"""LocalScorer vs the official README method vs sentence-transformers CrossEncoder; prints a table.

    python benchmarks/local_scorer.py                                  # CPU, random 0.6B-shaped weights, 4 layers
    python benchmarks/local_scorer.py --device cuda --layers 28 --docs 512
    python benchmarks/local_scorer.py --model Qwen/Qwen3-Reranker-0.6B --device auto

The logic lives in qwen3_rerank_integrations.benchmark so that `qwen3-rerank bench` runs the same thing.
"""

from qwen3_rerank_integrations.benchmark import main

if __name__ == "__main__":
    main()
