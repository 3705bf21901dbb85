"""How :class:`~qwen3_rerank_integrations.vllm.VLLMScorer` talks HTTP: plan drivers, retries and replicas.

Every operation of the scorer is a *plan*, a generator that yields lists of :class:`Call` and receives their
JSON bodies (see :mod:`qwen3_rerank_integrations.vllm`). :class:`Driver` runs a plan: :meth:`Driver.run` with a
thread pool and ``httpx.Client``, :meth:`Driver.arun` with ``asyncio`` and ``httpx.AsyncClient``.

Each call is sent by one small loop (:meth:`Driver.send`, :meth:`Driver.asend`) around one pure decision,
:func:`decide`: after a transient fault (connect error, timeout, 429, 502, 503, 504) the call goes at once to
another replica not yet tried; once every replica has failed it, that is one retry, and the loop waits
(``Retry-After`` if the server gave one, else exponential backoff with jitter) and starts another round. Another
5xx (500) or a malformed 2xx answer (not JSON, not a valid result) goes to each other replica once, never
retried. A single server is the one-replica case: each round is one attempt, as before replicas existed.

With the scorer's ``deadline`` set, the whole public call (every round of its plan, retries and failovers
included) ends by then: each request's time is cut to what is left, a retry whose wait would pass it is not
made, and the call raises :class:`ServerTimeoutError` (see :func:`deadline_error`).

:class:`ReplicaPool` picks the replica for each attempt: the one with the fewest requests outstanding (ties in
turn), skipping replicas set aside after a fault. A set-aside replica waits ``replica_cooldown`` seconds, doubled
with each fault in a row (at most :data:`MAX_COOLDOWN_S`), then gets one trial request (half-open): a success
takes it back in, a fault sets it aside for longer.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import logging
import os
import random
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from . import http as _http
from . import protocol
from .protocol import Call, TransientError
from ..errors import (
    InvalidResponseError,
    RemoteError,
    RerankError,
    ServerConnectionError,
    ServerResponseError,
    ServerTimeoutError,
)

if TYPE_CHECKING:
    import httpx
    from pydantic import SecretStr

__all__ = [
    "Plan", "Driver", "Connections", "ReplicaPool", "Attempt", "Step", "decide", "backoff_wait", "deadline_error",
    "is_replica_fault", "parallel",
]

logger = logging.getLogger("qwen3_rerank_integrations.vllm")

T = TypeVar("T")
Plan = Generator[list[Call], list[Any], T]

# The longest a replica is set aside after faults in a row, and the longest a retry waits for backoff.
MAX_COOLDOWN_S = 30.0
MAX_BACKOFF_S = 30.0


class Settings(Protocol):
    """What the transport reads from a scorer (read anew for each call: the scorer's fields may change)."""

    timeout: float
    max_response_bytes: int
    max_retries: int
    backoff: float
    max_concurrency: int
    replica_cooldown: float
    api_key: SecretStr | None
    basic_auth: SecretStr | None
    headers: dict[str, SecretStr]
    verify: bool | str
    deadline: float | None
    transport: Any

    @property
    def base_urls(self) -> list[str]: ...

    def _register_secrets(self) -> None: ...


def parallel(*plans: Plan[Any]) -> Plan[list[Any]]:
    """Run ``plans`` side by side: each round sends the calls of every plan still running, so together they
    take the rounds of the longest, not the sum. Their values, in order. A round's error ends them all."""
    values: list[Any] = [None] * len(plans)
    pending: dict[int, list[Call]] = {}
    try:
        for i, plan in enumerate(plans):
            try:
                pending[i] = next(plan)
            except StopIteration as done:
                values[i] = done.value
        while pending:
            order = list(pending)
            answers = yield [call for i in order for call in pending[i]]
            start = 0
            for i in order:
                count = len(pending[i])
                try:
                    pending[i] = plans[i].send(answers[start : start + count])
                except StopIteration as done:
                    values[i] = done.value
                    del pending[i]
                start += count
    finally:
        for plan in plans:
            plan.close()
    return values


# ================================================================================================ decisions
@dataclass
class Attempt:
    """One call's sending so far: retries used, replicas that failed it this round, each one's last error."""

    retries: int = 0
    tried: set[int] = field(default_factory=set)
    errors: dict[int, RemoteError] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """What to do next: ``return`` ``value``, ``raise`` ``error``, ``failover`` at once, ``retry`` after ``wait``."""

    action: Literal["return", "raise", "failover", "retry"]
    value: Any = None
    error: RemoteError | None = None
    wait: float = 0.0


def backoff_wait(retry: int, backoff: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``retry`` (1, 2, ...): ``backoff`` doubling, plus up to ``backoff`` of jitter,
    at most ``max(backoff, MAX_BACKOFF_S)``."""
    try:
        wait = backoff * 2 ** (retry - 1) + rand() * backoff
    except OverflowError:
        wait = float("inf")
    return max(0.0, min(wait, max(backoff, MAX_BACKOFF_S)))


def decide(
    outcome: Any,
    replica: int,
    attempt: Attempt,
    *,
    replicas: int,
    max_retries: int,
    backoff: float,
    urls: Sequence[str] = (),
    rand: Callable[[], float] = random.random,
    time_left: float | None = None,
    deadline: float | None = None,
) -> Step:
    """What to do after ``outcome`` (a value, a :class:`TransientError` or a final :class:`RemoteError`) of an
    attempt on replica number ``replica`` of ``replicas``. ``time_left``: seconds until the call's ``deadline``
    (None: no deadline); a failover or retry that cannot finish by then raises :func:`deadline_error` instead.
    Updates ``attempt``; does no I/O."""
    if isinstance(outcome, TransientError):
        attempt.errors[replica] = outcome.error
        attempt.tried.add(replica)
        if len(attempt.tried) < replicas:
            step = Step("failover")
        elif attempt.retries < max_retries:
            attempt.retries += 1
            attempt.tried.clear()
            wait = outcome.retry_after if outcome.retry_after is not None else backoff_wait(
                attempt.retries, backoff, rand
            )
            step = Step("retry", wait=wait)
        else:
            return Step("raise", error=final_error(attempt.errors, urls))
    elif is_replica_fault(outcome):
        # A 500 or a malformed answer is not retried on one server (the same request would likely fail again),
        # but it may be this replica's own fault: another replica gets the request once.
        attempt.errors[replica] = outcome
        attempt.tried.add(replica)
        if len(attempt.tried) >= replicas:
            return Step("raise", error=final_error(attempt.errors, urls))
        step = Step("failover")
    elif isinstance(outcome, RemoteError):
        return Step("raise", error=outcome)
    else:
        return Step("return", value=outcome)
    if time_left is not None and (time_left <= 0 or step.wait >= time_left):
        return Step("raise", error=deadline_error(deadline, attempt.errors, urls))
    return step


def is_replica_fault(outcome: Any) -> bool:
    """An answer a replica's own breakage may cause, not worth retrying on it: a 5xx other than 502/503/504
    (those are transient) or a malformed 2xx (:class:`InvalidResponseError`)."""
    return (isinstance(outcome, ServerResponseError) and outcome.status_code >= 500) or isinstance(
        outcome, InvalidResponseError
    )


def deadline_error(deadline: float | None, errors: dict[int, RemoteError], urls: Sequence[str]) -> ServerTimeoutError:
    """The error of a call that ran out of its ``deadline``, naming each replica's last error if any."""
    message = f"the call did not finish within deadline={deadline:g}s (retries and failovers included)"
    if errors:
        message += "; last errors: " + "; ".join(
            f"base_url[{i}] {urls[i] if i < len(urls) else '?'}: {error}" for i, error in sorted(errors.items())
        )
    error = ServerTimeoutError(message)
    if errors:
        error.__cause__ = list(errors.values())[-1]
    return error


def final_error(errors: dict[int, RemoteError], urls: Sequence[str]) -> RemoteError:
    """The error to raise once every replica has failed a call: a single replica's own error; for several, an
    error of the last one's type whose message lists each replica's last error."""
    last = list(errors.values())[-1]
    if len(errors) == 1:
        return last
    parts = "; ".join(
        f"base_url[{i}] {urls[i] if i < len(urls) else '?'}: {error}" for i, error in sorted(errors.items())
    )
    message = f"no replica could answer ({len(errors)} tried, each after its retries): {parts}"
    combined: RemoteError
    if isinstance(last, ServerResponseError):
        combined = type(last)(message, status_code=last.status_code, server_message=last.server_message)
    else:
        combined = type(last)(message)
    combined.__cause__ = last
    return combined


# ================================================================================================ replicas
class Replica:
    """One server of the pool and what the pool knows of its health."""

    __slots__ = ("index", "url", "outstanding", "failures", "until", "trial", "last_error", "sent")

    def __init__(self, index: int, url: str) -> None:
        self.index, self.url = index, url
        self.outstanding = 0  # requests sent and not yet answered
        self.failures = 0  # transient faults in a row
        self.until = 0.0  # set aside until this time.monotonic()
        self.trial = False  # its one trial request after a set-aside is in flight
        self.last_error: RemoteError | None = None
        self.sent = 0  # requests sent, in all


class ReplicaPool:
    """Picks a replica for each attempt and keeps their health; thread-safe, shared by every call of a scorer."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = tuple(urls)
        self.replicas = [Replica(i, url) for i, url in enumerate(urls)]
        self.lock = threading.Lock()
        self._turn = 0

    def acquire(self, tried: set[int], allowed: Sequence[int] | None = None) -> Replica:
        """The replica for the next attempt, counted as outstanding until :meth:`release`.

        Among the ``allowed`` replicas (None: all) this call has not tried in this round: a ready one with the
        fewest outstanding requests (ties: the next in turn); when none is ready, the one whose set-aside ends
        first, as a trial, rather than failing a call that another try might save. A single allowed replica is
        used whatever its health.
        """
        now = time.monotonic()
        with self.lock:
            if allowed is not None and len(allowed) == 1:
                chosen = self.replicas[allowed[0]]
            else:
                count = len(self.replicas)
                order = [self.replicas[(self._turn + k) % count] for k in range(count)]
                if allowed is not None:
                    order = [r for r in order if r.index in allowed]
                candidates = [r for r in order if r.index not in tried] or order
                ready = [r for r in candidates if r.until <= now and not r.trial]
                if ready:
                    chosen = min(ready, key=lambda r: r.outstanding)  # min keeps the first of equals: the turn
                else:
                    chosen = min(candidates, key=lambda r: r.until)
                self._turn = (chosen.index + 1) % count
            if chosen.failures and not chosen.trial:
                chosen.trial = True  # half-open: this request tells whether it is back
            chosen.outstanding += 1
            chosen.sent += 1
            return chosen

    def set_aside(self, index: int) -> bool:
        """Whether replica ``index`` is set aside now (its cooldown running, or its one trial in flight)."""
        replica = self.replicas[index]
        with self.lock:
            return replica.trial or replica.until > time.monotonic()

    def release(self, replica: Replica, outcome: Any, cooldown: float) -> None:
        """Book ``outcome`` of a request to ``replica``: a transient fault, a 5xx or a malformed answer sets it
        aside, anything else (an answer, even a 4xx) shows it is up."""
        now = time.monotonic()
        with self.lock:
            replica.outstanding -= 1
            if outcome is _ABORTED:
                replica.trial = False
            elif isinstance(outcome, TransientError) or is_replica_fault(outcome):
                error = outcome.error if isinstance(outcome, TransientError) else outcome
                replica.last_error = error
                # Requests in flight when a replica dies all fail: only the first of them (or a failed trial)
                # lengthens its set-aside.
                if replica.trial or replica.until <= now:
                    replica.failures += 1
                    replica.until = now + min(MAX_COOLDOWN_S, cooldown * 2 ** min(replica.failures - 1, 30))
                    if len(self.replicas) > 1:
                        logger.warning("%s set aside for %.1fs after: %s", replica.url, replica.until - now, error)
                replica.trial = False
            else:
                if replica.failures and len(self.replicas) > 1:
                    logger.info("%s is back", replica.url)
                replica.failures, replica.until, replica.trial = 0, 0.0, False


# ================================================================================================ connections
class Connections:
    """A scorer's long-lived transport state: the HTTP clients and the replica pool (one lock for both)."""

    def __init__(self) -> None:
        self.client: Any = None
        self.aclient: Any = None
        self.aclient_loop: Any = None  # weakref to the event loop `aclient` belongs to
        self.pool: ReplicaPool | None = None
        self.lock = threading.Lock()

    def pool_for(self, urls: Sequence[str]) -> ReplicaPool:
        pool = self.pool
        if pool is None or pool.urls != tuple(urls):  # a copy of the scorer with other URLs starts afresh
            with self.lock:
                if self.pool is None or self.pool.urls != tuple(urls):
                    self.pool = ReplicaPool(urls)
                pool = self.pool
        return pool

    def sync_client(self, settings: Settings) -> httpx.Client:
        if self.client is not None:
            return self.client
        with self.lock:
            if self.client is None:
                import httpx

                client = httpx.Client(**client_options(settings, is_async=False))
                if settings.transport is None:  # a given transport has no network backend of httpcore's
                    _http.bound_client(client, is_async=False)
                self.client = client
            return self.client

    def async_client(self, settings: Settings) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to the loop that opened them; a new loop (asyncio.run per call,
        # as some frameworks do) gets a new client.
        loop = asyncio.get_running_loop()
        with self.lock:
            if self.aclient is None or self.aclient_loop is None or self.aclient_loop() is not loop:
                import httpx

                self.aclient = httpx.AsyncClient(**client_options(settings, is_async=True))
                if settings.transport is None:
                    _http.bound_client(self.aclient, is_async=True)
                self.aclient_loop = weakref.ref(loop)
            return self.aclient

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        client, self.aclient = self.aclient, None
        if client is not None:
            await client.aclose()
        self.close()


def default_ssl_context() -> ssl.SSLContext:
    """The verifying TLS context of ``verify=True``: httpx's own default (certifi's CAs, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` when set), built once per value of those variables and shared by every client, since loading
    the CA bundle is most of what creating an httpx client costs. Connections only read it (httpx sets the same
    ALPN list on it for every HTTP/1.1 connection, as it does within one client)."""
    return _verified_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _verified_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context(verify=True, trust_env=True)  # reads the variables the key names


def client_options(settings: Settings, *, is_async: bool = False) -> dict[str, Any]:
    """httpx client settings. No base_url: each request names its replica's URL."""
    import httpx

    settings._register_secrets()  # again: model_copy(update=...) skips the validators that register them
    headers = {"User-Agent": "qwen3-rerank-integrations"}
    headers.update((name, value.get_secret_value()) for name, value in settings.headers.items())
    if settings.api_key is not None:
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    elif settings.basic_auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            settings.basic_auth.get_secret_value().encode()
        ).decode()
    verify: bool | ssl.SSLContext
    if settings.verify is True:
        verify = default_ssl_context()
    elif settings.verify is False:
        verify = False
    else:
        verify = ssl.create_default_context(cafile=settings.verify)  # a CA bundle of the caller's: its own context
    # Every replica may have a call's max_concurrency requests in flight (a call spreads them, but concurrent
    # calls add up); the pool's size only bounds sockets, never the requests' own time.
    connections = settings.max_concurrency * len(settings.base_urls)
    options: dict[str, Any] = {
        "headers": headers,
        "verify": verify,
        # pool=None: a request waiting for a free connection is not a timeout; the server's time is. Each
        # socket operation is further cut to the request's deadline (_http.bound_client).
        "timeout": httpx.Timeout(settings.timeout, pool=None),
        "limits": httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        "follow_redirects": False,
    }
    if settings.transport is not None:
        needed = "handle_async_request" if is_async else "handle_request"
        if not callable(getattr(settings.transport, needed, None)):
            kind = "an httpx.AsyncBaseTransport" if is_async else "an httpx.BaseTransport"
            raise TypeError(f"transport= must be {kind} for {'ascore()' if is_async else 'score()'}, got "
                            f"{type(settings.transport).__name__} (httpx.MockTransport serves both)")
        options["transport"] = settings.transport
    return options


# ================================================================================================ driver
_START: list[Any] = []  # the outcome that starts a plan (compared by identity)
_ABORTED = object()  # the outcome of an attempt cut short (cancelled, interrupted): it says nothing of health


class _Steps:
    """Feeds each round's outcome (results, or the error to raise inside the plan) to a plan; shared by the
    sync and async drivers."""

    def __init__(self, plan: Plan[Any]) -> None:
        self.plan = plan
        self.value: Any = None

    def advance(self, outcome: list[Any] | RerankError) -> list[Call] | None:
        """The plan's next calls, or None once it has returned (its value is then in ``value``)."""
        try:
            if outcome is _START:
                return next(self.plan)
            if isinstance(outcome, RerankError):
                return self.plan.throw(outcome)
            return self.plan.send(outcome)
        except StopIteration as done:
            self.value = done.value
            return None


def _settle(call: Call, error: RemoteError) -> RemoteError:
    """Hand a tolerated error back as a value; raise any other."""
    if isinstance(error, call.tolerate):
        return error
    raise error


class Driver:
    """Runs plans for one public call of a scorer: its settings, its connections, optionally one replica
    (``pin``), and the call's deadline (``settings.deadline`` seconds from now, if set)."""

    __slots__ = ("settings", "connections", "pool", "pin", "deadline_at")

    def __init__(self, settings: Settings, connections: Connections, pin: int | None = None) -> None:
        self.settings = settings
        self.connections = connections
        self.pool = connections.pool_for(settings.base_urls)
        self.pin = pin
        deadline = settings.deadline
        self.deadline_at = None if deadline is None else time.monotonic() + deadline

    # ------------------------------------------------------------------------------------------ sync
    def run(self, plan: Plan[T]) -> T:
        steps = _Steps(plan)
        outcome: list[Any] | RerankError = _START
        with contextlib.closing(plan):
            while (calls := steps.advance(outcome)) is not None:
                try:
                    outcome = self.send_all(calls)
                except RerankError as exc:  # the plan may handle it; if not, it re-raises from the plan's frame
                    outcome = exc
        return steps.value

    def send_all(self, calls: list[Call]) -> list[Any]:
        # Threads, as before replicas: each call's worker sends, fails over and retries on its own, so a slow
        # or dead replica holds up only its own calls, and the replicas share the work by outstanding requests.
        if len(calls) == 1:
            return [self.send(calls[0])]
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.settings.max_concurrency, len(calls)), thread_name_prefix="vllm-scorer"
        )
        futures = [pool.submit(self.send, call) for call in calls]
        try:
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            return [f.result() for f in futures]
        finally:
            # On a failure, requests not yet started are dropped; those in flight finish in the background
            # (each bounded by the timeout and the deadline).
            pool.shutdown(wait=False, cancel_futures=True)

    def send(self, call: Call) -> Any:
        """``call``'s value, after failovers and retries (see :func:`decide`); a tolerated error as a value."""
        attempt = Attempt()
        while True:
            if (early := self._before_attempt(call, attempt)) is not None:
                return _settle(call, early)
            replica = self.pool.acquire(attempt.tried, self._allowed(call))
            outcome: Any = _ABORTED
            try:
                outcome = self.send_once(replica.url, call)
            except (TransientError, RemoteError) as exc:
                outcome = exc
            finally:
                self.pool.release(replica, outcome, self.settings.replica_cooldown)
            step = self._decide(call, outcome, replica, attempt)
            if step.action == "return":
                return step.value
            if step.action == "raise":
                assert step.error is not None
                return _settle(call, step.error)
            if step.wait:
                time.sleep(step.wait)

    def send_once(self, url: str, call: Call) -> Any:
        import httpx

        client = self.connections.sync_client(self.settings)
        seconds, extra = self._request_limits()
        # The deadline bounds the whole request, body included (see _http); the reader bounds the body's size.
        with _http.Deadline(seconds) as deadline:
            try:
                with client.stream(call.method, url + call.path, json=call.json, **extra) as response:
                    reader = self._body_reader(url, call, response, deadline)
                    reader.read(response.iter_bytes())
            except httpx.RequestError as exc:
                raise self._transport_error(url, call, exc, seconds) from exc
        return self._value(url, call, response, reader)

    # ------------------------------------------------------------------------------------------ async
    async def arun(self, plan: Plan[T]) -> T:
        steps = _Steps(plan)
        outcome: list[Any] | RerankError = _START
        with contextlib.closing(plan):
            while (calls := steps.advance(outcome)) is not None:
                try:
                    outcome = await self.asend_all(calls)
                except RerankError as exc:
                    outcome = exc
        return steps.value

    async def asend_all(self, calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            return [await self.asend(calls[0])]
        slots = asyncio.Semaphore(self.settings.max_concurrency)

        async def send(call: Call) -> Any:
            async with slots:
                return await self.asend(call)

        tasks = [asyncio.ensure_future(send(call)) for call in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def asend(self, call: Call) -> Any:
        """Async twin of :meth:`send`."""
        attempt = Attempt()
        while True:
            if (early := self._before_attempt(call, attempt)) is not None:
                return _settle(call, early)
            replica = self.pool.acquire(attempt.tried, self._allowed(call))
            outcome: Any = _ABORTED
            try:
                outcome = await self.asend_once(replica.url, call)
            except (TransientError, RemoteError) as exc:
                outcome = exc
            finally:
                self.pool.release(replica, outcome, self.settings.replica_cooldown)
            step = self._decide(call, outcome, replica, attempt)
            if step.action == "return":
                return step.value
            if step.action == "raise":
                assert step.error is not None
                return _settle(call, step.error)
            if step.wait:
                await asyncio.sleep(step.wait)

    async def asend_once(self, url: str, call: Call) -> Any:
        import httpx

        client = self.connections.async_client(self.settings)
        seconds, extra = self._request_limits()
        with _http.Deadline(seconds) as deadline:
            try:
                async with client.stream(call.method, url + call.path, json=call.json, **extra) as response:
                    reader = self._body_reader(url, call, response, deadline)
                    await reader.aread(response.aiter_bytes())
            except httpx.RequestError as exc:
                raise self._transport_error(url, call, exc, seconds) from exc
        return self._value(url, call, response, reader)

    # ------------------------------------------------------------------------------------------ shared
    def _allowed(self, call: Call) -> tuple[int, ...] | None:
        return (self.pin,) if self.pin is not None else call.replicas

    def time_left(self) -> float | None:
        """Seconds until the call's deadline; None without one."""
        return None if self.deadline_at is None else self.deadline_at - time.monotonic()

    def _before_attempt(self, call: Call, attempt: Attempt) -> RemoteError | None:
        """The error that stops ``call`` before its next attempt: the deadline has passed, or its only replica
        is set aside and the call asked not to wait for it (``skip_set_aside``)."""
        left = self.time_left()
        if left is not None and left <= 0:
            return deadline_error(self.settings.deadline, attempt.errors, self.pool.urls)
        allowed = self._allowed(call)
        if call.skip_set_aside and allowed is not None and len(allowed) == 1 and self.pool.set_aside(allowed[0]):
            replica = self.pool.replicas[allowed[0]]
            return ServerConnectionError(
                f"{replica.url} is set aside after faults (last: {replica.last_error}); it is asked again once "
                "its cooldown has passed"
            )
        return None

    def _request_limits(self) -> tuple[float, dict[str, Any]]:
        """Seconds the next request may take (``timeout``, cut to the deadline), and the per-request httpx
        options that bound its wait for a pooled connection by the deadline too."""
        left = self.time_left()
        if left is None:
            return self.settings.timeout, {}
        import httpx

        left = max(left, 0.001)
        seconds = min(self.settings.timeout, left)
        return seconds, {"timeout": httpx.Timeout(seconds, pool=left)}

    def _value(self, url: str, call: Call, response: httpx.Response, reader: _http.BodyReader) -> Any:
        """The response's JSON body, parsed by ``call.parse``; errors as the package's exceptions."""
        body = protocol.read_response(
            response.status_code, response.headers, reader.data, method=call.method, url=url + call.path
        )
        if call.parse is None:
            return body
        try:
            return call.parse(body)
        except InvalidResponseError as exc:
            # The body is malformed: say which replica sent it (a list of replicas' errors names each).
            raise type(exc)(f"{call.method} {url}{call.path}: {exc}") from None

    def _decide(self, call: Call, outcome: Any, replica: Replica, attempt: Attempt) -> Step:
        allowed = self._allowed(call)
        replicas = len(allowed) if allowed is not None else len(self.pool.replicas)
        max_retries = call.retries if call.retries is not None else self.settings.max_retries
        step = decide(
            outcome, replica.index, attempt, replicas=replicas, max_retries=max_retries,
            backoff=self.settings.backoff, urls=self.pool.urls, time_left=self.time_left(),
            deadline=self.settings.deadline,
        )
        if step.action == "failover":
            logger.info("%s failed (%s); sending the request to another replica", replica.url, outcome)
        elif step.action == "retry":
            logger.info("retrying after %s (attempt %d of %d)", outcome, attempt.retries + 1, max_retries + 1)
        return step

    def _body_reader(
        self, url: str, call: Call, response: httpx.Response, deadline: _http.Deadline
    ) -> _http.BodyReader:
        """A reader for this response's body: up to the size cap for a success, the first bytes of an error."""
        success = 200 <= response.status_code < 300
        sent = int(response.request.headers.get("content-length") or 0)
        cap = self.settings.max_response_bytes
        limit = _http.response_limit(cap, sent) if success else _http.ERROR_BODY_BYTES
        reader = _http.BodyReader(limit, deadline, partial=not success, where=f"{call.method} {url}{call.path}",
                                  setting=cap)
        reader.check_declared(response.headers)
        return reader

    def _transport_error(self, url: str, call: Call, exc: Exception, seconds: float) -> Exception:
        """The package's error for an httpx failure: transient (retried) unless the body could not be decoded."""
        import httpx

        where = f"{call.method} {url}{call.path}"
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.DecodingError):
            return InvalidResponseError(f"{where} answered with a body that could not be decompressed: {detail}")
        if isinstance(exc, httpx.TimeoutException):
            bound = ("timeout= bounds the whole request, from connecting to the answer's last byte"
                     if seconds >= self.settings.timeout else
                     f"cut to the {seconds:.3g}s left of deadline={self.settings.deadline:g}s")
            return TransientError(ServerTimeoutError(f"{where} timed out after {seconds:.3g}s ({bound}; {detail})"))
        return TransientError(ServerConnectionError(f"could not reach the vLLM server: {where} failed: {detail}"))
