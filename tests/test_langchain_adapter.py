"""Qwen3RerankCompressor in real LangChain pipelines, offline: MiniLM embeddings in an InMemoryVectorStore,
a ContextualCompressionRetriever and LCEL chains, with scores checked against the official method."""

from __future__ import annotations

import copy

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from qwen3_rerank_integrations import AuthenticationError, LocalScorer, RerankError, ServerError
from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor
from tests.adapter_helpers import (
    CORPUS,
    INSTRUCTION,
    QUERY,
    RETRIEVE_K,
    SECRET,
    VLLM_MODES,
    RecordingScorer,
    ScriptedScorer,
    assert_close,
    expected_ranking,
    heavy_modules_after_import,
    median_threshold,
)


@pytest.fixture(scope="module")
def base_retriever(minilm_dir):
    from langchain_huggingface import HuggingFaceEmbeddings

    store = InMemoryVectorStore(HuggingFaceEmbeddings(model_name=str(minilm_dir)))
    store.add_documents([Document(text, metadata=meta, id=f"doc-{i}") for i, (text, meta) in enumerate(CORPUS)])
    return store.as_retriever(search_kwargs={"k": RETRIEVE_K})


@pytest.fixture(scope="module")
def retrieved(base_retriever) -> list[Document]:
    docs = base_retriever.invoke(QUERY)
    assert len(docs) == RETRIEVE_K
    return docs


@pytest.fixture(scope="module")
def reference(retrieved, reference_scorer) -> list[float]:
    """The official scores of the retrieved documents, in retrieval order."""
    return reference_scorer.score(QUERY, [d.page_content for d in retrieved])


def check_reranked(result, retrieved, reference, top_n, threshold=None) -> None:
    """result is exactly the reference ranking of retrieved: same documents, order, scores and metadata."""
    positions = expected_ranking(reference, top_n, threshold)
    assert [d.id for d in result] == [retrieved[i].id for i in positions]
    assert [d.page_content for d in result] == [retrieved[i].page_content for i in positions]
    assert_close([d.metadata["relevance_score"] for d in result], [reference[i] for i in positions])
    for doc, i in zip(result, positions):
        assert {k: v for k, v in doc.metadata.items() if k != "relevance_score"} == retrieved[i].metadata


# ------------------------------------------------------------------------------------------- pipelines
def test_contextual_compression_retriever_matches_reference(base_retriever, local_scorer, retrieved, reference):
    retriever = ContextualCompressionRetriever(
        base_compressor=Qwen3RerankCompressor(scorer=local_scorer), base_retriever=base_retriever
    )
    result = retriever.invoke(QUERY)
    assert len(result) == 3  # top_n defaults to 3
    check_reranked(result, retrieved, reference, top_n=3)
    # Guards the test: the reranker must actually reorder what the retriever returned.
    assert [d.id for d in result] != [d.id for d in retrieved[:3]]


async def test_async_retriever_awaits_ascore_and_equals_sync(base_retriever, local_scorer, retrieved, reference):
    spy = RecordingScorer(local_scorer)
    retriever = ContextualCompressionRetriever(
        base_compressor=Qwen3RerankCompressor(scorer=spy, top_n=4), base_retriever=base_retriever
    )
    result = await retriever.ainvoke(QUERY)
    assert [call[0] for call in spy.calls] == ["ascore"]  # natively async: no sync score() on a thread
    check_reranked(result, retrieved, reference, top_n=4)
    assert [d.metadata for d in result] == [d.metadata for d in retriever.invoke(QUERY)]


async def test_lcel_chain_sync_and_async(base_retriever, local_scorer, retrieved, reference):
    reranker = Qwen3RerankCompressor(scorer=local_scorer, top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base_retriever)
    prompt = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    join = RunnableLambda(lambda docs: "\n".join(d.page_content for d in docs))
    chain = (
        {"context": retriever | join, "question": RunnablePassthrough()} | prompt | (lambda value: value.to_string())
    )
    best = [retrieved[i].page_content for i in expected_ranking(reference, 2)]
    expected = "Context:\n" + "\n".join(best) + f"\n\nQuestion: {QUERY}"
    assert chain.invoke(QUERY) == expected
    assert await chain.ainvoke(QUERY) == expected


