"""The official Qwen3-Reranker prompt format and truncation, in one place.

A (query, document) pair is judged as one chat turn whose answer must be "yes" or "no"::

    PREFIX + "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}" + SUFFIX

The score is P("yes") at the last position: ``sigmoid(logit_yes - logit_no)``.

Truncation follows the official transformers method: prefix and suffix are tokenized on their own and never
cut; the body is tokenized and cut from its *end* to ``max_length - len(prefix) - len(suffix)`` tokens, so a
long document loses its tail and the suffix (which asks for the answer) always survives.

Everything here is pure text/token-id work with a tokenizer passed in; no torch import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "PREFIX",
    "SUFFIX",
    "DEFAULT_INSTRUCTION",
    "YES_TOKEN",
    "NO_TOKEN",
    "format_body",
    "format_prompt",
    "query_part",
    "document_part",
    "query_side",
    "document_side",
    "PromptTokens",
    "PromptEncoder",
]

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# The model card's default; the repo's examples/ use another wording, but every deployment guide uses this one.
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
YES_TOKEN = "yes"
NO_TOKEN = "no"

_DOCUMENT_TAG = "<Document>: "


def query_part(query: str, instruction: str) -> str:
    """The body up to (not including) the document tag: ``<Instruct>: ...\\n<Query>: ...\\n``."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n"


def document_part(document: str) -> str:
    """The body's tail: ``<Document>: {document}``."""
    return f"{_DOCUMENT_TAG}{document}"


def query_side(query: str, instruction: str) -> str:
    """Everything before the document: ``PREFIX`` + the ``<Instruct>``/``<Query>`` part.

    With :func:`document_side` it splits the prompt where a server that concatenates a query text and a
    document text (vLLM without a score template) needs it; the seam falls on a pre-token boundary, so the two
    halves tokenize to exactly the official ids.
    """
    return PREFIX + query_part(query, instruction)


def document_side(document: str) -> str:
    """Everything from the document tag on: ``<Document>: {document}`` + ``SUFFIX``."""
    return document_part(document) + SUFFIX


def format_body(query: str, document: str, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The user-turn body the official method tokenizes (and truncates) as one string."""
    return query_part(query, instruction) + document_part(document)


def format_prompt(query: str, document: str, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The whole prompt as text (untruncated). Compare token ids, not strings, when checking a rendering."""
    return PREFIX + format_body(query, document, instruction) + SUFFIX


class _Tokenizer(Protocol):
    pad_token_id: int | None

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...

    def convert_tokens_to_ids(self, tokens: Any) -> Any: ...


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of one query's prompts, ready for a model; ``ids[i]`` belongs to ``documents[i]``."""

    ids: list[list[int]]
    truncated: list[bool]


class PromptEncoder:
    """Turns (query, documents, instruction) into token ids exactly as the official method does.

    Args:
        tokenizer: a Qwen3 tokenizer (a transformers tokenizer, fast or slow).
        max_length: the most tokens one prompt may have, prefix and suffix included.
    """

    def __init__(self, tokenizer: _Tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prefix_ids: list[int] = self._encode([PREFIX])[0]
        self.suffix_ids: list[int] = self._encode([SUFFIX])[0]
        self.yes_id = self._token_id(YES_TOKEN)
        self.no_id = self._token_id(NO_TOKEN)

    @property
    def max_body_tokens(self) -> int:
        return self.max_length - len(self.prefix_ids) - len(self.suffix_ids)

    def min_length(self, query: str, instruction: str) -> int:
        """Fewest tokens ``max_length`` must allow so that prefix, instruction, query, the document tag and
        suffix all fit (the document itself may then be cut to nothing)."""
        body = self._encode([format_body(query, "", instruction)])[0]
        return len(self.prefix_ids) + len(body) + len(self.suffix_ids)

    def check_fits(self, query: str, instruction: str) -> None:
        """Raise ``ValueError`` when ``max_length`` cannot hold this query and instruction."""
        needed = self.min_length(query, instruction)
        if needed > self.max_length:
            raise ValueError(
                f"max_length={self.max_length} is too small for this query and instruction: the prompt without "
                f"any document already takes {needed} tokens; use max_length >= {needed} (the models accept "
                "up to 32768) or shorten the query/instruction."
            )

    def encode(self, query: str, documents: Sequence[str], instruction: str) -> PromptTokens:
        """Token ids for every document's prompt, truncated the official way."""
        self.check_fits(query, instruction)
        bodies = self._encode([format_body(query, doc, instruction) for doc in documents])
        limit = self.max_body_tokens
        ids = [self.prefix_ids + body[:limit] + self.suffix_ids for body in bodies]
        return PromptTokens(ids=ids, truncated=[len(body) > limit for body in bodies])

    def _encode(self, texts: list[str]) -> list[list[int]]:
        # One batched call: fast tokenizers encode a list in parallel in Rust.
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id < 0:
            raise ValueError(f"the tokenizer has no single token {token!r}; is this a Qwen3 tokenizer?")
        return token_id
