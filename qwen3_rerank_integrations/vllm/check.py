"""The server check of :class:`~qwen3_rerank_integrations.vllm.VLLMScorer`: :class:`ServerCheck` and how it
is found (:meth:`VLLMScorer.check`).

Each replica is checked on its own (every request pinned to it); for several replicas, the reports are then
compared, since a client that spreads documents over servers that score differently returns scores that depend
on where each chunk went.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import _secrets
from ..errors import (
    AuthenticationError,
    InvalidResponseError,
    RateLimitError,
    RemoteError,
    RerankError,
    RouteNotFoundError,
    ServerConnectionError,
    ServerError,
    ServerTimeoutError,
)
from ..prompt import DEFAULT_INSTRUCTION, document_side, escape_control_tokens, query_side
from . import protocol
from .fitting import Fitting, context_from_models, token_ids
from .protocol import Call
from .transport import Plan, final_error, parallel

__all__ = [
    "ServerCheck", "Checker", "CheckState", "Survey", "SurveyCache", "Fleet", "combine", "CANARY_QUERY",
    "CANARY_RELEVANT", "CANARY_IRRELEVANT",
]

logger = logging.getLogger("qwen3_rerank_integrations.vllm")

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
    "(docs/vllm.md, \"Start the server\"), or use template='client' with a server started without --chat-template"
)
_EMBED_MODE_PROBLEM = (
    "the server runs in embed mode: it answers POST /v1/embeddings, which only an embedding model "
    "(`--convert embed` / `--task embed`) does, and its /rerank and /score return cosine similarities of two "
    "embeddings, not P(yes). Restart it with `--runner pooling` (older vLLM: `--task score`) and the "
    "Qwen3-Reranker --hf-overrides (docs/vllm.md, \"Start the server\"), without `--convert embed`."
)
# Replicas whose canary scores differ by more than this do not serve the same scores.
SCORE_TOLERANCE = 1e-5
# Top-level warnings that repeat one replica's own start with this (summary() shows them under the replica).
_REPLICA_TAG = "base_url["
# vLLM's development-mode route that shows its whole configuration (dtype included); 404 elsewhere.
SERVER_INFO_PATH = "/server_info?config_format=json"
_DTYPE_TEXT = re.compile(r"\bdtype=(?:torch\.)?([A-Za-z0-9_]+)")


def serving_dtype(body: Any) -> str | None:
    """The model's dtype from a vLLM ``/server_info`` answer ('float32', 'bfloat16'...), or None when it does not
    tell (any other answer, an error, a server without the route)."""
    config = body.get("vllm_config") if isinstance(body, dict) else None
    value: Any = None
    if isinstance(config, dict):
        model_config = config.get("model_config")
        value = model_config.get("dtype") if isinstance(model_config, dict) else None
    elif isinstance(config, str):  # the text form: "model_config=ModelConfig(..., dtype=torch.float32, ...)"
        match = _DTYPE_TEXT.search(config)
        value = match.group(1) if match else None
    if not isinstance(value, str):
        return None
    value = value.removeprefix("torch.")
    return value if re.fullmatch(r"[a-z0-9_]{2,24}", value) else None


class Settings(Protocol):
    model: str | None
    template: Literal["auto", "client", "server"]
    route: Literal["rerank", "score"]
    instruction: str | None

    @property
    def base_urls(self) -> list[str]: ...


class ServerCheck(BaseModel):
    """What :meth:`VLLMScorer.check` found. ``print(result)`` gives a readable report."""

    model_config = ConfigDict(extra="forbid")

    ok: bool = Field(description="True when the server answered and no misconfiguration was found.")
    base_url: str = Field(
        description="The server root that was checked, never with credentials; for replicas, their roots joined "
        "by ', '."
    )
    healthy: bool | None = Field(None, description="Whether GET /health answered 200 (None: not reached).")
    served_models: list[str] = Field(default_factory=list, description="Model ids listed by GET /v1/models.")
    model: str | None = Field(None, description="The served model this scorer uses.")
    max_model_len: int | None = Field(None, description="The server's context length, from /v1/models.")
    template: Literal["client", "server"] | None = Field(
        description="The template mode checked: the scorer's, or with template='auto' the one found on the server "
        "(None: it could not be found; see warnings)."
    )
    template_setting: Literal["auto", "client", "server"] = Field(
        "auto", description="The scorer's template setting ('auto': found out from the server, as score() does)."
    )
    template_evidence: str | None = Field(
        None, description="template='auto': how the mode was found (the server's rendering or token counts)."
    )
    dtype: str | None = Field(
        None,
        description="The precision the server serves the model in ('float32', 'bfloat16'...), when it tells: vLLM "
        "0.32 shows it only at GET /server_info, a route of its development mode (VLLM_SERVER_DEV_MODE=1). None: "
        "unknown. An fp16/bf16 server's scores differ from the fp32 official ones by ~1e-3.",
    )
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
    replicas: list[ServerCheck] = Field(
        default_factory=list,
        description="For a scorer over several replicas, each replica's own report, in base_url order (the fields "
        "above then hold the first replica's findings, ok and warnings those of all, disagreements included); "
        "empty for one server.",
    )

    @model_validator(mode="before")
    @classmethod
    def _mask_secrets(cls, data: Any) -> Any:
        # A server can echo a request header in any string it sends (a model id, an error message): no
        # report may show one.
        return _secrets.redact_all(data)

    def summary(self) -> str:
        """A few lines for a terminal."""
        if self.replicas:
            lines = [f"vLLM replicas ({len(self.replicas)}): {'OK' if self.ok else 'PROBLEMS FOUND'}"]
            lines.extend(f"  warning: {w}" for w in self.warnings if not w.startswith(_REPLICA_TAG))
            for index, replica in enumerate(self.replicas):
                lines.append(f"base_url[{index}]: " + replica.summary())
            return "\n".join(lines)
        lines = [f"vLLM server {self.base_url}: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        if self.healthy is not None:
            lines.append(f"  health: {'ok' if self.healthy else 'not ok'}")
        if self.served_models:
            context = f", context {self.max_model_len} tokens" if self.max_model_len else ""
            lines.append(f"  model: {self.model} (served: {', '.join(self.served_models)}){context}")
        if self.template_setting == "auto":
            found = f"{self.template} (found: {self.template_evidence})" if self.template else "not found"
            lines.append(f"  template: {found}, route: /v1/{self.route}")
        else:
            lines.append(f"  template: {self.template}, route: /v1/{self.route}")
        lines.append(f"  dtype: {self.dtype}" if self.dtype else
                     "  dtype: unknown (vLLM shows it only at /server_info, in its development mode)")
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


class CheckState:
    """What check() has learned so far; turned into a ServerCheck even when a step fails."""

    def __init__(self, scorer: Settings, url: str | None = None) -> None:
        self.scorer = scorer
        self.url = url if url is not None else scorer.base_urls[0]
        # The mode checked: the scorer's own, or (template="auto") the one the survey finds.
        self.mode: Literal["client", "server"] | None = None if scorer.template == "auto" else scorer.template
        self.evidence: str | None = None
        self.dtype: str | None = None
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
        self.max_model_len = context_from_models(body, self.scorer.model)

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
        if self.mode == "server" and per_doc < 0:
            self.problem(
                f"template='server' but the server scored {observed} prompt tokens where the official prompts have "
                f"{expected}: it renders no reranker template (it joins the raw query and document). Fix: "
                + _TEMPLATE_FIX + "."
            )
        elif self.mode == "client" and per_doc > 0:
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
            base_url=self.url,
            healthy=self.healthy,
            served_models=self.served_models,
            model=self.model,
            max_model_len=self.max_model_len,
            template=self.mode,
            template_setting=self.scorer.template,
            template_evidence=self.evidence,
            dtype=self.dtype,
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


class Checker:
    """The check plans for one scorer (its settings and its fitting plans, which count the official tokens) and
    one replica (``index``: its requests are pinned to it)."""

    __slots__ = ("settings", "fitting", "index", "mode")

    def __init__(self, settings: Settings, fitting: Fitting, index: int = 0) -> None:
        self.settings, self.fitting, self.index = settings, fitting, index
        self.mode: Literal["client", "server"] = "client"

    def scoring_call(self, query: str, documents: Sequence[str], instruction: str) -> Call:
        s = self.settings
        call = protocol.scoring_call(query, documents, instruction, template=self.mode, route=s.route, model=s.model)
        # The report needs the usage as well as the scores.
        return replace(call, parse=lambda body, parse=call.parse: (parse(body), protocol.usage_tokens(body)))

    def check_plan(self, state: CheckState, min_gap: float) -> Plan[None]:
        (health,) = yield [Call("GET", protocol.HEALTH_PATH, tolerate=(RemoteError,))]
        if isinstance(health, (ServerConnectionError, ServerTimeoutError)):
            raise health
        state.healthy = not isinstance(health, Exception)
        if not state.healthy:
            state.problem(f"GET /health failed: {health}")
        (models, info) = yield [Call("GET", protocol.MODELS_PATH, tolerate=(RemoteError,)),
                                Call("GET", SERVER_INFO_PATH, tolerate=(RemoteError,))]
        if isinstance(models, Exception):
            state.doubt(f"GET /v1/models failed: {models}")
        else:
            state.read_models(models)
        state.dtype = serving_dtype(info)

        # Embed mode first: its scores are cosine similarities, so nothing below would mean anything. The sign
        # is the route the server registers, which does not depend on the weights (scores do).
        state.embed_mode = yield from self.embed_mode_plan()
        instruction = self.settings.instruction or DEFAULT_INSTRUCTION
        docs = [CANARY_RELEVANT, CANARY_IRRELEVANT]
        if state.embed_mode:
            state.problem(_EMBED_MODE_PROBLEM)
            self.mode = state.mode or "client"
            call = self.scoring_call(CANARY_QUERY, docs, instruction)
            (body,) = yield [replace(call, parse=None, tolerate=(RemoteError,))]
            with contextlib.suppress(InvalidResponseError):  # the report shows them when they are in [0, 1]
                state.relevant_score, state.irrelevant_score = protocol.parse_scores(body, 2, self.settings.route)
            return
        if state.mode is None:  # template="auto": what score() would find
            # A fresh survey: check() looks again rather than trusting what score() learned earlier.
            survey = Survey(self.settings, self.fitting, SurveyCache())  # type: ignore[arg-type]
            try:
                (found,) = (yield from survey.replicas_plan([self.index], need_context=False, embed=False)).values()
            except RemoteError:
                raise
            except RerankError as exc:  # a template that neither mode scores right
                state.problem(str(exc))
                return
            if isinstance(found, RemoteError):
                raise found
            state.mode, state.evidence = found.mode, found.evidence
        self.mode = state.mode

        (answer,) = yield [self.scoring_call(CANARY_QUERY, docs, instruction)]
        (state.relevant_score, state.irrelevant_score), state.prompt_tokens = answer
        state.judge_scores(min_gap)

        try:
            official = yield from self.fitting.official_ids_plan(CANARY_QUERY, docs, instruction)
        except RemoteError as exc:
            state.doubt(f"could not count the official prompt's tokens ({exc}); template not verified")
            return
        expected = state.expected_prompt_tokens = sum(map(len, official))
        if self.mode == "server" and instruction != DEFAULT_INSTRUCTION and not state.tokens_agree(expected):
            # Maybe the template is right but the server dropped `instruction` and used its default.
            default_ids = yield from self.fitting.official_ids_plan(CANARY_QUERY, docs, DEFAULT_INSTRUCTION)
            if state.tokens_agree(sum(map(len, default_ids))):
                state.judge_instruction(state.prompt_tokens, expected)
                return
        if not state.judge_template() or self.mode != "server":
            return
        # Equal counts are not equal prompts: a template whose final newline Jinja dropped ends in "\n" (token
        # 198) where the official prompt ends in "\n\n" (token 271), with the same count. Compare the ids.
        rendered = yield from self.rendered_ids_plan(CANARY_QUERY, docs, instruction)
        if isinstance(rendered, RemoteError):
            state.doubt(
                f"the server's /tokenize does not render the score template's messages ({rendered}); only "
                "prompt-token counts were compared, and they miss a one-token difference such as a lost final "
                "newline"
            )
        elif not state.judge_rendered_ids(rendered, official):
            return
        ((_, probe_tokens),) = yield [self.scoring_call(CANARY_QUERY, docs[:1], _PROBE_INSTRUCTION)]
        probe_ids = yield from self.fitting.official_ids_plan(CANARY_QUERY, docs[:1], _PROBE_INSTRUCTION)
        state.judge_instruction(probe_tokens, sum(map(len, probe_ids)))

    def rendered_ids_plan(
        self, query: str, docs: list[str], instruction: str
    ) -> Plan[list[list[int]] | RemoteError]:
        """Token ids the server's score template renders for each (query, document) pair, or the error of a
        server that cannot tell. vLLM's /tokenize renders chat messages with the server's --chat-template and
        ``chat_template_kwargs``, as /rerank and /score do with a "query" and a "document" message and the
        request's ``instruction``; the texts are escaped as :meth:`scoring_call` sends them."""
        calls = []
        for doc in docs:
            body: dict[str, Any] = {
                "messages": [{"role": "query", "content": escape_control_tokens(query)},
                             {"role": "document", "content": escape_control_tokens(doc)}],
                "chat_template_kwargs": {"instruction": escape_control_tokens(instruction)},
                "add_generation_prompt": False,  # the score path renders without one
                "add_special_tokens": False,
            }
            if self.settings.model is not None:
                body["model"] = self.settings.model
            calls.append(Call("POST", protocol.TOKENIZE_PATH, body, tolerate=(RemoteError,), parse=token_ids))
        answers = yield calls
        for answer in answers:
            if isinstance(answer, RemoteError):
                return answer
        return answers

    def embed_mode_plan(self) -> Plan[bool]:
        """Whether the server answers ``POST /v1/embeddings`` with embeddings (a reranker answers 404)."""
        (answer,) = yield [embeddings_call(self.settings.model)]
        return is_embeddings(answer)


