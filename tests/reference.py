"""The official Qwen3-Reranker scoring method, written from ../shared/notes/qwen3-reranker-format.md.

Deliberately independent of the package: its own prompt strings, the model card's tokenize/truncate/pad
recipe, the full causal-LM forward with full-vocabulary logits, and log_softmax over [no, yes] at the last
position. Every backend's scores are checked against this.
"""

from __future__ import annotations

import torch

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def format_instruction(instruction: str | None, query: str, doc: str) -> str:
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


def official_input_ids(tokenizer, pairs: list[str], max_length: int) -> list[list[int]]:
    prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)
    inputs = tokenizer(
        pairs,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    return [prefix_tokens + ids + suffix_tokens for ids in inputs["input_ids"]]


# The scores already computed, by (model, tokenizer, input ids, batch size): many tests check the same documents
# against the reference, and the model and tokenizer fixtures are never changed (the key holds them, so an id
# is never reused by another object while it is here).
_SCORED: dict[tuple, tuple[float, ...]] = {}


def score_input_ids(model, tokenizer, input_ids: list[list[int]], batch_size: int = 8) -> list[float]:
    """The model card's compute_logits: left-padded batches, full logits, log_softmax over [no, yes]."""
    key = (model, tokenizer, tuple(map(tuple, input_ids)), batch_size)
    if key not in _SCORED:
        _SCORED[key] = tuple(_compute_logits(model, tokenizer, input_ids, batch_size))
    return list(_SCORED[key])


@torch.inference_mode()
def _compute_logits(model, tokenizer, input_ids: list[list[int]], batch_size: int) -> list[float]:
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    scores: list[float] = []
    for start in range(0, len(input_ids), batch_size):
        batch = {"input_ids": input_ids[start : start + batch_size]}
        padded = tokenizer.pad(batch, padding=True, return_tensors="pt", padding_side="left")
        logits = model(**padded).logits[:, -1, :]
        true_vector = logits[:, token_true_id]
        false_vector = logits[:, token_false_id]
        stacked = torch.stack([false_vector, true_vector], dim=1)
        stacked = torch.nn.functional.log_softmax(stacked, dim=1)
        scores.extend(stacked[:, 1].exp().tolist())
    return scores


def reference_scores(model, tokenizer, query: str, documents: list[str], instruction: str | None = None,
                     max_length: int = 8192, batch_size: int = 8) -> list[float]:
    pairs = [format_instruction(instruction, query, doc) for doc in documents]
    return score_input_ids(model, tokenizer, official_input_ids(tokenizer, pairs, max_length), batch_size)


class ReferenceScorer:
    """The official method behind the Scorer protocol (sync only work; async runs it inline)."""

    def __init__(self, model, tokenizer, instruction: str | None = None, max_length: int = 8192) -> None:
        self.model, self.tokenizer, self.instruction, self.max_length = model, tokenizer, instruction, max_length

    def score(self, query, documents, *, instruction=None):
        return reference_scores(self.model, self.tokenizer, query, list(documents),
                                instruction or self.instruction, self.max_length)

    async def ascore(self, query, documents, *, instruction=None):
        return self.score(query, documents, instruction=instruction)
