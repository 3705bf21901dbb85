"""VLLMScorer's cost as a client, against the loopback vLLM stand-in (no model: scores are instant); prints a table.

    python -m benchmarks.remote_client            # from the repository root: the stand-in server is tests/'s
    python -m benchmarks.remote_client --calls 500 --docs 20 --list 1000 --latency 0.05

1. Overhead: ``score``/``ascore`` on a list that fits one request, against a bare httpx loop that formats the same
   request, sends it and orders the results by index (the least a correct client does). Target <= 1.1x.
   The server runs in its own process; timings alternate in blocks so other load hits both alike.
2. Long lists: 1,000 documents against a server that takes a fixed time per request, batches sent concurrently
   (``max_concurrency``) vs one after another (``max_concurrency=1``). Target >= 4x faster.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection

import httpx

from qwen3_rerank_integrations import VLLMScorer
from qwen3_rerank_integrations.prompt import (
    DEFAULT_INSTRUCTION,
    PREFIX,
    SUFFIX,
    document_part,
    query_part,
)
from tests.vllm_standin import VLLMStandIn

QUERY = "What is the capital of China?"


def _instant_score(query: str, document: str) -> float:
    return (len(document) % 97) / 97


class _ServerProcess:
    """The stand-in in its own process, so server work does not compete with the client for the GIL."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True)
        self._process.start()
        self.base_url: str = self._control.recv()
        self.latency = 0.0

    def set_latency(self, seconds: float) -> None:
        self._control.send(seconds)
        self.latency = self._control.recv()

    def close(self) -> None:
        self._control.send(None)
        self._process.join(timeout=10)


def _serve(control: Connection) -> None:
    server = VLLMStandIn("legacy", score_override=_instant_score)
    control.send(server.base_url)
    while (latency := control.recv()) is not None:
        server.latency = latency
        control.send(latency)
    server.close()


def _documents(count: int) -> list[str]:
    return [f"Passage {i}: Beijing has been the capital of China for centuries. " * (1 + i % 3) for i in range(count)]


def _raw_payload(documents: list[str]) -> dict:
    return {
        "query": PREFIX + query_part(QUERY, DEFAULT_INSTRUCTION),
        "documents": [document_part(d) + SUFFIX for d in documents],
        "top_n": len(documents),
    }


def _by_index(body: dict, count: int) -> list[float]:
    scores = [0.0] * count
    for item in body["results"]:
        scores[item["index"]] = item["relevance_score"]
    return scores


def _per_call(run: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - started) / calls


async def _aper_call(run: Callable[[], Awaitable[object]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await run()
    return (time.perf_counter() - started) / calls


def overhead(server: _ServerProcess, calls: int, docs: int, rounds: int) -> list[tuple[str, float, float]]:
    """Per-call seconds (ours, bare), timed in alternating blocks so that load from other processes hits
    both alike; the median block of each is kept."""
    documents = _documents(docs)
    block = max(1, calls // rounds)
    rows = []
    with VLLMScorer(server.base_url) as scorer, httpx.Client(base_url=server.base_url) as raw:
        def bare() -> list[float]:
            return _by_index(raw.post("/v1/rerank", json=_raw_payload(documents)).json(), docs)

        def ours() -> list[float]:
            return scorer.score(QUERY, documents)

        assert ours() == bare()  # the same answer (and both warmed up)
        times = [(_per_call(ours, block), _per_call(bare, block)) for _ in range(rounds)]
        rows.append((f"score(), {docs} docs, sync", *map(statistics.median, zip(*times))))

    async def run_async() -> list[tuple[float, float]]:
        async with VLLMScorer(server.base_url) as scorer, httpx.AsyncClient(base_url=server.base_url) as raw:
            async def bare() -> list[float]:
                return _by_index((await raw.post("/v1/rerank", json=_raw_payload(documents))).json(), docs)

            async def ours() -> list[float]:
                return await scorer.ascore(QUERY, documents)

            assert await ours() == await bare()
            return [(await _aper_call(ours, block), await _aper_call(bare, block)) for _ in range(rounds)]

    times = asyncio.run(run_async())
    rows.append((f"ascore(), {docs} docs, async", *map(statistics.median, zip(*times))))
    return rows


def long_list(server: _ServerProcess, count: int, batch_size: int, concurrency: int) -> list[tuple[str, float, float]]:
    documents = _documents(count)
    options = {"batch_size": batch_size, "max_length": 32768}

    def sync_run(parallel: int) -> float:
        with VLLMScorer(server.base_url, max_concurrency=parallel, **options) as scorer:
            started = time.perf_counter()
            scores = scorer.score(QUERY, documents)
            elapsed = time.perf_counter() - started
        assert scores == [_instant_score(QUERY, document_part(d) + SUFFIX) for d in documents]
        return elapsed

    async def async_run(parallel: int) -> float:
        async with VLLMScorer(server.base_url, max_concurrency=parallel, **options) as scorer:
            started = time.perf_counter()
            await scorer.ascore(QUERY, documents)
            return time.perf_counter() - started

    label = f"{count} docs, {batch_size}/request, {server.latency * 1000:.0f} ms/request"
    return [
        (f"{label}, sync", sync_run(concurrency), sync_run(1)),
        (f"{label}, async", asyncio.run(async_run(concurrency)), asyncio.run(async_run(1))),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls timed in all (overhead)")
    parser.add_argument("--docs", type=int, default=20, help="documents per call (overhead)")
    parser.add_argument("--rounds", type=int, default=40, help="alternating timing blocks (overhead)")
    parser.add_argument("--list", type=int, default=1000, help="documents in the long list")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per request (long list)")
    args = parser.parse_args(argv)

    server = _ServerProcess()
    try:
        rows = overhead(server, args.calls, args.docs, args.rounds)
        server.set_latency(args.latency)
        lists = long_list(server, args.list, args.batch_size, args.concurrency)
    finally:
        server.close()

    print("| measurement | VLLMScorer | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    for label, ours, base in rows:
        print(f"| overhead: {label} | {ours * 1e3:.3f} ms/call | bare httpx {base * 1e3:.3f} ms/call | "
              f"{ours / base:.3f}x | <= 1.10x |")
    for label, fast, slow in lists:
        print(f"| {label} | concurrent ({args.concurrency}) {fast:.3f} s | serial {slow:.3f} s | "
              f"{slow / fast:.2f}x faster | >= 4x |")
    print(f"\nOverhead: median of {args.rounds} alternating blocks of {args.calls // args.rounds} calls each; "
          f"the client's own cost per sync call is {(rows[0][1] - rows[0][2]) * 1e6:.0f} us.")


if __name__ == "__main__":
    main()
