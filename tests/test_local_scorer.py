"""LocalScorer equals the official method (tests/reference.py) to 1e-5 in fp32 on every path."""

from __future__ import annotations

import asyncio
import random

import pytest

from qwen3_rerank_integrations import LocalScorer, ModelLoadError
from qwen3_rerank_integrations.model_source import ModelSource
from qwen3_rerank_integrations.prompt import PromptEncoder
from tests.reference import format_instruction, official_input_ids, reference_scores

QUERY = "What is the capital of China?"
TOLERANCE = 1e-5


def assert_close(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    worst = max(abs(a - b) for a, b in zip(actual, expected))
    assert worst <= TOLERANCE, f"max abs diff {worst:.2e} > {TOLERANCE}: {actual} vs {expected}"


def test_batched_equals_reference(local_scorer, reference_model, documents):
    assert_close(local_scorer.score(QUERY, documents), reference_scores(*reference_model, QUERY, documents))


def test_scores_are_distinct_probabilities(local_scorer, documents):
    # Guards the fixture: parity on constant scores would prove nothing.
    scores = local_scorer.score(QUERY, documents)
    assert all(0.0 < s < 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) >= len(set(documents)) - 1


def test_single_document_calls_equal_batched(local_scorer, documents):
    batched = local_scorer.score(QUERY, documents)
    single = [local_scorer.score(QUERY, [doc])[0] for doc in documents]
    assert_close(single, batched)


def test_any_order_gives_each_document_its_own_score(local_scorer, documents):
    expected = dict(zip(documents, local_scorer.score(QUERY, documents)))
    for seed in range(3):
        shuffled = documents[:]
        random.Random(seed).shuffle(shuffled)
        assert_close(local_scorer.score(QUERY, shuffled), [expected[d] for d in shuffled])


def test_tiny_batches_equal_one_big_batch(tiny_model_dir, local_scorer, documents):
    # One document per forward pass vs everything in one padded batch.
    one_by_one = LocalScorer(str(tiny_model_dir), device="cpu", batch_size=1)
    assert_close(one_by_one.score(QUERY, documents), local_scorer.score(QUERY, documents))


def test_duplicates_score_identically(local_scorer):
    scores = local_scorer.score(QUERY, ["Beijing.", "Paris.", "Beijing.", "Beijing."])
    assert scores[0] == pytest.approx(scores[2], abs=TOLERANCE) == pytest.approx(scores[3], abs=TOLERANCE)


def test_custom_instruction_per_call_and_default(tiny_model_dir, local_scorer, reference_model, documents):
    instruction = "Given a question, find passages in Chinese that answer it"
    per_call = local_scorer.score(QUERY, documents, instruction=instruction)
    assert_close(per_call, reference_scores(*reference_model, QUERY, documents, instruction=instruction))
    assert per_call != local_scorer.score(QUERY, documents)
    scorer_default = LocalScorer(str(tiny_model_dir), device="cpu", instruction=instruction)
    assert_close(scorer_default.score(QUERY, documents), per_call)


def test_truncated_documents_equal_reference(tiny_model_dir, reference_model, qwen_tokenizer_dir):
    max_length = 96
    long_docs = [
        "Beijing " * 200,
        "北京是中华人民共和国的首都，" * 40,
        "emoji 🚀🔥 " * 60,
        "short",
        "",
    ]
    scorer = LocalScorer(str(tiny_model_dir), device="cpu", max_length=max_length)
    expected = reference_scores(*reference_model, QUERY, long_docs, max_length=max_length)
    assert_close(scorer.score(QUERY, long_docs), expected)
    # The reference really cut them, keeping the suffix: every long prompt is exactly max_length tokens.
    tokenizer = reference_model[1]
    ids = official_input_ids(tokenizer, [format_instruction(None, QUERY, d) for d in long_docs], max_length)
    assert [len(x) for x in ids[:3]] == [max_length] * 3
    assert all(x[-9:] == [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271] for x in ids)


def test_encoder_ids_equal_official_ids(reference_model, documents):
    model, tokenizer = reference_model
    encoder = PromptEncoder(tokenizer, max_length=96)
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    got = encoder.encode(QUERY, documents + ["x " * 100], instruction)
    pairs = [format_instruction(None, QUERY, d) for d in documents + ["x " * 100]]
    assert got.ids == official_input_ids(tokenizer, pairs, 96)
    assert got.truncated[-1] and not got.truncated[0]


async def test_ascore_equals_score_and_runs_concurrently(local_scorer, documents):
    expected = local_scorer.score(QUERY, documents)
    results = await asyncio.gather(*(local_scorer.ascore(QUERY, documents) for _ in range(4)))
    for result in results:
        assert_close(result, expected)


async def test_ascore_does_not_block_the_event_loop(local_scorer, documents):
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await local_scorer.ascore(QUERY, documents * 10)
    task.cancel()
    assert ticks > 1


def test_empty_documents_load_nothing(tiny_model_dir):
    scorer = LocalScorer(str(tiny_model_dir), device="cpu")
    assert scorer.score(QUERY, []) == []
    assert not scorer.loaded


def test_lazy_loading_and_repr(tiny_model_dir):
    scorer = LocalScorer(str(tiny_model_dir), device="cpu")
    assert not scorer.loaded
    scorer.score(QUERY, ["a"])
    assert scorer.loaded
    assert "LocalScorer(" in repr(scorer) and str(tiny_model_dir) in repr(scorer)


def test_model_is_positional_or_keyword(tiny_model_dir):
    assert LocalScorer(str(tiny_model_dir)).model == LocalScorer(model=str(tiny_model_dir)).model


def test_loaded_in_inference_mode_with_sdpa_and_pad_token(local_scorer):
    assert local_scorer._model.config._attn_implementation == "sdpa"
    assert local_scorer._encoder.tokenizer.pad_token == "<|endoftext|>"
    assert not local_scorer._model.training


def test_oom_backs_off_and_retries(tiny_model_dir, local_scorer, monkeypatch):
    import torch

    # Prompts of one length go into one batch whatever the padding rule, so the first pass is wide.
    documents = [f"document number {i} is about Beijing" for i in range(10)]
    scorer = LocalScorer(str(tiny_model_dir), device="cpu").load()
    real_forward = scorer._forward
    padded_sizes: list[int] = []
    capacity = 0

    def flaky_forward(tails, prefix):  # a device that holds `capacity` padded tokens per pass
        nonlocal capacity
        capacity = capacity or 3 * max(len(t) for t in tails)
        padded = len(tails) * max(len(t) for t in tails)
        padded_sizes.append(padded)
        if padded > capacity:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(tails, prefix)

    monkeypatch.setattr(LocalScorer, "_forward", lambda self, tails, prefix: flaky_forward(tails, prefix))
    assert_close(scorer.score(QUERY, documents), local_scorer.score(QUERY, documents))
    assert padded_sizes[0] > capacity  # the first pass did run out of memory
    assert sum(size <= capacity for size in padded_sizes) >= 2  # and the rest went through in smaller batches


def test_oom_on_a_single_prompt_is_a_rerank_error(tiny_model_dir, monkeypatch):
    import torch

    from qwen3_rerank_integrations import RerankError

    scorer = LocalScorer(str(tiny_model_dir), device="cpu").load()

    def always_oom(self, tails, prefix):
        raise torch.OutOfMemoryError("NPU out of memory")

    monkeypatch.setattr(LocalScorer, "_forward", always_oom)
    with pytest.raises(RerankError, match="out of memory"):
        scorer.score(QUERY, ["a"])


def test_non_oom_runtime_errors_propagate(tiny_model_dir, monkeypatch):
    scorer = LocalScorer(str(tiny_model_dir), device="cpu").load()

    def broken(self, tails, prefix):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(LocalScorer, "_forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        scorer.score(QUERY, ["a", "b"])


# ------------------------------------------------------------------------------------------------- loading
def test_missing_local_folder_says_what_was_tried(tmp_path):
    scorer = LocalScorer(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelLoadError, match="no such folder"):
        scorer.score(QUERY, ["a"])


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        LocalScorer(str(tmp_path)).load()


def test_a_file_is_not_a_model_folder(tiny_model_dir):
    scorer = LocalScorer(str(tiny_model_dir / "config.json"))
    with pytest.raises(ModelLoadError, match=r"is a file, not a folder; pass the folder .* e\.g\. '.*tiny-qwen3"):
        scorer.score(QUERY, ["a"])


def copy_without(tiny_model_dir, target, *names):
    import shutil

    shutil.copytree(tiny_model_dir, target, ignore=shutil.ignore_patterns(*names))
    return target


def test_folder_without_tokenizer_files_says_what_is_missing(tmp_path, tiny_model_dir):
    # transformers builds an empty tokenizer from such a folder ("yes" == "no" == id 0): once a ZeroDivisionError.
    target = copy_without(tiny_model_dir, tmp_path / "no-tokenizer", "tokenizer*", "vocab.json", "merges.txt")
    scorer = LocalScorer(str(target), device="cpu")
    missing = r"has no tokenizer files \(tokenizer\.json, or vocab\.json \+ merges\.txt"
    with pytest.raises(ModelLoadError, match=missing) as info:
        scorer.score(QUERY, ["a"])
    assert "hf download" in str(info.value) and not scorer.loaded


def test_an_empty_tokenizer_is_refused(tmp_path, tiny_model_dir):
    # The same empty tokenizer from a hub repo without tokenizer files: the encoder refuses it.
    from transformers import AutoTokenizer

    empty = AutoTokenizer.from_pretrained(copy_without(tiny_model_dir, tmp_path / "bare", "tokenizer*", "vocab.json",
                                                       "merges.txt"))
    with pytest.raises(ValueError, match="same id .* empty"):
        PromptEncoder(empty, 512)


def test_a_path_object_is_a_model_folder(tiny_model_dir, reference_model):
    by_path = LocalScorer(tiny_model_dir, device="cpu", dtype="float32")
    assert by_path.model == str(tiny_model_dir)
    assert LocalScorer(model=tiny_model_dir).model == str(tiny_model_dir)
    assert_close(by_path.score(QUERY, ["Beijing"]), reference_scores(*reference_model, QUERY, ["Beijing"]))


def test_max_length_above_the_context_is_refused_at_load(tiny_model_dir):
    scorer = LocalScorer(str(tiny_model_dir), device="cpu", max_length=8192)  # the tiny model reads 4096
    with pytest.raises(ValueError, match=r"max_length=8192 is more than .* context .* is 4096 tokens"):
        scorer.score(QUERY, ["a"])
    assert not scorer.loaded


def test_the_default_max_length_follows_a_smaller_context(local_scorer):
    # Left at its default (8192), max_length becomes the tiny model's 4096: the user asked for nothing impossible.
    assert "max_length" not in local_scorer.model_fields_set and local_scorer._encoder.max_length == 4096


def test_offline_hub_fails_at_once_and_says_why(monkeypatch):
    import time

    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py sets HF_HUB_OFFLINE=1
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"HF_HUB_OFFLINE=1: no download\).*hf download"):
        LocalScorer("Qwen/Qwen3-Reranker-does-not-exist").score(QUERY, ["a"])
    assert time.perf_counter() - started < 10
    # Online, a hub failure comes after retries: the message says how to skip them.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    online = ModelSource(model="Qwen/Qwen3-Reranker-does-not-exist").load_error("config", OSError("unreachable."))
    assert "then the Hugging Face hub): unreachable." in str(online)
    assert "modelscope" in str(online) and "set HF_HUB_OFFLINE=1 to get this error at once" in str(online)


def test_unreachable_hub_names_sources_and_fix():
    scorer = LocalScorer("Qwen/Qwen3-Reranker-does-not-exist", local_files_only=True)
    with pytest.raises(ModelLoadError) as info:
        scorer.score(QUERY, ["a"])
    message = str(info.value)
    assert "local folder (none), then the Hugging Face cache only (local_files_only=True: no download)" in message
    assert "pass its local folder" in message


def test_modelscope_source_without_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_modelscope(name, *args, **kwargs):
        if name == "modelscope":
            raise ImportError("No module named 'modelscope'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_modelscope)
    with pytest.raises(ModelLoadError, match="pip install modelscope"):
        LocalScorer("Qwen/Qwen3-Reranker-0.6B", source="modelscope").load()


def test_modelscope_source_downloads_then_loads(monkeypatch, tiny_model_dir):
    import sys
    import types

    calls = []
    fake = types.ModuleType("modelscope")

    def snapshot_download(model_id, revision=None, cache_dir=None):
        calls.append(model_id)
        return str(tiny_model_dir)

    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    scorer = LocalScorer("Qwen/Qwen3-Reranker-0.6B", source="modelscope", device="cpu")
    assert scorer.score(QUERY, ["Beijing"])[0] > 0
    assert calls and calls[0] == "Qwen/Qwen3-Reranker-0.6B"


def test_not_a_qwen3_causal_lm(tmp_path, minilm_dir):
    import shutil

    shutil.copytree(minilm_dir, tmp_path / "minilm")
    with pytest.raises(ModelLoadError, match="not a Qwen3"):
        LocalScorer(str(tmp_path / "minilm"), device="cpu").load()


def test_sequence_classification_conversion_is_refused(tmp_path, tiny_model_dir):
    import json
    import shutil

    target = tmp_path / "seqcls"
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["architectures"] = ["Qwen3ForSequenceClassification"]
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="sequence-classification"):
        LocalScorer(str(target), device="cpu").load()


def test_pickle_weights_are_never_loaded(tmp_path, tiny_model_dir):
    import shutil

    import torch
    from safetensors.torch import load_file

    target = tmp_path / "binonly"
    shutil.copytree(tiny_model_dir, target)
    state = load_file(str(target / "model.safetensors"))
    torch.save(state, target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    only_pickle = r"holds only pickle weights \(pytorch_model\.bin\); .*safetensors"
    with pytest.raises(ModelLoadError, match=only_pickle) as info:
        LocalScorer(str(target), device="cpu").load()
    assert "save_pretrained" in str(info.value) and "network" not in str(info.value)


def test_identical_and_prefix_sharing_documents(local_scorer, reference_model):
    # Prompts that share everything but their last token(s) exercise the shared-prefix cache's edge.
    docs = ["Beijing", "Beijing", "Beijing is", "Beijing is the capital"]
    assert_close(local_scorer.score(QUERY, docs), reference_scores(*reference_model, QUERY, docs))
    assert_close(local_scorer.score(QUERY, ["same"] * 3), local_scorer.score(QUERY, ["same"]) * 3)


# ------------------------------------------------------------------------------------------------- batching and reuse
def _prefix_tokens_computed(scorer, monkeypatch) -> list[int]:
    """Spy: the token count of every batch-1 pass that computes a shared prefix's keys/values."""
    from qwen3_rerank_integrations import local

    counts: list[int] = []
    original = local._new_prefix_cache

    def spy(prefix, layers, *, keep):
        cache = original(prefix, layers, keep=keep)
        if keep:
            counts.append(-1)  # the next pass computes a prefix; its length is filled in by the hook below
        return cache

    def hook(module, args, kwargs):
        if counts and counts[-1] == -1:
            counts[-1] = kwargs["input_ids"].shape[1]

    monkeypatch.setattr(local, "_new_prefix_cache", spy)
    scorer._model.base_model.register_forward_pre_hook(hook, with_kwargs=True)  # a test-local scorer: never removed
    return counts


def test_system_prompt_reused_across_calls_equals_reference(tiny_model_dir, reference_model, documents, monkeypatch):
    # The system prompt's keys/values are computed once (alone); each call computes the rest of its shared part
    # (instruction, query) on top of them; a single document computes no prefix at all.
    scorer = LocalScorer(str(tiny_model_dir), device="cpu").load()
    computed = _prefix_tokens_computed(scorer, monkeypatch)
    other = "Which city is the seat of the Chinese government?"
    instruction = "Given a question, find passages in Chinese that answer it"
    assert_close(scorer.score(QUERY, documents), reference_scores(*reference_model, QUERY, documents))
    assert_close(scorer.score(other, documents), reference_scores(*reference_model, other, documents))
    assert_close(scorer.score(other, documents, instruction=instruction),
                 reference_scores(*reference_model, other, documents, instruction=instruction))
    assert_close(scorer.score(other, documents[:1], instruction=instruction),
                 reference_scores(*reference_model, other, documents[:1], instruction=instruction))
    system = len(scorer._ensure_encoder().prefix_ids)
    assert computed[0] == system and len(computed) == 4  # system once, then one rest per multi-document call
    assert all(0 < rest for rest in computed[1:])


@pytest.mark.slow  # four model loads; fast: test_system_prompt_reused_across_calls_equals_reference
def test_scores_do_not_depend_on_earlier_calls(tiny_model_dir, documents):
    # A warm scorer (system prompt kept, other queries and instructions scored before) and a fresh one give the
    # same floats, bit for bit, in any call order: the prefix is always split the same way.
    warm = LocalScorer(str(tiny_model_dir), device="cpu").load()
    warm.score("an unrelated query that shares the instruction", documents)
    warm.score(QUERY, documents[:1], instruction="Another instruction")
    for query in (QUERY, "capital", QUERY):
        fresh = LocalScorer(str(tiny_model_dir), device="cpu").load()
        assert warm.score(query, documents) == fresh.score(query, documents)
        assert warm.score(query, documents[3:4]) == fresh.score(query, documents[3:4])


@pytest.mark.slow  # fast: test_batched_equals_reference, test_tiny_batches_equal_one_big_batch
def test_mixed_lengths_in_several_padded_batches_equal_reference(tiny_model_dir, reference_model, monkeypatch):
    # Lengths from 1 to ~300 tokens: several batches, some padded, some single rows.
    docs = ["Beijing " * n for n in (0, 1, 2, 3, 40, 41, 45, 60, 150, 151, 160, 300)]
    scorer = LocalScorer(str(tiny_model_dir), device="cpu").load()
    shapes: list[tuple[int, int]] = []
    real_forward = scorer._forward

    def spy(self, tails, prefix):
        shapes.append((len(tails), max(len(t) for t in tails)))
        return real_forward(tails, prefix)

    monkeypatch.setattr(LocalScorer, "_forward", spy)
    assert_close(scorer.score(QUERY, docs), reference_scores(*reference_model, QUERY, docs))
    assert len(shapes) >= 4 and any(rows > 1 for rows, _ in shapes)


def test_batch_plan_bounds_padding_budget_and_size():
    from qwen3_rerank_integrations.local import _batch_size

    lengths = [100, 99, 95, 80, 79, 10, 9, 9, 9]
    assert _batch_size(lengths, 0, 64, 100, 0.1) == 5  # 47 of 500 tokens padding; the 10 would make it 137/600
    assert _batch_size(lengths, 0, 64, 100, 0.05) == 3  # 80 would pad 26 of 400 tokens
    assert _batch_size(lengths, 0, 64, 100, 0.5) == 9
    assert _batch_size(lengths, 0, 2, 100, 0.5) == 2  # batch_size
    assert _batch_size(lengths, 0, 64, 1, 0.5) == 1  # token budget
    assert _batch_size(lengths, 5, 64, 100, 0.1) == 4  # the short tail of the list
    assert _batch_size(lengths, 8, 64, 100, 0.0) == 1  # the last prompt alone


def test_a_pass_keeps_no_keys_or_values_beyond_the_prefix():
    # Scoring needs a layer's keys/values only inside that layer: the cache must hand out prefix + new tokens
    # without storing them (storing all 28 layers' was most of the old peak memory).
    import torch

    from qwen3_rerank_integrations.local import _new_prefix_cache

    keys, values = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    cache = _new_prefix_cache([(keys, values)], 1, keep=False)
    new_k, new_v = torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4)
    joined_k, joined_v = cache.layers[0].update(new_k, new_v)
    assert joined_k.shape == joined_v.shape == (3, 2, 12, 4)
    assert torch.equal(joined_k[2, :, :5], keys[0]) and torch.equal(joined_v[1, :, 5:], new_v[1])
    assert cache.layers[0].keys is keys and cache.get_seq_length() == 5
    kept = _new_prefix_cache(None, 1, keep=True)
    kept.layers[0].update(keys, values)
    assert kept.layers[0].keys is keys and kept.get_seq_length() == 5
