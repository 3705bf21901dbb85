"""How much a bf16 score depends on how its call was batched: bounded by the documented residue (fp32: exact to
1e-6 whatever the batching), so a cached or resumed bf16 score never disagrees with a fresh one by more."""

from __future__ import annotations

import pytest

from qwen3_rerank_integrations import LocalScorer

# docs/local-scorer.md#stable-scores: bf16 scores move by at most this with batching, order or thread count
# (measured 3.5e-3 on this model: benchmarks/bf16_stability.py), the same bound check-device holds bf16 to.
BF16_BATCHING_RESIDUE = 0.02
FP32_BATCHING_RESIDUE = 1e-6

QUERY = "What is the capital of China?"
FILLER = [f"Filler passage {i}: " + "the ocean current near the coast " * (1 + i % 5) for i in range(8)]


@pytest.fixture(scope="module")
def bf16_scorer(tiny_model_dir):
    return LocalScorer(str(tiny_model_dir), device="cpu", dtype="bfloat16").load()


@pytest.mark.parametrize(("dtype", "bound"), [("float32", FP32_BATCHING_RESIDUE), ("bfloat16", BF16_BATCHING_RESIDUE)])
def test_scores_depend_on_batching_by_at_most_the_documented_residue(
    tiny_model_dir, local_scorer, bf16_scorer, documents, dtype, bound
):
    scorer = local_scorer if dtype == "float32" else bf16_scorer
    together = scorer.score(QUERY, documents)
    alone = [scorer.score(QUERY, [doc])[0] for doc in documents]
    mixed = scorer.score(QUERY, FILLER[:4] + documents[::-1] + FILLER[4:])[4 : 4 + len(documents)][::-1]
    for other in (alone, mixed):
        assert max(abs(a - b) for a, b in zip(together, other)) <= bound


def test_bf16_scores_of_one_call_repeat_exactly(bf16_scorer, documents):
    # The same call twice gives the same bits: a score cache hit equals what the call would compute again.
    assert bf16_scorer.score(QUERY, documents) == bf16_scorer.score(QUERY, documents)


def test_score_cache_keeps_bf16_and_fp32_scores_apart(tiny_model_dir):
    fp32 = LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32")
    bf16 = LocalScorer(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert fp32.cache_identity()["dtype"] == "float32" and bf16.cache_identity()["dtype"] == "bfloat16"
