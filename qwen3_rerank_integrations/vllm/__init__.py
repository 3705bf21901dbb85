"""The vLLM client: :class:`VLLMScorer` scores against a vLLM server (or several replicas of one), and
:class:`ServerCheck` is what its ``check()`` reports.

One module per concern, each used by the one above it:

- :mod:`.client` — :class:`VLLMScorer`, the public scorer: settings, plans for scoring and checking;
- :mod:`.fitting` — cutting long documents to the server's context, the suffix kept (the official truncation);
- :mod:`.check` — the server check (template, mode, context, canary) behind ``check()`` and ``check-server``;
- :mod:`.transport` — running plans over HTTP: clients, retries, replicas, failover (a pure ``decide()``);
- :mod:`.protocol` — the wire format: request bodies and response parsing, no I/O;
- :mod:`.http` — bounds on one HTTP exchange: a deadline from connect to last byte, a response size cap.

Starting vLLM (no httpx needed):

- :mod:`.launch` — the recipe every vLLM start follows: overrides, runner flag, dtype, context, API-key variable;
- :mod:`.server` — ``qwen3-rerank serve``: one vLLM server process group, started, checked healthy, stopped.

:class:`VLLMScorer` and :class:`ServerCheck` are imported on first use (they need httpx, the ``remote`` extra),
so :mod:`.launch` and :mod:`.server` import without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .check import ServerCheck
    from .client import VLLMScorer

__all__ = ["VLLMScorer", "ServerCheck"]

_LAZY = {"VLLMScorer": ".client", "ServerCheck": ".check"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
