"""Helpers the adapter tests share: a recording scorer, a scripted scorer, the corpus, the import check."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

QUERY = "Which city is the capital of China?"
TOLERANCE = 1e-5
INSTRUCTION = "Given a geography question, retrieve passages naming the city asked for"
SECRET = "sk-adapter-secret-0123456789"

# (text, metadata): a small corpus on a few topics, so MiniLM retrieval is meaningful and the reranker has
# near-misses to reorder.
CORPUS = [
    ("Beijing is the capital of the People's Republic of China.", {"source": "geo", "lang": "en"}),
    ("北京是中华人民共和国的首都。", {"source": "geo", "lang": "zh"}),
    ("Shanghai is the largest city in China by population.", {"source": "geo", "lang": "en"}),
    ("The capital of France is Paris 🇫🇷, famous for the Eiffel tower.", {"source": "geo", "lang": "en"}),
    ("Gravity is a force by which a planet draws objects toward its center.", {"source": "physics", "lang": "en"}),
    ("The Forbidden City in Beijing was the palace of Chinese emperors.", {"source": "history", "lang": "en"}),
    ("Server hardening reduces the attack surface of a machine.", {"source": "security", "lang": "en"}),
    ("Nanjing served as the capital of China during several dynasties.", {"source": "history", "lang": "en"}),
    ("العاصمة السعودية هي الرياض", {"source": "geo", "lang": "ar"}),
]
RETRIEVE_K = 6
# (conftest fixture, VLLMScorer template): a server without the score template, and one started with it.
VLLM_MODES = [("vllm_legacy_server", "client"), ("vllm_template_server", "server")]


def assert_close(actual: Sequence[float], expected: Sequence[float]) -> None:
    assert len(actual) == len(expected)
    worst = max((abs(a - b) for a, b in zip(actual, expected)), default=0.0)
    assert worst <= TOLERANCE, f"max abs diff {worst:.2e} > {TOLERANCE}: {list(actual)} vs {list(expected)}"


def expected_ranking(scores: Sequence[float], top_n: int | None, threshold: float | None = None) -> list[int]:
    """Positions best first, ties in input order, written independently of the package's rank()."""
    positions = list(range(len(scores)))
    positions.sort(key=lambda i: (-scores[i], i))
    positions = [i for i in positions if threshold is None or scores[i] >= threshold]
    return positions if top_n is None else positions[:top_n]


def median_threshold(scores: Sequence[float]) -> float:
    """A threshold halfway between the two middle scores: about half pass, and none sits on the edge where
    a 1e-6 difference between backends would flip it."""
    ordered = sorted(scores)
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2


class RecordingScorer:
    """Delegates to a real scorer and records which method was called with what."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.model = getattr(inner, "model", "recording")

    def score(self, query, documents, *, instruction=None):
        self.calls.append(("score", query, list(documents), instruction))
        return self.inner.score(query, documents, instruction=instruction)

    async def ascore(self, query, documents, *, instruction=None):
        self.calls.append(("ascore", query, list(documents), instruction))
        return await self.inner.ascore(query, documents, instruction=instruction)


class ScriptedScorer:
    """Answers with fixed scores (or raises), to pin down ranking and error handling exactly."""

    model = "scripted"

    def __init__(self, scores=None, error: BaseException | None = None) -> None:
        self.scores, self.error, self.calls = scores, error, 0

    def score(self, query, documents, *, instruction=None):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return list(self.scores) if self.scores is not None else [0.5] * len(documents)

    async def ascore(self, query, documents, *, instruction=None):
        return self.score(query, documents, instruction=instruction)


def heavy_modules_after_import(module: str) -> list[str]:
    """Import ``module`` in a fresh interpreter; return which heavy/foreign top-level packages it pulled in."""
    code = (
        f"import sys, {module}\n"
        "heavy = ('torch', 'transformers', 'httpx', 'langchain_core', 'llama_index', 'sentence_transformers')\n"
        "print(' '.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return done.stdout.split()
