"""Bounding each HTTP request to an untrusted server in time and size, for the sync and async clients alike.

Time: httpx's timeouts apply to each socket operation, so a server that sends one byte a second never trips a
read timeout and a request can last for ever. Here each request gets a :class:`Deadline` (``timeout`` seconds,
counted from its first socket operation, so waiting for a free pooled connection does not count), held in a
context variable; the network streams under httpx cut every connect, TLS handshake, read and write to the time
left, and fail once none is left. Since that is below httpx, it bounds headers and body alike.

Size: :class:`BodyReader` collects a streamed body after decompression and stops past a limit, so neither a
huge body nor a compression bomb is ever held whole. Each network read asks for at most :data:`READ_BYTES`,
which bounds what one compressed chunk can inflate to before the limit is checked (zlib: ~1000x).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterable, Iterable
from typing import Any

from ..errors import ResponseTooLargeError

__all__ = ["Deadline", "BodyReader", "READ_BYTES", "ERROR_BODY_BYTES", "response_limit", "bound_client"]

logger = logging.getLogger(__name__)

READ_BYTES = 16 * 1024
# An error answer is read for its message only: the first 64 KiB are plenty, the rest is dropped.
ERROR_BODY_BYTES = 64 * 1024
# A rerank answer echoes the documents sent (JSON escaping can triple non-ASCII text), and a /tokenize answer
# lists one number per token (up to ~8 bytes per byte of text), so an answer may be this many times its request.
ECHO_FACTOR = 8

_CURRENT: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("qwen3_rerank_deadline", default=None)


class Deadline:
    """``seconds`` for one request, from its first socket operation. Use as a context manager around it."""

    __slots__ = ("seconds", "at", "_token")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at: float | None = None

    def __enter__(self) -> Deadline:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _CURRENT.reset(self._token)

    def left(self) -> float:
        now = time.monotonic()
        if self.at is None:
            self.at = now + self.seconds
        return self.at - now

    def check(self) -> None:
        """Raise httpx's ReadTimeout once the deadline has passed (between body chunks; see :func:`bound_client`)."""
        if self.at is not None and time.monotonic() >= self.at:
            import httpx

            raise httpx.ReadTimeout(f"the request took longer than timeout={self.seconds:g}s")


def _bound(timeout: float | None, error: str) -> float | None:
    """``timeout`` cut to the current request's time left; httpcore's ``error`` (a name) once none is left."""
    deadline = _CURRENT.get()
    if deadline is None:
        return timeout
    left = deadline.left()
    if left <= 0:
        import httpcore

        raise getattr(httpcore, error)(f"the request took longer than timeout={deadline.seconds:g}s")
    return left if timeout is None else min(timeout, left)


def response_limit(max_response_bytes: int, request_bytes: int) -> int:
    """The most bytes an answer may have once decompressed: ``max_response_bytes``, or more for a request
    carrying big documents (see :data:`ECHO_FACTOR`)."""
    return max(max_response_bytes, ECHO_FACTOR * request_bytes)


class BodyReader:
    """Collects a response body chunk by chunk (decompressed), failing or stopping past ``limit`` bytes.

    Past the limit, an error status's body (``partial=True``) is cut there and kept; a success raises
    :class:`ResponseTooLargeError`, since a cut JSON body is worthless. Between chunks the deadline is checked.
    """

    __slots__ = ("limit", "deadline", "partial", "where", "setting", "data")

    def __init__(self, limit: int, deadline: Deadline, *, partial: bool, where: str, setting: int) -> None:
        self.limit, self.deadline, self.partial, self.where, self.setting = limit, deadline, partial, where, setting
        self.data = bytearray()

    def read(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            if self.add(chunk):
                return

    async def aread(self, chunks: AsyncIterable[bytes]) -> None:
        async for chunk in chunks:
            if self.add(chunk):
                return

    def check_declared(self, headers: Any) -> None:
        """Refuse at once a plain body whose Content-Length is over the limit (no need to read any of it)."""
        if self.partial or headers.get("content-encoding", "identity").lower() != "identity":
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise self._too_large(f"declares {int(declared)} bytes")

    def add(self, chunk: bytes) -> bool:
        """Take one chunk; True once no more is wanted."""
        room = self.limit - len(self.data)
        if len(chunk) <= room:
            self.data += chunk
            self.deadline.check()
            return False
        if self.partial:
            self.data += chunk[:room]
            return True
        raise self._too_large(f"passed {self.limit} bytes once decompressed and was cut off there")

    def _too_large(self, what: str) -> ResponseTooLargeError:
        return ResponseTooLargeError(
            f"{self.where} answered with a body that {what}; the limit is max_response_bytes={self.setting} (or "
            f"{ECHO_FACTOR}x the request, for requests carrying big documents). A vLLM answer is far smaller: the "
            "server is not a vLLM rerank server, or it is broken or hostile. Raise max_response_bytes only if you "
            "trust it."
        )


# ------------------------------------------------------------------------------------------------ streams
def bound_client(client: Any, *, is_async: bool) -> bool:
    """Make every network stream of ``client`` (an ``httpx.Client`` or ``AsyncClient``, proxies included)
    honour the request deadline. False, with a warning, where this httpx/httpcore does not allow it; each body
    chunk is then still checked against the deadline, but a read may overrun it by up to its own timeout.

    httpx has no public hook for httpcore's network backend, so this wraps the backend of each transport's
    connection pool (``_pool._network_backend``, stable since httpx 0.18 / httpcore 0.17); the hostile-server
    tests fail if that ever stops working.
    """
    wrapper = _AsyncBackend if is_async else _Backend
    wrapped = True
    for transport in [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]:
        if transport is None:  # a mount that disables a proxy for some hosts
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            wrapped = False
        elif not isinstance(backend, wrapper):
            pool._network_backend = wrapper(backend)
    if not wrapped:
        logger.warning("this httpx/httpcore version hides its network backend: the request deadline is checked "
                       "between body chunks only")
    return wrapped


class _Stream:
    """A sync network stream whose every operation waits at most until the request's deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(min(max_bytes, READ_BYTES), _bound(timeout, "ReadTimeout"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # In pieces, each with the time then left: httpcore sends one write in a loop of sends, each with the
        # full timeout, so a server reading a byte at a time could stretch one large write for ever.
        for start in range(0, len(buffer), READ_BYTES):
            self._inner.write(buffer[start : start + READ_BYTES], _bound(timeout, "WriteTimeout"))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        # CPython bounds the whole handshake by the socket timeout it starts with.
        bounded = _bound(timeout, "ConnectTimeout")
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> _Stream:
        bounded = _bound(timeout, "ConnectTimeout")
        return _Stream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> _Stream:
        bounded = _bound(timeout, "ConnectTimeout")
        return _Stream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream:
    """The async twin of :class:`_Stream` (each operation already runs under one timeout as a whole)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(min(max_bytes, READ_BYTES), _bound(timeout, "ReadTimeout"))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _bound(timeout, "WriteTimeout"))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> _AsyncStream:
        bounded = _bound(timeout, "ConnectTimeout")
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> _AsyncStream:
        bounded = _bound(timeout, "ConnectTimeout")
        return _AsyncStream(await self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> _AsyncStream:
        bounded = _bound(timeout, "ConnectTimeout")
        return _AsyncStream(await self._inner.connect_unix_socket(path, bounded, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
