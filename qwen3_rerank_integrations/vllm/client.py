"""Scoring against a vLLM server, or several replicas of one: :class:`VLLMScorer`.

vLLM serves the original Qwen3-Reranker checkpoint as a one-row classifier (``W[yes] − W[no]``, sigmoid), so its
``relevance_score`` is the official P("yes") — provided the prompt it scores is the official one:

- client mode (older vLLM, vllm-ascend, any server without the reranker ``--chat-template``): vLLM
  concatenates the query's and each document's tokens as they are, so this client sends
  ``PREFIX + <Instruct>/<Query> part`` as the query and ``<Document>: text + SUFFIX`` as each document. Those two
  pieces tokenize to exactly the official ids (every seam falls on a pre-token boundary or a special token).
- server mode (started with the reranker ``--chat-template``): the server renders the official prompt itself;
  the client sends raw text and ``instruction``.

``template="auto"`` (the default) finds out which one the server needs, once per scorer, before its first
request (:class:`~qwen3_rerank_integrations.vllm.check.Survey`); ``"client"``/``"server"`` say it, and are
checked the same way: a server that contradicts them raises instead of scoring wrong.

Long documents are cut at their tail to fit the context, the suffix kept, exactly as the official method cuts
them (see :meth:`VLLMScorer.score`). Long lists are split into ``batch_size`` requests sent concurrently, spread
over the replicas when ``base_url`` lists several.

Each operation is written once as a *plan*, a generator that yields lists of HTTP calls and receives their JSON
bodies, and run by the sync or the async driver. The parts live in their own modules: HTTP, retries and replicas
in :mod:`.transport`, fitting long documents in :mod:`.fitting`, the server check in
:mod:`.check`, the wire protocol in :mod:`.protocol`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from .. import _secrets
from ..base import ScorerBase
from ..errors import RerankError
from ..extras import require
from ..prompt import DEFAULT_INSTRUCTION
from . import check as _check_module
from . import protocol
from .check import Checker, CheckState, ServerCheck, Survey, SurveyCache
from .fitting import FitCache, Fitting
from .launch import API_KEY_ENV
from .transport import Connections, Driver, Plan

__all__ = ["VLLMScorer"]


def _has_credentials(base_url: object) -> bool:
    urls = base_url if isinstance(base_url, (list, tuple)) else [base_url]
    return any(isinstance(url, str) and protocol.split_credentials(url.strip())[1] is not None for url in urls)


def _api_key_from_env() -> SecretStr | None:
    value = os.environ.get(API_KEY_ENV)
    return SecretStr(value) if value else None


class _State:
    """A scorer's mutable runtime state (never part of its settings, repr or serialization): everything it has
    loaded or learned, in one place, so that dropping it starts the scorer afresh."""

    __slots__ = ("connections", "fitting", "survey")

    def __init__(self) -> None:
        self.connections = Connections()  # HTTP clients and the replica pool
        self.fitting = FitCache()  # token counts learned from the server, the local tokenizer
        self.survey = SurveyCache()  # each replica's context and template mode


class VLLMScorer(ScorerBase):
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

    base_url: str | list[str] = Field(
        description="The server root, e.g. 'http://localhost:8000' (a trailing '/v1' is accepted and dropped), or "
        "a list of replicas' roots serving the same model: each call's requests are then spread over them and a "
        "failed request goes to another (docs/replicas.md). Credentials in it ('http://user:password@host') "
        "are moved to basic_auth, so the URL never shows them; every replica gets the same Authorization header, "
        "so a list must give the same credentials in every entry, or none."
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
    template: protocol.TemplateSetting = Field(
        "auto",
        description="Who renders the official prompt. 'auto': find out from the server, once per scorer (its "
        "/tokenize rendering of a canary pair, and where that cannot tell, one scored canary pair). 'client': this "
        "client renders it (servers without the reranker --chat-template: older vLLM, vllm-ascend). 'server': send "
        "raw text and `instruction` to a server started with the reranker --chat-template. A server that "
        "contradicts 'client' or 'server' raises RerankError naming the fix.",
    )
    route: Literal["rerank", "score"] = Field(
        "rerank", description="'rerank' calls /v1/rerank; 'score' calls /v1/score (text_1/text_2); same scores."
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
    max_concurrency: int = Field(
        8, gt=0, description="Most requests in flight at once for one call, over all replicas together."
    )
    deadline: float | None = Field(
        None,
        gt=0,
        description="Seconds one call (score, ascore, check, cache_identity) may take in all, retries, backoff "
        "and failover included; past it, ServerTimeoutError. None: no bound but each request's timeout "
        "(worst case: docs/vllm.md, \"Time limits\").",
    )
    replica_cooldown: float = Field(
        1.0,
        gt=0,
        description="Replicas: seconds a replica is set aside after a connect error, timeout, 429 or 5xx (its "
        "request goes at once to another); doubles with each such fault in a row, up to 30 s. Then one trial "
        "request tells whether it is back.",
    )
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
    transport: Any = Field(
        None,
        repr=False,
        exclude=True,
        description="An httpx transport to send every request through instead of the network, e.g. "
        "httpx.MockTransport(handler) in tests (it serves score() and ascore()); None: the network. The "
        "request time bound is then checked between body chunks only.",
    )

    # Clients, pool and caches in one plain object: pydantic's private-attribute lookup is slow enough to show
    # in the per-request overhead.
    _state: _State = PrivateAttr(default_factory=lambda: _State())

    def __init__(self, base_url: str | Sequence[str], /, **data: Any) -> None:
        require("VLLMScorer")  # httpx: one line naming the remote extra, not a ModuleNotFoundError at first use
        # Credentials in a URL become basic_auth here, before validation, so that the URL can be shown anywhere
        # (repr, errors, httpx's request log) and httpx does not quietly send them instead of api_key. Every
        # replica gets the same Authorization header, so a list must carry the same credentials in every entry
        # or in none: one entry's credentials must never reach another replica.
        several = isinstance(base_url, (list, tuple))
        urls = list(base_url) if several else [base_url]
        found: tuple[str, str] | None = None
        with_credentials: list[int] = []
        for i, url in enumerate(urls):
            if not isinstance(url, str):
                continue  # the validator names the wrong type
            urls[i], credentials = protocol.split_credentials(url.strip())
            if credentials is None:
                continue
            name = f"base_url[{i}]" if several else "base_url"
            _secrets.register_basic_auth(*credentials)
            if data.get("basic_auth") is not None:
                raise ValueError(f"{name} has user:password@ and basic_auth is given too: give them once")
            if found is not None and credentials != found:
                raise ValueError(f"{name} has other user:password@ than an earlier replica: every replica gets "
                                 "the same Authorization header, so give one set of credentials (basic_auth=)")
            found = credentials
            with_credentials.append(i)
        if found is not None and several:
            without = [i for i, url in enumerate(urls) if isinstance(url, str) and i not in with_credentials]
            if without:
                raise ValueError(
                    f"base_url[{with_credentials[0]}] has user:password@ but base_url[{without[0]}] has none: every "
                    "replica gets the same Authorization header, so one entry's credentials would go to the "
                    "others. Give the same user:password@ in every entry, or none and basic_auth='user:password' "
                    "for all."
                )
        if found is not None:
            data["basic_auth"] = SecretStr(":".join(found))
        super().__init__(base_url=urls if several else urls[0], **data)

    @field_validator("base_url", mode="before")
    @classmethod
    def _check_base_url(cls, value: Any) -> str | list[str]:
        if isinstance(value, str):
            return cls._check_one_url(value, "base_url")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"base_url must be a URL string or a list of them, got {type(value).__name__}")
        if not value:
            raise ValueError("base_url is an empty list: name at least one server")
        urls: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"base_url[{i}] must be a URL string, got {type(item).__name__}")
            url = cls._check_one_url(item, f"base_url[{i}]")
            if url in urls:
                raise ValueError(f"base_url[{i}] repeats base_url[{urls.index(url)}] ({url!r}): list each replica once")
            urls.append(url)
        return urls

    @staticmethod
    def _check_one_url(value: str, name: str) -> str:
        url = protocol.normalize_base_url(value)
        if protocol.split_credentials(url)[1] is not None:  # assigned later, or model_validate()
            raise ValueError(f"{name} must not hold user:password@ here: set basic_auth='user:password'")
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            raise ValueError(
                f"{name} must be an http:// or https:// URL such as 'http://localhost:8000', got {value!r}"
            )
        return url

    @property
    def base_urls(self) -> list[str]:
        """The server roots, always as a list (one for a single server)."""
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

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

    # ----------------------------------------------------------------------------------------- copies and pickles
    # ScorerBase's rule: a changed setting (but instruction, cache) drops _state (clients, replica pool, learned
    # context), so the next call connects and learns again; a copy or an unpickled scorer gets a fresh _state.
    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> VLLMScorer:
        """A copy with its own HTTP clients and learned state. ``update`` is validated, and a ``base_url`` in it
        is taken as the constructor takes it: its ``user:password@`` moves to ``basic_auth`` (replacing the
        copied one), so no repr, dump or error shows it."""
        if update and "base_url" in update and "basic_auth" not in update and _has_credentials(update["base_url"]):
            update = {**update, "basic_auth": None}
        return super().model_copy(update=update, deep=deep)

    @classmethod
    def _rebuild(cls, data: dict[str, Any]) -> VLLMScorer:
        fields = dict(data)
        return cls(fields.pop("base_url"), **fields)  # through __init__: credentials in the URL are moved

    def _restored(self) -> None:
        super()._restored()
        self._register_secrets()  # unpickled in another process: mask the secrets there too

    # ----------------------------------------------------------------------------------------- public API
    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]:
        """P("yes") for each document against ``query``, in input order.

        The first call surveys the server(s), once per scorer: the template mode (``template="auto"``, or a
        check of the one given) and, without ``max_length``, the context. Documents whose prompt would exceed the
        context (``max_length``, else the smallest ``max_model_len`` of the replicas, so that a document is cut
        the same wherever it is scored) are cut at their tail to fit, the suffix kept, as the official method
        cuts them. Only a document that might be too long (more UTF-8 bytes than the context has tokens) is
        counted, with ``tokenizer`` if given, else the server's ``/tokenize``. When the official cut falls inside
        a character that spans several byte-level tokens, the cut moves back to that character's start (up to 3
        tokens), since text cannot carry half a character; that one score then differs slightly from the
        official one.

        Raises:
            TypeError, ValueError: bad arguments (before any network work); ValueError also when the query
                and instruction alone do not fit the context.
            RerankError: the server's prompt rendering contradicts ``template``, or neither mode would give the
                official scores (a template that renders another prompt), or the replicas are not configured
                alike; the message names the fix.
            RemoteError subclasses: the server could not be reached, refused the request, or answered
                something that is not a complete, valid result. With replicas, a connect error, timeout, 429,
                5xx or malformed answer is raised only once no replica could answer (the message lists each
                one's last error). ServerTimeoutError also once ``deadline`` has passed.
        """
        return super().score(query, documents, instruction=instruction)

    def _score_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        return self._driver().run(self._score_plan(query, documents, instruction))

    async def _ascore_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        return await self._driver().arun(self._score_plan(query, documents, instruction))

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async twin of :meth:`score` (``httpx.AsyncClient``; never blocks the event loop)."""
        return await super().ascore(query, documents, instruction=instruction)

    def check(self, *, min_gap: float = 0.5) -> ServerCheck:
        """Check the server: ``/health``, ``/v1/models`` (served name, context) and a canary pair. With several
        replicas, each is checked (``replicas`` holds each report) and they must agree: same model, context,
        template and embed mode, same prompt ids, and canary scores within 1e-5 of each other.

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

        With ``template="auto"`` the mode is found as :meth:`score` finds it (a fresh look, each check) and
        reported in ``template`` and ``template_evidence``; ``dtype`` is the serving precision where the server
        tells it (vLLM shows it only in its development mode), else None.

        Never raises for server faults: they land in ``error``.
        """
        urls = self.base_urls
        if len(urls) == 1:
            return self._check_one(0, min_gap)
        # One thread per replica: a replica that does not answer costs its retries once, not once per replica.
        with concurrent.futures.ThreadPoolExecutor(len(urls), thread_name_prefix="vllm-check") as pool:
            reports = list(pool.map(lambda i: self._check_one(i, min_gap), range(len(urls))))
        return _check_module.combine(reports, urls)

    async def acheck(self, *, min_gap: float = 0.5) -> ServerCheck:
        """Async twin of :meth:`check`."""
        urls = self.base_urls
        reports = await asyncio.gather(*(self._acheck_one(i, min_gap) for i in range(len(urls))))
        return reports[0] if len(urls) == 1 else _check_module.combine(list(reports), urls)

    def close(self) -> None:
        """Close the sync HTTP client (the async one is closed by :meth:`aclose`)."""
        self._state.connections.close()

    async def aclose(self) -> None:
        """Close both HTTP clients."""
        await self._state.connections.aclose()

    # ----------------------------------------------------------------------------------------- parts
    def _driver(self, pin: int | None = None) -> Driver:
        """Sends this call's requests (to replica ``pin`` only, when given)."""
        return Driver(self, self._state.connections, pin)

    def _fitting(self) -> Fitting:
        return Fitting(self, self._state.fitting)

    def _survey(self) -> Survey:
        return Survey(self, self._fitting(), self._state.survey)

    def _check_one(self, index: int, min_gap: float) -> ServerCheck:
        state = CheckState(self, self.base_urls[index])
        try:
            self._driver(index).run(Checker(self, self._fitting(), index).check_plan(state, min_gap))
        except RerankError as exc:
            state.error = str(exc)
        return state.result()

    async def _acheck_one(self, index: int, min_gap: float) -> ServerCheck:
        state = CheckState(self, self.base_urls[index])
        try:
            await self._driver(index).arun(Checker(self, self._fitting(), index).check_plan(state, min_gap))
        except RerankError as exc:
            state.error = str(exc)
        return state.result()

    def _score_plan(self, query: str, docs: list[str], instr: str) -> Plan[list[float]]:
        fleet = yield from self._survey().fleet_plan()
        if not fleet.honours_instruction and instr != DEFAULT_INSTRUCTION:
            raise RerankError(
                f"{', '.join(self.base_urls)} renders the reranker template but drops the request's `instruction` "
                f"(an older vLLM), so instruction={instr!r} would be scored as the default one. Use the default "
                "instruction, a newer vLLM, or a server started without --chat-template (template='client')."
            )
        docs = yield from self._fitting().fit_plan(query, docs, instr, self.max_length or fleet.context)
        batches = [docs[i : i + self.batch_size] for i in range(0, len(docs), self.batch_size)]
        calls = [
            replace(
                protocol.scoring_call(query, batch, instr, template=fleet.mode, route=self.route, model=self.model),
                replicas=fleet.allowed,
            )
            for batch in batches
        ]
        scores: list[float] = []
        for batch_scores in (yield calls):
            scores.extend(batch_scores)
        return scores

    def _register_secrets(self) -> None:
        """Have every error, report and log record of this process mask this scorer's secrets."""
        _secrets.register(*(value.get_secret_value() for value in self.headers.values()))
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            _secrets.register(key, f"Bearer {key}")  # the header's form is masked even for a short key
        if self.basic_auth is not None:
            _secrets.register_basic_auth(*self.basic_auth.get_secret_value().split(":", 1))

    # ----------------------------------------------------------------------------------------- score cache
    def cache_identity(self) -> dict[str, Any]:
        """What decides this scorer's scores, for score-cache keys (:mod:`~qwen3_rerank_integrations.cache`):
        the server (``base_url`` without credentials or query; replicas: their sorted list), ``model``,
        ``template``, ``route`` and the prompt limit in force (``max_length``, else the replicas' smallest
        context, asked once). Never a secret.

        ``template`` is the setting: every setting either scores the official prompt or raises (the survey
        refuses a server that contradicts it), so the mode found by ``"auto"`` changes no score.
        """
        return self._driver().run(self._identity_plan())

    async def acache_identity(self) -> dict[str, Any]:
        """Async twin of :meth:`cache_identity`."""
        return await self._driver().arun(self._identity_plan())

    def _identity_plan(self) -> Plan[dict[str, Any]]:
        from .._secrets import public_url

        context = self.max_length
        if context is None:
            context = (yield from self._survey().fleet_plan()).context
        urls = self.base_url if isinstance(self.base_url, str) else sorted(map(public_url, self.base_url))
        return {
            "backend": "vllm",
            "base_url": public_url(urls) if isinstance(urls, str) else urls,
            "model": self.model,
            "template": self.template,
            "route": self.route,
            "max_length": self.max_length,
            "context": context,
        }
