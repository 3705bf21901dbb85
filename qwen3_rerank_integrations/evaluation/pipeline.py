"""Measure a reranker on a labelled collection: first stage, rerank per instruction and depth, metrics, files.

:func:`run_evaluation` takes a BEIR folder and a scorer (any :class:`~qwen3_rerank_integrations.Scorer`: local
model, vLLM server, engine) and writes into the output folder:

- ``runs/<system>.trec``: one TREC run per system, ``first_stage`` first, then one per (instruction, depth);
- ``metrics.json``: ``{system: {measure: value}}`` as ir-measures names and computes them from those files;
- ``metrics.md`` (a markdown table), ``metrics.png`` (a bar chart), ``settings.json`` (what produced them);
- ``score-cache/``: every score, persisted as it is computed, so a run that is killed and started again scores
  only what it does not have yet and ends with the same files.

A reranked system reorders the first stage's top k by the scorer's scores; when several depths are asked for,
the documents below k follow in their first-stage order (scores below the reranked ones), so every system ranks
the same candidates and recall at the deepest k is the same for all.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..batch import GroupCache, RayOptions, ScoreGroup, score_groups
from ..cache import ScoreCache
from ..errors import ModelLoadError
from ..scorer import Scorer, scorer_name, validate_inputs
from .data import BeirData, Run, load_beir, ranked, read_run, write_atomic, write_run
from .needs import require_packages
from .report import DEFAULT_MEASURES, compute_metrics, markdown_table, parse_measures, render_chart

__all__ = [
    "DEFAULT_EMBED_MODEL",
    "DEFAULT_TOP_K",
    "FIRST_STAGE",
    "EvalConfig",
    "EvalReport",
    "SystemResult",
    "dense_first_stage",
    "run_evaluation",
]

DEFAULT_EMBED_MODEL = "BAAI/bge-small-en-v1.5"
# The model card's MTEB-R reranks the top 100 of a dense first stage.
DEFAULT_TOP_K = 100
FIRST_STAGE = "first_stage"
# System names become file names (runs/<name>.trec): letters, digits, '.', '_', '-', starting with a letter or digit.
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class EvalConfig(BaseModel):
    """What to evaluate: the data, the first stage, the instructions and depths to rerank at, the measures."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.")
    output: Path = Field(description="Folder for runs/, metrics.json, metrics.md, metrics.png and the score cache.")
    split: str = Field("test", description="Which qrels file to evaluate: qrels/<split>.tsv.")
    embed_model: str | None = Field(
        None,
        description=f"First stage: a sentence-transformers id or folder (default {DEFAULT_EMBED_MODEL}); "
        "cosine similarity over the whole corpus. Not with run_file.",
    )
    run_file: Path | None = Field(
        None, description="First stage: a TREC run file you already have, instead of dense retrieval."
    )
    top_k: list[int] = Field(
        [DEFAULT_TOP_K], min_length=1,
        description="How many first-stage documents per query to rerank; several depths give one system each.",
    )
    instructions: list[str | None] = Field(
        [None], min_length=1,
        description="Task instructions to compare, one system each; None is the scorer's default (the model "
        "card's web-search instruction).",
    )
    labels: list[str] | None = Field(
        None,
        description="A name per instruction (letters, digits, '.', '_', '-'); default 'rerank' for one "
        "instruction, 'rerank-1', 'rerank-2'... for several.",
    )
    measures: list[str] | None = Field(
        None,
        description="ir-measures names (nDCG@10, RR@10, R@100, AP...); default nDCG@10, RR@10, R@10 and R@k "
        "for each depth k.",
    )
    device: str = Field("auto", description="Where the embedding model runs: 'auto', 'cuda:0', 'npu', 'cpu'...")
    embed_batch_size: int = Field(32, gt=0, description="Texts per batch of the embedding model.")

    @field_validator("output")
    @classmethod
    def _output_folder(cls, value: Path) -> Path:
        check_output_folder(value)
        return value

    @field_validator("top_k")
    @classmethod
    def _depths(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"top_k must be at least 1, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"top_k lists a depth twice: {value}")
        return value

    @field_validator("instructions")
    @classmethod
    def _instructions(cls, value: list[str | None]) -> list[str | None]:
        for instruction in value:
            validate_inputs("query", [], instruction)  # the scorers' own check and message
        if len(set(value)) != len(value):
            raise ValueError("instructions lists the same instruction twice")
        return value

    @field_validator("measures")
    @classmethod
    def _measures(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("measures must name at least one measure, or be None for the default")
            parse_measures(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        if self.run_file is not None and self.embed_model is not None:
            raise ValueError("embed_model (--embed-model) and run_file (--run) are two first stages: give one")
        if self.labels is not None:
            if len(self.labels) != len(self.instructions):
                raise ValueError(f"{len(self.labels)} labels (--label) for {len(self.instructions)} "
                                 "instructions (--instruction): give one label per instruction")
            for label in self.labels:
                if not _LABEL.fullmatch(label):
                    raise ValueError(f"label {label!r} must be letters, digits, '.', '_' or '-' (it names a file)")
        names = [name for name, _, _ in self.systems()]
        if FIRST_STAGE in names or len(set(names)) != len(names):
            raise ValueError(f"labels must be unique and not {FIRST_STAGE!r}, got {self.labels}")
        return self

    def systems(self) -> list[tuple[str, int, int]]:
        """(name, instruction index, depth) of each reranked system, instruction by instruction."""
        labels = self.labels or (
            ["rerank"] if len(self.instructions) == 1 else [f"rerank-{i}" for i in range(1, len(self.instructions) + 1)]
        )
        suffix = len(self.top_k) > 1  # one depth: the label alone; several: label@k
        return [
            (f"{label}@{k}" if suffix else label, index, k)
            for index, label in enumerate(labels)
            for k in self.top_k
        ]

    def measure_names(self) -> list[str]:
        """The measures to compute, as ir-measures writes them."""
        names = self.measures or [*DEFAULT_MEASURES, *(f"R@{k}" for k in sorted(self.top_k))]
        return [str(measure) for measure in parse_measures(names)]


class SystemResult(BaseModel):
    """One evaluated system: how it ranked and what it scored."""

    name: str = Field(description="The system's name: its key in metrics.json and its run file's stem.")
    instruction: str | None = Field(None, description="The rerank instruction; None for the scorer's default.")
    top_k: int | None = Field(None, description="First-stage documents reranked; None for the first stage.")
    run_file: Path = Field(description="The system's TREC run file.")
    metrics: dict[str, float] = Field(description="Measure name (as ir-measures writes it) to mean value.")


class EvalReport(BaseModel):
    """What :func:`run_evaluation` measured and wrote."""

    output: Path = Field(description="The output folder.")
    queries: int = Field(description="Queries evaluated (those the qrels judge).")
    systems: list[SystemResult] = Field(description="The first stage, then each reranked system.")
    pairs: int = Field(description="(instruction, query, document) scores the reranked systems need.")
    pairs_scored: int = Field(description="Of those, scored by this run (a text repeated in one query's candidates "
                              "is scored once).")
    pairs_cached: int = Field(0, description="Of those, read from the score cache (written by an earlier run).")
    table: str = Field(description="The markdown table (also in metrics.md).")
    notes: list[str] = Field(default_factory=list, description="The table's footnotes as plain text: the data, "
                             "the first stage, what reranks each system.")

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{system: {measure: value}}``, as in metrics.json."""
        return {system.name: system.metrics for system in self.systems}

    def scoring_summary(self) -> str:
        """Where the scores came from, in words: e.g. ``scored 125 of 200 pairs; 75 came from the score cache``."""
        parts = [f"scored {self.pairs_scored} of {self.pairs} pairs"]
        if self.pairs_cached:
            parts.append(f"{'all' if self.pairs_cached == self.pairs else self.pairs_cached} came from the score "
                         "cache")
        repeats = self.pairs - self.pairs_scored - self.pairs_cached
        if repeats:
            parts.append(f"{repeats} repeated a text already among the query's candidates")
        return "; ".join(parts)


def check_output_folder(output: Path) -> None:
    """``output`` is a folder or can become one: neither it, a folder above it, nor the ``runs`` or
    ``score-cache`` folder inside it is a file.

    Raises:
        ValueError: naming the file in the way (otherwise mkdir would fail later with a bare ``[Errno 17]``).
    """
    path = output.expanduser()
    for place in (*reversed(path.parents), path, path / "runs", path / "score-cache"):
        if place.exists() and not place.is_dir():
            if place == path:
                raise ValueError(f"{path} is a file, not a folder; give a folder for the results (a new one, or "
                                 "one an earlier run wrote, to resume)")
            raise ValueError(f"{path} cannot be used: {place} is a file, not a folder")


# ------------------------------------------------------------------------------------------------ first stage
def dense_first_stage(
    data: BeirData, model: str, depth: int, *, device: str = "auto", batch_size: int = 32, progress: bool = False
) -> Run:
    """Each query's ``depth`` nearest documents by cosine similarity of a sentence-transformers model.

    Queries and documents go through ``encode_query``/``encode_document``, so a model that defines query and
    document prompts (Qwen3-Embedding, E5...) gets them; one without (bge-small) embeds the text as it is.
    """
    import numpy as np

    from ..devices import resolve_device

    encoder = _load_embedder(model, str(resolve_device(device)))
    options: dict[str, Any] = {"batch_size": batch_size, "normalize_embeddings": True, "convert_to_numpy": True,
                               "show_progress_bar": progress}
    doc_ids = list(data.corpus)
    documents = encoder.encode_document(list(data.corpus.values()), **options)
    queries = encoder.encode_query(list(data.queries.values()), **options)
    depth = min(depth, len(doc_ids))
    run: Run = {}
    for query_id, vector in zip(data.queries, queries):
        similarities = documents @ vector
        top = np.argpartition(-similarities, depth - 1)[:depth] if depth < len(doc_ids) else range(len(doc_ids))
        run[query_id] = ranked((doc_ids[i], float(similarities[i])) for i in top)
    return run


def _load_embedder(model: str, device: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelLoadError("the dense first stage needs sentence-transformers: pip install "
                             "'qwen3-rerank-integrations[eval]'") from exc
    try:
        # Never code from the model's repository, and weights from safetensors only (no pickle).
        return SentenceTransformer(model, device=device, trust_remote_code=False,
                                   model_kwargs={"use_safetensors": True})
    except Exception as exc:  # OSError (not found, offline), ValueError (not a model): all one fault to the user
        raise ModelLoadError(f"cannot load the embedding model {model!r}: {' '.join(str(exc).split())}") from exc


def _first_stage(
    config: EvalConfig, data: BeirData, depth: int, progress: bool, log: Callable[[str], None]
) -> tuple[Run, dict[str, Any]]:
    """The first stage's run, from runs/first_stage.trec when an earlier run in this folder made it with the
    same data and settings (no re-embedding on resume), else computed and written there first. Either way the
    run is read back from the file, so a fresh and a resumed run go on from the same numbers."""
    path = config.output / "runs" / f"{FIRST_STAGE}.trec"
    source = {"run_file": str(config.run_file), "run_file_sha256": _sha256(config.run_file)} if config.run_file else {
        "embed_model": config.embed_model or DEFAULT_EMBED_MODEL}
    key = {"data": str(config.data.resolve()), "split": config.split, "data_sha256": _data_digest(config),
           "depth": depth, **source}
    if path.is_file() and _previous_settings(config.output).get(FIRST_STAGE) == key:
        log(f"first stage: reusing {path}")
        return read_run(path, data.corpus), key
    if config.run_file is not None:
        given = read_run(config.run_file, data.corpus)
        run = {query_id: given[query_id][:depth] for query_id in data.queries if query_id in given}
        unjudged = [query_id for query_id in given if query_id not in data.queries]
        if unjudged:
            log(f"note: the run file lists queries the qrels do not judge ({len(unjudged)}, e.g. {unjudged[0]!r}); "
                "they are left out")
    else:
        run = dense_first_stage(data, key["embed_model"], depth, device=config.device,
                                batch_size=config.embed_batch_size, progress=progress)
    write_run(path, run, FIRST_STAGE)
    # Recorded now, before any reranking: a run killed from here on resumes without redoing the first stage.
    _write_settings(config.output, {FIRST_STAGE: key})
    return read_run(path, data.corpus), key


def _sha256(path: Path) -> str:
    from ..model_source import file_digest

    return file_digest(str(path)).hex()


def _data_digest(config: EvalConfig) -> str:
    files = [config.data / "corpus.jsonl", config.data / "queries.jsonl", config.data / "qrels" / f"{config.split}.tsv"]
    return hashlib.sha256("".join(_sha256(path) for path in files).encode()).hexdigest()


def _previous_settings(output: Path) -> dict[str, Any]:
    try:
        settings = json.loads((output / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _write_settings(output: Path, settings: dict[str, Any]) -> None:
    write_atomic(output / "settings.json", json.dumps(settings, ensure_ascii=False, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ rerank
class RerankCall(BaseModel):
    """One scorer call of the rerank stage: a query's candidates under one instruction.

    Always this whole list in one call, whatever the cache holds: a model's fp32 rounding depends on which
    documents share a batch (~1e-7), so a resumed run that scored only what is missing would end with other
    numbers than an uninterrupted one.
    """

    model_config = ConfigDict(frozen=True)

    query_id: str = Field(description="The query's id.")
    instruction_index: int = Field(description="Which of EvalConfig.instructions.")
    query: str = Field(description="The query's text.")
    instruction: str | None = Field(description="The instruction; None for the scorer's default.")
    documents: list[str] = Field(description="The query's top-k candidate texts, each distinct text once, in "
                                 "first-stage order.")

    def group(self) -> ScoreGroup:
        """The call as the batch API's group."""
        return ScoreGroup(query=self.query, documents=self.documents, instruction=self.instruction)


class RerankResult(BaseModel):
    """What the rerank stage returns: every call's scores and where they came from."""

    scores: dict[int, dict[str, dict[str, float]]] = Field(
        description="{instruction index: {query id: {document text: score}}}.")
    pairs_scored: int = Field(description="Scores computed by the scorer in this run.")
    pairs_cached: int = Field(description="Scores read from the score cache (whole calls only).")


def rerank_calls(data: BeirData, first: Run, depth: int, instructions: Sequence[str | None]) -> list[RerankCall]:
    """The calls the rerank stage makes, query by query, each query's instructions in order."""
    calls = []
    for query_id, query in data.queries.items():
        texts = list(dict.fromkeys(data.corpus[doc_id] for doc_id, _ in first.get(query_id, [])[:depth]))
        if texts:
            calls.extend(RerankCall(query_id=query_id, instruction_index=index, query=query,
                                    instruction=instruction, documents=texts)
                         for index, instruction in enumerate(instructions))
    return calls


def _rerank_all(
    scorer: Scorer, calls: Sequence[RerankCall], cache: ScoreCache | None, progress: bool, *,
    concurrency: int | None = None, ray: RayOptions | None = None,
) -> RerankResult:
    """The rerank stage through the batch API: ``concurrency`` calls in flight (or Ray's actors), each committed
    to the cache as it returns (a killed run loses at most the calls in flight). The progress bar counts
    queries. Any order of the calls gives the same result: each call's scores depend on that call alone."""
    from tqdm import tqdm

    groups = [call.group() for call in calls]
    left: dict[str, int] = {}
    for call in calls:
        left[call.query_id] = left.get(call.query_id, 0) + 1
    with tqdm(total=len(left), desc="reranking", unit="query", disable=not progress, file=sys.stderr) as bar:

        def done(index: int, scores: list[float], from_cache: bool) -> None:
            query_id = calls[index].query_id
            left[query_id] -= 1
            if not left[query_id]:
                bar.update(1)

        result = score_groups(scorer, groups, concurrency=concurrency, cache=cache, on_group=done, ray=ray)
    scores: dict[int, dict[str, dict[str, float]]] = {}
    for call, values in zip(calls, result.scores):
        scores.setdefault(call.instruction_index, {})[call.query_id] = dict(zip(call.documents, values))
    return RerankResult(scores=scores, pairs_scored=result.pairs_scored, pairs_cached=result.pairs_cached)


def _reranked_run(first: Run, corpus: dict[str, str], scores: dict[str, dict[str, float]], k: int) -> Run:
    """The first stage with each query's top k reordered by ``scores`` (query id: {text: score}); the documents
    below k keep their first-stage order, scored below the lowest reranked one so that the file reads in this
    order."""
    run: Run = {}
    for query_id, documents in first.items():
        if query_id not in scores:
            continue
        head = [(doc_id, scores[query_id][corpus[doc_id]]) for doc_id, _ in documents[:k]]
        floor = min(score for _, score in head)
        tail = [(doc_id, floor - position) for position, (doc_id, _) in enumerate(documents[k:], 1)]
        run[query_id] = ranked(head + tail)
    return run


# ------------------------------------------------------------------------------------------------ the run
def run_evaluation(
    config: EvalConfig,
    scorer: Scorer,
    *,
    cache: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    concurrency: int | None = None,
    ray: RayOptions | None = None,
) -> EvalReport:
    """Run the first stage, rerank it with ``scorer`` for each instruction, measure every system, write the files.

    Args:
        config: the data, first stage, instructions, depths and measures.
        scorer: what reranks: a LocalScorer, a VLLMScorer, a VLLMEngineScorer, or any Scorer.
        cache: persist scores in ``OUTPUT/score-cache`` and reuse them (resume); False scores everything anew.
            The cache keys scores by the scorer's ``cache_identity()``, which the package's scorers have; give
            your own scorer one (a ScorerBase subclass, see Extending), or pass False.
        progress: progress bars (embedding, reranking) on stderr.
        log: where notices go (a reused first stage, queries without candidates); default nowhere.
        concurrency: rerank calls (query x instruction) in flight at once (default: 8 for a vLLM server or
            replicas, 1 for a local model, which batches inside each call); the results do not depend on it.
        ray: rerank on a Ray cluster (:class:`~qwen3_rerank_integrations.batch.RayOptions`, the ``ray`` extra):
            actors that each hold a copy of ``scorer``; the cache is read first and their scores written back.

    Raises:
        MissingDependencyError: a package these options need is not installed (one line naming it and its
            extra), before anything is read or loaded; also an ImportError.
        DataError: the data or the run file cannot be used (the message names the file and line).
        ValueError: bad settings (the message names the setting).
        TypeError: ``cache`` with a scorer that has no ``cache_identity()``.
        RerankError: the embedding model cannot be loaded, or the scorer failed.
    """
    # Before any work: not after the first stage, or at the chart.
    require_packages(dense_first_stage=config.run_file is None, cache=cache)
    say = log or (lambda _: None)
    data = load_beir(config.data, config.split)
    measures = config.measure_names()
    systems = config.systems()
    depth = max(config.top_k)
    check_output_folder(config.output)  # again: the folder may have changed since the config was made
    config.output.mkdir(parents=True, exist_ok=True)

    first, first_key = _first_stage(config, data, depth, progress, say)
    missing = [query_id for query_id in data.queries if not first.get(query_id)]
    if missing:
        source = f"the run file {config.run_file.name}" if config.run_file else "the first stage"
        say(f"warning: {source} has documents for only {len(data.queries) - len(missing)} of the "
            f"{len(data.queries)} queries the qrels judge; queries without documents ({len(missing)}, e.g. "
            f"{missing[0]!r}) count as 0 in every system")

    calls = rerank_calls(data, first, depth, config.instructions)
    pairs = sum(len(first.get(query_id, [])[:depth]) for query_id in data.queries) * len(config.instructions)
    if cache:
        from ..cache import DiskScoreCache

        if not callable(getattr(scorer, "cache_identity", None)):
            raise TypeError(f"{type(scorer).__name__} has no cache_identity(), so the score cache cannot tell its "
                            "configurations apart: implement cache_identity() (model, revision, every setting that "
                            "changes a score; see Extending), or pass cache=False")
        # Each call is committed to disk as it returns: a killed run loses at most the calls in flight. The key
        # holds the scorer's identity, so another model or setting never reuses a score.
        with DiskScoreCache(config.output / "score-cache") as disk:
            known = GroupCache(scorer=scorer, cache=disk).count_cached([call.group() for call in calls])
            if known:
                say(f"the score cache holds {known} of {pairs} pairs from an earlier run; scoring the other "
                    f"{sum(len(call.documents) for call in calls) - known}")
            reranked = _rerank_all(scorer, calls, disk, progress, concurrency=concurrency, ray=ray)
    else:
        reranked = _rerank_all(scorer, calls, None, progress, concurrency=concurrency, ray=ray)

    runs_dir = config.output / "runs"
    parsed = parse_measures(measures)
    results = [SystemResult(name=FIRST_STAGE, run_file=runs_dir / f"{FIRST_STAGE}.trec",
                            metrics=compute_metrics(parsed, data.qrels, runs_dir / f"{FIRST_STAGE}.trec"))]
    for name, index, k in systems:
        path = runs_dir / f"{name}.trec"
        write_run(path, _reranked_run(first, data.corpus, reranked.scores.get(index, {}), k), name)
        results.append(SystemResult(name=name, instruction=config.instructions[index], top_k=k, run_file=path,
                                    metrics=compute_metrics(parsed, data.qrels, path)))

    metrics = {result.name: result.metrics for result in results}
    covered = len(data.queries) - len(missing)
    table = markdown_table(metrics, _notes(config, data, covered, results, scorer, code=lambda name: f"`{name}`"))
    write_atomic(config.output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_atomic(config.output / "metrics.md", table)
    title = f"{config.data.resolve().name} ({config.split}, {len(data.queries)} queries)"
    write_atomic(config.output / "metrics.png", render_chart(metrics, title))
    _write_settings(config.output, {
        FIRST_STAGE: first_key,
        "reranker": _reranker_name(scorer),
        "systems": {name: {"instruction": config.instructions[index], "top_k": k} for name, index, k in systems},
        "measures": measures,
    })
    return EvalReport(output=config.output, queries=len(data.queries), systems=results, pairs=pairs,
                      pairs_scored=reranked.pairs_scored, pairs_cached=reranked.pairs_cached, table=table,
                      notes=_notes(config, data, covered, results, scorer, code=str))


def _reranker_name(scorer: object) -> str:
    return scorer_name(scorer)  # never a URL: it may carry credentials


def _notes(
    config: EvalConfig, data: BeirData, covered: int, results: list[SystemResult], scorer: object,
    code: Callable[[str], str],
) -> list[str]:
    """The table's footnotes; ``covered``: queries the first stage found documents for; ``code`` formats a
    system name (markdown: in backticks)."""
    embedder = config.embed_model or DEFAULT_EMBED_MODEL
    first = f"run file {config.run_file.name}" if config.run_file else f"dense, {embedder}"
    if covered < len(data.queries):  # the others count as 0: a table without this would mislead
        first += f" (documents for {covered} of the {len(data.queries)} queries)"
    notes = [f"{len(data.queries)} queries, {len(data.corpus)} documents; {code(FIRST_STAGE)}: {first}, "
             f"top {max(config.top_k)}"]
    reranker = _describe_reranker(scorer)
    for result in results[1:]:
        instruction = "default instruction" if result.instruction is None else f"instruction {result.instruction!r}"
        notes.append(f"{code(result.name)}: {reranker} reranks the top {result.top_k}, {instruction}")
    return notes


def _describe_reranker(scorer: object) -> str:
    """The reranker as the notes name it: its model; for a server, the model and the server's address (never its
    credentials); a wrapper (an object with a ``scorer`` that scores) as what it wraps."""
    from .._secrets import public_url

    inner = getattr(scorer, "scorer", None)
    if inner is not None and callable(getattr(inner, "score", None)):
        return _describe_reranker(inner)
    urls = getattr(scorer, "base_urls", None)
    if isinstance(urls, list) and urls and all(isinstance(url, str) for url in urls):
        model = getattr(scorer, "model", None)
        where = ", ".join(public_url(url) for url in urls)
        return f"{model} at {where}" if isinstance(model, str) and model else f"the model served at {where}"
    return _reranker_name(scorer)
