"""Bad input raises a clear error naming the argument, before any model work."""

from __future__ import annotations

import pytest

from qwen3_rerank_integrations import LocalScorer
from qwen3_rerank_integrations.scorer import validate_inputs


@pytest.fixture
def unloaded(tiny_model_dir):
    return LocalScorer(str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize(
    ("query", "documents", "error", "pattern"),
    [
        ("q", "a bare string", TypeError, r"documents must be a sequence of str, got a single str"),
        ("q", b"bytes", TypeError, r"documents must be a sequence of str"),
        ("q", 42, TypeError, r"documents must be a sequence of str \(a list or tuple\), got int"),
        ("q", {"a", "b"}, TypeError, r"documents must be a sequence of str \(a list or tuple\), got set"),
        ("q", ["ok", 3, "fine"], TypeError, r"documents\[1\] must be a str, got int"),
        ("q", ["ok", None], TypeError, r"documents\[1\] must be a str, got NoneType"),
        (None, ["a"], TypeError, r"query must be a str, got NoneType"),
        ("", ["a"], ValueError, r"query must not be empty"),
        ("  \n\t", ["a"], ValueError, r"query must not be empty or whitespace"),
    ],
)
def test_bad_arguments_raise_before_loading(unloaded, query, documents, error, pattern):
    with pytest.raises(error, match=pattern):
        unloaded.score(query, documents)
    assert not unloaded.loaded


@pytest.mark.parametrize(("instruction", "error"), [("", ValueError), ("   ", ValueError), (3, TypeError)])
def test_bad_instruction(unloaded, instruction, error):
    with pytest.raises(error, match="instruction"):
        unloaded.score("q", ["a"], instruction=instruction)
    assert not unloaded.loaded


async def test_async_validates_too(unloaded):
    with pytest.raises(TypeError, match=r"documents\[0\]"):
        await unloaded.ascore("q", [1])


def test_empty_and_whitespace_documents_are_valid():
    assert validate_inputs("q", ["", "  ", "x"]) == ["", "  ", "x"]
    assert validate_inputs("q", ("a",)) == ["a"]


def test_max_length_too_small_says_the_minimum(unloaded):
    scorer = LocalScorer(unloaded.model, device="cpu", max_length=40)
    with pytest.raises(ValueError, match=r"max_length=40 is too small .* use max_length >= \d+"):
        scorer.score("What is the capital of China?", ["a"])
    assert not scorer.loaded  # the tokenizer was needed to count, the model was not


def test_max_length_grows_with_query_and_instruction(unloaded):
    from qwen3_rerank_integrations.prompt import DEFAULT_INSTRUCTION

    unloaded.score("q", ["warm up the tokenizer"])
    encoder = unloaded._encoder
    short = encoder.min_length("q", DEFAULT_INSTRUCTION)
    longer = encoder.min_length("q " * 50, DEFAULT_INSTRUCTION + " in great detail")
    assert longer > short
    # Exactly the minimum is accepted; the document is then cut to nothing but still scored.
    scorer = LocalScorer(unloaded.model, device="cpu", max_length=short)
    assert len(scorer.score("q", ["some document text"])) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_length", 0), ("max_length", -5), ("batch_size", 0), ("max_batch_tokens", 0), ("dtype", "int8"),
     ("source", "github")],
)
def test_bad_constructor_fields(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        LocalScorer("Qwen/Qwen3-Reranker-0.6B", **{field: value})


def test_unknown_constructor_field_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="trust_remote_code"):
        LocalScorer("Qwen/Qwen3-Reranker-0.6B", trust_remote_code=True)
