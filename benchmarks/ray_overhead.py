"""What Ray costs the batch API: a local cluster's set-up, and the overhead per batch of groups; prints a table.

    python benchmarks/ray_overhead.py
    python benchmarks/ray_overhead.py --groups 400 --actors 2 --batch-size 16

A scorer that costs nothing (a hash of the text) isolates Ray's own cost. Rows, each the wall time of one step:

- ``ray.init`` of a local cluster (``--cpus`` CPUs, no dashboard): paid once per run;
- the first ``score_groups(..., ray=...)`` on it: Ray Data's start, the actors' start (each unpickles the scorer);
- the same call again: the steady cost (new actors each call: Ray Data starts its pool per dataset);
- the same groups in this process, without Ray.

The per-batch overhead is (the second call - in-process) / batches.
"""

from __future__ import annotations

import argparse
import os
import time
import zlib

from qwen3_rerank_integrations import ScorerBase
from qwen3_rerank_integrations.batch import RayOptions, ScoreGroup, score_groups


class Hash(ScorerBase):
    """A free scorer: a hash of the query and the text."""

    def _score_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        return [(zlib.crc32(f"{query}|{d}".encode()) % 1000) / 1000 for d in documents]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=400)
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    import ray

    groups = [ScoreGroup(query=f"question {q}", documents=[f"passage {q}.{d}" for d in range(args.docs)])
              for q in range(args.groups)]
    options = RayOptions(num_actors=args.actors, num_cpus=args.cpus / (args.actors + 1), batch_size=args.batch_size)
    load_before = os.getloadavg()[0]
    rows = []
    started = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rows.append(("ray.init (local cluster)", time.perf_counter() - started))
    try:
        expected = None
        for label in ("first score_groups on Ray", "second score_groups on Ray"):
            started = time.perf_counter()
            result = score_groups(Hash(), groups, ray=options)
            rows.append((label, time.perf_counter() - started))
            assert expected is None or result.scores == expected
            expected = result.scores
    finally:
        ray.shutdown()
    started = time.perf_counter()
    assert score_groups(Hash(), groups).scores == expected
    rows.append(("in this process, no Ray", time.perf_counter() - started))
    batches = -(-args.groups // args.batch_size)
    load_after = os.getloadavg()[0]

    print(f"\n{args.groups} groups x {args.docs} documents, a free scorer, {args.actors} actors, batch_size "
          f"{args.batch_size} ({batches} batches), {args.cpus} CPUs; load average {load_before:.2f} -> "
          f"{load_after:.2f}")
    print(f"| {'step':<28} | {'seconds':>7} |")
    print(f"|{'-' * 30}|{'-' * 9}|")
    for label, seconds in rows:
        print(f"| {label:<28} | {seconds:>7.2f} |")
    print(f"per-batch overhead (second call - in-process) / batches: {(rows[2][1] - rows[3][1]) / batches * 1000:.0f} ms")


if __name__ == "__main__":
    main()
