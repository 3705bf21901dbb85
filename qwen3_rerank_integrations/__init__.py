"""Qwen3-Reranker for LangChain and LlamaIndex: exact official scores, locally or from a vLLM server.

Backends (each implements :class:`Scorer`):

- :class:`LocalScorer` runs the model in-process with transformers (Ascend NPU, CUDA, MPS or CPU);
- :class:`VLLMScorer` calls a vLLM server's ``/v1/rerank``;
- :class:`VLLMEngineScorer` runs vLLM's engine in-process.

Adapters live in :mod:`qwen3_rerank_integrations.langchain` and :mod:`qwen3_rerank_integrations.llama_index`;
:func:`rerank`/:func:`arerank` are the framework-free ranking they share (for a Haystack or DSPy component), and
:class:`ScorerBase` is the base a new backend subclasses (it writes only its scoring of texts).
Backends are imported lazily, so ``import qwen3_rerank_integrations`` pulls in neither torch nor httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthenticationError,
    BadRequestError,
    DeviceNotAvailableError,
    InvalidResponseError,
    MissingDependencyError,
    ModelLoadError,
    RateLimitError,
    RemoteError,
    RerankError,
    ResponseTooLargeError,
    RouteNotFoundError,
    ServerConnectionError,
    ServerError,
    ServerResponseError,
    ServerStartError,
    ServerTimeoutError,
)
from .prompt import DEFAULT_INSTRUCTION, escape_control_tokens
from .scorer import Scorer

if TYPE_CHECKING:
    from ._ranking import Ranked, arerank, rerank
    from .base import ScorerBase
    from .cache import ByteStoreScoreCache, CacheStats, DiskScoreCache, InMemoryScoreCache, ScoreCache
    from .engine import VLLMEngineScorer
    from .local import LocalScorer
    from .vllm import ServerCheck, VLLMScorer

# The one place the version is written: pyproject.toml reads it (tool.setuptools.dynamic), the CLI prints it.
__version__ = "0.3.0.dev0"

__all__ = [
    "LocalScorer",
    "VLLMScorer",
    "ServerCheck",
    "VLLMEngineScorer",
    "Scorer",
    "ScorerBase",
    "rerank",
    "arerank",
    "Ranked",
    "ScoreCache",
    "InMemoryScoreCache",
    "DiskScoreCache",
    "ByteStoreScoreCache",
    "CacheStats",
    "DEFAULT_INSTRUCTION",
    "escape_control_tokens",
    "RerankError",
    "ModelLoadError",
    "DeviceNotAvailableError",
    "RemoteError",
    "ServerConnectionError",
    "ServerTimeoutError",
    "ServerResponseError",
    "BadRequestError",
    "AuthenticationError",
    "RouteNotFoundError",
    "RateLimitError",
    "ServerError",
    "InvalidResponseError",
    "ResponseTooLargeError",
    "ServerStartError",
    "MissingDependencyError",
]

_CACHE_NAMES = ["ScoreCache", "InMemoryScoreCache", "DiskScoreCache", "ByteStoreScoreCache", "CacheStats"]
_LAZY = {"LocalScorer": ".local", "VLLMScorer": ".vllm", "ServerCheck": ".vllm", "VLLMEngineScorer": ".engine",
         "ScorerBase": ".base", "rerank": "._ranking", "arerank": "._ranking", "Ranked": "._ranking",
         **dict.fromkeys(_CACHE_NAMES, ".cache")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
