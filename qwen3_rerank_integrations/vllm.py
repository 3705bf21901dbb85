"""Scoring against a vLLM server: :class:`VLLMScorer`.

vLLM serves the original Qwen3-Reranker checkpoint as a one-row classifier (``W[yes] − W[no]``, sigmoid), so its
``relevance_score`` is the official P("yes") — provided the prompt it scores is the official one:

- ``template="client"`` (older vLLM, vllm-ascend, any server without the reranker ``--chat-template``): vLLM
  concatenates the query's and each document's tokens as they are, so this client sends
  ``PREFIX + <Instruct>/<Query> part`` as the query and ``<Document>: text + SUFFIX`` as each document. Those two
  pieces tokenize to exactly the official ids (every seam falls on a pre-token boundary or a special token).
- ``template="server"``: the server renders the official prompt itself; the client sends raw text and
  ``instruction``.

Long documents are cut at their tail to fit the context, the suffix kept, exactly as the official method cuts
them (see :meth:`VLLMScorer.score`). Long lists are split into ``batch_size`` requests sent concurrently.

The sync and async paths share one implementation: each operation is written once as a *plan*, a generator
that yields lists of HTTP calls and receives their JSON bodies; :meth:`VLLMScorer._run` drives a plan with a
thread pool and ``httpx.Client``, :meth:`VLLMScorer._arun` with ``asyncio`` and ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import inspect
import logging
import os
import ssl
import threading
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from . import _http
from . import _secrets
from . import _vllm_protocol as protocol
from ._vllm_protocol import Call, TransientError
from .errors import (
    BadRequestError,
    InvalidResponseError,
    RemoteError,
    RerankError,
    RouteNotFoundError,
    ServerConnectionError,
    ServerTimeoutError,
)
from .prompt import (
    DEFAULT_INSTRUCTION,
    PREFIX,
    SUFFIX,
    document_part,
    document_side,
    escape_control_tokens,
    query_part,
    query_side,
)
from .scorer import validate_inputs

if TYPE_CHECKING:
    import httpx

__all__ = ["VLLMScorer", "ServerCheck", "API_KEY_ENV"]

logger = logging.getLogger(__name__)

API_KEY_ENV = "VLLM_API_KEY"  # the variable `vllm serve` itself reads for --api-key
_DOCUMENT_TAG = document_part("")
# How many tokens a cut may step back to find text that re-tokenizes to the official ids (a character split
# over byte-level tokens needs at most 3).
_MAX_CUT_STEPS = 8

# The canary of check(): one document answers the query, one does not. A working Qwen3-Reranker scores them
# near 1 and near 0.
CANARY_QUERY = "What is the capital of China?"
CANARY_RELEVANT = "The capital of China is Beijing."
CANARY_IRRELEVANT = (
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects."
)
# check() sends this to a template="server" server to see whether it honours `instruction`.
_PROBE_INSTRUCTION = "Decide whether the passage states the answer to the question, ignoring passages on physics"
# Only a server that pools embeddings (`--convert embed`) registers this route; a reranker answers 404 there.
_EMBEDDINGS_PATH = "/v1/embeddings"
# Qwen3 token ids of "\n\n" and "\n": a prompt whose template lost its final newline ends in the second.
_DOUBLE_NEWLINE_ID, _NEWLINE_ID = 271, 198
# The fix for a server-side template problem: the package's template, wherever the package is installed.
_TEMPLATE_FIX = (
    "restart vLLM with the package's template, --chat-template "
    "\"$(python -c 'from qwen3_rerank_integrations.templates import RERANKER_TEMPLATE; print(RERANKER_TEMPLATE)')\" "
    "(README, \"vLLM server\"), or use template='client' with a server started without --chat-template"
)
_EMBED_MODE_PROBLEM = (
    "the server runs in embed mode: it answers POST /v1/embeddings, which only an embedding model "
    "(`--convert embed` / `--task embed`) does, and its /rerank and /score return cosine similarities of two "
    "embeddings, not P(yes). Restart it with `--runner pooling` (older vLLM: `--task score`) and the "
    "Qwen3-Reranker --hf-overrides (README, \"vLLM server\"), without `--convert embed`."
)

T = TypeVar("T")
Plan = Generator[list[Call], list[Any], T]


def _api_key_from_env() -> SecretStr | None:
    value = os.environ.get(API_KEY_ENV)
    return SecretStr(value) if value else None


class ServerCheck(BaseModel):
    """What :meth:`VLLMScorer.check` found. ``print(result)`` gives a readable report."""

    model_config = ConfigDict(extra="forbid")

    ok: bool = Field(description="True when the server answered and no misconfiguration was found.")
    base_url: str = Field(description="The server root that was checked.")
    healthy: bool | None = Field(None, description="Whether GET /health answered 200 (None: not reached).")
    served_models: list[str] = Field(default_factory=list, description="Model ids listed by GET /v1/models.")
    model: str | None = Field(None, description="The served model this scorer uses.")
    max_model_len: int | None = Field(None, description="The server's context length, from /v1/models.")
    template: Literal["client", "server"] = Field(description="The scorer's template mode.")
    route: Literal["rerank", "score"] = Field(description="The scorer's route.")
    relevant_score: float | None = Field(None, description="Canary score of the document that answers the query.")
    irrelevant_score: float | None = Field(None, description="Canary score of the document that does not.")
    canary_gap: float | None = Field(None, description="relevant_score - irrelevant_score; > 0.9 when healthy.")
    prompt_tokens: int | None = Field(None, description="Prompt tokens the server reported for the canary.")
    expected_prompt_tokens: int | None = Field(
        None, description="Tokens of the two official canary prompts (the server's count should equal it)."
    )
    embed_mode: bool | None = Field(
        None, description="Whether the server answers /v1/embeddings, i.e. pools embeddings instead of P(yes)."
    )
    prompt_ids_match: bool | None = Field(
        None,
        description="template='server': whether the server's template renders the canary prompts to exactly "
        "the official token ids (asked from its /tokenize); None when not compared.",
    )
    warnings: list[str] = Field(default_factory=list, description="Each problem or doubt found, in words.")
    error: str | None = Field(None, description="The error that stopped the check, if any.")

    @model_validator(mode="before")
    @classmethod
    def _mask_secrets(cls, data: Any) -> Any:
        # A server can echo a request header in any string it sends (a model id, an error message): no
        # report may show one.
        return _secrets.redact_all(data)

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [f"vLLM server {self.base_url}: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        if self.healthy is not None:
            lines.append(f"  health: {'ok' if self.healthy else 'not ok'}")
        if self.served_models:
            context = f", context {self.max_model_len} tokens" if self.max_model_len else ""
            lines.append(f"  model: {self.model} (served: {', '.join(self.served_models)}){context}")
        lines.append(f"  template: {self.template}, route: /v1/{self.route}")
        if self.canary_gap is not None:
            lines.append(
                f"  canary: relevant {self.relevant_score:.4f}, irrelevant {self.irrelevant_score:.4f}, "
                f"gap {self.canary_gap:.4f}"
            )
        if self.prompt_tokens is not None or self.expected_prompt_tokens is not None:
            lines.append(f"  prompt tokens: {self.prompt_tokens} (official prompt: {self.expected_prompt_tokens})")
        if self.prompt_ids_match is not None:
            lines.append(f"  template token ids: {'official' if self.prompt_ids_match else 'NOT the official ones'}")
        if self.embed_mode:
            lines.append("  embed mode: yes (the server answers /v1/embeddings)")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


class _State:
    """A scorer's mutable runtime state (never part of its settings, repr or serialization)."""

    __slots__ = ("client", "aclient", "aclient_loop", "local_tokenizer", "context", "context_known",
                 "fixed_counts", "retry_cache", "lock")

    def __init__(self) -> None:
        self.client: Any = None
        self.aclient: Any = None
        self.aclient_loop: Any = None  # weakref to the event loop `aclient` belongs to
        self.local_tokenizer: Any = None
        self.context: int | None = None
        self.context_known = False
        self.fixed_counts: tuple[int, int, int] | None = None
        self.retry_cache: Any = None
        self.lock = threading.Lock()


