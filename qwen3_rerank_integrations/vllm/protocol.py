"""vLLM's rerank/score HTTP protocol, without any I/O: request bodies, response checks, error mapping.

Kept apart from :mod:`qwen3_rerank_integrations.vllm` so the sync and async clients share every rule, and so
the rules can be tested without a server. Facts (both server generations): ``../shared/notes/vllm-rerank-protocol.md``.
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from .._secrets import snippet
from ..errors import (
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    RateLimitError,
    RemoteError,
    RouteNotFoundError,
    ServerError,
    ServerResponseError,
)
from ..prompt import document_side, escape_control_tokens, query_side

__all__ = [
    "Call",
    "TransientError",
    "RERANK_PATH",
    "SCORE_PATH",
    "normalize_base_url",
    "split_credentials",
    "display_url",
    "rerank_payload",
    "score_payload",
    "scoring_call",
    "parse_scores",
    "usage_tokens",
    "read_response",
    "max_tokens_bound",
]

RERANK_PATH = "/v1/rerank"
SCORE_PATH = "/v1/score"
TOKENIZE_PATH = "/tokenize"
DETOKENIZE_PATH = "/detokenize"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"

Route = Literal["rerank", "score"]
Template = Literal["client", "server"]  # who renders the prompt: the mode a request is built for
TemplateSetting = Literal["auto", "client", "server"]  # VLLMScorer's setting: "auto" finds the mode out

# A proxy may ask for an hour; waiting that long inside a rerank call helps nobody.
MAX_RETRY_AFTER_S = 60.0
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_SNIPPET = 300
# Retry-After's delta-seconds form (RFC 9110: digits; a fraction tolerated, as some proxies send one).
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Call:
    """One HTTP request to make.

    Attributes:
        tolerate: error types handed back as values instead of raised.
        parse: turns a 2xx body into the value the plan receives, raising :class:`InvalidResponseError` for a
            malformed one; that counts as the answering replica's fault (set aside, the request sent to another),
            like a 5xx. None: the body as it is.
        replicas: the replicas (indices into ``base_url``) that may answer; None: any.
        retries: retries of a transient fault once every allowed replica has failed it; None: the scorer's
            ``max_retries``.
        skip_set_aside: when its only replica is set aside after faults, hand back a
            :class:`ServerConnectionError` at once instead of sending (a survey of that replica waits for its turn).
    """

    method: Literal["GET", "POST"]
    path: str
    json: dict[str, Any] | None = None
    tolerate: tuple[type[Exception], ...] = field(default=())
    parse: Callable[[Any], Any] | None = None
    replicas: tuple[int, ...] | None = None
    retries: int | None = None
    skip_set_aside: bool = False


class TransientError(Exception):
    """A fault worth retrying; ``error`` is what the caller sees once the retries run out."""

    def __init__(self, error: RemoteError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def normalize_base_url(url: str) -> str:
    """``http://host:8000``, ``.../`` and ``.../v1`` all mean the server root (``/tokenize`` lives there)."""
    return url.strip().rstrip("/").removesuffix("/v1")


