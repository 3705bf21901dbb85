"""The batch API on Ray (qwen3_rerank_integrations.batch.score_groups_on_ray): Ray Data over actors that each hold
an unpickled scorer, on a small local cluster started once for this module (2 CPUs).

The same scores as the single-process run (to 1e-6 in fp32), the score cache read first (only what it lacks goes to
the actors) and written back, an actor killed mid-run retried by Ray with nothing lost, and ``qwen3-rerank eval
--ray`` on the same files as without. Skips where Ray is missing, fails instead under .ci/run (marker ``ray``)."""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from pathlib import Path

import pytest

from qwen3_rerank_integrations import InMemoryScoreCache, LocalScorer, ScorerBase, VLLMScorer
from qwen3_rerank_integrations.batch import RayOptions, ScoreGroup, score_groups
from tests.conftest import skip_or_fail
from tests.vllm_standin import VLLMStandIn

# Slow too: each test starts Ray Data and actors on a local cluster (68–82 s for the four), so the fast loop skips them.
pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
SMALL = {"num_cpus": 0.5, "batch_size": 2}  # two actors fit in the 2-CPU cluster with room for Ray Data


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for the module (workers import this checkout's tests/ for the test scorers)."""
    try:
        import ray
        import ray.data
    except ImportError:
        skip_or_fail("ray", "Ray Data is not installed: pip install 'qwen3-rerank-integrations[ray]'")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved]))  # inherited by Ray's workers
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"\nRay cluster set-up: {time.perf_counter() - started:.1f} s")
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def by_text(query: str, document: str) -> float:
    text = document.split("<Document>: ", 1)[-1].split("<|im_end|>", 1)[0]
    return (zlib.crc32(f"{query}|{text}".encode()) % 1000) / 1000


def groups_of(count: int, docs: int = 3) -> list[ScoreGroup]:
    return [ScoreGroup(query=f"query {q}", documents=[f"document {q}.{d} about Beijing" for d in range(docs)],
                       instruction=None if q % 2 else "Find passages") for q in range(count)]


class DiesOnce(ScorerBase):
    """Scores from the text; the first actor to score ``query 3`` dies (os._exit), as a lost node's would."""

    marker: str

    def _score_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        if query == "query 3" and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return [by_text(f"{instruction}|{query}", d) for d in documents]

    def cache_identity(self) -> dict[str, str]:
        return {"scorer": "dies-once"}


def test_local_model_actors_give_the_single_process_scores_and_fill_the_cache(ray_cluster, tiny_model_dir):
    scorer = LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32")
    groups = groups_of(6, docs=4)
    expected = score_groups(scorer, groups).scores
    cache = InMemoryScoreCache()
    result = score_groups(scorer, groups, cache=cache, ray=RayOptions(num_actors=1, **SMALL))
    assert len(result.scores) == 6 and result.cached == [False] * 6
    for got, want in zip(result.scores, expected):
        assert got == pytest.approx(want, abs=1e-6)
    assert len(cache) == 24
    again = score_groups(scorer, groups, cache=cache, ray=RayOptions(num_actors=1, **SMALL))
    assert again.scores == result.scores and all(again.cached)  # all from the cache: Ray not even asked


def test_only_what_the_cache_lacks_goes_to_the_actors(ray_cluster):
    server = VLLMStandIn("legacy", score_override=by_text)
    try:
        groups = groups_of(8)
        with VLLMScorer(server.base_url, template="client", max_length=4096) as scorer:
            expected = score_groups(scorer, groups).scores
            cache = InMemoryScoreCache()
            score_groups(scorer, groups[:5], cache=cache)  # an earlier run, killed after 5 groups
            server.reset()
            result = score_groups(scorer, groups, cache=cache, ray=RayOptions(num_actors=2, **SMALL))
        assert result.scores == expected
        assert result.cached == [True] * 5 + [False] * 3 and result.pairs_scored == 9
        asked = sorted(re.search(r"query \d+", json.dumps(r.json)).group() for r in server.scoring_requests())
        assert asked == ["query 5", "query 6", "query 7"]
    finally:
        server.close()


def test_an_actor_killed_mid_run_costs_no_group(ray_cluster, tmp_path):
    groups = groups_of(8)
    marker = tmp_path / "killed"
    done = tmp_path / "already-died"
    done.touch()
    expected = score_groups(DiesOnce(marker=str(done)), groups).scores  # here, in this process: no death
    cache = InMemoryScoreCache()
    result = score_groups(DiesOnce(marker=str(marker)), groups, cache=cache, ray=RayOptions(num_actors=2, **SMALL))
    assert marker.exists()  # an actor did die
    assert result.scores == expected and len(cache) == 24


def test_eval_on_ray_writes_the_files_of_the_single_process_run(ray_cluster, tmp_path, monkeypatch):
    from contextlib import nullcontext

    from typer.testing import CliRunner

    from qwen3_rerank_integrations.cli import app
    from qwen3_rerank_integrations.evaluation import EvalConfig, run_evaluation
    from tests.test_eval import BEIR_MINI, HashScorer, hashed_first_stage, output_files

    first = hashed_first_stage(tmp_path / "first.trec")
    config = EvalConfig(data=BEIR_MINI, output=tmp_path / "here", run_file=first, top_k=[5])
    here = run_evaluation(config, HashScorer())
    on_ray = run_evaluation(config.model_copy(update={"output": tmp_path / "ray"}), HashScorer(),
                            ray=RayOptions(num_actors=2, **SMALL))
    assert output_files(tmp_path / "ray") == output_files(tmp_path / "here")
    assert on_ray.metrics() == here.metrics() and on_ray.pairs_scored == here.pairs_scored

    # The command: --ray local uses the cluster this process already joined (the module's).
    monkeypatch.setattr("qwen3_rerank_integrations.cli.eval.open_scorer", lambda *a, **k: nullcontext(HashScorer()))
    result = CliRunner().invoke(app, ["eval", str(BEIR_MINI), "-o", str(tmp_path / "cli"), "--run", str(first),
                                      "--top-k", "5", "--ray", "local", "--ray-actors", "1"])
    assert result.exit_code == 0, result.output
    assert output_files(tmp_path / "cli") == output_files(tmp_path / "here")
