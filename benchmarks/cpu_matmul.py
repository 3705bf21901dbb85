"""How fast this CPU multiplies matrices in float32 and in bfloat16: whether bf16 pays off here at all.

    python benchmarks/cpu_matmul.py [--m 512] [--reps 3] [--threads 1,2]

One product of the 0.6B's MLP shape ([m x 1024] . [1024 x 3072]) per dtype and thread count, the dtypes taking
turns; prints GFLOP/s, the CPU's bf16 units (AMX-BF16, AVX512-BF16, from its flags) and the load average. Where
the CPU has no bf16 unit torch multiplies bf16 in software, far slower than float32: LocalScorer(dtype="bfloat16")
is then the slow path, and `qwen3-rerank check-device` does not recommend it.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, default=512, help="rows of the left matrix (tokens in a batch)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()

    import torch

    from qwen3_rerank_integrations.devices import cpu_bf16_support

    support = cpu_bf16_support()
    flops = 2 * args.m * 1024 * 3072
    rates: dict[tuple[int, str], float] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        operands = {name: (torch.randn(args.m, 1024, dtype=dtype), torch.randn(1024, 3072, dtype=dtype))
                    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
        for a, b in operands.values():
            a @ b  # warm-up
        best = {name: float("inf") for name in operands}
        for _ in range(args.reps):
            for name, (a, b) in operands.items():  # taking turns
                start = time.perf_counter()
                a @ b
                best[name] = min(best[name], time.perf_counter() - start)
        for name, seconds in best.items():
            rates[(threads, name)] = flops / seconds / 1e9
    units = [name for name, present in (("AMX-BF16", support.has_amx), ("AVX512-BF16", support.has_avx512_bf16),
                                        ("Arm BF16", support.has_arm_bf16)) if present]
    print(f"[{args.m}x1024].[1024x3072], best of {args.reps}; bf16 units: {', '.join(units) or 'none'}; torch "
          f"{torch.__version__} ({support.torch_capability}); load average {os.getloadavg()[0]:.2f}")
    print("| threads | float32 GFLOP/s | bfloat16 GFLOP/s | bf16 / fp32 |")
    print("|---|---|---|---|")
    for threads in sorted({t for t, _ in rates}):
        fp32, bf16 = rates[(threads, "float32")], rates[(threads, "bfloat16")]
        print(f"| {threads} | {fp32:.0f} | {bf16:.1f} | {bf16 / fp32:.3f} |")


if __name__ == "__main__":
    main()