def _authority(url: str) -> tuple[str, str, str]:
    """``url`` as (everything up to the authority, the authority, the rest); no scheme: the authority first."""
    scheme, sep, rest = url.partition("://")
    head = scheme + sep if sep else ""
    rest = rest if sep else url
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return head, rest[:end], rest[end:]


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@``, and the (percent-decoded) user and password, if it had them."""
    head, authority, tail = _authority(url)
    if "@" not in authority:
        return url, None
    userinfo, _, host = authority.rpartition("@")
    user, _, password = userinfo.partition(":")
    return head + host + tail, (unquote(user), unquote(password))


def display_url(url: str) -> str:
    """``url`` fit to show: without credentials."""
    return split_credentials(url)[0]


def rerank_payload(
    query: str, documents: Sequence[str], *, model: str | None, instruction: str | None
) -> dict[str, Any]:
    """A ``/v1/rerank`` body. ``instruction`` goes only to a server that renders the template itself.

    ``top_n`` is explicit because servers differ on what a missing one means. Never ``truncate_prompt_tokens``:
    it cuts the whole prompt, suffix included, and the score becomes meaningless.
    """
    body: dict[str, Any] = {"query": query, "documents": list(documents), "top_n": len(documents)}
    return _common_fields(body, model, instruction)


def score_payload(
    query: str, documents: Sequence[str], *, model: str | None, instruction: str | None
) -> dict[str, Any]:
    """A ``/v1/score`` body: one ``text_1`` against a list of ``text_2`` (the 1:N form every version accepts)."""
    body: dict[str, Any] = {"text_1": query, "text_2": list(documents)}
    return _common_fields(body, model, instruction)


def scoring_call(
    query: str, documents: Sequence[str], instruction: str, *, template: Template, route: Route, model: str | None
) -> Call:
    """The request that scores ``documents`` against ``query``: the official prompt's two sides for
    ``template="client"``; for ``"server"``, the raw texts and ``instruction``, control tokens escaped (the
    server's template parses them in what it renders). Its answer is parsed into the scores, in request order
    (:func:`parse_scores`)."""
    sent_instruction: str | None
    if template == "client":
        query, documents, sent_instruction = query_side(query, instruction), [document_side(d) for d in documents], None
    else:
        query, documents = escape_control_tokens(query), [escape_control_tokens(d) for d in documents]
        sent_instruction = escape_control_tokens(instruction)
    build = rerank_payload if route == "rerank" else score_payload
    path = RERANK_PATH if route == "rerank" else SCORE_PATH
    body = build(query, documents, model=model, instruction=sent_instruction)
    return Call("POST", path, body, parse=functools.partial(parse_scores, count=len(documents), route=route))


def _common_fields(body: dict[str, Any], model: str | None, instruction: str | None) -> dict[str, Any]:
    if model is not None:
        body["model"] = model
    if instruction is not None:
        body["instruction"] = instruction
    return body


# A Qwen3-Reranker served as vLLM's one-row classifier answers sigmoid probabilities; anything outside [0, 1]
# comes from another pooling setup, and the likeliest one is a known deployment mistake.
OUT_OF_RANGE_HINT = (
    "a Qwen3-Reranker served as a classifier returns probabilities. The server most likely runs in embed mode "
    "(`--convert embed` / `--task embed`), where /rerank and /score return cosine similarities of embeddings "
    "(-1 to 1); restart it with `--runner pooling` (older vLLM: `--task score`) and the Qwen3-Reranker "
    "`--hf-overrides` (docs/vllm.md, \"Start the server\"), and no `--convert embed`."
)


def parse_scores(body: Any, count: int, route: Route) -> list[float]:
    """Scores in request order from a rerank/score response for ``count`` documents.

    Results come sorted by score, so they are placed by ``index``. Every index must appear exactly once with
    a finite score in [0, 1]; anything else raises :class:`InvalidResponseError` (never a partial or shuffled
    list).
    """
    key, score_key = ("results", "relevance_score") if route == "rerank" else ("data", "score")
    if not isinstance(body, dict) or not isinstance(body.get(key), list):
        raise InvalidResponseError(
            f"the server's {route} response has no {key!r} list: {_snippet(body)}"
        )
    scores: list[float | None] = [None] * count
    for item in body[key]:
        index, value = (item.get("index"), item.get(score_key)) if type(item) is dict else (None, None)
        # `type(...) is` rather than isinstance: a JSON true/false must not pass as 1/0.
        if type(index) is not int or not 0 <= index < count:
            raise InvalidResponseError(
                f"the server's {route} response has an entry with index {index!r} for a request of {count} "
                f"documents: {_snippet(item)}"
            )
        if scores[index] is not None:
            raise InvalidResponseError(f"the server's {route} response lists index {index} twice")
        if type(value) not in (float, int) or not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidResponseError(
                f"the server's {route} response has {score_key}={value!r} for index {index}, not a finite number"
            )
        if not 0.0 <= value <= 1.0:  # type: ignore[operator]
            raise InvalidResponseError(
                f"the server's {route} response has {score_key}={value!r} for index {index}, outside [0, 1]; "
                + OUT_OF_RANGE_HINT
            )
        scores[index] = float(value)  # type: ignore[arg-type]  # checked just above
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise InvalidResponseError(
            f"the server's {route} response is missing {len(missing)} of {count} documents (indices "
            f"{missing[:10]}{'...' if len(missing) > 10 else ''}); was it cut by top_n?"
        )
    return [s for s in scores if s is not None]


def usage_tokens(body: Any) -> int | None:
    """Prompt tokens the server reports (``prompt_tokens``; older servers send ``total_tokens`` only)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    for key in ("prompt_tokens", "total_tokens"):
        if is_int(usage.get(key)):
            return int(usage[key])
    return None


def max_tokens_bound(text: str) -> int:
    """An upper bound on the Qwen3 token count of ``text``, with no tokenizer.

    The tokenizer NFC-normalizes, then every byte-level BPE token covers at least one UTF-8 byte (special
    tokens cover many), so tokens <= NFC bytes. Documents under the bound need no token counting at all.
    """
    if text.isascii():  # NFC leaves ASCII alone and each character is one byte
        return len(text)
    return len(unicodedata.normalize("NFC", text).encode("utf-8"))


# ------------------------------------------------------------------------------------------------- errors
def read_response(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    method: str,
    url: str,
) -> Any:
    """The JSON body of a 2xx response; otherwise the package's error for the status.

    Raises:
        TransientError: 429/502/503/504 (wrapping the error to raise once retries run out).
        ServerResponseError subclasses: every other error status, with the server's message; a redirect
            (3xx) is never followed, so the API key and the documents never go to another address.
        InvalidResponseError: a 2xx body that is not JSON.
    """
    if 200 <= status < 300:
        if not content:
            return None
        try:
            return json.loads(content)
        except ValueError:
            text = content.decode("utf-8", "replace")
            raise InvalidResponseError(
                f"{method} {url} answered HTTP {status} with a body that is not JSON: {snippet(repr(text))}"
            ) from None
    if 300 <= status < 400:
        location = headers.get("location")
        target = f"a redirect to {snippet(repr(display_url(location)))}" if location else "a redirect, no Location"
        raise ServerResponseError(
            f"{method} {url} answered HTTP {status}, {target}. Redirects are not followed, so the API key and "
            "the documents never go to another address: if you trust it, make that address the base_url.",
            status_code=status, server_message=snippet(content.decode("utf-8", "replace"), _SNIPPET),
        )
    message = server_message(content)
    error = _status_error(status, message, method, url)
    if status in _RETRY_STATUSES:
        raise TransientError(error, retry_after=_retry_after(headers.get("retry-after")))
    raise error


def server_message(content: bytes) -> str:
    """The ``message`` of either vLLM error format (nested since 0.10.1, flat before), FastAPI's ``detail``,
    a bare ``{"error": "..."}`` (vLLM's auth middleware), or the raw text."""
    text = content.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return snippet(text, _SNIPPET) or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        for candidate in (body.get("message"), error, body.get("detail")):
            if isinstance(candidate, str):
                return candidate
        if body.get("detail") is not None:
            return snippet(json.dumps(body["detail"]), _SNIPPET)
    return snippet(text, _SNIPPET)


def _status_error(status: int, message: str, method: str, url: str) -> ServerResponseError:
    where = f"{method} {url} answered HTTP {status}: {message}"
    if status in (401, 403):
        return AuthenticationError(
            f"{where}. The server rejected the API key (or none was sent): pass api_key= or set VLLM_API_KEY "
            "to the key the server was started with (--api-key).",
            status_code=status, server_message=message,
        )
    if status == 404:
        return RouteNotFoundError(
            f"{where}. If the route is missing, the server is not running in pooling/score mode: start it with "
            "`--runner pooling` (older vLLM: `--task score`) and the Qwen3-Reranker hf_overrides. If the model "
            "does not exist, check model= against the server's /v1/models.",
            status_code=status, server_message=message,
        )
    if status == 429:
        return RateLimitError(f"{where} (rate limited; retries exhausted)", status_code=status, server_message=message)
    if status in (400, 413, 422):
        hint = ""
        if "context length" in message or "too long" in message or status == 413:
            hint = " Lower max_length= (documents are then cut at their tail) or batch_size=."
        return BadRequestError(where + hint, status_code=status, server_message=message)
    if status >= 500:
        return ServerError(where, status_code=status, server_message=message)
    return ServerResponseError(where, status_code=status, server_message=message)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds (fractions tolerated) or an HTTP date, capped at
    :data:`MAX_RETRY_AFTER_S`. Anything else (``nan``, ``inf``, ``-5``, ``1e12``, ``soon``, empty) is None:
    garbage from a server means "no Retry-After", and the backoff applies."""
    value = (value or "").strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)  # finite up to ~308 digits; a longer one is garbage too
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except Exception:  # any unparseable or out-of-range date; never let a header crash a retry
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _snippet(value: Any) -> str:
    return snippet(value, _SNIPPET)


def is_int(value: Any) -> bool:
    """A JSON integer: ``True``/``False`` are ints to Python but not to the protocol."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> int | None:
    """``value`` when it is a JSON integer above 0 (a context length), else None."""
    return value if is_int(value) and value > 0 else None


