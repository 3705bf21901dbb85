"""An eval's rerank stage over 4 stand-in replicas vs 1, through the batch API; prints a table.

    python benchmarks/batch_replicas.py
    python benchmarks/batch_replicas.py --queries 200 --docs 8 --latency 0.1 --replicas 4

Each stand-in (tests/vllm_standin.py, no model) works on one request at a time and takes ``--latency`` seconds per
request, as an engine whose compute is the limit does. The workload is ``qwen3-rerank eval`` itself
(``run_evaluation``) on a generated BEIR folder of ``--queries`` queries with a ``--docs``-deep first stage (a
TREC run file): each query is one scorer call of ``--docs`` documents, one request. The time is the wall time of
the whole run including start-up: the stand-ins, the scorer, the first stage, the rerank, the metrics and files.
Rows:

- 1 replica, the batch API's default (8 calls in flight; the server still answers one at a time);
- N replicas, one call at a time (``concurrency=1``: what eval did before the batch API);
- N replicas, the batch API's default. Target: >= 2.5x faster than 1 replica, with the same metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the stand-in lives in tests/

from qwen3_rerank_integrations import VLLMScorer
from qwen3_rerank_integrations.evaluation import EvalConfig, run_evaluation
from tests.vllm_standin import VLLMStandIn


def by_text(query: str, document: str) -> float:
    text = document.split("<Document>: ", 1)[-1].split("<|im_end|>", 1)[0]
    return (zlib.crc32(text.encode()) % 1000) / 1000


def make_beir(folder: Path, queries: int, docs: int) -> Path:
    """A BEIR folder (corpus, queries, qrels: the first document of each query relevant) and a first-stage run."""
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as corpus, open(folder / "run.trec", "w") as run:
        for q in range(queries):
            for d in range(docs):
                corpus.write(json.dumps({"_id": f"d{q}-{d}", "title": "", "text": f"Passage {d} for question {q}: "
                                         "Beijing is the capital of China, its largest city after Shanghai."}) + "\n")
                run.write(f"q{q} Q0 d{q}-{d} {d + 1} {docs - d} bm25\n")
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{q}", "text": f"question {q}: what is the capital of China?"}) + "\n"
                for q in range(queries)), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{q}\td{q}-{q % docs}\t1\n" for q in range(queries)))
    return folder / "run.trec"


def timed_eval(data: Path, run_file: Path, output: Path, replicas: int, latency: float, docs: int,
               concurrency: int | None) -> tuple[float, dict[str, dict[str, float]]]:
    started = time.perf_counter()
    servers = [VLLMStandIn("legacy", score_override=by_text) for _ in range(replicas)]
    try:
        for server in servers:
            server.latency, server.capacity = latency, 1
        urls = [server.base_url for server in servers]
        with VLLMScorer(urls if replicas > 1 else urls[0], template="client", max_length=4096) as scorer:
            config = EvalConfig(data=data, output=output, run_file=run_file, top_k=[docs])
            report = run_evaluation(config, scorer, concurrency=concurrency)
    finally:
        for server in servers:
            server.close()
    return time.perf_counter() - started, report.metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--docs", type=int, default=8, help="first-stage depth (documents per query)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per request on each replica")
    parser.add_argument("--replicas", type=int, default=4)
    args = parser.parse_args()

    setups = [("1 replica", 1, None), (f"{args.replicas} replicas, one call at a time", args.replicas, 1),
              (f"{args.replicas} replicas", args.replicas, None)]
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_file = make_beir(Path(tmp) / "beir", args.queries, args.docs)
        # Warm-up (imports, first-call set-up), not timed: every row then pays the same start-up.
        timed_eval(Path(tmp) / "beir", run_file, Path(tmp) / "warm-up", 1, 0.0, args.docs, None)
        metrics = None
        for number, (setup, replicas, concurrency) in enumerate(setups):
            seconds, got = timed_eval(Path(tmp) / "beir", run_file, Path(tmp) / f"out-{number}", replicas,
                                      args.latency, args.docs, concurrency)
            assert metrics is None or got == metrics, "the metrics differ between setups"
            metrics = got
            rows.append((setup, concurrency or "default", seconds))
    load_after = os.getloadavg()[0]

    print(f"\nqwen3-rerank eval's run: {args.queries} queries x {args.docs} documents (one request per query), "
          f"{args.latency * 1000:.0f} ms per request, one request at a time per replica; wall time including "
          f"start-up; load average {load_before:.2f} -> {load_after:.2f}; the metrics are the same in every row")
    print(f"| {'setup':<34} | {'calls in flight':>15} | {'seconds':>7} | {'vs 1 replica':>12} |")
    print(f"|{'-' * 36}|{'-' * 17}|{'-' * 9}|{'-' * 14}|")
    for setup, concurrency, seconds in rows:
        print(f"| {setup:<34} | {concurrency!s:>15} | {seconds:>7.2f} | {rows[0][2] / seconds:>11.2f}x |")


if __name__ == "__main__":
    main()
