"""The shipped vLLM score template renders exactly the official prompt's token ids; vLLM's published one does
not (Jinja drops its final newline). Rendered the way vLLM renders a score template: transformers'
apply_chat_template (a sandboxed Jinja environment) with a "query" and a "document" message and
``instruction`` among the template's keyword arguments. Real vLLM servers: tests/test_real_vllm.py."""

from __future__ import annotations

import pytest

from qwen3_rerank_integrations.templates import RERANKER_TEMPLATE
from tests.conftest import DOCUMENTS
from tests.real_vllm import PUBLISHED_TEMPLATE
from tests.reference import format_instruction, official_input_ids

QUERIES = ["What is the capital of China?", "北京?", "ends in newline\n", "🗼"]


@pytest.fixture(scope="module")
def tokenizer(qwen_tokenizer):
    return qwen_tokenizer


def rendered_ids(tokenizer, template: str, query: str, document: str, instruction: str | None) -> list[int]:
    kwargs = {} if instruction is None else {"instruction": instruction}
    messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("instruction", [None, "Given a bug report, find the commit that fixes it"])
def test_the_packages_template_renders_the_official_ids(tokenizer, instruction):
    template = RERANKER_TEMPLATE.read_text(encoding="utf-8")
    for query in QUERIES:
        for doc in DOCUMENTS:
            official = official_input_ids(tokenizer, [format_instruction(instruction, query, doc)], 8192)[0]
            assert rendered_ids(tokenizer, template, query, doc, instruction) == official, (query, doc)


def test_vllms_published_template_loses_the_final_newline(tokenizer):
    published = PUBLISHED_TEMPLATE.read_text(encoding="utf-8")
    assert RERANKER_TEMPLATE.read_text(encoding="utf-8") == published + "\n"  # the one difference
    official = official_input_ids(tokenizer, [format_instruction(None, QUERIES[0], DOCUMENTS[0])], 8192)[0]
    ids = rendered_ids(tokenizer, published, QUERIES[0], DOCUMENTS[0], None)
    assert ids[:-1] == official[:-1] and (ids[-1], official[-1]) == (198, 271)  # "\n" where "\n\n" belongs
