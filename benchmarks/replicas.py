"""VLLMScorer over replicas, against loopback stand-ins (no model: each request costs a fixed time); prints a table.

    python benchmarks/replicas.py
    python benchmarks/replicas.py --docs 1000 --latency 0.05 --replicas 3 --repeat 3

Each stand-in works on one request at a time (``capacity=1``) and takes ``--latency`` seconds per request, as an
engine whose compute is the limit does; so one server answers at most 1/latency requests a second whatever the
client's concurrency, and only more servers make a long list faster.

1. 1,000 documents (default ``batch_size=32``: 32 requests) over 1 replica and over 3. Target >= 2.5x faster.
2. The same over 3 replicas while one is killed mid-run (and restarted later): every document must come back
   with its score, equal to the undisturbed run's; the table shows what the failover cost in time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the stand-in lives in tests/

from qwen3_rerank_integrations import VLLMScorer  # noqa: E402
from tests.vllm_standin import VLLMStandIn  # noqa: E402

QUERY = "What is the capital of China?"


def _score(query: str, document: str) -> float:
    return (zlib.crc32(document.encode()) % 1000) / 1000


def _timed(scorer: VLLMScorer, docs: list[str], run: str) -> tuple[float, list[float]]:
    started = time.perf_counter()
    scores = scorer.score(QUERY, docs) if run == "sync" else asyncio.run(scorer.ascore(QUERY, docs))
    return time.perf_counter() - started, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request on each replica")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (the median is shown)")
    args = parser.parse_args()

    docs = [f"Document {i}: Beijing is the capital of China, and this is passage number {i}." for i in range(args.docs)]
    servers = [VLLMStandIn("legacy", score_override=_score) for _ in range(args.replicas)]
    for server in servers:
        server.latency, server.capacity = args.latency, 1
    urls = [s.base_url for s in servers]
    options = {"max_length": 4096, "replica_cooldown": 1.0}
    rows: list[tuple[str, str, float, int, str]] = []
    try:
        with VLLMScorer(urls[0], **options) as single:
            _, expected = _timed(single, docs, "sync")  # warm-up, and the reference scores
        times: dict[tuple[int, str], float] = {}
        for count in (1, args.replicas):
            for run in ("sync", "async"):
                with VLLMScorer(urls[:count], **options) as scorer:
                    runs = []
                    for _ in range(args.repeat):
                        seconds, scores = _timed(scorer, docs, run)
                        assert scores == expected
                        runs.append(seconds)
                times[count, run] = statistics.median(runs)
                speed = times[1, run] / times[count, run]
                rows.append((f"{count} replica{'s' if count > 1 else ''}", run, times[count, run], 0,
                             f"{speed:.2f}x"))

        # One replica killed a third of the way in, restarted after the run.
        for run in ("sync", "async"):
            victim = servers[1]
            with VLLMScorer(urls, **options) as scorer:
                timer = threading.Timer(times[args.replicas, run] / 3, victim.kill)
                timer.start()
                seconds, scores = _timed(scorer, docs, run)
                timer.join()
                lost = sum(1 for got, want in zip(scores, expected) if got != want) + len(expected) - len(scores)
                rows.append((f"{args.replicas} replicas, one killed mid-run", run, seconds, lost,
                             f"{times[1, run] / seconds:.2f}x"))
            victim.restart()
    finally:
        for server in servers:
            server.close()

    print(f"\n{args.docs} documents, batch_size 32 ({-(-args.docs // 32)} requests), max_concurrency 8, "
          f"{args.latency * 1000:.0f} ms per request, one request at a time per replica; median of {args.repeat}")
    print(f"| {'setup':<32} | {'path':<5} | {'seconds':>7} | {'documents lost':>14} | {'vs 1 replica':>12} |")
    print(f"|{'-' * 34}|{'-' * 7}|{'-' * 9}|{'-' * 16}|{'-' * 14}|")
    for setup, run, seconds, lost, speed in rows:
        print(f"| {setup:<32} | {run:<5} | {seconds:>7.3f} | {lost:>14} | {speed:>12} |")


if __name__ == "__main__":
    main()
