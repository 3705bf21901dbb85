"""The package's one exception hierarchy.

Every fault the package raises on purpose is a :class:`RerankError`, so callers can catch one type.
Bad *arguments* are the exception: they raise the built-in ``TypeError``/``ValueError`` (naming the
argument) before any model or network work, as Python code is expected to.

A model that cannot be loaded from the Hugging Face hub (the reranker, an example's embedder) is reported the same
way everywhere by :func:`hub_load_error`: which model, what was tried, the option that takes a local folder instead,
the ``hf download`` command, and the offline switch.

Remote errors carry the HTTP status and the server's own message, never the request's headers. A server may
still echo a header back in its message, so every error masks the registered secrets (API key, header values,
URL credentials; see :mod:`qwen3_rerank_integrations._secrets`) when it is made: no error can carry one.
"""

from __future__ import annotations

import re
from typing import Any

from ._secrets import redact

__all__ = [
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


class RerankError(Exception):
    """Base class of every error this package raises on purpose. Its message never holds a registered secret."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ModelLoadError(RerankError):
    """The reranker model or tokenizer could not be loaded (missing, unreachable, or not a Qwen3 CausalLM)."""


class MissingDependencyError(RerankError, ImportError):
    """An optional package that this part of the package needs is not installed. Also an ``ImportError``, so
    code that already catches that keeps working.

    Attributes:
        package: the distribution to install (``httpx``, ``torch``...).
        extra: the extra of ``qwen3-rerank-integrations`` that brings it (``remote``, ``local``...).
    """

    def __init__(self, message: str, *, package: str, extra: str) -> None:
        super().__init__(message)
        self.package = package
        self.extra = extra


class DeviceNotAvailableError(RerankError):
    """An explicitly requested device (``"npu:1"``, ``"cuda"``, ``"mps"``...) is not available here."""


class RemoteError(RerankError):
    """A fault talking to a remote rerank server."""


class ServerConnectionError(RemoteError):
    """The server could not be reached (refused connection, DNS failure, TLS failure), after retries."""


class ServerTimeoutError(RemoteError):
    """The server did not answer within the timeout, after retries."""


class ServerResponseError(RemoteError):
    """The server answered with an HTTP error status.

    Attributes:
        status_code: the HTTP status.
        server_message: the ``message`` the server put in its error body (or the raw body when it sent none).
    """

    def __init__(self, message: str, *, status_code: int, server_message: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.server_message = redact(server_message) if server_message is not None else None


class BadRequestError(ServerResponseError):
    """HTTP 400/422: the server rejected the request (for example an input over its context length)."""


class AuthenticationError(ServerResponseError):
    """HTTP 401/403: the API key was missing or rejected."""


class RouteNotFoundError(ServerResponseError):
    """HTTP 404: the route does not exist (a vLLM server not started in pooling/score mode)."""


class RateLimitError(ServerResponseError):
    """HTTP 429 after retries."""


class ServerError(ServerResponseError):
    """HTTP 5xx after retries (or at once for statuses that are not worth retrying)."""


class InvalidResponseError(RemoteError):
    """The server answered 2xx but the body is not a valid rerank result (not JSON, an index missing or
    repeated, a score that is not a finite number)."""


class ResponseTooLargeError(InvalidResponseError):
    """The server's answer grew past ``max_response_bytes`` once decompressed (a runaway or hostile server, a
    compression bomb); reading stopped there."""


class ServerStartError(RerankError):
    """A vLLM server (``qwen3-rerank serve``, :func:`~qwen3_rerank_integrations.vllm.server.serve`) could not be started
    or stopped being healthy.

    Attributes:
        reason: one line saying what happened.
        log_tail: the last lines of the server's output (empty when it never ran).
    """

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason + (f"\nlast lines of the vLLM server's log:\n{log_tail}" if log_tail else ""))
        self.reason = reason
        self.log_tail = log_tail


# ------------------------------------------------------------------------------------------------ hub load errors
# What transformers and sentence-transformers say when a model is neither on disk nor reachable. With the offline
# switch on, "check your internet connection" is wrong advice: the model is simply not in the cache.
_NETWORK_ADVICE = re.compile(r"couldn't connect to|check your internet connection|offline mode", re.IGNORECASE)


def hub_offline() -> bool:
    """True when huggingface_hub was told to stay offline (``HF_HUB_OFFLINE=1``, read when it was imported)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub library: nothing can be downloaded anyway
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_load_error(
    subject: str,
    model: str,
    exc: BaseException | str,
    *,
    folder_option: str,
    offline_switch: str | None = None,
    alternatives: str = "set HF_ENDPOINT to a mirror",
) -> ModelLoadError:
    """The :class:`ModelLoadError` for a hub id that could not be loaded.

    Args:
        subject: what failed, e.g. ``"the config of model='Qwen/Qwen3-Reranker-0.6B'"``.
        model: the hub id, for the ``hf download`` command.
        exc: what the loading library raised (or what went wrong, in words); its text is kept unless it is only
            network advice given while ``offline_switch`` forbade the network.
        folder_option: how to pass a local folder instead, e.g. ``"--embed-model PATH"``.
        offline_switch: the setting that kept the loader off the network (``"HF_HUB_OFFLINE=1"``,
            ``"local_files_only=True"``), or None when the hub was tried.
        alternatives: other ways round an unreachable hub, for the online message.
    """
    reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    if offline_switch is not None:
        if _NETWORK_ADVICE.search(reason):
            reason = f"{model} is not in the Hugging Face cache"
        tried = f"a local folder (none), then the Hugging Face cache only ({offline_switch}: no download)"
        hint = (f"Download it once on a connected machine (hf download {model}) into the same cache (HF_HOME), or "
                f"pass its local folder ({folder_option}).")
    else:
        tried = "a local folder (none), then the Hugging Face hub"
        hint = (f"Check the id and your network. Offline or in mainland China: download it (hf download {model}) "
                f"and pass its folder ({folder_option}), or {alternatives}; with no network, set HF_HUB_OFFLINE=1 "
                "to get this error at once instead of after the hub's retries.")
    return ModelLoadError(f"could not load {subject} (tried {tried}): {reason}. {hint}")
