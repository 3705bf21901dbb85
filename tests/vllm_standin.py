"""A loopback stand-in of a vLLM rerank server: a real HTTP server on 127.0.0.1, scoring with a real model.

It behaves like both server generations (facts: ../shared/notes/vllm-rerank-protocol.md):

- ``mode="legacy"`` (no score template, as older vLLM and vllm-ascend): tokenizes the request's query and each
  document as they are and concatenates the ids; ignores ``instruction``; flat errors; ``usage.total_tokens`` only.
- ``mode="template"`` (started with the reranker ``--chat-template``): renders the official prompt around the raw
  query and document with the request's ``instruction`` (default: the README's); nested errors; full usage.

Both serve ``/rerank`` (``/v1``, ``/v2``), ``/score`` (``/v1``), ``/tokenize``, ``/detokenize``, ``/v1/models``
(with ``max_model_len``) and ``/health``; sort rerank results by score and cut them to ``top_n``; reject a prompt
over ``max_model_len`` with vLLM's 400; check ``model`` and an optional API key. The score is vLLM's
``sigmoid(logit_yes - logit_no)`` at the last position of a causal LM, computed here with transformers.

Deliberately independent of the package: the prompt strings come from ``tests/reference.py``.

Faults are scripted with :meth:`VLLMStandIn.inject` and behaviours (latency, capacity, API key, embed mode, a
score override, how ``/tokenize`` renders chat messages, no ``/tokenize`` at all, a development-mode
``/server_info``) set as attributes; :meth:`VLLMStandIn.reset` restores a clean server. :meth:`VLLMStandIn.kill`
stops it like a crashed process (open connections cut, new ones refused) and :meth:`VLLMStandIn.restart` brings
it back on the same port (tests/test_replicas.py).
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal

from tests.reference import PREFIX, SUFFIX, format_instruction

FaultKind = Literal[
    "status",  # answer an error status (body in the mode's error format unless `body` is given)
    "drop",  # close the connection without answering
    "delay",  # sleep `delay` seconds, then answer normally
    "non_json",  # answer 200 with an HTML body
    "shuffle",  # permute the results (they are sorted by score anyway)
    "missing_index",  # drop one result
    "duplicate_index",  # give one result another's index
    "out_of_range_index",  # give one result an index past the end
    "nan_score",  # one score is NaN
    "string_score",  # one score is a JSON string
    # Hostile servers (tests/test_hostile_server.py):
    "trickle",  # answer 200 with a long Content-Length, then one space every `delay` seconds, without end
    "trickle_headers",  # send the status line and headers one byte every `delay` seconds
    "gzip_bomb",  # answer 200 with a gzip body of `size` zero bytes (about size/1000 bytes on the wire)
    "echo_headers",  # answer `status` with `body`, "{headers}" in it replaced by the request's headers (JSON),
    # "{authorization}" by its Authorization header; the response also echoes that header as X-Echo-Authorization
    "redirect",  # answer `status` (give 301/302/307/308) with `Location: <location>`
]
_MUTATIONS = {"shuffle", "missing_index", "duplicate_index", "out_of_range_index", "nan_score", "string_score"}


# One model/tokenizer user at a time across all stand-ins, like an engine; so stand-ins may share a tokenizer
# (but not with the test's own thread: fast tokenizers refuse concurrent use).
_ENGINE_LOCK = threading.Lock()


@dataclass
class Fault:
    kind: FaultKind
    route: str = "rerank"  # the fault hits requests whose path contains this
    times: int = 1
    status: int = 503
    message: str = "The server is overloaded; try again later."
    body: Any = None  # replaces the error body for kind="status"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    size: int = 1 << 30  # gzip_bomb: inflated bytes
    location: str = ""  # redirect target


@dataclass
class Recorded:
    method: str
    path: str
    json: Any
    headers: dict[str, str]


class VLLMStandIn:
    """A vLLM-like server on ``base_url``. ``model=None`` with a ``score_override`` needs no model at all."""

    live: ClassVar[weakref.WeakSet[VLLMStandIn]] = weakref.WeakSet()  # reset after every test by conftest

    def __init__(
        self,
        mode: Literal["legacy", "template"] = "legacy",
        *,
        model: Any = None,
        tokenizer: Any = None,
        max_model_len: int = 4096,
        served_model_name: str = "Qwen/Qwen3-Reranker-0.6B",
        score_override: Callable[[str, str], float] | None = None,
    ) -> None:
        self.mode = mode
        self.model = model
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.served_model_name = served_model_name
        self._default_override = score_override
        self._lock = _ENGINE_LOCK
        self._count_lock = threading.Lock()
        if tokenizer is not None:
            self._yes = tokenizer.convert_tokens_to_ids("yes")
            self._no = tokenizer.convert_tokens_to_ids("no")
        self.reset()
        self.dead = False
        self._handler = _handler_for(self)
        self._serve(0)
        host, port = self._httpd.server_address[:2]
        self.port = port
        self.base_url = f"http://{host}:{port}"
        VLLMStandIn.live.add(self)

    def _serve(self, port: int) -> None:
        self._httpd = _Server(("127.0.0.1", port), self._handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=f"vllm-standin-{self.mode}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------------------------------ controls
    def reset(self) -> None:
        """Forget faults, recorded requests and behaviours."""
        self.faults: list[Fault] = []
        self.requests: list[Recorded] = []
        self.scored_ids: list[list[list[int]]] = []  # per scoring request: the prompt ids the model saw
        self.latency = 0.0  # seconds added to every scoring request (requests overlap while they wait)
        # Most scoring requests worked on at once (None: no limit); the others queue. With `latency`, it sets the
        # server's throughput, as an engine's compute does: capacity=1, latency=0.05 serves 20 requests a second.
        self.capacity: int | None = None
        self._slots: threading.Semaphore | None = None
        self.api_key: str | None = None
        self.embed_mode = False  # answer like `--convert embed`: cosine-like ~0.8 scores
        self.score_override = self._default_override
        self.honour_instruction = True  # False: a template server that drops the request's `instruction`
        # True: a template server whose template lost its final newline (vLLM's published qwen3_reranker.jinja)
        self.drop_final_newline = False
        # How a legacy server's /tokenize renders chat messages with the tokenizer's own chat template (vLLM 0.32
        # falls back to it; its score path never uses it): "nothing" (Qwen3's template skips the query/document
        # roles), "chatml" (a template that renders every role), "refuse" (no chat template: 400).
        self.legacy_rendering: Literal["nothing", "chatml", "refuse"] = "nothing"
        self.tokenize_route = True  # False: no /tokenize or /detokenize (a proxy that hides them, an old server)
        self.dev_mode_dtype: str | None = None  # set: answer GET /server_info as vLLM's development mode does
        self.in_flight = 0
        self.max_in_flight = 0
        self.hostile_bytes_sent = 0  # body bytes a trickle or gzip_bomb fault got onto the wire

    def inject(self, kind: FaultKind, **options: Any) -> Fault:
        """Script a fault for the next ``times`` matching requests (see :class:`Fault`)."""
        fault = Fault(kind, **options)
        self.faults.append(fault)
        return fault

    def close(self) -> None:
        if not self.dead:
            self._httpd.shutdown()
            self._httpd.server_close()
        self.dead = True

    def kill(self) -> None:
        """Stop like a crashed process: the port refuses connections, and open ones (requests in flight
        included) are cut without an answer."""
        self.dead = True
        self._httpd.shutdown()
        self._httpd.server_close()
        for connection in list(self._httpd.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restart(self) -> None:
        """Serve again on the same port after :meth:`kill`."""
        assert self.dead, "restart() follows kill()"
        self._serve(self.port)
        self.dead = False

    def scoring_requests(self) -> list[Recorded]:
        return [r for r in self.requests if "rerank" in r.path or "score" in r.path]

    # ------------------------------------------------------------------------------------------ model
    def encode(self, text: str) -> list[int]:
        with self._lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, query: str, document: str, instruction: str | None) -> list[int]:
        if self.mode == "legacy":  # vLLM without a template: the two token lists, concatenated
            return self.encode(query) + self.encode(document)
        text = PREFIX + format_instruction(instruction, query, document) + SUFFIX
        return self.encode(text[:-1] if self.drop_final_newline else text)

    def score_ids(self, prompts: list[list[int]]) -> list[float]:
        import torch

        with self._lock, torch.inference_mode():
            batch = self.tokenizer.pad(
                {"input_ids": prompts}, padding=True, return_tensors="pt", padding_side="left"
            )
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :].float()
            return torch.sigmoid(logits[:, self._yes] - logits[:, self._no]).tolist()

    def score_pairs(self, query: str, documents: list[str], instruction: str | None) -> tuple[list[float], int]:
        """Scores and the prompt-token count, as the server's configuration makes them."""
        if self.tokenizer is None:
            assert self.score_override is not None, "a stand-in without a tokenizer needs score_override"
            return [self.score_override(query, d) for d in documents], 0
        if self.embed_mode:
            # Two pooled embeddings and a pad between them; the cosine of mean embeddings sits near 0.8.
            ids = [self.encode(query) + [0] + self.encode(d) for d in documents]
            self.scored_ids.append(ids)
            return [0.78 + (sum(map(ord, d)) % 40) / 1000 for d in documents], sum(map(len, ids))
        ids = [self.prompt_ids(query, d, instruction) for d in documents]
        too_long = max((len(x) for x in ids), default=0)
        if too_long > self.max_model_len:
            raise _HTTPError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{too_long} tokens in the input for classification. Please reduce the length of the input.",
                "BadRequestError",
            )
        self.scored_ids.append(ids)
        if self.score_override is not None:
            return [self.score_override(query, d) for d in documents], sum(map(len, ids))
        return self.score_ids(ids), sum(map(len, ids))

    # ------------------------------------------------------------------------------------------ protocol
    def error_body(self, status: int, message: str, kind: str) -> dict[str, Any]:
        error = {"message": message, "type": kind, "param": None, "code": status}
        if self.mode == "legacy":  # vLLM before 0.10.1: flat
            return {"object": "error", **error}
        return {"error": error}

    def usage(self, tokens: int) -> dict[str, int]:
        if self.mode == "legacy":
            return {"total_tokens": tokens}
        return {"prompt_tokens": tokens, "total_tokens": tokens}

    def take_fault(self, path: str) -> Fault | None:
        with self._count_lock:
            for fault in self.faults:
                if fault.times > 0 and fault.route in path:
                    fault.times -= 1
                    return fault
        return None

    def handle(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON-able body or raw bytes, extra headers) for one request."""
        # vLLM's --api-key guards the /v1 routes only (/health, /tokenize, /rerank stay open).
        authorized = headers.get("authorization") == f"Bearer {self.api_key}"
        if self.api_key is not None and path.startswith("/v1") and not authorized:
            return 401, {"error": "Unauthorized"}, {}
        routes: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("GET", "/health"): lambda _: b"",
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/embeddings"): self._embeddings,
        }
        if self.tokenize_route:
            routes[("POST", "/tokenize")] = self._tokenize
            routes[("POST", "/detokenize")] = self._detokenize
        if self.dev_mode_dtype is not None:
            routes[("GET", "/server_info")] = self._server_info
        for route in ("/rerank", "/v1/rerank", "/v2/rerank"):
            routes[("POST", route)] = self._rerank
        for route in ("/score", "/v1/score"):
            routes[("POST", route)] = self._score
        handler = routes.get((method, path))
        if handler is None:
            return 404, {"detail": "Not Found"}, {}
        if isinstance(body, dict) and body.get("model") not in (None, self.served_model_name):
            raise _HTTPError(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
        return 200, handler(body), {}

    def _models(self, _: Any) -> dict[str, Any]:
        card = {"id": self.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                "root": self.served_model_name, "parent": None, "max_model_len": self.max_model_len}
        return {"object": "list", "data": [card]}

    def _tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.tokenizer is None:
            raise _HTTPError(404, "Not Found", "NotFoundError")
        if "messages" in body:  # vLLM renders chat messages with the server's --chat-template
            tokens = self._render_messages(body)
        else:
            tokens = self.encode(body["prompt"])
        return {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens, "token_strs": None}

    def _server_info(self, _: Any) -> dict[str, Any]:
        config = {"model_config": {"model": self.served_model_name, "dtype": f"torch.{self.dev_mode_dtype}"}}
        return {"vllm_config": config, "vllm_env": {}, "system_env": {}}

    def _render_messages(self, body: dict[str, Any]) -> list[int]:
        if self.mode == "legacy":  # no --chat-template: the tokenizer's own chat template, if any
            if self.legacy_rendering == "refuse":
                raise _HTTPError(400, "As of transformers v4.44, default chat template is no longer allowed, so "
                                 "you must provide a chat template if the tokenizer does not define one.",
                                 "BadRequestError")
            if self.legacy_rendering == "chatml":
                return self.encode("".join(f"<|im_start|>{m.get('role')}\n{m.get('content')}<|im_end|>\n"
                                           for m in body["messages"]))
            return []
        contents = {m.get("role"): m.get("content") for m in body["messages"]}
        kwargs = body.get("chat_template_kwargs") or {}
        instruction = kwargs.get("instruction") if self.honour_instruction else None
        return self.prompt_ids(contents.get("query", ""), contents.get("document", ""), instruction)

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.embed_mode:  # a reranker (classify) server registers no embeddings route
            raise _HTTPError(404, "Not Found", "NotFoundError")
        return {"object": "list", "model": self.served_model_name,
                "data": [{"index": 0, "object": "embedding", "embedding": [0.6, 0.8]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1}}

    def _detokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return {"prompt": self.tokenizer.decode(body["tokens"])}

    def _pairs(self, query: Any, documents: Any, body: dict[str, Any]) -> tuple[list[float], int]:
        if not isinstance(query, str) or not isinstance(documents, list) or not documents:
            raise _HTTPError(400, "query must be a string and documents a non-empty list", "BadRequestError")
        if "truncate_prompt_tokens" in body:  # this client must never send it (it would cut the suffix)
            raise _HTTPError(400, "stand-in: truncate_prompt_tokens is not expected", "BadRequestError")
        if self.latency:
            if self.capacity is None:
                time.sleep(self.latency)
            else:
                with self._count_lock:
                    if self._slots is None:
                        self._slots = threading.Semaphore(self.capacity)
                with self._slots:
                    time.sleep(self.latency)
        instruction = body.get("instruction") if self.mode == "template" and self.honour_instruction else None
        return self.score_pairs(query, documents, instruction)

    def _rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        documents = body.get("documents")
        scores, tokens = self._pairs(body.get("query"), documents, body)
        results = [{"index": i, "document": {"text": d, "multi_modal": None}, "relevance_score": s}
                   for i, (d, s) in enumerate(zip(documents, scores))]
        results.sort(key=lambda r: r["relevance_score"], reverse=True)
        top_n = body.get("top_n") or 0
        if top_n > 0:
            results = results[:top_n]
        return {"id": f"rerank-{random.getrandbits(32):08x}", "model": self.served_model_name,
                "usage": self.usage(tokens), "results": results}

    def _score(self, body: dict[str, Any]) -> dict[str, Any]:
        documents = body.get("text_2")
        documents = [documents] if isinstance(documents, str) else documents
        scores, tokens = self._pairs(body.get("text_1"), documents, body)
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
        return {"id": f"score-{random.getrandbits(32):08x}", "object": "list", "created": int(time.time()),
                "model": self.served_model_name, "data": data, "usage": self.usage(tokens)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog of 5 drops the SYNs of a client opening 8 connections at once, and each
    # dropped SYN costs a 1 s retransmit: a real server's backlog is larger.
    request_queue_size = 128

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connections: set[socket.socket] = set()  # open ones, which kill() cuts

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is what several faults provoke; not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _mutate(kind: str, body: dict[str, Any]) -> None:
    items = body.get("results", body.get("data"))
    key = "relevance_score" if "results" in body else "score"
    if kind == "shuffle":
        random.Random(7).shuffle(items)
    elif kind == "missing_index":
        items.pop()
    elif kind == "duplicate_index":
        items[-1]["index"] = items[0]["index"]
    elif kind == "out_of_range_index":
        items[-1]["index"] = len(items)
    elif kind == "nan_score":
        items[0][key] = float("nan")
    elif kind == "string_score":
        items[0][key] = str(items[0][key])


# ------------------------------------------------------------------------------------------------ hostile faults
_TRICKLE_FOR_S = 20.0  # a trickle stops after this long even if the client never hangs up


def _trickle(handler: Any, fault: Fault, headers: dict[str, str]) -> None:
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(10**6))  # under any size cap: only time can stop it
    handler.end_headers()
    handler.wfile.flush()
    _drip(handler, b" " * 10**6, fault.delay)


def _trickle_headers(handler: Any, fault: Fault, headers: dict[str, str]) -> None:
    handler.close_connection = True
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"x" * 10**5 + b"\r\n\r\n"
    _drip(handler, head, fault.delay)


def _drip(handler: Any, data: bytes, delay: float) -> None:
    """Write ``data`` one byte every ``delay`` seconds until the client hangs up (or _TRICKLE_FOR_S)."""
    stop = time.monotonic() + _TRICKLE_FOR_S
    for byte in data:
        if time.monotonic() > stop:
            return
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:
            return
        handler.server_ref.hostile_bytes_sent += 1
        time.sleep(delay)


_BOMBS: dict[int, bytes] = {}


def gzip_bomb(size: int) -> bytes:
    """A gzip member of ``size`` zero bytes (a multiple of 1 MiB), built in well under a second: with a full
    flush after each MiB every block compresses to the same bytes, so one block is repeated."""
    if size not in _BOMBS:
        import struct
        import zlib

        block, count = bytes(1 << 20), size >> 20
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        piece = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
        crc = 0
        for _ in range(count):
            crc = zlib.crc32(block, crc)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        _BOMBS[size] = header + piece * count + deflate.flush() + struct.pack("<II", crc, size & 0xFFFFFFFF)
    return _BOMBS[size]


def _gzip_bomb(handler: Any, fault: Fault, headers: dict[str, str]) -> None:
    data = gzip_bomb(fault.size)
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    for start in range(0, len(data), 1 << 14):
        try:
            handler.wfile.write(data[start : start + (1 << 14)])
        except OSError:  # the client hung up: the point of the test
            return
        handler.server_ref.hostile_bytes_sent += len(data[start : start + (1 << 14)])


def _echo_headers(handler: Any, fault: Fault, headers: dict[str, str]) -> None:
    echo, authorization = json.dumps(headers), headers.get("authorization", "")

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{headers}", echo).replace("{authorization}", authorization)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    if isinstance(fault.body, bytes):
        body = fault.body.replace(b"{headers}", echo.encode()).replace(b"{authorization}", authorization.encode())
    else:
        body = fill(fault.body)
    handler._send(fault.status, body, {"X-Echo-Authorization": authorization, **fault.headers})


def _redirect(handler: Any, fault: Fault, headers: dict[str, str]) -> None:
    status = fault.status if 300 <= fault.status < 400 else 307
    handler._send(status, {"detail": "moved"}, {"Location": fault.location, **fault.headers})


_HOSTILE: dict[str, Callable[[Any, Fault, dict[str, str]], None]] = {
    "trickle": _trickle,
    "trickle_headers": _trickle_headers,
    "gzip_bomb": _gzip_bomb,
    "echo_headers": _echo_headers,
    "redirect": _redirect,
}


def _handler_for(server: VLLMStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn
        # One write per response and no Nagle delay: otherwise headers and body go out as two packets and
        # the client's delayed ACK adds ~40 ms to every request.
        disable_nagle_algorithm = True
        wbufsize = 1 << 16
        server_ref = server

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            headers = {k.lower(): v for k, v in self.headers.items()}
            server.requests.append(Recorded(method, path, body, headers))  # faults included
            fault = server.take_fault(path)
            scoring = "rerank" in path or "score" in path
            if scoring:
                with server._count_lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._answer(method, path, body, headers, fault)
            finally:
                if scoring:
                    with server._count_lock:
                        server.in_flight -= 1

        def _answer(self, method: str, path: str, body: Any, headers: dict[str, str], fault: Fault | None) -> None:
            if server.dead:  # a request that reached a killed server over an old connection
                self.close_connection = True
                return
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                return
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.delay)
            if fault is not None and fault.kind == "status":
                body = fault.body if fault.body is not None else server.error_body(
                    fault.status, fault.message, "ServiceUnavailableError" if fault.status == 503 else "Error")
                return self._send(fault.status, body, fault.headers)
            if fault is not None and fault.kind == "non_json":
                return self._send(200, b"<html><body>502 Bad Gateway</body></html>", {}, "text/html")
            if fault is not None and fault.kind in _HOSTILE:
                return _HOSTILE[fault.kind](self, fault, headers)
            if isinstance(body, bytes):
                return self._send(400, server.error_body(400, "invalid JSON", "BadRequestError"), {})
            try:
                status, answer, extra = server.handle(method, path, body, headers)
            except _HTTPError as exc:
                return self._send(exc.status, server.error_body(exc.status, exc.message, exc.kind), {})
            if server.dead:  # killed while it worked: the answer is lost with the process
                self.close_connection = True
                return
            if fault is not None and fault.kind in _MUTATIONS and isinstance(answer, dict):
                _mutate(fault.kind, answer)
            self._send(status, answer, extra)

        def _send(self, status: int, body: Any, headers: dict[str, str], ctype: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
