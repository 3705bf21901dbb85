"""Local scoring benchmark: LocalScorer vs the official README method vs sentence-transformers CrossEncoder.

All three score the same workload (one query, documents of mixed length) with the same weights on the same
device, each in its own process (so each one's peak memory is its own). The three processes load first, then
take turns: every repetition runs each method once, in rotating order, so load from other programs on a shared
machine hits all three alike, and the best repetition of each is reported. By default the weights are random
with the real Qwen3-Reranker-0.6B shape (speed does not depend on the values, and nothing is downloaded) and
the tokenizer is a built-in word-level stand-in with the Qwen3 control-token ids (about one token a word, like
the real one on this workload); ``tokenizer`` takes the real Qwen3 tokenizer's folder, ``model`` a real
checkpoint. Prints a table with tokens/s, pairs/s, peak memory, speed ratios and each method's largest score
difference from the official method.

The command line is ``qwen3-rerank bench`` (``--layers 28 --docs 512 --device cuda`` for the GPU workload);
from Python: ``print(run_benchmark(BenchmarkConfig(layers=28)).table())``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from .errors import RerankError
from .prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_body

__all__ = ["BenchmarkConfig", "BenchmarkError", "MethodResult", "BenchmarkReport", "run_benchmark"]

METHODS = ("official", "crossencoder", "local_scorer")
FUSED_METHOD = "local_fused"  # LocalScorer(fused=True), with BenchmarkConfig(fused=True)
# Below these the speed ratios are mostly noise: a few documents do not fill a batch, one repetition has no best-of
# to shed a hiccup, and a run of a fraction of a second is dominated by timer and scheduling jitter.
MIN_DOCUMENTS = 32
MIN_REPS = 2
MIN_SECONDS = 1.0
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
    tokenizer: str | None = Field(
        None, description="Qwen3 tokenizer folder for random weights; None = the built-in word-level stand-in."
    )
    layers: int | None = Field(None, gt=0, description="Decoder layers of the random model; None = 4 on CPU, 28 else.")
    docs: int | None = Field(None, gt=0, description="Documents to score; None = 48 on CPU, 512 on accelerators.")
    device: str = Field("cpu", description="Device for all methods: 'cpu', 'cuda', 'npu', 'mps' or 'auto'.")
    dtype: str = Field("auto", description="dtype for all methods: 'auto' (fp32 on CPU, bf16 on GPU/NPU), ...")
    workload: Literal["mixed", "rag"] = Field(
        "mixed", description="'mixed': one query, documents of 20-360 words; 'rag': one query, documents of 150 words "
        "each (a retriever's top-k, as a RAG pipeline reranks it; 20 documents unless `docs` says otherwise)."
    )
    fused: bool = Field(
        False, description="Also time LocalScorer(fused=True) (row local_fused; its compile warm-up is untimed)."
    )
    reps: int = Field(2, gt=0, description="Timed repetitions per method (taking turns); the best is reported.")
    crossencoder_batch_size: int = Field(32, gt=0, description="sentence-transformers batch size.")
    official_batch_size: int = Field(16, gt=0, description="Batch size of the official method (as in its README).")
    seed: int = Field(1, description="Seed of the random workload.")


class BenchmarkError(RerankError):
    """The benchmark could not run: a method's worker process failed (its last error line is in the message)."""


class MethodResult(BaseModel):
    name: str
    seconds: float = Field(description="Best wall time over the repetitions.")
    tokens_per_s: float
    pairs_per_s: float
    peak_gib: float = Field(description="Peak device memory (accelerators) or peak process RSS (CPU), GiB.")
    max_abs_diff_vs_official: float | None = None
    all_seconds: list[float] = Field(default_factory=list, description="Wall time of every repetition.")