async def test_compressor_as_a_runnable_step(base_retriever, local_scorer, retrieved, reference):
    # Reranking documents that come from any step, not only a retriever (the README's RunnableLambda form).
    reranker = Qwen3RerankCompressor(scorer=local_scorer, top_n=None)
    step = RunnableLambda(
        lambda x: reranker.compress_documents(x["documents"], x["query"]),
        afunc=lambda x: reranker.acompress_documents(x["documents"], x["query"]),
    )
    chain = {"documents": base_retriever, "query": RunnablePassthrough()} | step
    check_reranked(chain.invoke(QUERY), retrieved, reference, top_n=None)
    check_reranked(await chain.ainvoke(QUERY), retrieved, reference, top_n=None)


class RunRecorder(BaseCallbackHandler):
    """Records retriever runs as a tracer (LangSmith, Langfuse) sees them."""

    def __init__(self) -> None:
        self.runs: dict = {}

    def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, metadata=None, **kwargs):
        self.runs[run_id] = {"name": kwargs.get("name"), "query": query, "parent": parent_run_id,
                             "metadata": metadata or {}, "output": None, "error": None}

    def on_retriever_end(self, documents, *, run_id, **kwargs):
        self.runs[run_id]["output"] = documents

    def on_retriever_error(self, error, *, run_id, **kwargs):
        self.runs[run_id]["error"] = error

    def named(self, name: str) -> list[dict]:
        return [run for run in self.runs.values() if run["name"] == name]


async def test_the_rerank_is_a_child_run_for_callbacks(base_retriever):
    reranker = Qwen3RerankCompressor(scorer=ScriptedScorer([0.1, 0.9, 0.5, 0.2, 0.8, 0.3]), top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base_retriever)
    for invoke in (lambda config: retriever.invoke(QUERY, config), lambda config: retriever.ainvoke(QUERY, config)):
        recorder = RunRecorder()
        result = invoke({"callbacks": [recorder]})
        result = await result if not isinstance(result, list) else result
        (outer,) = [run_id for run_id, run in recorder.runs.items() if run["name"] == "ContextualCompressionRetriever"]
        (rerank,) = recorder.named("Qwen3RerankCompressor")
        assert rerank["parent"] == outer and rerank["query"] == QUERY and rerank["error"] is None
        assert rerank["output"] == result and [d.metadata["relevance_score"] for d in result] == [0.9, 0.8]
        assert rerank["metadata"]["reranker_model"] == "scripted" and rerank["metadata"]["top_n"] == 2


async def test_a_failed_rerank_run_ends_with_its_error_and_bad_input_starts_none():
    recorder = RunRecorder()
    reranker = Qwen3RerankCompressor(scorer=ScriptedScorer(error=ServerError("boom", status_code=500)))
    with pytest.raises(ServerError):
        reranker.compress_documents([Document("a")], QUERY, callbacks=[recorder])
    with pytest.raises(ServerError):
        await reranker.acompress_documents([Document("a")], QUERY, callbacks=[recorder])
    runs = recorder.named("Qwen3RerankCompressor")
    assert len(runs) == 2 and all(isinstance(run["error"], ServerError) and run["parent"] is None for run in runs)
    with pytest.raises(ValueError, match="query"):
        reranker.compress_documents([Document("a")], "  ", callbacks=[recorder])
    assert len(recorder.runs) == 2


# ------------------------------------------------------------------------------------------- behaviour
def test_inputs_never_mutated_and_outputs_are_new(local_scorer, retrieved):
    before = copy.deepcopy(retrieved)
    result = Qwen3RerankCompressor(scorer=local_scorer, top_n=None).compress_documents(retrieved, QUERY)
    assert retrieved == before
    assert all("relevance_score" not in d.metadata for d in retrieved)
    assert not any(out is doc or out.metadata is doc.metadata for out in result for doc in retrieved)


@pytest.mark.parametrize("top_n", [None, 1, 2, 100])
def test_threshold_and_top_n(local_scorer, retrieved, reference, top_n):
    threshold = median_threshold(reference)
    reranker = Qwen3RerankCompressor(scorer=local_scorer, top_n=top_n, score_threshold=threshold)
    result = reranker.compress_documents(retrieved, QUERY)
    check_reranked(result, retrieved, reference, top_n=top_n, threshold=threshold)
    assert all(d.metadata["relevance_score"] >= threshold for d in result)


