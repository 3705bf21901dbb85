"""A resumed eval ends with the very bytes of an uninterrupted one, whatever its score cache holds.

A model's fp32 rounding depends on which documents share a batch (and a lone prompt splits its shared prefix
elsewhere): ~1e-7 on a score, enough to change the written files. So the rerank stage scores each (query,
instruction) as one call over the query's whole candidate list, and uses the cache only when it holds every
score of that call; a cache holding part of a call (left by a run at a smaller --top-k, or written by another
tool) is scored whole again and overwritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qwen3_rerank_integrations import LocalScorer
from qwen3_rerank_integrations.cache import DiskScoreCache, score_keys
from qwen3_rerank_integrations.evaluation import EvalConfig, load_beir, read_run, run_evaluation
from qwen3_rerank_integrations.scorer import instruction_in_use
from tests.test_eval import BEIR_MINI, hashed_first_stage, output_files

INSTRUCTIONS = [None, "Given a question, retrieve passages that answer it"]


def cached_pairs(scorer: LocalScorer, output: Path, depth: int) -> dict[str, float]:
    """Every (query, instruction, document) score of a finished run's cache, by key, in call order."""
    data = load_beir(BEIR_MINI)
    first = read_run(output / "runs" / "first_stage.trec", data.corpus)
    identity = scorer.cache_identity()
    entries: dict[str, float] = {}
    with DiskScoreCache(output / "score-cache") as cache:
        for query_id, query in data.queries.items():
            texts = [data.corpus[doc_id] for doc_id, _ in first[query_id][:depth]]
            for instruction in INSTRUCTIONS:
                keys = score_keys(identity, instruction_in_use(scorer, instruction), query, texts)
                entries.update(zip(keys, cache.get_many(keys)))
    return entries


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory, qwen_tokenizer_dir) -> Path:
    """A random Qwen3 of the size the issue saw resumed files differ with: 6 layers, 384 wide."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = tmp_path_factory.mktemp("wide-qwen3-reranker")
    config = Qwen3Config(
        vocab_size=151669, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
        head_dim=64, intermediate_size=1024, max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=True,
        architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(path, safe_serialization=True)
    shutil.copytree(qwen_tokenizer_dir, path, dirs_exist_ok=True)  # as published: loads faster than a re-save
    return path


@pytest.mark.parametrize("model", ["tiny", pytest.param("wide", marks=pytest.mark.slow)])
def test_a_cache_holding_part_of_each_call_resumes_to_the_same_files(tmp_path, request, model):
    folder = request.getfixturevalue(f"{model}_model_dir")
    scorer = LocalScorer(str(folder), device="cpu", dtype="float32")
    first = hashed_first_stage(tmp_path / "first.trec")
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "fresh", run_file=first, top_k=[6],
                        instructions=INSTRUCTIONS, labels=["default", "qa"])
    fresh = run_evaluation(config, scorer)
    assert fresh.pairs_scored == fresh.pairs == 20 * 2 * 6

    # The interrupted run's cache: every third call whole, the others without their last document, as a run that
    # persisted part of a call would leave them. Before, resuming scored each missing document alone.
    entries = list(cached_pairs(scorer, tmp_path / "fresh", 6).items())
    whole = [call for call in range(40) if call % 3 == 0]
    kept = {key: value for position, (key, value) in enumerate(entries)
            if position // 6 in whole or position % 6 != 5}
    resumed_dir = tmp_path / "resumed"
    with DiskScoreCache(resumed_dir / "score-cache") as cache:
        cache.set_many(kept)
    notices: list[str] = []
    resumed = run_evaluation(config.model_copy(update={"output": resumed_dir}), scorer, log=notices.append)

    assert output_files(resumed_dir) == output_files(tmp_path / "fresh")
    assert resumed.pairs_cached == len(whole) * 6 and resumed.pairs_scored == 240 - len(whole) * 6
    assert f"the score cache holds {len(whole) * 6} of 240 pairs from an earlier run" in " ".join(notices)
    # The partial calls were scored whole and written over: the cache now holds the fresh run's numbers.
    assert cached_pairs(scorer, resumed_dir, 6) == dict(entries)
