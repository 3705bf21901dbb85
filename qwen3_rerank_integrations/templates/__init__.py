"""Chat templates the package ships for vLLM servers.

``RERANKER_TEMPLATE`` is the score template for serving the original Qwen3-Reranker checkpoints with vLLM
(``--chat-template``): it renders exactly the official prompt from a "query" and a "document" message and reads
``instruction`` (newer vLLM, such as 0.32, puts the request's ``instruction`` in ``chat_template_kwargs``) as vLLM's
``examples/pooling/score/template/qwen3_reranker.jinja``. Unlike that one, it ends with one extra newline: Jinja
drops a template's final newline (``keep_trailing_newline`` is off), so a template ending ``</think>\\n\\n``
renders ``</think>\\n`` (token 198 instead of 271) and every score moves.

    vllm serve Qwen/Qwen3-Reranker-0.6B --runner pooling --hf-overrides '{...}' --chat-template \\
      "$(python -c 'from qwen3_rerank_integrations.templates import RERANKER_TEMPLATE; print(RERANKER_TEMPLATE)')"
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RERANKER_TEMPLATE"]

RERANKER_TEMPLATE: Path = Path(__file__).resolve().parent / "qwen3_reranker.jinja"
