"""The prompt module renders the official format (checked by token ids against tests/reference.py)."""

from __future__ import annotations

from qwen3_rerank_integrations import prompt
from tests.reference import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_instruction, official_input_ids

QUERY = "What is the capital of China?"


def test_constants_match_the_reference():
    assert (prompt.PREFIX, prompt.SUFFIX, prompt.DEFAULT_INSTRUCTION) == (PREFIX, SUFFIX, DEFAULT_INSTRUCTION)


def test_format_prompt_tokenizes_like_the_official_method(reference_model, documents):
    tokenizer = reference_model[1]
    rendered = [tokenizer.encode(prompt.format_prompt(QUERY, d), add_special_tokens=False) for d in documents]
    pairs = [format_instruction(None, QUERY, d) for d in documents]
    assert rendered == official_input_ids(tokenizer, pairs, 8192)


def test_query_and_document_sides_concatenate_to_the_official_ids(reference_model, documents):
    # What a server without a score template does: tokenize the two texts apart and join the ids.
    tokenizer = reference_model[1]
    instruction = "Given a question, retrieve passages in any language that answer it"
    query_ids = tokenizer.encode(prompt.query_side(QUERY, instruction), add_special_tokens=False)
    joined = [query_ids + tokenizer.encode(prompt.document_side(d), add_special_tokens=False) for d in documents]
    pairs = [format_instruction(instruction, QUERY, d) for d in documents]
    assert joined == official_input_ids(tokenizer, pairs, 8192)