class VLLMScorer(BaseModel):
    """Scores (query, document) pairs with a Qwen3-Reranker served by vLLM (``/v1/rerank`` or ``/v1/score``).

    Returns the same numbers as :class:`~qwen3_rerank_integrations.LocalScorer` on the same model, whichever
    vLLM generation the server is. Use it as a context manager, or call :meth:`close`/:meth:`aclose`.

    Example:
        >>> with VLLMScorer("http://localhost:8000") as scorer:   # started without --chat-template
        ...     scorer.score("what is the capital of China?", ["Beijing is the capital.", "Gravity pulls."])
        [0.99..., 0.00...]
    """

    # hide_input_in_errors: a rejected value may be a secret (a header value, a URL with credentials).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True, hide_input_in_errors=True
    )

    base_url: str = Field(
        description="The server root, e.g. 'http://localhost:8000' (a trailing '/v1' is accepted and dropped). "
        "Credentials in it ('http://user:password@host') are moved to basic_auth, so the URL never shows them."
    )
    model: str | None = Field(
        None, description="Served model name to send; None lets the server use the one it serves."
    )
    api_key: SecretStr | None = Field(
        default_factory=_api_key_from_env,
        description=f"Bearer key for a server started with --api-key; defaults to ${API_KEY_ENV}. Never logged.",
    )
    basic_auth: SecretStr | None = Field(
        None,
        description="'user:password' for HTTP Basic auth (a proxy in front of vLLM); set from base_url's "
        "'user:password@' when it has one. Like api_key, never shown; it cannot be combined with api_key "
        f"(both would be the Authorization header: pass api_key=None to ignore ${API_KEY_ENV}).",
    )
    template: Literal["client", "server"] = Field(
        "client",
        description="'client': this client renders the official prompt (servers without the reranker "
        "--chat-template: older vLLM, vllm-ascend). 'server': send raw text and `instruction` to a server "
        "started with --chat-template qwen3_reranker.jinja.",
    )
    route: Literal["rerank", "score"] = Field(
        "rerank", description="'rerank' calls /v1/rerank; 'score' calls /v1/score (text_1/text_2); same scores."
    )
    instruction: str | None = Field(
        None, description="Default task instruction; None means the model card's web-search instruction."
    )
    timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds one HTTP request may take in all, from connecting to the answer's last byte (a "
        "server sending a byte at a time cannot stretch it); each retry gets its own. Waiting for a free "
        "connection of the pool does not count.",
    )
    max_response_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Most bytes of one answer once decompressed (a request carrying big documents may get 8x "
        "its own size, since rerank answers echo the documents and /tokenize lists their tokens); past it, "
        "ResponseTooLargeError. Bounds memory against a runaway server or a compression bomb.",
    )
    max_retries: int = Field(
        3, ge=0, description="Retries of connect errors, timeouts, 429, 502, 503 and 504 (other errors: none)."
    )
    backoff: float = Field(
        0.5, ge=0, description="First retry wait in seconds; doubles each retry, plus jitter. Retry-After wins."
    )
    batch_size: int = Field(32, gt=0, description="Most documents per request.")
    max_concurrency: int = Field(8, gt=0, description="Most requests in flight at once for one call.")
    max_length: int | None = Field(
        None,
        gt=0,
        description="Most tokens per prompt (prefix and suffix included); longer documents lose their tail. "
        "None: the server's max_model_len (asked once from /v1/models).",
    )
    tokenizer: Any = Field(
        None,
        repr=False,
        description="Optional local tokenizer (a path, a hub id, or a transformers tokenizer) to count and cut "
        "long documents; None uses the server's /tokenize and /detokenize.",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        repr=False,
        description="Extra HTTP headers sent with every request. Their values are kept as secrets: never in a "
        "repr, dump, log or error.",
    )
    verify: bool | str = Field(
        True, description="TLS verification: True (system CAs), a CA bundle path, or False (not recommended)."
    )

    # Clients, caches and their lock in one plain object: pydantic's private-attribute lookup is slow enough
    # to show in the per-request overhead.
    _state: _State = PrivateAttr(default_factory=lambda: _State())

    def __init__(self, base_url: str, /, **data: Any) -> None:
        # Credentials in the URL become basic_auth here, before validation, so that the URL can be shown
        # anywhere (repr, errors, httpx's request log) and httpx does not quietly send them instead of api_key.
        if isinstance(base_url, str):
            base_url, credentials = protocol.split_credentials(base_url.strip())
            if credentials is not None:
                if data.get("basic_auth") is not None:
                    raise ValueError("base_url has user:password@ and basic_auth is given too: give them once")
                _secrets.register_basic_auth(*credentials)
                data["basic_auth"] = SecretStr(":".join(credentials))
        super().__init__(base_url=base_url, **data)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        url = protocol.normalize_base_url(value)
        if protocol.split_credentials(url)[1] is not None:  # assigned later, or model_validate()
            raise ValueError("base_url must not hold user:password@ here: set basic_auth='user:password'")
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            raise ValueError(
                f"base_url must be an http:// or https:// URL such as 'http://localhost:8000', got {value!r}"
            )
        return url

    @field_validator("basic_auth")
    @classmethod
    def _check_basic_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError("basic_auth must be 'user:password' (the password may be empty: 'user:')")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> VLLMScorer:
        """One source of the Authorization header, and every secret registered for masking."""
        sources = []
        if self.api_key is not None:
            from_env = "api_key" not in self.model_fields_set
            sources.append(f"api_key (from ${API_KEY_ENV})" if from_env else "api_key")
        if self.basic_auth is not None:
            sources.append("basic_auth (user:password@ in base_url)")
        if any(name.lower() == "authorization" for name in self.headers):
            sources.append("headers['Authorization']")
        if len(sources) > 1:
            raise ValueError(
                f"{' and '.join(sources)} would each set the Authorization header: give one "
                f"(api_key=None ignores ${API_KEY_ENV})"
            )
        self._register_secrets()
        return self

    # ----------------------------------------------------------------------------------------- public API
    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]:
        """P("yes") for each document against ``query``, in input order.

        Documents whose prompt would exceed the context (``max_length``, else the server's ``max_model_len``)
        are cut at their tail to fit, the suffix kept, as the official method cuts them. Only a document that
        might be too long (more UTF-8 bytes than the context has tokens) is counted, with ``tokenizer`` if
        given, else the server's ``/tokenize``. When the official cut falls inside a character that spans
        several byte-level tokens, the cut moves back to that character's start (up to 3 tokens), since text
        cannot carry half a character; that one score then differs slightly from the official one.

        Raises:
            TypeError, ValueError: bad arguments (before any network work); ValueError also when the query
                and instruction alone do not fit the context.
            RemoteError subclasses: the server could not be reached, refused the request, or answered
                something that is not a complete, valid result.
        """
        docs = validate_inputs(query, documents, instruction)
        if not docs:
            return []
        return self._run(self._score_plan(query, docs, instruction))

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async twin of :meth:`score` (``httpx.AsyncClient``; never blocks the event loop)."""
        docs = validate_inputs(query, documents, instruction)
        if not docs:
            return []
        return await self._arun(self._score_plan(query, docs, instruction))

    def check(self, *, min_gap: float = 0.5) -> ServerCheck:
        """Check the server: ``/health``, ``/v1/models`` (served name, context) and a canary pair.

        Warns (and sets ``ok=False``) on the known misconfigurations, each found by a sign that does not
        depend on the model's weights:

        - embed mode (``--convert embed``): the server answers ``POST /v1/embeddings``;
        - no template with ``template="server"``, or a double template with ``template="client"``: the
          server's prompt-token count for the canary differs from the official prompts';
        - a template that renders another prompt with ``template="server"`` (vLLM's published
          ``qwen3_reranker.jinja`` ends ``</think>\\n``, not ``</think>\\n\\n``: same count, other ids): the
          token ids the server's ``/tokenize`` renders for the canary messages differ from the official ids;
        - a served model other than ``model``; a server that ignores ``instruction``;
        - a canary gap (relevant minus irrelevant score) under ``min_gap``: this one needs real weights; pass
          ``min_gap=-1`` to switch it off (a test model with random weights).

        Never raises for server faults: they land in ``error``.
        """
        state = _CheckState(self)
        try:
            self._run(self._check_plan(state, min_gap))
        except RerankError as exc:
            state.error = str(exc)
        return state.result()

    async def acheck(self, *, min_gap: float = 0.5) -> ServerCheck:
        """Async twin of :meth:`check`."""
        state = _CheckState(self)
        try:
            await self._arun(self._check_plan(state, min_gap))
        except RerankError as exc:
            state.error = str(exc)
        return state.result()

    def close(self) -> None:
        """Close the sync HTTP client (the async one is closed by :meth:`aclose`)."""
        state = self._state
        client, state.client = state.client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close both HTTP clients."""
        state = self._state
        client, state.aclient = state.aclient, None
        if client is not None:
            await client.aclose()
        self.close()

    def __enter__(self) -> VLLMScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> VLLMScorer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------------------------- plans
    def _score_plan(self, query: str, docs: list[str], instruction: str | None) -> Plan[list[float]]:
        instr = instruction or self.instruction or DEFAULT_INSTRUCTION
        docs = yield from self._fit_plan(query, docs, instr)
        batches = [docs[i : i + self.batch_size] for i in range(0, len(docs), self.batch_size)]
        bodies = yield [self._scoring_call(query, batch, instr) for batch in batches]
        scores: list[float] = []
        for batch, body in zip(batches, bodies):
            scores.extend(protocol.parse_scores(body, len(batch), self.route))
        return scores

    def _scoring_call(self, query: str, documents: Sequence[str], instruction: str) -> Call:
        if self.template == "client":
            query, documents, sent_instruction = (
                query_side(query, instruction), [document_side(d) for d in documents], None
            )
        else:  # the server's template parses control tokens in what it renders: send the texts escaped
            query, documents = escape_control_tokens(query), [escape_control_tokens(d) for d in documents]
            sent_instruction = escape_control_tokens(instruction)
        build = protocol.rerank_payload if self.route == "rerank" else protocol.score_payload
        path = protocol.RERANK_PATH if self.route == "rerank" else protocol.SCORE_PATH
        return Call("POST", path, build(query, documents, model=self.model, instruction=sent_instruction))

    def _fit_plan(self, query: str, docs: list[str], instruction: str) -> Plan[list[str]]:
        """Cut documents whose prompt exceeds the context, the official way (token-level, from the tail).

        Token counting costs requests, so it is done only for documents that may not fit: first by UTF-8 bytes
        alone, then with the prefix's and suffix's real token counts (learned once), then by tokenizing.
        """
        limit = yield from self._limit_plan()
        if limit is None:
            return docs
        head = query_side(query, instruction)
        tag_bytes = len(_DOCUMENT_TAG)  # ASCII, and it ends in a space, which composes with nothing under NFC
        bounds = [tag_bytes + protocol.max_tokens_bound(d) for d in docs]
        fixed = protocol.max_tokens_bound(head) + protocol.max_tokens_bound(SUFFIX)
        if all(fixed + b <= limit for b in bounds):
            return docs
        prefix_n, suffix_n, tag_n = yield from self._fixed_counts_plan()
        fixed = prefix_n + protocol.max_tokens_bound(query_part(query, instruction)) + suffix_n
        suspects = [i for i, b in enumerate(bounds) if fixed + b > limit]
        if not suspects:
            return docs
        ids = yield from self._tokenize_plan([head] + [document_part(docs[i]) for i in suspects])
        head_n = len(ids[0])
        if head_n + tag_n + suffix_n > limit:
            raise ValueError(
                f"the context of {limit} tokens is too small for this query and instruction: the prompt without "
                f"any document already takes {head_n + tag_n + suffix_n} tokens; shorten the query/instruction"
                + (" or raise max_length" if self.max_length is not None else "")
            )
        keep = limit - head_n - suffix_n  # tokens left for "<Document>: " + text
        over = {i: doc_ids for i, doc_ids in zip(suspects, ids[1:]) if len(doc_ids) > keep}
        if not over:
            return docs
        cut = yield from self._cut_plan(over, keep, tag_n)
        fitted = list(docs)
        for i, text in cut.items():
            fitted[i] = text
        return fitted

    def _fixed_counts_plan(self) -> Plan[tuple[int, int, int]]:
        """Token counts of PREFIX, SUFFIX and the empty document part; asked once, then cached."""
        state = self._state
        if state.fixed_counts is None:
            ids = yield from self._tokenize_plan([PREFIX, SUFFIX, _DOCUMENT_TAG])
            state.fixed_counts = (len(ids[0]), len(ids[1]), len(ids[2]))
        return state.fixed_counts

    def _cut_plan(self, over: dict[int, list[int]], keep: int, tag_n: int) -> Plan[dict[int, str]]:
        """Text for each over-long document whose re-tokenization is its first ``keep`` official tokens.

        Decoding a token prefix and re-tokenizing it usually round-trips; when it does not (a character split
        over tokens decodes to U+FFFD), step back a token at a time. If no step round-trips, take the first
        candidate that fits, else an empty document (which always fits).
        """
        length = {i: keep for i in over}
        cut: dict[int, str] = {}
        fallback: dict[int, str] = {}
        for _ in range(_MAX_CUT_STEPS):
            pending = [i for i in over if i not in cut and length[i] >= tag_n]
            if not pending:
                break
            texts = yield from self._detokenize_plan([over[i][: length[i]] for i in pending])
            candidates = {i: t[len(_DOCUMENT_TAG) :] for i, t in zip(pending, texts) if t.startswith(_DOCUMENT_TAG)}
            checked = list(candidates)
            again = yield from self._tokenize_plan([document_part(candidates[i]) for i in checked])
            for i, ids in zip(checked, again):
                if ids == over[i][: length[i]]:
                    cut[i] = candidates[i]
                    if length[i] < keep:
                        logger.info("document %d: cut %d token(s) early, at a whole character", i, keep - length[i])
                elif len(ids) <= keep:
                    fallback.setdefault(i, candidates[i])
            for i in pending:
                if i not in cut:
                    length[i] -= 1
        for i in over:
            if i not in cut:
                logger.warning("document %d: no tail cut re-tokenizes to the official tokens; sent a shorter cut", i)
                cut[i] = fallback.get(i, "")
        return cut

    def _limit_plan(self) -> Plan[int | None]:
        """The most tokens per prompt: ``max_length``, else the server's context (asked once, then cached)."""
        if self.max_length is not None:
            return self.max_length
        state = self._state
        if not state.context_known:
            (models,) = yield [Call("GET", protocol.MODELS_PATH, tolerate=(RouteNotFoundError,))]
            context = _context_from_models(models, self.model)
            if context is None:  # some servers/proxies hide /v1/models; /tokenize reports it too
                (tokenized,) = yield [self._tokenize_call("a", tolerate=(RouteNotFoundError, BadRequestError))]
                value = tokenized.get("max_model_len") if isinstance(tokenized, dict) else None
                context = protocol.positive_int(value)
            if context is None:
                logger.warning("%s reports no max_model_len; long documents will not be cut", self.base_url)
            state.context, state.context_known = context, True
        return state.context

    def _tokenize_call(self, text: str, tolerate: tuple[type[Exception], ...] = ()) -> Call:
        body: dict[str, Any] = {"prompt": text, "add_special_tokens": False}
        if self.model is not None:
            body["model"] = self.model
        return Call("POST", protocol.TOKENIZE_PATH, body, tolerate)

    def _tokenize_plan(self, texts: list[str]) -> Plan[list[list[int]]]:
        if not texts:
            return []
        tokenizer = self._get_local_tokenizer()
        if tokenizer is not None:
            return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        bodies = yield [self._tokenize_call(t) for t in texts]
        return [_token_ids(body) for body in bodies]

    def _detokenize_plan(self, id_lists: list[list[int]]) -> Plan[list[str]]:
        tokenizer = self._get_local_tokenizer()
        if tokenizer is not None:
            return [
                tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) for ids in id_lists
            ]
        calls = []
        for ids in id_lists:
            body: dict[str, Any] = {"tokens": ids}
            if self.model is not None:
                body["model"] = self.model
            calls.append(Call("POST", protocol.DETOKENIZE_PATH, body))
        bodies = yield calls
        texts = [body.get("prompt") if isinstance(body, dict) else None for body in bodies]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidResponseError(
                f"the server's /detokenize answer has no 'prompt' string: {_secrets.snippet(bodies[0])}"
            )
        return texts  # type: ignore[return-value]

    def _check_plan(self, state: _CheckState, min_gap: float) -> Plan[None]:
        (health,) = yield [Call("GET", protocol.HEALTH_PATH, tolerate=(RemoteError,))]
        if isinstance(health, (ServerConnectionError, ServerTimeoutError)):
            raise health
        state.healthy = not isinstance(health, Exception)
        if not state.healthy:
            state.problem(f"GET /health failed: {health}")
        (models,) = yield [Call("GET", protocol.MODELS_PATH, tolerate=(RemoteError,))]
        if isinstance(models, Exception):
            state.doubt(f"GET /v1/models failed: {models}")
        else:
            state.read_models(models)

        # Embed mode first: its scores are cosine similarities, so nothing below would mean anything. The sign
        # is the route the server registers, which does not depend on the weights (scores do).
        state.embed_mode = yield from self._embed_mode_plan()
        instruction = self.instruction or DEFAULT_INSTRUCTION
        docs = [CANARY_RELEVANT, CANARY_IRRELEVANT]
        if state.embed_mode:
            state.problem(_EMBED_MODE_PROBLEM)
            (body,) = yield [replace(self._scoring_call(CANARY_QUERY, docs, instruction), tolerate=(RemoteError,))]
            with contextlib.suppress(InvalidResponseError):  # the report shows them when they are in [0, 1]
                state.relevant_score, state.irrelevant_score = protocol.parse_scores(body, 2, self.route)
            return

        (body,) = yield [self._scoring_call(CANARY_QUERY, docs, instruction)]
        state.relevant_score, state.irrelevant_score = protocol.parse_scores(body, 2, self.route)
        state.prompt_tokens = protocol.usage_tokens(body)
        state.judge_scores(min_gap)

        try:
            official = yield from self._official_ids_plan(CANARY_QUERY, docs, instruction)
        except RemoteError as exc:
            state.doubt(f"could not count the official prompt's tokens ({exc}); template not verified")
            return
        expected = state.expected_prompt_tokens = sum(map(len, official))
        if self.template == "server" and instruction != DEFAULT_INSTRUCTION and not state.tokens_agree(expected):
            # Maybe the template is right but the server dropped `instruction` and used its default.
            default_ids = yield from self._official_ids_plan(CANARY_QUERY, docs, DEFAULT_INSTRUCTION)
            if state.tokens_agree(sum(map(len, default_ids))):
                state.judge_instruction(state.prompt_tokens, expected)
                return
        if not state.judge_template() or self.template != "server":
            return
        # Equal counts are not equal prompts: a template whose final newline Jinja dropped ends in "\n" (token
        # 198) where the official prompt ends in "\n\n" (token 271), with the same count. Compare the ids.
        rendered = yield from self._rendered_ids_plan(CANARY_QUERY, docs, instruction)
        if isinstance(rendered, RemoteError):
            state.doubt(
                f"the server's /tokenize does not render the score template's messages ({rendered}); only "
                "prompt-token counts were compared, and they miss a one-token difference such as a lost final "
                "newline"
            )
        elif not state.judge_rendered_ids(rendered, official):
            return
        (probe,) = yield [self._scoring_call(CANARY_QUERY, docs[:1], _PROBE_INSTRUCTION)]
        probe_ids = yield from self._official_ids_plan(CANARY_QUERY, docs[:1], _PROBE_INSTRUCTION)
        state.judge_instruction(protocol.usage_tokens(probe), sum(map(len, probe_ids)))

    def _official_ids_plan(self, query: str, docs: list[str], instruction: str) -> Plan[list[list[int]]]:
        """Token ids of the official prompt of each of ``docs`` (tokenized as the server tokenizes)."""
        ids = yield from self._tokenize_plan([query_side(query, instruction)] + [document_side(d) for d in docs])
        return [ids[0] + doc_ids for doc_ids in ids[1:]]

    def _rendered_ids_plan(
        self, query: str, docs: list[str], instruction: str
    ) -> Plan[list[list[int]] | RemoteError]:
        """Token ids the server's score template renders for each (query, document) pair, or the error of a
        server that cannot tell. vLLM's /tokenize renders chat messages with the server's --chat-template and
        ``chat_template_kwargs``, as /rerank and /score do with a "query" and a "document" message and the
        request's ``instruction``; the texts are escaped as :meth:`_scoring_call` sends them."""
        calls = []
        for doc in docs:
            body: dict[str, Any] = {
                "messages": [{"role": "query", "content": escape_control_tokens(query)},
                             {"role": "document", "content": escape_control_tokens(doc)}],
                "chat_template_kwargs": {"instruction": escape_control_tokens(instruction)},
                "add_generation_prompt": False,  # the score path renders without one
                "add_special_tokens": False,
            }
            if self.model is not None:
                body["model"] = self.model
            calls.append(Call("POST", protocol.TOKENIZE_PATH, body, tolerate=(RemoteError,)))
        bodies = yield calls
        for body in bodies:
            if isinstance(body, RemoteError):
                return body
        return [_token_ids(body) for body in bodies]

    def _embed_mode_plan(self) -> Plan[bool]:
        """Whether the server answers ``POST /v1/embeddings`` with embeddings (a reranker answers 404)."""
        body: dict[str, Any] = {"input": CANARY_QUERY}
        if self.model is not None:
            body["model"] = self.model
        (answer,) = yield [Call("POST", _EMBEDDINGS_PATH, body, tolerate=(RemoteError,))]
        data = answer.get("data") if isinstance(answer, dict) else None
        first = data[0] if isinstance(data, list) and data else None
        return isinstance(first, dict) and isinstance(first.get("embedding"), list)

    # ----------------------------------------------------------------------------------------- sync driver
    def _run(self, plan: Plan[T]) -> T:
        steps = _Steps(plan)
        outcome: list[Any] | RerankError = _START
        with contextlib.closing(plan):
            while (calls := steps.advance(outcome)) is not None:
                try:
                    outcome = self._send_all(calls)
                except RerankError as exc:  # the plan may handle it; if not, it re-raises from the plan's frame
                    outcome = exc
        return steps.value

    def _send_all(self, calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            return [self._send(calls[0])]
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(calls)), thread_name_prefix="vllm-scorer"
        )
        futures = [pool.submit(self._send, call) for call in calls]
        try:
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            return [f.result() for f in futures]
        finally:
            # On a failure, requests not yet started are dropped; those in flight finish in the background.
            pool.shutdown(wait=False, cancel_futures=True)

    def _send(self, call: Call) -> Any:
        try:
            try:
                return self._send_once(call)
            except TransientError as first:
                if not self.max_retries:
                    raise
                from tenacity import Retrying

                return Retrying(**self._retry_options())(_replay(first, self._send_once, call))
        except TransientError as exc:
            return _settle(call, exc.error)
        except RemoteError as exc:
            return _settle(call, exc)

    def _send_once(self, call: Call) -> Any:
        import httpx

        client = self._sync_client()
        # The deadline bounds the whole request, body included (see _http); the reader bounds the body's size.
        with _http.Deadline(self.timeout) as deadline:
            try:
                with client.stream(call.method, call.path, json=call.json) as response:
                    reader = self._body_reader(call, response, deadline)
                    reader.read(response.iter_bytes())
            except httpx.RequestError as exc:
                raise self._transport_error(call, exc) from exc
        return self._read(call, response, reader)

    def _sync_client(self) -> httpx.Client:
        state = self._state
        if state.client is not None:
            return state.client
        with state.lock:
            if state.client is None:
                import httpx

                client = httpx.Client(**self._client_options())
                _http.bound_client(client, is_async=False)
                state.client = client
            return state.client

    # ----------------------------------------------------------------------------------------- async driver
    async def _arun(self, plan: Plan[T]) -> T:
        steps = _Steps(plan)
        outcome: list[Any] | RerankError = _START
        with contextlib.closing(plan):
            while (calls := steps.advance(outcome)) is not None:
                try:
                    outcome = await self._asend_all(calls)
                except RerankError as exc:
                    outcome = exc
        return steps.value

    async def _asend_all(self, calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            return [await self._asend(calls[0])]
        slots = asyncio.Semaphore(self.max_concurrency)

        async def send(call: Call) -> Any:
            async with slots:
                return await self._asend(call)

        tasks = [asyncio.ensure_future(send(call)) for call in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _asend(self, call: Call) -> Any:
        try:
            try:
                return await self._asend_once(call)
            except TransientError as first:
                if not self.max_retries:
                    raise
                from tenacity import AsyncRetrying

                return await AsyncRetrying(**self._retry_options())(_replay(first, self._asend_once, call))
        except TransientError as exc:
            return _settle(call, exc.error)
        except RemoteError as exc:
            return _settle(call, exc)

    async def _asend_once(self, call: Call) -> Any:
        import httpx

        client = self._async_client()
        with _http.Deadline(self.timeout) as deadline:
            try:
                async with client.stream(call.method, call.path, json=call.json) as response:
                    reader = self._body_reader(call, response, deadline)
                    await reader.aread(response.aiter_bytes())
            except httpx.RequestError as exc:
                raise self._transport_error(call, exc) from exc
        return self._read(call, response, reader)

    def _async_client(self) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to the loop that opened them; a new loop (asyncio.run per call,
        # as some frameworks do) gets a new client.
        loop = asyncio.get_running_loop()
        state = self._state
        with state.lock:
            if state.aclient is None or state.aclient_loop is None or state.aclient_loop() is not loop:
                import httpx

                state.aclient = httpx.AsyncClient(**self._client_options())
                _http.bound_client(state.aclient, is_async=True)
                state.aclient_loop = weakref.ref(loop)
            return state.aclient

    # ----------------------------------------------------------------------------------------- shared HTTP
    def _client_options(self) -> dict[str, Any]:
        import httpx

        self._register_secrets()  # again: model_copy(update=...) skips the validators that register them
        headers = {"User-Agent": "qwen3-rerank-integrations"}
        headers.update((name, value.get_secret_value()) for name, value in self.headers.items())
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        elif self.basic_auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(self.basic_auth.get_secret_value().encode()).decode()
        verify: bool | ssl.SSLContext = self.verify if isinstance(self.verify, bool) else ssl.create_default_context(
            cafile=self.verify
        )
        return {
            "base_url": self.base_url,
            "headers": headers,
            "verify": verify,
            # pool=None: a request waiting for a free connection is not a timeout; the server's time is. Each
            # socket operation is further cut to the request's deadline (_http.bound_client).
            "timeout": httpx.Timeout(self.timeout, pool=None),
            "limits": httpx.Limits(
                max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
            ),
            "follow_redirects": False,
        }

    def _retry_options(self) -> dict[str, Any]:
        """tenacity settings; built once per (max_retries, backoff), since they are needed on every request."""
        state, key = self._state, (self.max_retries, self.backoff)
        if state.retry_cache is None or state.retry_cache[0] != key:
            state.retry_cache = (key, self._build_retry_options())
        return state.retry_cache[1]

    def _build_retry_options(self) -> dict[str, Any]:
        from tenacity import retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

        backoff = wait_exponential_jitter(multiplier=self.backoff, max=max(self.backoff, 30.0), jitter=self.backoff)

        def wait(state: Any) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, TransientError) and exc.retry_after is not None:
                return exc.retry_after
            return float(backoff(state))

        def log_retry(state: Any) -> None:
            exc = state.outcome.exception() if state.outcome else None
            logger.info("retrying after %s (attempt %d of %d)", exc, state.attempt_number, self.max_retries + 1)

        return {
            "stop": stop_after_attempt(self.max_retries + 1),
            "wait": wait,
            "retry": retry_if_exception_type(TransientError),
            "before_sleep": log_retry,
            "reraise": True,
        }

    def _register_secrets(self) -> None:
        """Have every error, report and log record of this process mask this scorer's secrets."""
        _secrets.register(*(value.get_secret_value() for value in self.headers.values()))
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            _secrets.register(key, f"Bearer {key}")  # the header's form is masked even for a short key
        if self.basic_auth is not None:
            _secrets.register_basic_auth(*self.basic_auth.get_secret_value().split(":", 1))

    def _body_reader(self, call: Call, response: httpx.Response, deadline: _http.Deadline) -> _http.BodyReader:
        """A reader for this response's body: up to the size cap for a success, the first bytes of an error."""
        success = 200 <= response.status_code < 300
        sent = int(response.request.headers.get("content-length") or 0)
        limit = _http.response_limit(self.max_response_bytes, sent) if success else _http.ERROR_BODY_BYTES
        reader = _http.BodyReader(
            limit, deadline, partial=not success, where=f"{call.method} {self.base_url}{call.path}",
            setting=self.max_response_bytes,
        )
        reader.check_declared(response.headers)
        return reader

    def _read(self, call: Call, response: httpx.Response, reader: _http.BodyReader) -> Any:
        return protocol.read_response(
            response.status_code, response.headers, reader.data, method=call.method, url=self.base_url + call.path
        )

    def _transport_error(self, call: Call, exc: Exception) -> Exception:
        """The package's error for an httpx failure: transient (retried) unless the body could not be decoded."""
        import httpx

        where = f"{call.method} {self.base_url}{call.path}"
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.DecodingError):
            return InvalidResponseError(f"{where} answered with a body that could not be decompressed: {detail}")
        if isinstance(exc, httpx.TimeoutException):
            return TransientError(ServerTimeoutError(
                f"{where} timed out after {self.timeout:g}s (timeout= bounds the whole request, from connecting "
                f"to the answer's last byte; {detail})"
            ))
        return TransientError(ServerConnectionError(f"could not reach the vLLM server: {where} failed: {detail}"))

    def _get_local_tokenizer(self) -> Any:
        if self.tokenizer is None:
            return None
        if not isinstance(self.tokenizer, str):
            return self.tokenizer
        state = self._state
        with state.lock:
            if state.local_tokenizer is None:
                from transformers import AutoTokenizer

                try:
                    state.local_tokenizer = AutoTokenizer.from_pretrained(self.tokenizer, trust_remote_code=False)
                except Exception as exc:  # hub/IO/parse errors all mean "not loadable"
                    raise RerankError(f"could not load tokenizer={self.tokenizer!r}: {exc}") from exc
            return state.local_tokenizer

    # ----------------------------------------------------------------------------------------- score cache
    def cache_identity(self) -> dict[str, Any]:
        """What decides this scorer's scores, for score-cache keys (:mod:`~qwen3_rerank_integrations.cache`):
        the server (``base_url`` without credentials or query), ``model``, ``template``, ``route`` and the
        prompt limit in force (``max_length``, else the server's context, asked once). Never a secret.
        """
        return self._run(self._identity_plan())

    async def acache_identity(self) -> dict[str, Any]:
        """Async twin of :meth:`cache_identity`."""
        return await self._arun(self._identity_plan())

    def _identity_plan(self) -> Plan[dict[str, Any]]:
        from .cache import public_url

        context = yield from self._limit_plan()
        return {
            "backend": "vllm",
            "base_url": public_url(self.base_url),
            "model": self.model,
            "template": self.template,
            "route": self.route,
            "max_length": self.max_length,
            "context": context,
        }


class _CheckState:
    """What check() has learned so far; turned into a ServerCheck even when a step fails."""

    def __init__(self, scorer: VLLMScorer) -> None:
        self.scorer = scorer
        self.healthy: bool | None = None
        self.served_models: list[str] = []
        self.model: str | None = scorer.model
        self.max_model_len: int | None = None
        self.relevant_score: float | None = None
        self.irrelevant_score: float | None = None
        self.prompt_tokens: int | None = None
        self.expected_prompt_tokens: int | None = None
        self.embed_mode: bool | None = None
        self.prompt_ids_match: bool | None = None
        self.warnings: list[str] = []
        self.problems = 0
        self.error: str | None = None

    def problem(self, text: str) -> None:
        self.warnings.append(text)
        self.problems += 1

    def doubt(self, text: str) -> None:
        self.warnings.append(text)

    def read_models(self, body: Any) -> None:
        entries = body.get("data") if isinstance(body, dict) else None
        entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        self.served_models = [str(e.get("id")) for e in entries]
        if self.scorer.model is not None and self.scorer.model not in self.served_models:
            self.problem(f"model={self.scorer.model!r} is not served here; the server lists {self.served_models}")
        elif self.model is None and self.served_models:
            self.model = self.served_models[0]
        self.max_model_len = _context_from_models(body, self.scorer.model)

    def judge_scores(self, min_gap: float) -> None:
        relevant, irrelevant = self.relevant_score, self.irrelevant_score
        assert relevant is not None and irrelevant is not None
        gap = relevant - irrelevant
        # Embed mode is found by its route, not here: on scores alone it depends on the weights.
        if gap < min_gap:
            self.problem(
                f"the canary gap is {gap:.3f} (relevant {relevant:.3f}, irrelevant {irrelevant:.3f}); a working "
                "Qwen3-Reranker gives > 0.9. Check the served model, its hf_overrides and the template setting."
            )

    def tokens_agree(self, expected: int) -> bool:
        """Whether the server's count of the two canary prompts is exactly ``expected``."""
        return self.prompt_tokens == expected

    def judge_template(self) -> bool:
        """Compare the server's prompt-token count with the official prompt's; True when they agree."""
        observed, expected = self.prompt_tokens, self.expected_prompt_tokens
        if observed is None or expected is None:
            self.doubt("the server reports no token usage; the prompt template could not be verified")
            return False
        if self.tokens_agree(expected):
            return True
        per_doc = (observed - expected) / 2
        if self.scorer.template == "server" and per_doc < 0:
            self.problem(
                f"template='server' but the server scored {observed} prompt tokens where the official prompts have "
                f"{expected}: it renders no reranker template (it joins the raw query and document). Fix: "
                + _TEMPLATE_FIX + "."
            )
        elif self.scorer.template == "client" and per_doc > 0:
            self.problem(
                f"template='client' but the server scored {observed} prompt tokens where the official prompts have "
                f"{expected}: it applies its own template on top of the client's (a double template). Use "
                "template='server' with this server."
            )
        else:
            self.problem(
                f"the server scored {observed} prompt tokens where the official prompts have {expected}: its "
                "prompt differs from the official one. Fix: " + _TEMPLATE_FIX + "."
            )
        return False

    def judge_rendered_ids(self, rendered: list[list[int]], official: list[list[int]]) -> bool:
        """Compare the server's rendering of each canary prompt with the official token ids; True when equal."""
        self.prompt_ids_match = rendered == official
        for got, want in zip(rendered, official):
            if got == want:
                continue
            if got[:-1] == want[:-1] and want[-1:] == [_DOUBLE_NEWLINE_ID] and got[-1:] == [_NEWLINE_ID]:
                self.problem(
                    "the server's --chat-template renders the prompt's end as `</think>\\n` (token 198) where the "
                    "official prompt ends `</think>\\n\\n` (token 271); same token count, another prompt, and "
                    "every score moves. Jinja drops a template's final newline, so a template that ends with the "
                    "official suffix (as vLLM's published examples/pooling/score/template/qwen3_reranker.jinja "
                    "does) loses one. Fix: " + _TEMPLATE_FIX + "."
                )
            else:
                at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                self.problem(
                    f"the server's --chat-template renders a prompt that differs from the official one at token "
                    f"{at} (server {got[at:at + 4]}, official {want[at:at + 4]}; {len(got)} vs {len(want)} "
                    "tokens). Fix: " + _TEMPLATE_FIX + "."
                )
            return False
        return True

    def judge_instruction(self, observed: int | None, expected: int) -> None:
        if observed is None or observed == expected:
            return
        text = (
            "the server ignores the request's `instruction` (a vLLM without instruction support): every request "
            "is scored with the template's default instruction"
        )
        if self.scorer.instruction not in (None, DEFAULT_INSTRUCTION):
            self.problem(text + f", not instruction={self.scorer.instruction!r}; use template='client'.")
        else:
            self.doubt(text + "; per-call instructions need template='client'.")

    def result(self) -> ServerCheck:
        gap = None
        if self.relevant_score is not None and self.irrelevant_score is not None:
            gap = self.relevant_score - self.irrelevant_score
        return ServerCheck(
            ok=self.error is None and self.problems == 0,
            base_url=self.scorer.base_url,
            healthy=self.healthy,
            served_models=self.served_models,
            model=self.model,
            max_model_len=self.max_model_len,
            template=self.scorer.template,
            route=self.scorer.route,
            relevant_score=self.relevant_score,
            irrelevant_score=self.irrelevant_score,
            canary_gap=gap,
            prompt_tokens=self.prompt_tokens,
            expected_prompt_tokens=self.expected_prompt_tokens,
            embed_mode=self.embed_mode,
            prompt_ids_match=self.prompt_ids_match,
            warnings=self.warnings,
            error=self.error,
        )


_START: list[Any] = []  # the outcome that starts a plan (compared by identity)


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


def _replay(first: TransientError, send: Callable[[Call], Any], call: Call) -> Callable[[], Any]:
    """An attempt function for tenacity whose first attempt re-raises ``first`` (async when ``send`` is).

    The first request goes out before tenacity is involved (its bookkeeping costs tens of microseconds a
    request, most of this client's overhead); on a transient failure, tenacity takes over and sees that
    failure as its attempt 1, so waits (Retry-After included) and the attempt limit are exactly its own.
    """
    pending = [first]

    def attempt() -> Any:
        if pending:
            raise pending.pop()
        return send(call)

    async def async_attempt() -> Any:
        return await attempt()

    return async_attempt if inspect.iscoroutinefunction(send) else attempt


def _settle(call: Call, error: RemoteError) -> RemoteError:
    """Hand a tolerated error back as a value; raise any other."""
    if isinstance(error, call.tolerate):
        return error
    raise error


def _context_from_models(body: Any, model: str | None) -> int | None:
    """``max_model_len`` of ``model`` (or of the first served model) from a /v1/models body."""
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, dict) and (model is None or entry.get("id") == model):
            value = entry.get("max_model_len")
            return protocol.positive_int(value)
    return None


def _token_ids(body: Any) -> list[int]:
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list) or not all(protocol.is_int(t) for t in tokens):
        raise InvalidResponseError(
            f"the server's /tokenize answer has no 'tokens' list of ints: {_secrets.snippet(body)}"
        )
    return tokens
