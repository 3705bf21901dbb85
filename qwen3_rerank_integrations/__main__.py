"""``python -m qwen3_rerank_integrations`` runs the ``qwen3-rerank`` command line."""

from .cli import main

main()