def test_instruction_reaches_the_scorer(local_scorer, reference_scorer, retrieved):
    instruction = INSTRUCTION
    texts = [d.page_content for d in retrieved]
    expected = reference_scorer.score(QUERY, texts, instruction=instruction)
    assert max(abs(a - b) for a, b in zip(expected, reference_scorer.score(QUERY, texts))) > 1e-4
    ranked = Qwen3RerankCompressor(scorer=local_scorer, top_n=None, instruction=instruction).rerank(texts, QUERY)
    assert [r["index"] for r in ranked] == expected_ranking(expected, None)
    assert_close([r["relevance_score"] for r in ranked], [expected[r["index"]] for r in ranked])


async def test_rerank_accepts_texts_and_documents(local_scorer, retrieved, reference):
    reranker = Qwen3RerankCompressor(scorer=local_scorer, top_n=3)
    mixed = [d.page_content if i % 2 else d for i, d in enumerate(retrieved)]
    for ranked in (reranker.rerank(mixed, QUERY), await reranker.arerank(mixed, QUERY)):
        assert [r["index"] for r in ranked] == expected_ranking(reference, 3)
        assert_close([r["relevance_score"] for r in ranked], [reference[r["index"]] for r in ranked])


async def test_ties_keep_input_order():
    docs = [Document(f"d{i}", id=str(i)) for i in range(5)]
    reranker = Qwen3RerankCompressor(scorer=ScriptedScorer([0.5, 0.9, 0.5, 0.9, 0.1]), top_n=None)
    assert [d.id for d in reranker.compress_documents(docs, QUERY)] == ["1", "3", "0", "2", "4"]
    assert [d.id for d in await reranker.acompress_documents(docs, QUERY)] == ["1", "3", "0", "2", "4"]


async def test_empty_input_no_scorer_call():
    scorer = ScriptedScorer(error=AssertionError("must not be called"))
    reranker = Qwen3RerankCompressor(scorer=scorer)
    assert reranker.compress_documents([], QUERY) == []
    assert await reranker.acompress_documents([], QUERY) == []
    assert reranker.rerank([], QUERY) == []
    assert scorer.calls == 0


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("documents", "query", "error", "names"),
    [
        ([Document("a")], "", ValueError, "query"),
        ([Document("a")], None, TypeError, "query"),
        ("just a string", QUERY, TypeError, "documents"),
        (Document("a"), QUERY, TypeError, "documents"),
        ([Document("a"), "b"], QUERY, TypeError, "documents[1]"),
        ([Document("a"), 3], QUERY, TypeError, "documents[1]"),
    ],
)
async def test_bad_input_raises_before_scoring(documents, query, error, names):
    scorer = ScriptedScorer(error=AssertionError("must not be called"))
    reranker = Qwen3RerankCompressor(scorer=scorer)
    with pytest.raises(error, match=names.replace("[", r"\[")):
        reranker.compress_documents(documents, query)
    with pytest.raises(error, match=names.replace("[", r"\[")):
        await reranker.acompress_documents(documents, query)
    assert scorer.calls == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scorer": object()}, "scorer"),
        ({"scorer": LocalScorer}, "scorer must be an instance"),
        ({"scorer": ScriptedScorer(), "top_n": 0}, "top_n"),
        ({"scorer": ScriptedScorer(), "score_threshold": 1.5}, "score_threshold"),
        ({"scorer": ScriptedScorer(), "instruction": "  "}, "instruction"),
        ({"scorer": ScriptedScorer(), "topn": 3}, "topn"),
    ],
)
def test_bad_fields_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        Qwen3RerankCompressor(**kwargs)


@pytest.mark.parametrize(
    ("scorer", "expected", "message"),
    [
        (ScriptedScorer(error=ServerError("boom", status_code=500)), ServerError, "boom"),
        (ScriptedScorer(error=RuntimeError("device lost")), RerankError, "device lost"),
        (ScriptedScorer([0.9]), RerankError, "1 scores for 2 documents"),
        (ScriptedScorer([0.9, float("nan")]), RerankError, r"documents\[1\]"),
        (ScriptedScorer([0.9, "0.1"]), RerankError, r"documents\[1\]"),
        # A probability, not a logit or a distance: anything else mis-ranks and breaks score_threshold.
        (ScriptedScorer([0.9, 1.7]), RerankError, r"scorer scripted returned 1.7 for documents\[1\], outside \[0, 1\]"),
        (ScriptedScorer([-0.25, 0.1]), RerankError, r"scorer scripted returned -0.25 for documents\[0\], outside"),
        (ScriptedScorer([0.5, float("inf")]), RerankError, r"returned inf for documents\[1\]"),
        (ScriptedScorer([0.1, 0.2, 0.3]), RerankError, "scripted returned 3 scores for 2 documents"),
    ],
)
async def test_scorer_faults_surface_as_rerank_error(scorer, expected, message):
    reranker = Qwen3RerankCompressor(scorer=scorer)
    docs = [Document("a"), Document("b")]
    with pytest.raises(expected, match=message):
        reranker.compress_documents(docs, QUERY)
    with pytest.raises(expected, match=message):
        await reranker.acompress_documents(docs, QUERY)


