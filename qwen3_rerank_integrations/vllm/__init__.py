"""The vLLM client: :class:`VLLMScorer` scores against a vLLM server (or several replicas of one), and
:class:`ServerCheck` is what its ``check()`` reports.

One module per concern, each used by the one above it:

- :mod:`.client` — :class:`VLLMScorer`, the public scorer: settings, plans for scoring and checking;
- :mod:`.fitting` — cutting long documents to the server's context, the suffix kept (the official truncation);
- :mod:`.check` — the server check (template, mode, context, canary) behind ``check()`` and ``check-server``;
- :mod:`.transport` — running plans over HTTP: clients, retries, replicas, failover (a pure ``decide()``);
- :mod:`.protocol` — the wire format: request bodies and response parsing, no I/O;
- :mod:`.http` — bounds on one HTTP exchange: a deadline from connect to last byte, a response size cap.

Importing this package imports httpx (the ``remote`` extra); the package root imports it lazily.
"""

from .check import ServerCheck
from .client import VLLMScorer

__all__ = ["VLLMScorer", "ServerCheck"]