class BenchmarkReport(BaseModel):
    device: str
    dtype: str
    model: str
    documents: int
    real_tokens: int
    results: list[MethodResult]
    load_average: tuple[float | None, float | None] = Field(
        (None, None), description="1-minute load average before and after the timed repetitions."
    )
    workload: str = Field("mixed", description="The workload: 'mixed' lengths or the uniform 'rag' call.")
    cpu_bf16_units: bool | None = Field(
        None, description="On CPU in bfloat16: whether the CPU has bf16 matrix units (AMX, AVX512-BF16, Arm BF16)."
    )

    def result(self, name: str) -> MethodResult:
        return next(r for r in self.results if r.name == name)

    @computed_field(description="Why the speed ratios mean little for this run (empty: they can be read).")
    @property
    def caveats(self) -> list[str]:
        notes = []
        if self.cpu_bf16_units is False:
            notes.append("this CPU has no bf16 units (no AMX, no AVX512-BF16): torch runs bf16 in software, far "
                         "slower than float32; these are not the figures of a CPU with bf16 units")
        if self.documents < MIN_DOCUMENTS and self.workload != "rag":
            notes.append(f"{self.documents} documents do not fill a batch (use --docs {MIN_DOCUMENTS} or more)")
        reps = min((len(r.all_seconds) for r in self.results), default=0)
        if 0 < reps < MIN_REPS:
            notes.append(f"{reps} repetition has no best-of to shed noise (use --reps {MIN_REPS} or more)")
        fastest = min((r.seconds for r in self.results), default=0.0)
        if 0 < fastest < MIN_SECONDS:
            notes.append(f"the fastest method took {fastest:.2f} s, mostly timer and scheduling noise (use more "
                         "--docs or --layers)")
        return notes

    def table(self) -> str:
        """A plain-text table, one row per method, with speed ratios against the baselines."""
        official, crossencoder = self.result("official"), self.result("crossencoder")
        load = "" if self.load_average == (None, None) else (
            f" load average={self.load_average[0]} -> {self.load_average[1]}"
        )
        lines = [
            f"device={self.device} dtype={self.dtype} model={self.model} workload={self.workload} "
            f"documents={self.documents} tokens={self.real_tokens}{load}",
            *(f"note: the speed ratios below mean little: {caveat}" for caveat in self.caveats),
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


def _save_word_tokenizer(folder: Path) -> None:
    """A word-level tokenizer that stands in for Qwen3's on the benchmark's texts: the control tokens, "yes", "no"
    and the pad token at their Qwen3 ids, one token per word or run of punctuation (the real one gives about as
    many on these common English words). Speed depends on token counts only, so it needs no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<think>": 151667,
                "</think>": 151668}
    splitter = pre_tokenizers.Whitespace()
    texts = [PREFIX, SUFFIX, format_body(_QUERY, " ".join(_WORDS), DEFAULT_INSTRUCTION)]
    for special in specials:
        texts = [text.replace(special, " ") for text in texts]
    pieces = sorted({piece for text in texts for piece, _ in splitter.pre_tokenize_str(text)} - {"yes", "no"})
    vocab = {**specials, "yes": 9693, "no": 2152, "[UNK]": 0}
    vocab.update((piece, 1000 + number) for number, piece in enumerate(pieces))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = splitter
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    tokenizer.save_pretrained(folder)


def _save_random_model(folder: Path, tokenizer_dir: str | None, layers: int, dtype: Any) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151669, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, intermediate_size=3072, max_position_embeddings=40960, rope_theta=1e6,
        tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(dtype).save_pretrained(folder)
    if tokenizer_dir is None:
        _save_word_tokenizer(folder)
    else:
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)


RAG_DOCUMENTS = 20
RAG_WORDS = 150


def _workload(count: int, seed: int, kind: str = "mixed") -> list[str]:
    rng = random.Random(seed)
    lengths = [RAG_WORDS if kind == "rag" else rng.randint(20, 360) for _ in range(count)]
    return [" ".join(rng.choice(_WORDS) for _ in range(length)) for length in lengths]


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


def _local_scorer(spec: dict[str, Any], fused: bool = False) -> Callable[[list[str]], list[float]]:
    from .local import LocalScorer

    dtype = spec["dtype_name"].removeprefix("torch.")
    scorer = LocalScorer(spec["model"], device=spec["device"], dtype=dtype, fused=fused).load()
    return lambda documents: scorer.score(spec["query"], documents)


def _local_fused(spec: dict[str, Any]) -> Callable[[list[str]], list[float]]:
    return _local_scorer(spec, fused=True)


def _worker(method: str, spec_path: str) -> None:
    """One method's process: load, warm up, say "ready", then score the workload once per "run" line on stdin
    (answering its seconds), and on "done" answer the peak memory and the last scores."""
    import resource

    import torch

    spec = json.loads(Path(spec_path).read_text())
    spec["dtype"] = getattr(torch, spec["dtype_name"].removeprefix("torch."))
    accelerator = getattr(torch, torch.device(spec["device"]).type, None) if spec["device"] != "cpu" else None
    makers = {"official": _official, "crossencoder": _crossencoder, "local_scorer": _local_scorer,
              FUSED_METHOD: _local_fused}
    run = makers[method](spec)
    run(spec["documents"][:8])  # warm-up: kernels, allocator, tokenizer caches
    if accelerator is not None:
        accelerator.synchronize()
        accelerator.reset_peak_memory_stats()
    _answer({"ready": True})
    scores: list[float] = []
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        scores = run(spec["documents"])
        if accelerator is not None:
            accelerator.synchronize()
        _answer({"seconds": time.perf_counter() - start})
    if accelerator is not None:
        peak = accelerator.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    _answer({"peak_gib": peak, "scores": scores})


def _answer(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


class _Worker:
    """The driver's handle on one method's process (stderr goes to a file, read back when it fails)."""

    def __init__(self, method: str, spec_path: Path) -> None:
        self.method = method
        self.log_path = spec_path.with_name(f"{method}.log")
        self._log = self.log_path.open("w")
        code = "import sys; from qwen3_rerank_integrations.benchmark import _worker; _worker(*sys.argv[1:])"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, method, str(spec_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )

    def ask(self, command: str | None) -> dict[str, Any]:
        """Send ``command`` (None: just wait for the next answer) and return the answer."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            if command is not None:
                self.process.stdin.write(command + "\n")
                self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.process.wait()
            self._log.close()
            lines = self.log_path.read_text(errors="replace").strip().splitlines() or ["no output"]
            raise BenchmarkError(f"benchmark worker {self.method!r} failed: {lines[-1]}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


# ------------------------------------------------------------------------------------------- driver
def run_benchmark(config: BenchmarkConfig, *, log: Callable[[str], None] = print) -> BenchmarkReport:
    """Run every method in its own subprocess on the same workload and collect a report."""
    from transformers import AutoTokenizer

    from .devices import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    on_cpu = device.type == "cpu"
    default_docs = RAG_DOCUMENTS if config.workload == "rag" else (48 if on_cpu else 512)
    documents = _workload(config.docs or default_docs, config.seed, config.workload)
    with tempfile.TemporaryDirectory(prefix="qwen3-rerank-bench-") as tmp:
        if config.model is None:
            layers = config.layers or (4 if on_cpu else 28)
            model_location, model_label = str(Path(tmp) / "model"), f"random Qwen3-Reranker-0.6B shape, {layers} layers"
            log(f"saving {model_label} ...")
            _save_random_model(Path(model_location), config.tokenizer, layers, dtype)
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
        load_before = _load_average()
        methods = (*METHODS, FUSED_METHOD) if config.fused else METHODS
        raw = _run_workers(spec_path, config.reps, log, methods)
        load_after = _load_average()
    official_scores = raw["official"]["scores"]
    results = []
    for method in methods:
        r = raw[method]
        diff = max(abs(a - b) for a, b in zip(r["scores"], official_scores)) if method != "official" else None
        results.append(MethodResult(
            name=method, seconds=r["seconds"], tokens_per_s=real_tokens / r["seconds"],
            pairs_per_s=len(documents) / r["seconds"], peak_gib=r["peak_gib"], max_abs_diff_vs_official=diff,
            all_seconds=r["all_seconds"],
        ))
    device_label = str(device) if on_cpu else f"{device} ({_device_name(device)})"
    units = None
    if on_cpu and str(dtype) == "torch.bfloat16":
        from .devices import cpu_bf16_support

        units = cpu_bf16_support().has_bf16_units
    return BenchmarkReport(device=device_label, dtype=str(dtype).removeprefix("torch."), model=model_label,
                           documents=len(documents), real_tokens=real_tokens, results=results,
                           load_average=(load_before, load_after), workload=config.workload, cpu_bf16_units=units)


def _run_workers(
    spec_path: Path, reps: int, log: Callable[[str], None], methods: tuple[str, ...] = METHODS
) -> dict[str, dict[str, Any]]:
    """Start the methods' processes one after the other (each loads and warms up alone), then let them take
    turns, one repetition each per round in rotating order; collect each one's times, peak memory and scores."""
    workers: list[_Worker] = []
    try:
        for method in methods:
            log(f"loading {method} ...")
            workers.append(_Worker(method, spec_path))
            workers[-1].ask(None)  # "ready"
        times: dict[str, list[float]] = {method: [] for method in methods}
        for round_number in range(reps):
            turn = workers[round_number % len(workers):] + workers[: round_number % len(workers)]
            for worker in turn:
                log(f"repetition {round_number + 1}/{reps}: {worker.method} ...")
                times[worker.method].append(worker.ask("run")["seconds"])
        raw = {}
        for worker in workers:
            final = worker.ask("done")
            raw[worker.method] = {**final, "seconds": min(times[worker.method]), "all_seconds": times[worker.method]}
        return raw
    finally:
        for worker in workers:
            worker.close()


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): other programs' load skews the timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Windows
        return None


def _device_name(device: Any) -> str:
    import torch

    backend = getattr(torch, device.type, None)
    getter = getattr(backend, "get_device_name", None)
    return getter(device) if getter else device.type
