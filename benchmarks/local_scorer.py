"""The local scoring benchmark is `qwen3-rerank bench` (qwen3_rerank_integrations/benchmark.py); this script only
forwards its arguments there, for old instructions that still say `python benchmarks/local_scorer.py`.

    qwen3-rerank bench --layers 28 --docs 16            # CPU
    qwen3-rerank bench --device cuda --layers 28 --docs 512
"""

import sys

from qwen3_rerank_integrations.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="qwen3-rerank")
