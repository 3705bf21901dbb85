"""Fitting long documents into a vLLM server's context, the official way: cut at the tail, token-level, the
suffix kept (see :meth:`~qwen3_rerank_integrations.vllm.VLLMScorer.score`).

Each operation is a plan (see :mod:`qwen3_rerank_integrations.vllm.transport`): token counts come from the
server's ``/tokenize`` and ``/detokenize`` (any replica: replicas serve one model, which ``check()`` verifies),
or from a local ``tokenizer``. The context to fit into (``max_length``, else the smallest ``max_model_len`` of
the replicas) is learned by the survey (:mod:`qwen3_rerank_integrations.vllm.check`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from .. import _secrets
from ..errors import InvalidResponseError, RerankError
from ..prompt import (
    PREFIX,
    SUFFIX,
    document_part,
    document_side,
    query_part,
    query_side,
    splits_hold_for,
    token_prefixes,
)
from . import protocol
from .protocol import Call
from .transport import Plan

__all__ = ["FitCache", "Fitting", "context_from_models", "token_ids", "detokenized_text"]

logger = logging.getLogger("qwen3_rerank_integrations.vllm")

DOCUMENT_TAG = document_part("")
# How many tokens a cut may step back to find text that re-tokenizes to the official ids (a character split
# over byte-level tokens needs at most 3).
MAX_CUT_STEPS = 8


class Settings(Protocol):
    model: str | None
    max_length: int | None
    tokenizer: Any

    @property
    def base_urls(self) -> list[str]: ...


class FitCache:
    """What fitting learns once per scorer: the fixed token counts and the local tokenizer."""

    __slots__ = ("fixed_counts", "local_tokenizer", "lock")

    def __init__(self) -> None:
        self.fixed_counts: tuple[int, int, int] | None = None
        self.local_tokenizer: Any = None
        self.lock = threading.Lock()


class Fitting:
    """The fitting plans of one scorer (its settings, read for each call, and its cache)."""

    __slots__ = ("settings", "cache")

    def __init__(self, settings: Settings, cache: FitCache) -> None:
        self.settings, self.cache = settings, cache

    def fit_plan(self, query: str, docs: list[str], instruction: str, limit: int | None) -> Plan[list[str]]:
        """Cut documents whose prompt exceeds ``limit`` tokens, the official way (token-level, from the tail);
        None: no limit.

        Token counting costs requests, so it is done only for documents that may not fit: first by UTF-8 bytes
        alone, then with the prefix's and suffix's real token counts (learned once), then by tokenizing.
        """
        if limit is None:
            return docs
        head = query_side(query, instruction)
        tag_bytes = len(DOCUMENT_TAG)  # ASCII, and it ends in a space, which composes with nothing under NFC
        # NFC joins at most 3 characters into one, so more than 3 * limit characters cannot fit: no need to
        # normalize a huge document to know it.
        bounds = [tag_bytes + (protocol.max_tokens_bound(d) if len(d) <= 3 * limit else len(d)) for d in docs]
        fixed = protocol.max_tokens_bound(head) + protocol.max_tokens_bound(SUFFIX)
        if all(fixed + b <= limit for b in bounds):
            return docs
        prefix_n, suffix_n, tag_n = yield from self.fixed_counts_plan()
        fixed = prefix_n + protocol.max_tokens_bound(query_part(query, instruction)) + suffix_n
        suspects = [i for i, b in enumerate(bounds) if fixed + b > limit]
        if not suspects:
            return docs
        ids = yield from self.head_and_documents_plan(head, [document_part(docs[i]) for i in suspects], limit + 1)
        head_n = len(ids[0])
        if head_n + tag_n + suffix_n > limit:
            raise ValueError(
                f"the context of {limit} tokens is too small for this query and instruction: the prompt without "
                f"any document already takes {head_n + tag_n + suffix_n} tokens; shorten the query/instruction"
                + (" or raise max_length" if self.settings.max_length is not None else "")
            )
        keep = limit - head_n - suffix_n  # tokens left for "<Document>: " + text
        over = {i: doc_ids for i, doc_ids in zip(suspects, ids[1:]) if len(doc_ids) > keep}
        if not over:
            return docs
        cut = yield from self.cut_plan(over, keep, tag_n)
        fitted = list(docs)
        for i, text in cut.items():
            fitted[i] = text
        return fitted

    def head_and_documents_plan(self, head: str, parts: list[str], need: int) -> Plan[list[list[int]]]:
        """Token ids of ``head`` (whole) and of each document part's first ``need`` tokens, exactly as tokenizing
        the whole part gives them; a long part is tokenized only that far (:func:`~..prompt.token_prefixes`: safe
        splits, proved for Qwen's tokenizer, which a local ``tokenizer`` is checked to be and a Qwen3-Reranker
        server has), so a 20 MB document costs what a short one does. The head rides in the first batch."""
        if not parts:
            return (yield from self.tokenize_plan([head]))
        local = self.local_tokenizer()
        steps = token_prefixes(parts, need, segmented=local is None or splits_hold_for(local))
        try:
            batch = next(steps)
            ids = yield from self.tokenize_plan([head, *batch])
            head_ids = ids[0]
            batch = steps.send(ids[1:])
            while True:
                ids = yield from self.tokenize_plan(batch)
                batch = steps.send(ids)
        except StopIteration as done:
            return [head_ids, *done.value]

    def fixed_counts_plan(self) -> Plan[tuple[int, int, int]]:
        """Token counts of PREFIX, SUFFIX and the empty document part; asked once, then cached."""
        if self.cache.fixed_counts is None:
            ids = yield from self.tokenize_plan([PREFIX, SUFFIX, DOCUMENT_TAG])
            self.cache.fixed_counts = (len(ids[0]), len(ids[1]), len(ids[2]))
        return self.cache.fixed_counts

    def cut_plan(self, over: dict[int, list[int]], keep: int, tag_n: int) -> Plan[dict[int, str]]:
        """Text for each over-long document whose re-tokenization is its first ``keep`` official tokens.

        Decoding a token prefix and re-tokenizing it usually round-trips; when it does not (a character split
        over tokens decodes to U+FFFD), step back a token at a time. If no step round-trips, take the first
        candidate that fits, else an empty document (which always fits).
        """
        length = {i: keep for i in over}
        cut: dict[int, str] = {}
        fallback: dict[int, str] = {}
        for _ in range(MAX_CUT_STEPS):
            pending = [i for i in over if i not in cut and length[i] >= tag_n]
            if not pending:
                break
            texts = yield from self.detokenize_plan([over[i][: length[i]] for i in pending])
            candidates = {i: t[len(DOCUMENT_TAG) :] for i, t in zip(pending, texts) if t.startswith(DOCUMENT_TAG)}
            checked = list(candidates)
            again = yield from self.tokenize_plan([document_part(candidates[i]) for i in checked])
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

    def tokenize_call(self, text: str, tolerate: tuple[type[Exception], ...] = (), **options: Any) -> Call:
        """``POST /tokenize`` of ``text``; answers the token ids (``options``: more :class:`Call` fields)."""
        body: dict[str, Any] = {"prompt": text, "add_special_tokens": False}
        if self.settings.model is not None:
            body["model"] = self.settings.model
        return Call("POST", protocol.TOKENIZE_PATH, body, tolerate, parse=token_ids, **options)

    def tokenize_plan(self, texts: list[str]) -> Plan[list[list[int]]]:
        if not texts:
            return []
        tokenizer = self.local_tokenizer()
        if tokenizer is not None:
            return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return (yield [self.tokenize_call(t) for t in texts])

    def detokenize_plan(self, id_lists: list[list[int]]) -> Plan[list[str]]:
        tokenizer = self.local_tokenizer()
        if tokenizer is not None:
            return [
                tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) for ids in id_lists
            ]
        calls = []
        for ids in id_lists:
            body: dict[str, Any] = {"tokens": ids}
            if self.settings.model is not None:
                body["model"] = self.settings.model
            calls.append(Call("POST", protocol.DETOKENIZE_PATH, body, parse=detokenized_text))
        return (yield calls)

    def official_ids_plan(self, query: str, docs: list[str], instruction: str) -> Plan[list[list[int]]]:
        """Token ids of the official prompt of each of ``docs`` (tokenized as the server tokenizes)."""
        ids = yield from self.tokenize_plan([query_side(query, instruction)] + [document_side(d) for d in docs])
        return [ids[0] + doc_ids for doc_ids in ids[1:]]

    def local_tokenizer(self) -> Any:
        tokenizer = self.settings.tokenizer
        if tokenizer is None or not isinstance(tokenizer, str):
            return tokenizer
        cache = self.cache
        with cache.lock:
            if cache.local_tokenizer is None:
                from transformers import AutoTokenizer

                try:
                    cache.local_tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
                except Exception as exc:  # hub/IO/parse errors all mean "not loadable"
                    raise RerankError(f"could not load tokenizer={tokenizer!r}: {exc}") from exc
            return cache.local_tokenizer


def context_from_models(body: Any, model: str | None) -> int | None:
    """``max_model_len`` of ``model`` (or of the first served model) from a /v1/models body."""
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, dict) and (model is None or entry.get("id") == model):
            value = entry.get("max_model_len")
            return protocol.positive_int(value)
    return None


def detokenized_text(body: Any) -> str:
    """The text of a /detokenize answer."""
    text = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise InvalidResponseError(f"the server's /detokenize answer has no 'prompt' string: {_secrets.snippet(body)}")
    return text


def token_ids(body: Any) -> list[int]:
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list) or not all(protocol.is_int(t) for t in tokens):
        raise InvalidResponseError(
            f"the server's /tokenize answer has no 'tokens' list of ints: {_secrets.snippet(body)}"
        )
    return tokens
