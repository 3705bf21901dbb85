"""The secrets this process must never show, and the one function that masks them.

A scorer registers its secrets (API key, custom header values, URL credentials) when it is configured. Every
:class:`~qwen3_rerank_integrations.errors.RerankError` masks its message with :func:`redact` when it is made, a
``ServerCheck`` masks its fields, and a logging filter masks every record of the package's, httpx's and
httpcore's loggers. So a server that echoes request headers back (in a body, an error, a response header) cannot
get a key printed, whichever message carries it.

Values shorter than :data:`MIN_LENGTH` characters are not masked: masking ``"1"`` or ``"on"`` would garble
every message, and a value that short is no secret.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["MIN_LENGTH", "MASK", "register", "register_basic_auth", "redact", "redact_all", "snippet",
           "protect_loggers", "public_url"]

MIN_LENGTH = 4
MASK = "***"
# Loggers whose records may carry request or response details: httpx logs each request line, httpcore traces
# response headers at DEBUG. Filters on a logger do not apply to its children's records, so each is named.
_THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2",
                        "httpcore.proxy", "httpcore.socks")
_PACKAGE = __name__.rpartition(".")[0]

_lock = threading.Lock()
_known: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _forms(secret: str) -> set[str]:
    """The ways ``secret`` can appear in a message: as is, JSON- or repr-escaped, percent-encoded."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
        quote(secret),
    }


def register(*secrets: str | None) -> None:
    """Mask these values (and their escaped forms) in everything the package raises, reports or logs."""
    global _pattern
    fresh = {form for s in secrets if s and len(s) >= MIN_LENGTH for form in _forms(s) if len(form) >= MIN_LENGTH}
    with _lock:
        if fresh <= _known:
            return
        _known.update(fresh)
        # Longest first, so a secret containing another is masked whole.
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_known, key=len, reverse=True)))
    protect_loggers()


def register_basic_auth(user: str, password: str) -> None:
    """Register HTTP Basic credentials: each part, ``user:password`` and its base64 (the header's form)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    register(user, password, f"{user}:{password}", token)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def redact_all(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it (through dicts, lists and tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_all(k): redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(v) for v in value)
    return value


def snippet(value: object, limit: int = 300) -> str:
    """The start of ``repr(value)`` (``str`` for text), masked *before* it is cut, so a cut through a secret
    cannot leave its head."""
    text = value if isinstance(value, str) else repr(value)
    return redact(text)[:limit]


class _RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, traceback and stack, in place (so every handler sees them masked)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report, not ours
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = _RedactingFilter()


def protect_loggers(names: Iterable[str] = ()) -> None:
    """Install the masking filter on the package's loggers (those that exist), httpx's and httpcore's, and
    ``names``. Cheap and idempotent: called on every registration, since loggers appear as modules load."""
    existing = [n for n in list(logging.Logger.manager.loggerDict) if n == _PACKAGE or n.startswith(_PACKAGE + ".")
                or n.startswith(("httpx.", "httpcore."))]
    for name in (_PACKAGE, *_THIRD_PARTY_LOGGERS, *existing, *names):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def public_url(url: str) -> str:
    """``url`` without user, password, query or fragment: what identifies a server, never a secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