# ------------------------------------------------------------------------------------------- construction
def test_from_model_builds_a_lazy_local_scorer(tiny_model_dir, retrieved, reference):
    reranker = Qwen3RerankCompressor.from_model(str(tiny_model_dir), device="cpu", dtype="float32", top_n=2)
    assert isinstance(reranker.scorer, LocalScorer) and not reranker.scorer.loaded
    assert (reranker.top_n, reranker.scorer.device, reranker.scorer.dtype) == (2, "cpu", "float32")
    check_reranked(reranker.compress_documents(retrieved, QUERY), retrieved, reference, top_n=2)


def test_from_model_rejects_unknown_and_conflicting_arguments(tiny_model_dir):
    with pytest.raises(ValidationError, match="devise"):
        Qwen3RerankCompressor.from_model(str(tiny_model_dir), devise="cpu")
    with pytest.raises(TypeError, match="scorer"):
        Qwen3RerankCompressor.from_model(str(tiny_model_dir), scorer=ScriptedScorer())


def test_dump_names_the_scorer_only():
    dumped = Qwen3RerankCompressor(scorer=ScriptedScorer(), top_n=5).model_dump(mode="json")
    assert dumped == {
        "scorer": {"class_name": "ScriptedScorer", "model": "scripted"},
        "top_n": 5,
        "score_threshold": None,
        "instruction": None,
    }


def test_import_pulls_in_neither_torch_nor_llama_index():
    assert heavy_modules_after_import("qwen3_rerank_integrations.langchain") == ["langchain_core"]


# ------------------------------------------------------------------------------------------- remote scorer
@pytest.mark.parametrize(("server_fixture", "template"), VLLM_MODES)
async def test_contextual_compression_retriever_with_vllm(
    request, server_fixture, template, base_retriever, retrieved, reference
):
    server = request.getfixturevalue(server_fixture)
    reranker = Qwen3RerankCompressor.from_vllm(server.base_url, template=template, backoff=0.001, top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base_retriever)
    async with reranker.scorer:  # closes both HTTP clients
        check_reranked(retriever.invoke(QUERY), retrieved, reference, top_n=3)
        check_reranked(await retriever.ainvoke(QUERY), retrieved, reference, top_n=3)
    assert len(server.scoring_requests()) == 2  # one rerank request per query: the server did the scoring


async def test_vllm_instruction_api_key_and_no_secret_leaks(vllm_template_server, reference_scorer, retrieved):
    secret = SECRET
    vllm_template_server.api_key = secret
    instruction = INSTRUCTION
    reranker = Qwen3RerankCompressor.from_vllm(
        vllm_template_server.base_url, template="server", api_key=secret, instruction=instruction, top_n=None
    )
    expected = reference_scorer.score(QUERY, [d.page_content for d in retrieved], instruction=instruction)
    async with reranker.scorer:
        check_reranked(reranker.compress_documents(retrieved, QUERY), retrieved, expected, top_n=None)
    assert [r.json["instruction"] for r in vllm_template_server.scoring_requests()] == [instruction]
    for text in (repr(reranker), str(reranker), reranker.model_dump_json(), str(reranker.model_dump())):
        assert secret not in text


@pytest.mark.parametrize(
    ("fault", "expected"),
    [({"status": 500}, ServerError), ({"status": 401, "message": "bad key"}, AuthenticationError)],
)
async def test_vllm_faults_reach_the_pipeline_as_rerank_errors(vllm_legacy_server, base_retriever, fault, expected):
    vllm_legacy_server.inject("status", times=2, **fault)
    reranker = Qwen3RerankCompressor.from_vllm(vllm_legacy_server.base_url, max_retries=0)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base_retriever)
    async with reranker.scorer:  # closes both HTTP clients
        with pytest.raises(expected):
            retriever.invoke(QUERY)
        with pytest.raises(expected):
            await retriever.ainvoke(QUERY)
    assert issubclass(expected, RerankError)
