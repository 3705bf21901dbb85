"""The server check of :class:`~qwen3_rerank_integrations.vllm.VLLMScorer`: :class:`ServerCheck` and how it
is found (:meth:`VLLMScorer.check`).

Each replica is checked on its own (every request pinned to it); for several replicas, the reports are then
compared, since a client that spreads documents over servers that score differently returns scores that depend
on where each chunk went.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import _secrets
from . import protocol
from .fitting import Fitting, context_from_models, token_ids
from .protocol import Call
from .transport import Plan
from ..errors import InvalidResponseError, RemoteError, ServerConnectionError, ServerTimeoutError
from ..prompt import DEFAULT_INSTRUCTION, escape_control_tokens

__all__ = ["ServerCheck", "Checker", "CheckState", "combine", "CANARY_QUERY", "CANARY_RELEVANT", "CANARY_IRRELEVANT"]

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


class Settings(Protocol):
    model: str | None
    template: Literal["client", "server"]
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


class CheckState:
    """What check() has learned so far; turned into a ServerCheck even when a step fails."""

    def __init__(self, scorer: Settings, url: str | None = None) -> None:
        self.scorer = scorer
        self.url = url if url is not None else scorer.base_urls[0]
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
            base_url=self.url,
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


class Checker:
    """The check plans for one scorer (its settings and its fitting plans, which count the official tokens)."""

    __slots__ = ("settings", "fitting")

    def __init__(self, settings: Settings, fitting: Fitting) -> None:
        self.settings, self.fitting = settings, fitting

    def scoring_call(self, query: str, documents: Sequence[str], instruction: str) -> Call:
        s = self.settings
        return protocol.scoring_call(query, documents, instruction, template=s.template, route=s.route, model=s.model)

    def check_plan(self, state: CheckState, min_gap: float) -> Plan[None]:
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
        state.embed_mode = yield from self.embed_mode_plan()
        instruction = self.settings.instruction or DEFAULT_INSTRUCTION
        docs = [CANARY_RELEVANT, CANARY_IRRELEVANT]
        if state.embed_mode:
            state.problem(_EMBED_MODE_PROBLEM)
            (body,) = yield [replace(self.scoring_call(CANARY_QUERY, docs, instruction), tolerate=(RemoteError,))]
            with contextlib.suppress(InvalidResponseError):  # the report shows them when they are in [0, 1]
                state.relevant_score, state.irrelevant_score = protocol.parse_scores(body, 2, self.settings.route)
            return

        (body,) = yield [self.scoring_call(CANARY_QUERY, docs, instruction)]
        state.relevant_score, state.irrelevant_score = protocol.parse_scores(body, 2, self.settings.route)
        state.prompt_tokens = protocol.usage_tokens(body)
        state.judge_scores(min_gap)

        try:
            official = yield from self.fitting.official_ids_plan(CANARY_QUERY, docs, instruction)
        except RemoteError as exc:
            state.doubt(f"could not count the official prompt's tokens ({exc}); template not verified")
            return
        expected = state.expected_prompt_tokens = sum(map(len, official))
        if self.settings.template == "server" and instruction != DEFAULT_INSTRUCTION and not state.tokens_agree(expected):
            # Maybe the template is right but the server dropped `instruction` and used its default.
            default_ids = yield from self.fitting.official_ids_plan(CANARY_QUERY, docs, DEFAULT_INSTRUCTION)
            if state.tokens_agree(sum(map(len, default_ids))):
                state.judge_instruction(state.prompt_tokens, expected)
                return
        if not state.judge_template() or self.settings.template != "server":
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
        (probe,) = yield [self.scoring_call(CANARY_QUERY, docs[:1], _PROBE_INSTRUCTION)]
        probe_ids = yield from self.fitting.official_ids_plan(CANARY_QUERY, docs[:1], _PROBE_INSTRUCTION)
        state.judge_instruction(protocol.usage_tokens(probe), sum(map(len, probe_ids)))

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
            calls.append(Call("POST", protocol.TOKENIZE_PATH, body, tolerate=(RemoteError,)))
        bodies = yield calls
        for body in bodies:
            if isinstance(body, RemoteError):
                return body
        return [token_ids(body) for body in bodies]

    def embed_mode_plan(self) -> Plan[bool]:
        """Whether the server answers ``POST /v1/embeddings`` with embeddings (a reranker answers 404)."""
        body: dict[str, Any] = {"input": CANARY_QUERY}
        if self.settings.model is not None:
            body["model"] = self.settings.model
        (answer,) = yield [Call("POST", _EMBEDDINGS_PATH, body, tolerate=(RemoteError,))]
        data = answer.get("data") if isinstance(answer, dict) else None
        first = data[0] if isinstance(data, list) and data else None
        return isinstance(first, dict) and isinstance(first.get("embedding"), list)



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
