"""The batch API (qwen3_rerank_integrations.batch): many groups with one scorer, a bounded number in flight, every
group's scores those of scorer.score on that group alone, in input order; the score cache read per whole group
and written as each group returns, so a run killed part-way resumes with the same numbers.

Ray: tests/test_ray.py. Eval through this API: tests/test_eval.py, tests/test_eval_resume.py."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib

import pytest

from qwen3_rerank_integrations import InMemoryScoreCache, RerankError, ScorerBase, VLLMScorer
from qwen3_rerank_integrations.batch import (
    GroupCache,
    ScoreGroup,
    ascore_groups,
    default_concurrency,
    score_groups,
)
from tests.vllm_standin import VLLMStandIn


def by_text(query: str, document: str) -> float:
    """A score from the query and the document text alone (not the prompt around them)."""
    text = document.split("<Document>: ", 1)[-1].split("<|im_end|>", 1)[0]
    return (zlib.crc32(f"{query}|{text}".encode()) % 1000) / 1000


class Slow(ScorerBase):
    """A scorer that takes a while per call and records how many calls were in flight at once (a scorer that
    computes here: the batch API runs its ``score`` on worker threads)."""

    delay: float = 0.02
    # Calls wait (up to 10 s) until this many were in flight at once, so the peak does not depend on how fast
    # threads start on a loaded machine: a bound that is too low times out below it, one too high goes past it.
    meet: int = 0

    def model_post_init(self, context: object) -> None:
        self._now = self._most = self._calls = 0
        self._count = threading.Condition()

    def _score_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        with self._count:
            self._now += 1
            self._calls += 1
            self._most = max(self._most, self._now)
            self._count.notify_all()
            self._count.wait_for(lambda: self._most >= self.meet, timeout=10)
        time.sleep(self.delay)
        with self._count:
            self._now -= 1
        return [by_text(f"{instruction}|{query}", d) for d in documents]

    def cache_identity(self) -> dict[str, str]:
        return {"scorer": "slow"}


def groups_of(count: int, docs: int = 3) -> list[ScoreGroup]:
    return [ScoreGroup(query=f"query {q}", documents=[f"document {q}.{d}" for d in range(docs)],
                       instruction=None if q % 2 else "Find passages") for q in range(count)]


def test_each_groups_scores_are_those_of_the_scorer_on_that_group_alone_in_input_order(local_scorer):
    groups = [ScoreGroup(query="capital of China", documents=["Beijing is the capital.", "Gravity.", ""]),
              {"query": "gravity", "documents": ["Gravity pulls.", "北京是首都。"], "instruction": "Find physics"},
              ScoreGroup(query="empty", documents=[])]
    expected = [local_scorer.score(g.query, g.documents, instruction=g.instruction)
                for g in (ScoreGroup.model_validate(g) if isinstance(g, dict) else g for g in groups)]
    for concurrency in (1, 3):
        result = score_groups(local_scorer, groups, concurrency=concurrency)
        assert result.scores == expected and result.cached == [False, False, False]
        assert result.pairs_scored == 5 and result.pairs_cached == 0


def test_at_most_concurrency_groups_are_in_flight_and_the_order_does_not_change_the_result():
    groups = groups_of(20)
    one = Slow()
    expected = score_groups(one, groups, concurrency=1)
    assert one._most == 1
    for width in (4, 32):
        scorer = Slow(meet=min(width, 20))
        assert score_groups(scorer, groups, concurrency=width).scores == expected.scores
        assert scorer._most == min(width, 20) and scorer._calls == 20


def test_the_default_keeps_remote_replicas_busy_and_a_local_model_on_one_call_at_a_time(local_scorer):
    assert default_concurrency(local_scorer) == 1 and default_concurrency(Slow()) == 1
    assert default_concurrency(VLLMScorer("http://localhost:8000")) == 8
    urls = [f"http://replica-{i}:8000" for i in range(6)]
    assert default_concurrency(VLLMScorer(urls)) == 12


def test_replicas_each_get_work_and_the_scores_equal_one_server_ones():
    servers = [VLLMStandIn("legacy", score_override=by_text) for _ in range(4)]
    try:
        for server in servers:
            server.latency, server.capacity = 0.02, 1
        groups = groups_of(16, docs=4)
        with VLLMScorer(servers[0].base_url, template="client", max_length=4096) as one:
            expected = [one.score(g.query, g.documents, instruction=g.instruction) for g in groups]
        for server in servers:
            server.reset()
            server.latency, server.capacity = 0.02, 1
        with VLLMScorer([s.base_url for s in servers], template="client", max_length=4096) as fleet:
            result = score_groups(fleet, groups)
        assert result.scores == expected
        assert all(server.scoring_requests() for server in servers)  # no replica sat idle
    finally:
        for server in servers:
            server.close()


def test_the_cache_is_read_per_whole_group_and_written_as_each_group_returns():
    groups = groups_of(6)
    cache = InMemoryScoreCache()
    first = Slow()
    fresh = score_groups(first, groups, cache=cache, concurrency=3)
    assert len(cache) == 18 and first._calls == 6

    # A group missing one score is scored whole again, and every score of it rewritten.
    store = GroupCache(scorer=first, cache=cache)
    keys = store.keys(groups[2])
    cache.set_many({keys[-1]: 2.0})  # not a probability: as good as missing
    again = Slow()
    resumed = score_groups(again, groups, cache=cache, concurrency=3)
    assert resumed.scores == fresh.scores and again._calls == 1
    assert resumed.cached == [True, True, False, True, True, True]
    assert (resumed.pairs_cached, resumed.pairs_scored) == (15, 3)
    assert store.get(groups[2]) == fresh.scores[2]


def test_a_run_killed_part_way_resumes_from_the_cache_with_the_same_scores():
    groups = groups_of(10)
    reference = score_groups(Slow(), groups)

    class Failing(Slow):
        def _score_texts(self, query, documents, instruction):
            if query == "query 6":
                raise RuntimeError("the GPU fell off the bus")
            return super()._score_texts(query, documents, instruction)

    cache = InMemoryScoreCache()
    with pytest.raises(RerankError, match="the GPU fell off the bus"):
        score_groups(Failing(), groups, cache=cache, concurrency=1)
    assert len(cache) == 6 * 3  # the groups before the failure are kept
    again = Slow()
    resumed = score_groups(again, groups, cache=cache, concurrency=4)
    assert resumed.scores == reference.scores and again._calls == 4 and resumed.pairs_cached == 18


def test_progress_callback_sees_every_group_once_with_where_its_scores_came_from():
    groups = groups_of(5)
    cache = InMemoryScoreCache()
    score_groups(Slow(), groups[:2], cache=cache)
    seen: list[tuple[int, bool]] = []
    result = score_groups(Slow(), groups, cache=cache, concurrency=2,
                          on_group=lambda index, scores, cached: seen.append((index, cached)))
    assert sorted(seen) == [(0, True), (1, True), (2, False), (3, False), (4, False)]
    assert [len(s) for s in result.scores] == [3] * 5


@pytest.mark.parametrize(("groups", "error", "message"), [
    ([{"query": "q", "documents": ["a"]}, {"query": "q", "documents": ["a", 3]}], TypeError,
     r"groups\[1\]: documents\[1\] must be a str"),
    ([{"query": " ", "documents": ["a"]}], ValueError, r"groups\[0\]: query must not be empty"),
    ([("q", ["a"])], TypeError, r"groups\[0\] must be a ScoreGroup or a dict"),
    ([{"query": "q", "documents": ["a"], "top_n": 3}], ValueError, r"groups\[0\] has unknown keys \['top_n'\]"),
    ({"query": "q", "documents": ["a"]}, TypeError, "got a single dict; wrap it in a list"),
])
def test_bad_groups_are_refused_naming_the_group_before_any_scoring(groups, error, message):
    scorer = Slow()
    with pytest.raises(error, match=message):
        score_groups(scorer, groups)
    assert scorer._calls == 0


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True])
def test_a_concurrency_that_is_not_a_positive_int_is_refused(concurrency):
    with pytest.raises(ValueError, match="concurrency must be a positive int"):
        score_groups(Slow(), groups_of(2), concurrency=concurrency)


def test_a_cache_with_a_scorer_without_identity_is_refused():
    class Bare:
        def score(self, query, documents, *, instruction=None):
            return [0.5] * len(documents)

    with pytest.raises(TypeError, match="has no cache_identity"):
        score_groups(Bare(), groups_of(1), cache=InMemoryScoreCache())
    assert score_groups(Bare(), groups_of(1)).scores == [[0.5, 0.5, 0.5]]  # a score-only scorer works


async def test_the_async_api_and_the_sync_one_inside_a_running_loop_give_the_same_scores():
    groups = groups_of(4)
    expected = (await ascore_groups(Slow(), groups, concurrency=2)).scores
    assert score_groups(Slow(), groups).scores == expected  # a loop runs here: the sync API uses a thread


def test_scale_page_runs_over_four_replicas_and_its_second_run_reads_the_cache(capsys):
    from tests.doc_blocks import ROOT, blocks_to_run, run_blocks

    servers = [VLLMStandIn("legacy", score_override=by_text) for _ in range(4)]
    try:
        urls = ["http://gpu-a:8000", "http://gpu-b:8000", "http://gpu-c:8000", "http://gpu-d:8000"]
        replace = {url: server.base_url for url, server in zip(urls, servers)}
        with run_blocks(blocks_to_run(ROOT / "docs/scale.md", "scale"), "docs_scale", replace=replace) as namespace:
            result = namespace["result"]
        assert capsys.readouterr().out.splitlines()[-2:] == ["101 801", "801 True"]
        with VLLMScorer(servers[0].base_url, template="client") as one:
            assert result.scores[-1] == one.score("What is the capital of China?", ["Beijing is the capital of China."],
                                                  instruction="Given a question, retrieve passages that answer it")
        assert all(server.scoring_requests() for server in servers)
    finally:
        for server in servers:
            server.close()


# ------------------------------------------------------------------------------------------------ eval's options
def test_eval_concurrency_gives_the_files_of_one_call_at_a_time_and_ray_options_are_checked(tmp_path, monkeypatch):
    from contextlib import nullcontext

    from typer.testing import CliRunner

    from qwen3_rerank_integrations.cli import app
    from tests.test_eval import BEIR_MINI, HashScorer, hashed_first_stage, output_files

    seen: list[int | None] = []
    monkeypatch.setattr("qwen3_rerank_integrations.cli.eval.open_scorer", lambda *a, **k: nullcontext(HashScorer()))
    run = __import__("qwen3_rerank_integrations.cli.eval", fromlist=["run_evaluation"]).run_evaluation

    def recording_run(*args, **kwargs):
        seen.append(kwargs["concurrency"])
        return run(*args, **kwargs)

    monkeypatch.setattr("qwen3_rerank_integrations.cli.eval.run_evaluation", recording_run)
    first = hashed_first_stage(tmp_path / "first.trec")
    runner = CliRunner()
    base = ["eval", str(BEIR_MINI), "--run", str(first), "--top-k", "5", "--instruction", "default",
            "--instruction", "Find answers"]
    for name, extra in (("one", ["--concurrency", "1"]), ("many", ["--concurrency", "6"])):
        result = runner.invoke(app, [*base, "-o", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    assert seen == [1, 6]
    assert output_files(tmp_path / "one") == output_files(tmp_path / "many")

    for extra, message in ((["--ray-actors", "3"], "--ray-actors: only with --ray ADDRESS"),
                           (["--ray", "local", "--concurrency", "2"], "--concurrency applies without --ray"),
                           (["--concurrency", "0"], "--concurrency")):
        result = runner.invoke(app, [*base, "-o", str(tmp_path / "bad"), *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    assert seen == [1, 6]  # nothing ran


def test_without_ray_the_ray_options_name_the_ray_extra_before_any_work(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from qwen3_rerank_integrations import MissingDependencyError
    from qwen3_rerank_integrations.batch import RayOptions
    from qwen3_rerank_integrations.cli import app
    from tests.test_eval import BEIR_MINI

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    scorer = Slow()
    with pytest.raises(MissingDependencyError, match=r"needs ray, which is not installed: .*\[ray\]"):
        score_groups(scorer, groups_of(2), ray=RayOptions())
    assert scorer._calls == 0
    result = CliRunner().invoke(app, ["eval", str(BEIR_MINI), "-o", str(tmp_path / "out"), "--run", "x.trec",
                                      "--ray", "auto"])
    assert result.exit_code == 3 and "qwen3-rerank eval --ray needs ray" in result.output, result.output
    assert not (tmp_path / "out").exists()