def embeddings_call(model: str | None) -> Call:
    """``POST /v1/embeddings`` of the canary query: only a server that pools embeddings answers it."""
    body: dict[str, Any] = {"input": CANARY_QUERY}
    if model is not None:
        body["model"] = model
    return Call("POST", _EMBEDDINGS_PATH, body, tolerate=(RemoteError,))


def is_embeddings(answer: Any) -> bool:
    """Whether ``answer`` is an embeddings answer (a list of vectors)."""
    data = answer.get("data") if isinstance(answer, dict) else None
    first = data[0] if isinstance(data, list) and data else None
    return isinstance(first, dict) and isinstance(first.get("embedding"), list)



# ================================================================================================ the survey
Mode = Literal["client", "server"]
# Errors that say "this replica is failing now", not "this request is wrong": the survey sets the replica aside
# and asks it again later instead of failing the call.
_REPLICA_FAULTS = (ServerConnectionError, ServerTimeoutError, ServerError, RateLimitError, InvalidResponseError)


@dataclass
class ReplicaFacts:
    """What the survey learned of one replica."""

    context: int | None = None  # the max_model_len it reports (None: it reports none)
    context_known: bool = False
    mode: Mode | None = None  # the template mode its scoring path needs
    honours_instruction: bool = True  # False: it applies a template but drops the request's `instruction`
    evidence: str = ""  # how the mode was found, in words


@dataclass(frozen=True)
class Fleet:
    """What a scoring call needs to know of the replicas: the template mode, the context to cut to, and which
    replicas may score (None: all; the others could not be surveyed yet)."""

    mode: Mode
    context: int | None
    allowed: tuple[int, ...] | None
    honours_instruction: bool


class SurveyCache:
    """The survey's findings, kept for the scorer's life (``_state``): asked once, then reused."""

    __slots__ = ("key", "replicas", "official", "fleet", "lock")

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.replicas: dict[int, ReplicaFacts] = {}
        self.official: dict[str, list[int]] = {}  # official canary token ids, by instruction
        self.fleet: tuple[bool, Fleet] | None = None  # (with context, the fleet) until a replica's facts change
        self.lock = threading.Lock()

    def for_settings(self, key: tuple[Any, ...]) -> SurveyCache:
        """Forget everything learned under other settings (another URL list, model or template)."""
        with self.lock:
            if self.key != key:
                self.key, self.replicas, self.official, self.fleet = key, {}, {}, None
        return self


class SurveySettings(Settings, Protocol):
    max_length: int | None
    tokenizer: Any


class Survey:
    """Finds out, once per scorer and for every replica, what decides its scores: the context to cut long
    documents to (``max_length``, else the smallest ``max_model_len`` of the replicas, so that a document is cut
    the same wherever it goes), and whether the server renders the reranker template itself.

    The template is found from the server's ``/tokenize``, which renders chat messages with the server's
    ``--chat-template`` as its score path does (vLLM ≥ 0.12): the canary's "query" and "document" messages
    render to nothing (or are refused) on a server without the template, and to exactly the official token ids
    on one with it. Where that alone cannot tell (no ``/tokenize``, another rendering, or ``template="auto"``
    meeting the template, to make sure its score path uses it and honours ``instruction``), one short canary
    pair is scored as raw text and its prompt-token count decides: at most the raw texts' UTF-8 bytes means no
    template; the official prompt's count means the template. A server in embed mode (it answers
    ``/v1/embeddings``) is refused whatever the setting. See :meth:`VLLMScorer.score`.
    """

    __slots__ = ("settings", "fitting", "cache")

    def __init__(self, settings: SurveySettings, fitting: Fitting, cache: SurveyCache) -> None:
        self.settings, self.fitting = settings, fitting
        s = settings
        self.cache = cache.for_settings((tuple(s.base_urls), s.model, s.template, s.route))

    # ------------------------------------------------------------------------------------------ the fleet
    def fleet_plan(self) -> Plan[Fleet]:
        """The fleet's facts, surveying every replica not known yet (each failing one is named if none answers)."""
        need_context = self.settings.max_length is None
        cache, urls = self.cache, self.settings.base_urls
        count = len(urls)
        todo = [i for i in range(count) if not self._known(i, need_context)]
        if todo:
            errors: dict[int, RemoteError] = {}
            # Several replicas: one attempt each (a set-aside one waits for its cooldown), so that a dead
            # replica costs no retries; only if none answers, a second pass with the usual retries.
            passes: list[int | None] = [None] if count == 1 else [0, None]
            for retries in passes:
                found = yield from self.replicas_plan(todo, need_context, retries=retries)
                for index, fact in found.items():
                    if isinstance(fact, RemoteError):
                        errors[index] = fact
                    else:
                        cache.replicas[index] = fact
                        cache.fleet = None
                if any(self._known(i, need_context) for i in range(count)):
                    break
                todo = [i for i in todo if not self._known(i, need_context)]
            if not any(self._known(i, need_context) for i in range(count)):
                raise final_error(errors, urls)
        cached = cache.fleet
        if cached is not None and cached[0] == need_context:
            return cached[1]
        fleet = self._fleet(need_context)
        cache.fleet = (need_context, fleet)
        return fleet

    def _known(self, index: int, need_context: bool) -> bool:
        fact = self.cache.replicas.get(index)
        return fact is not None and fact.mode is not None and (fact.context_known or not need_context)

    def _fleet(self, need_context: bool) -> Fleet:
        urls = self.settings.base_urls
        known = [i for i in range(len(urls)) if self._known(i, need_context)]
        facts = {i: self.cache.replicas[i] for i in known}
        modes = {fact.mode for fact in facts.values()}
        if len(modes) > 1:
            found = "; ".join(f"base_url[{i}] {urls[i]}: template '{f.mode}' ({f.evidence})" for i, f in facts.items())
            raise RerankError(
                f"the replicas are not configured alike: {found}. Scores would depend on which replica answered; "
                "start every replica the same way (with the reranker --chat-template, or without), or list only "
                "replicas of one configuration."
            )
        context = None
        if need_context:
            contexts = {i: f.context for i, f in facts.items()}
            reported = [c for c in contexts.values() if c is not None]
            context = min(reported) if reported else None
            if len(set(contexts.values())) > 1:
                logger.warning(
                    "the replicas report different contexts (%s); long documents are cut to the smallest, %s "
                    "tokens, wherever they are scored", "; ".join(f"base_url[{i}] {urls[i]}: {c}"
                                                               for i, c in contexts.items()), context)
            elif context is None:
                logger.warning("%s reports no max_model_len; long documents will not be cut (set max_length)",
                               ", ".join(urls[i] for i in known))
        mode = modes.pop()
        assert mode is not None
        allowed = None if len(known) == len(urls) else tuple(known)
        return Fleet(mode, context, allowed, all(f.honours_instruction for f in facts.values()))

    # ------------------------------------------------------------------------------------------ replicas
    def replicas_plan(
        self, indices: list[int], need_context: bool, *, retries: int | None = None, embed: bool = True
    ) -> Plan[dict[int, ReplicaFacts | RemoteError]]:
        """Survey replicas ``indices`` side by side (each request pinned to its replica): embed mode (unless
        ``embed`` is False), their context (when ``need_context``) and their template mode. A replica that fails
        is handed back as its error; one in embed mode raises."""
        options: dict[str, Any] = {"retries": retries, "skip_set_aside": retries == 0}
        facts = {i: replace(self.cache.replicas.get(i) or ReplicaFacts()) for i in indices}
        calls: list[Call] = []
        asked: list[tuple[int, str]] = []
        for i in indices:
            pin = {"replicas": (i,), **options}
            if need_context and not facts[i].context_known:
                calls.append(Call("GET", protocol.MODELS_PATH, tolerate=(RemoteError,), **pin))
                asked.append((i, "models"))
            if facts[i].mode is None:
                calls.append(self._render_call(CANARY_QUERY, CANARY_RELEVANT, DEFAULT_INSTRUCTION, pin))
                asked.append((i, "render"))
                if embed:  # an embedding server's /rerank returns cosines, which no template mode makes right
                    calls.append(replace(embeddings_call(self.settings.model), **pin))
                    asked.append((i, "embed"))
        answers = yield calls
        failed: dict[int, RemoteError] = {}
        rendered: dict[int, list[int] | RemoteError] = {}
        fallback: list[int] = []
        for (i, what), answer in zip(asked, answers):
            if what == "embed":
                if is_embeddings(answer):
                    raise RerankError(f"{self.settings.base_urls[i]}: {_EMBED_MODE_PROBLEM}")
            elif isinstance(answer, _REPLICA_FAULTS):
                failed.setdefault(i, answer)
            elif what == "models":
                context = self._context_from(answer, i)
                if context is None:
                    fallback.append(i)  # some servers and proxies hide it in /v1/models; /tokenize reports it
                else:
                    facts[i].context, facts[i].context_known = context, True
            else:
                rendered[i] = answer
        fallback = [i for i in fallback if i not in failed]
        if fallback:
            ask = self.fitting.tokenize_call("a", tolerate=(RemoteError,), **options)
            answers = yield [replace(ask, parse=None, replicas=(i,)) for i in fallback]
            for i, answer in zip(fallback, answers):
                if isinstance(answer, _REPLICA_FAULTS):
                    failed.setdefault(i, answer)
                    continue
                if isinstance(answer, AuthenticationError):
                    raise answer
                self._raise_unserved_model(answer)
                value = answer.get("max_model_len") if isinstance(answer, dict) else None
                facts[i].context, facts[i].context_known = protocol.positive_int(value), True
        modes = yield from self.modes_plan({i: r for i, r in rendered.items() if i not in failed}, options)
        for i, found in modes.items():
            if isinstance(found, RemoteError):
                failed.setdefault(i, found)
            else:
                facts[i].mode, facts[i].honours_instruction, facts[i].evidence = found
                if self.settings.template == "auto":
                    logger.info("%s: template '%s' (%s)", self.settings.base_urls[i], found[0], found[2])
        return {i: failed.get(i, facts[i]) for i in indices}

    def _context_from(self, answer: Any, index: int) -> int | None:
        if isinstance(answer, RemoteError):
            if isinstance(answer, RouteNotFoundError):
                return None
            raise answer  # 401 and the like: the caller's to fix
        model = self.settings.model
        entries = answer.get("data") if isinstance(answer, dict) else None
        served = [e.get("id") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        if model is not None and served and model not in served:
            url = self.settings.base_urls[index]
            raise RouteNotFoundError(
                f"model={model!r} is not served by {url}: it serves {served}. Pass one of those as model=, or "
                "model=None for the one it serves.",
                status_code=404, server_message=f"The model `{model}` does not exist.",
            )
        return context_from_models(answer, model)

    def _raise_unserved_model(self, answer: Any) -> None:
        """Raise the 404 of a server that does not know ``model`` (vLLM: "The model `x` does not exist.")."""
        if (isinstance(answer, RouteNotFoundError) and self.settings.model is not None
                and "does not exist" in (answer.server_message or "")):
            raise answer

    # ------------------------------------------------------------------------------------------ the template
    def _render_call(self, query: str, doc: str, instruction: str, pin: dict[str, Any]) -> Call:
        """``/tokenize`` of the (query, document) messages, rendered by the server's chat template as its score
        path renders them (see :meth:`Checker.rendered_ids_plan`); answers the token ids."""
        body: dict[str, Any] = {
            "messages": [{"role": "query", "content": escape_control_tokens(query)},
                         {"role": "document", "content": escape_control_tokens(doc)}],
            "chat_template_kwargs": {"instruction": escape_control_tokens(instruction)},
            "add_generation_prompt": False,  # the score path renders without one
            "add_special_tokens": False,
        }
        if self.settings.model is not None:
            body["model"] = self.settings.model
        return Call("POST", protocol.TOKENIZE_PATH, body, tolerate=(RemoteError,), parse=token_ids, **pin)

    def official_plan(self) -> Plan[None]:
        """The official token ids of the canary pair under the default and the probe's instruction, in one round
        (once per scorer; the survey compares renderings and counts with them)."""
        cache = self.cache.official
        if DEFAULT_INSTRUCTION in cache and _PROBE_INSTRUCTION in cache:
            return
        instructions = [DEFAULT_INSTRUCTION, _PROBE_INSTRUCTION]
        ids = yield from self.fitting.tokenize_plan(
            [query_side(CANARY_QUERY, i) for i in instructions] + [document_side(CANARY_RELEVANT)]
        )
        for instruction, query_ids in zip(instructions, ids):
            cache[instruction] = query_ids + ids[-1]

    def modes_plan(
        self, rendered: dict[int, list[int] | RemoteError], options: dict[str, Any]
    ) -> Plan[dict[int, tuple[Mode, bool, str] | RemoteError]]:
        """Each replica's template mode, (mode, honours instruction, evidence), from its rendering of the
        canary messages, and where that cannot tell, from the prompt-token count of a scored canary pair.
        The official ids and the probes that ``auto`` needs whatever they show go out in one round."""
        setting = self.settings.template
        verdicts: dict[int, tuple[Mode, bool, str] | RemoteError] = {}
        rendering: dict[int, str] = {}  # replica -> what its rendering showed, where the probe must decide
        compare: dict[int, list[int]] = {}  # replica -> the ids it rendered, to compare with the official ones
        for i, ids in rendered.items():
            if isinstance(ids, RemoteError):
                if isinstance(ids, AuthenticationError):
                    raise ids
                self._raise_unserved_model(ids)
                if isinstance(ids, RouteNotFoundError):  # no /tokenize at all (a proxy, an old server)
                    if setting == "auto":
                        rendering[i] = "no /tokenize"
                    else:
                        verdicts[i] = (setting, True, f"taken from template='{setting}': no /tokenize to verify")
                else:  # 400/422: it cannot render chat messages, so it has no chat template to render
                    verdicts[i] = ("client", True, f"its /tokenize renders no chat template ({ids.server_message})")
            elif not ids:
                verdicts[i] = ("client", True, "its /tokenize renders the query/document messages to nothing")
            else:
                compare[i] = ids
        # auto probes every replica whose rendering is not empty, whatever it shows (it confirms the template
        # and finds whether `instruction` is honoured); an explicit setting only where the rendering is unclear.
        early = list(rendering) + (list(compare) if setting == "auto" else [])
        found: dict[int, Any] = {}
        if compare or early:
            _, found = yield from parallel(
                self.official_plan() if compare else _nothing(), self.probe_plan(early, options)
            )
        for i, ids in compare.items():
            official = self.cache.official[DEFAULT_INSTRUCTION]
            if ids == official:
                rendering[i] = "official"
                if setting != "auto":
                    verdicts[i] = ("server", True, "its /tokenize renders the official prompt from raw text")
            elif ids[:-1] == official[:-1] and official[-1:] == [_DOUBLE_NEWLINE_ID] and ids[-1:] == [_NEWLINE_ID]:
                raise RerankError(
                    f"{self.settings.base_urls[i]} renders the prompt's end as `</think>\\n` (token 198) where the "
                    "official prompt ends `</think>\\n\\n` (token 271): its --chat-template lost its final "
                    "newline (vLLM's published qwen3_reranker.jinja does), and every score would move, whatever "
                    "template= says. Fix: " + _TEMPLATE_FIX + "."
                )
            else:
                rendering[i] = "another prompt"
        late = [i for i in rendering if i not in verdicts and i not in found]
        if late:
            found.update((yield from self.probe_plan(late, options)))
        for i, kind in rendering.items():
            if i not in verdicts:
                tokens = found[i]
                verdicts[i] = tokens if isinstance(tokens, RemoteError) else self._judge_probe(i, tokens, kind)
        for i, verdict in verdicts.items():
            if not isinstance(verdict, RemoteError) and setting != "auto" and verdict[0] != setting:
                raise RerankError(self._contradiction(i, verdict))
        return verdicts

    def probe_plan(self, indices: list[int], options: dict[str, Any]) -> Plan[dict[int, Any]]:
        """Prompt tokens each of replicas ``indices`` counts for the canary pair sent as raw text with a
        non-default instruction (None: the server reports no usage), or its error."""
        if not indices:
            return {}
        call = protocol.scoring_call(CANARY_QUERY, [CANARY_RELEVANT], _PROBE_INSTRUCTION, template="server",
                                     route=self.settings.route, model=self.settings.model)
        parse = call.parse
        assert parse is not None

        def tokens(body: Any) -> int | None:
            parse(body)  # a malformed answer is the replica's fault, as for any scoring request
            return protocol.usage_tokens(body)

        answers = yield [replace(call, parse=tokens, tolerate=_REPLICA_FAULTS, replicas=(i,), **options)
                         for i in indices]
        return dict(zip(indices, answers))

    def _judge_probe(self, index: int, tokens: int | None, rendering: str) -> tuple[Mode, bool, str]:
        """The mode of a replica from the prompt tokens it counted for the raw canary pair (see probe_plan):
        tokens never outnumber UTF-8 bytes, so a count at most the raw texts' bytes means no template."""
        raw_bound = protocol.max_tokens_bound(CANARY_QUERY) + protocol.max_tokens_bound(CANARY_RELEVANT)
        url = self.settings.base_urls[index]
        if tokens is None:
            if rendering == "official":
                return ("server", True, "its /tokenize renders the official prompt (no token usage to confirm it)")
            if rendering == "no /tokenize":
                logger.warning("%s has no /tokenize and reports no token usage: whether it renders the reranker "
                               "template cannot be told; using template='client' (check-server tells more)", url)
                return ("client", True, "no /tokenize and no token usage: assumed, as older servers need")
            raise RerankError(
                f"{url} renders the canary's query/document messages to another prompt than the official one and "
                "reports no token usage, so whether it applies that template when scoring cannot be told. Fix: "
                + _TEMPLATE_FIX + "."
            )
        if tokens <= raw_bound:
            return ("client", True, f"it scored the raw canary pair as {tokens} tokens: no template")
        if rendering == "no /tokenize":
            logger.warning("%s applies a template (it scored the raw canary pair as %d tokens) but has no /tokenize "
                           "to compare its prompt with the official one; check-server tells more", url, tokens)
            return ("server", True, f"it scored the raw canary pair as {tokens} tokens: a template")
        official = len(self.cache.official[_PROBE_INSTRUCTION])
        default = len(self.cache.official[DEFAULT_INSTRUCTION])
        if rendering != "another prompt" and tokens == official:
            return ("server", True, f"it scored the raw canary pair as the official {tokens}-token prompt")
        if rendering != "another prompt" and tokens == default:
            return ("server", False, f"it scored the raw canary pair as the official prompt with its default "
                    f"instruction ({tokens} tokens): it drops the request's `instruction`")
        raise RerankError(
            f"{url} scored the raw canary pair as {tokens} prompt tokens where the official prompt has {official}: "
            "it applies a template that renders another prompt, and neither template mode gives the official "
            "scores. Fix: " + _TEMPLATE_FIX + "."
        )

    def _contradiction(self, index: int, verdict: tuple[Mode, bool, str]) -> str:
        url, (mode, _, evidence) = self.settings.base_urls[index], verdict
        if mode == "server":
            return (f"template='client' but {url} applies the reranker template itself ({evidence}): the prompt "
                    "would be wrapped twice and every score would be wrong. Use template='server', or "
                    "template='auto' (the default), which finds this out.")
        return (f"template='server' but {url} applies no reranker template ({evidence}): raw text would be "
                "scored without the prompt. Use template='client', or template='auto' (the default), which finds "
                "this out; or " + _TEMPLATE_FIX.split(", or use", 1)[0] + ".")



def _nothing() -> Plan[None]:
    """A plan with no requests."""
    return None
    yield  # a generator  # pragma: no cover


def combine(reports: list[ServerCheck], urls: Sequence[str]) -> ServerCheck:
    """One report for several replicas: each one's own, and whether they agree.

    Replicas must serve the same scores, so every finding that decides a score must be equal on all that
    report it: the model, the context (a document cut on one is whole on another), embed mode, the prompt's
    token count and ids (the template), and the canary scores (to within :data:`SCORE_TOLERANCE`).
    """
    warnings: list[str] = []
    for name, get in (
        ("the served model", lambda r: r.model),
        ("the context length (max_model_len)", lambda r: r.max_model_len),
        ("embed mode", lambda r: r.embed_mode),
        ("the canary's prompt tokens (the template)", lambda r: r.prompt_tokens),
        ("the official prompt's token count (the tokenizer)", lambda r: r.expected_prompt_tokens),
        ("whether the template renders the official token ids", lambda r: r.prompt_ids_match),
        ("the template mode", lambda r: r.template),
        ("the serving dtype", lambda r: r.dtype),
    ):
        seen = {i: get(r) for i, r in enumerate(reports) if get(r) is not None}
        if len(set(seen.values())) > 1:
            found = "; ".join(f"base_url[{i}] {urls[i]}: {value!r}" for i, value in seen.items())
            warnings.append(f"the replicas disagree on {name}: {found}. Every replica must run the same "
                            "configuration, or scores depend on which replica scored each document.")
    for name, get in (("relevant", lambda r: r.relevant_score), ("irrelevant", lambda r: r.irrelevant_score)):
        seen = {i: get(r) for i, r in enumerate(reports) if get(r) is not None}
        if seen and max(seen.values()) - min(seen.values()) > SCORE_TOLERANCE:
            found = "; ".join(f"base_url[{i}] {urls[i]}: {value:.6f}" for i, value in seen.items())
            warnings.append(f"the replicas score the {name} canary document differently (more than "
                            f"{SCORE_TOLERANCE:g} apart): {found}. Every replica must serve the same model, "
                            "dtype and template.")
    disagree = bool(warnings)
    for i, report in enumerate(reports):
        warnings.extend(f"base_url[{i}] {urls[i]}: {w}" for w in report.warnings)
    errors = [f"base_url[{i}] {urls[i]}: {r.error}" for i, r in enumerate(reports) if r.error]
    first = next((r for r in reports if r.error is None), reports[0])
    fields = first.model_dump(exclude={"ok", "base_url", "warnings", "error", "replicas", "healthy"})
    healthy = [r.healthy for r in reports]
    return ServerCheck(
        **fields,
        ok=not disagree and all(r.ok for r in reports),
        base_url=", ".join(urls),
        healthy=None if None in healthy else all(healthy),
        warnings=warnings,
        error="; ".join(errors) or None,
        replicas=reports,
    )
