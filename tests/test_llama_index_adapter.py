"""Qwen3RerankPostprocessor in real LlamaIndex pipelines, offline: a VectorStoreIndex over MiniLM embeddings,
query engines with MockLLM, events, with scores checked against the official method."""

from __future__ import annotations

import copy

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import Field, ValidationError

from qwen3_rerank_integrations import LocalScorer, RerankError, ServerError
from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor
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
def index(minilm_dir) -> VectorStoreIndex:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    # "lang" is embedded-excluded, so the EMBED text differs from the LLM text and from the plain text.
    nodes = [
        TextNode(text=text, metadata=meta, id_=f"node-{i}", excluded_embed_metadata_keys=["lang"])
        for i, (text, meta) in enumerate(CORPUS)
    ]
    return VectorStoreIndex(nodes, embed_model=HuggingFaceEmbedding(model_name=str(minilm_dir)))


@pytest.fixture(scope="module")
def retrieved(index) -> list[NodeWithScore]:
    nodes = index.as_retriever(similarity_top_k=RETRIEVE_K).retrieve(QUERY)
    assert len(nodes) == RETRIEVE_K
    return nodes


def embed_texts(nodes: list[NodeWithScore], mode: MetadataMode = MetadataMode.EMBED) -> list[str]:
    return [n.node.get_content(metadata_mode=mode) for n in nodes]


@pytest.fixture(scope="module")
def reference(retrieved, reference_scorer) -> list[float]:
    """The official scores of the retrieved nodes' EMBED text, in retrieval order."""
    return reference_scorer.score(QUERY, embed_texts(retrieved))


def check_reranked(result, retrieved, reference, top_n, threshold=None) -> None:
    """result is exactly the reference ranking of retrieved: same nodes, order and scores."""
    positions = expected_ranking(reference, top_n, threshold)
    assert all(isinstance(n, NodeWithScore) for n in result)
    assert [n.node.node_id for n in result] == [retrieved[i].node.node_id for i in positions]
    assert_close([n.score for n in result], [reference[i] for i in positions])


class RerankEvents(BaseEventHandler):
    """Collects the rerank instrumentation events."""

    events: list = Field(default_factory=list)

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
            self.events.append(event)


@pytest.fixture
def rerank_events():
    handler = RerankEvents()
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler.events
    root.event_handlers.remove(handler)


# ------------------------------------------------------------------------------------------- pipelines
def test_as_query_engine_matches_reference(index, local_scorer, retrieved, reference):
    reranker = Qwen3RerankPostprocessor(scorer=local_scorer)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=RETRIEVE_K, node_postprocessors=[reranker])
    response = engine.query(QUERY)
    assert len(response.source_nodes) == 3  # top_n defaults to 3
    check_reranked(response.source_nodes, retrieved, reference, top_n=3)
    # Guards the test: the reranker must actually reorder what the retriever returned.
    assert [n.node.node_id for n in response.source_nodes] != [n.node.node_id for n in retrieved[:3]]
    # What the LLM was given is the reranked context, best first.
    best = [retrieved[i].node.get_content() for i in expected_ranking(reference, 3)]
    assert all(text in str(response) for text in best)


async def test_retriever_query_engine_async_awaits_ascore_and_equals_sync(index, local_scorer, retrieved, reference):
    spy = RecordingScorer(local_scorer)
    engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=RETRIEVE_K),
        llm=MockLLM(),
        node_postprocessors=[Qwen3RerankPostprocessor(scorer=spy, top_n=4)],
    )
    response = await engine.aquery(QUERY)
    assert [call[0] for call in spy.calls] == ["ascore"]  # natively async: no sync score() on a thread
    check_reranked(response.source_nodes, retrieved, reference, top_n=4)
    sync = engine.query(QUERY).source_nodes
    assert [(n.node.node_id, n.score) for n in sync] == [(n.node.node_id, n.score) for n in response.source_nodes]


async def test_events_instrumentation_and_legacy_callbacks(index, local_scorer, rerank_events):
    debug = LlamaDebugHandler()
    engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=RETRIEVE_K),
        llm=MockLLM(),
        node_postprocessors=[Qwen3RerankPostprocessor(scorer=local_scorer, top_n=2)],
        callback_manager=CallbackManager([debug]),
    )
    for asynchronous in (False, True):
        response = await engine.aquery(QUERY) if asynchronous else engine.query(QUERY)
        start, end = rerank_events
        assert isinstance(start, ReRankStartEvent) and isinstance(end, ReRankEndEvent)
        assert (start.query.query_str, len(start.nodes), start.top_n) == (QUERY, RETRIEVE_K, 2)
        assert start.model_name == local_scorer.model
        assert [(n.node.node_id, n.score) for n in end.nodes] == [
            (n.node.node_id, n.score) for n in response.source_nodes
        ]
        [(begin, finish)] = debug.get_event_pairs(CBEventType.RERANKING)
        assert begin.payload[EventPayload.QUERY_STR] == QUERY
        assert begin.payload[EventPayload.TOP_K] == 2
        assert len(begin.payload[EventPayload.NODES]) == RETRIEVE_K
        assert finish.payload[EventPayload.NODES] == end.nodes
        rerank_events.clear()
        debug.flush_event_logs()


# ------------------------------------------------------------------------------------------- behaviour
async def test_query_str_and_bundle_sync_and_async(local_scorer, retrieved, reference):
    reranker = Qwen3RerankPostprocessor(scorer=local_scorer, top_n=None)
    for result in (
        reranker.postprocess_nodes(retrieved, query_str=QUERY),
        reranker.postprocess_nodes(retrieved, query_bundle=QueryBundle(QUERY)),
        await reranker.apostprocess_nodes(retrieved, query_str=QUERY),
        await reranker.apostprocess_nodes(retrieved, query_bundle=QueryBundle(QUERY)),
    ):
        check_reranked(result, retrieved, reference, top_n=None)


def test_keep_retrieval_score_on_copies_inputs_untouched(local_scorer, retrieved, reference):
    before = copy.deepcopy(retrieved)
    reranker = Qwen3RerankPostprocessor(scorer=local_scorer, top_n=None, keep_retrieval_score=True)
    result = reranker.postprocess_nodes(retrieved, query_str=QUERY)
    check_reranked(result, retrieved, reference, top_n=None)
    original = {n.node.node_id: n for n in retrieved}
    for out in result:
        source = original[out.node.node_id]
        assert out.node.metadata == {**source.node.metadata, "retrieval_score": source.score}
        assert "retrieval_score" not in out.node.get_content(metadata_mode=MetadataMode.LLM)
        assert out.node.get_content(metadata_mode=MetadataMode.EMBED) == source.node.get_content(
            metadata_mode=MetadataMode.EMBED
        )
    assert [(n.node.model_dump(), n.score) for n in retrieved] == [(n.node.model_dump(), n.score) for n in before]


def test_default_returns_new_nodes_with_rerank_scores(local_scorer, retrieved):
    before = [n.score for n in retrieved]
    result = Qwen3RerankPostprocessor(scorer=local_scorer, top_n=None).postprocess_nodes(retrieved, query_str=QUERY)
    assert [n.score for n in retrieved] == before
    assert not any(out is n for out in result for n in retrieved)
    assert all("retrieval_score" not in n.node.metadata for n in result)


def test_metadata_mode_chooses_the_text(local_scorer, reference_scorer, retrieved, reference):
    plain = reference_scorer.score(QUERY, embed_texts(retrieved, MetadataMode.NONE))
    assert max(abs(a - b) for a, b in zip(plain, reference)) > 1e-4  # the mode changes the scores
    reranker = Qwen3RerankPostprocessor(scorer=local_scorer, top_n=None, metadata_mode=MetadataMode.NONE)
    check_reranked(reranker.postprocess_nodes(retrieved, query_str=QUERY), retrieved, plain, top_n=None)


@pytest.mark.parametrize("top_n", [None, 1, 2, 100])
def test_threshold_and_top_n(local_scorer, retrieved, reference, top_n):
    threshold = median_threshold(reference)
    reranker = Qwen3RerankPostprocessor(scorer=local_scorer, top_n=top_n, score_threshold=threshold)
    result = reranker.postprocess_nodes(retrieved, query_str=QUERY)
    check_reranked(result, retrieved, reference, top_n=top_n, threshold=threshold)
    assert all(n.score >= threshold for n in result)


def test_instruction_reaches_the_scorer(local_scorer, reference_scorer, retrieved):
    instruction = INSTRUCTION
    expected = reference_scorer.score(QUERY, embed_texts(retrieved), instruction=instruction)
    reranker = Qwen3RerankPostprocessor(scorer=local_scorer, top_n=None, instruction=instruction)
    check_reranked(reranker.postprocess_nodes(retrieved, query_str=QUERY), retrieved, expected, top_n=None)


async def test_ties_keep_input_order():
    nodes = [NodeWithScore(node=TextNode(text=f"t{i}", id_=str(i)), score=1.0 - i / 10) for i in range(5)]
    reranker = Qwen3RerankPostprocessor(scorer=ScriptedScorer([0.5, 0.9, 0.5, 0.9, 0.1]), top_n=None)
    for result in (
        reranker.postprocess_nodes(nodes, query_str=QUERY),
        await reranker.apostprocess_nodes(nodes, query_str=QUERY),
    ):
        assert [n.node.node_id for n in result] == ["1", "3", "0", "2", "4"]
        assert [n.score for n in result] == [0.9, 0.9, 0.5, 0.5, 0.1]


async def test_empty_input_no_scorer_call_no_events(rerank_events):
    scorer = ScriptedScorer(error=AssertionError("must not be called"))
    reranker = Qwen3RerankPostprocessor(scorer=scorer)
    assert reranker.postprocess_nodes([], query_str=QUERY) == []
    assert await reranker.apostprocess_nodes([], query_str=QUERY) == []
    assert scorer.calls == 0 and rerank_events == []


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("nodes", "kwargs", "error", "names"),
    [
        ("nodes", {}, ValueError, "query_bundle"),
        ("empty", {}, ValueError, "query_bundle"),
        ("nodes", {"query_str": "  "}, ValueError, "query"),
        ("nodes", {"query_str": QUERY, "query_bundle": QueryBundle(QUERY)}, ValueError, "query_str"),
        ("mixed", {"query_str": QUERY}, TypeError, r"nodes\[1\]"),
    ],
)
async def test_bad_input_raises_before_scoring(retrieved, rerank_events, nodes, kwargs, error, names):
    nodes = {"nodes": retrieved, "empty": [], "mixed": [retrieved[0], retrieved[1].node]}[nodes]
    scorer = ScriptedScorer(error=AssertionError("must not be called"))
    reranker = Qwen3RerankPostprocessor(scorer=scorer)
    with pytest.raises(error, match=names):
        reranker.postprocess_nodes(nodes, **kwargs)
    with pytest.raises(error, match=names):
        await reranker.apostprocess_nodes(nodes, **kwargs)
    assert scorer.calls == 0 and rerank_events == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scorer": "Qwen/Qwen3-Reranker-0.6B"}, "scorer"),
        ({"scorer": ScriptedScorer(), "top_n": -1}, "top_n"),
        ({"scorer": ScriptedScorer(), "score_threshold": -0.1}, "score_threshold"),
        ({"scorer": ScriptedScorer(), "metadata_mode": "everything"}, "metadata_mode"),
        ({"scorer": ScriptedScorer(), "keep_retrieval_scores": True}, "keep_retrieval_scores"),
    ],
)
def test_bad_fields_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        Qwen3RerankPostprocessor(**kwargs)


@pytest.mark.parametrize(
    ("error", "expected"),
    [(ServerError("unavailable", status_code=503), ServerError), (RuntimeError("NPU fault"), RerankError)],
)
async def test_scorer_faults_surface_as_rerank_error(retrieved, error, expected):
    debug = LlamaDebugHandler()
    reranker = Qwen3RerankPostprocessor(scorer=ScriptedScorer(error=error), callback_manager=CallbackManager([debug]))
    with pytest.raises(expected) as caught:
        reranker.postprocess_nodes(retrieved, query_str=QUERY)
    assert caught.value is error or caught.value.__cause__ is error
    with pytest.raises(expected):
        await reranker.apostprocess_nodes(retrieved, query_str=QUERY)
    # The legacy event is closed with the exception, as LlamaIndex's callback manager does.
    assert len(debug.get_event_pairs(CBEventType.RERANKING)) == 2


@pytest.mark.parametrize(
    ("scores", "message"), [([1.5] * RETRIEVE_K, "1.5 for documents"), ([float("nan")] * RETRIEVE_K, "nan")]
)
async def test_scores_that_are_not_probabilities_are_refused(retrieved, scores, message):
    reranker = Qwen3RerankPostprocessor(scorer=ScriptedScorer(scores))
    with pytest.raises(RerankError, match=f"scorer scripted returned {message}"):
        reranker.postprocess_nodes(retrieved, query_str=QUERY)
    with pytest.raises(RerankError, match=f"scorer scripted returned {message}"):
        await reranker.apostprocess_nodes(retrieved, query_str=QUERY)


# ------------------------------------------------------------------------------------------- construction
def test_from_model_splits_arguments_and_loads_lazily(tiny_model_dir):
    # Scoring through from_model() is covered on the shared base in test_langchain_adapter.py; here the
    # postprocessor's own fields must land on it and the scorer's on the scorer.
    reranker = Qwen3RerankPostprocessor.from_model(
        str(tiny_model_dir), device="cpu", max_length=512, top_n=2, keep_retrieval_score=True, instruction="Find it"
    )
    assert isinstance(reranker.scorer, LocalScorer) and not reranker.scorer.loaded
    assert (reranker.top_n, reranker.keep_retrieval_score, reranker.instruction) == (2, True, "Find it")
    assert (reranker.scorer.model, reranker.scorer.device, reranker.scorer.max_length) == (
        str(tiny_model_dir),
        "cpu",
        512,
    )


def test_class_name_and_serialization():
    reranker = Qwen3RerankPostprocessor(scorer=ScriptedScorer(), top_n=None)
    assert Qwen3RerankPostprocessor.class_name() == "Qwen3RerankPostprocessor"
    assert reranker.to_dict() == {
        "scorer": {"class_name": "ScriptedScorer", "model": "scripted"},
        "top_n": None,
        "score_threshold": None,
        "instruction": None,
        "keep_retrieval_score": False,
        "metadata_mode": MetadataMode.EMBED,
        "class_name": "Qwen3RerankPostprocessor",
    }
    assert '"metadata_mode": "embed"' in reranker.to_json()


def test_import_pulls_in_neither_torch_nor_langchain():
    assert heavy_modules_after_import("qwen3_rerank_integrations.llama_index") == ["llama_index"]


# ------------------------------------------------------------------------------------------- remote scorer
@pytest.mark.parametrize(("server_fixture", "template"), VLLM_MODES)
async def test_query_engines_with_vllm(request, server_fixture, template, index, retrieved, reference):
    server = request.getfixturevalue(server_fixture)
    reranker = Qwen3RerankPostprocessor.from_vllm(server.base_url, template=template, backoff=0.001, top_n=3)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=RETRIEVE_K, node_postprocessors=[reranker])
    async with reranker.scorer:  # closes both HTTP clients
        check_reranked(engine.query(QUERY).source_nodes, retrieved, reference, top_n=3)
        check_reranked((await engine.aquery(QUERY)).source_nodes, retrieved, reference, top_n=3)
    assert len(server.scoring_requests()) == 2  # one rerank request per query: the server did the scoring


async def test_vllm_instruction_api_key_and_no_secret_leaks(vllm_template_server, reference_scorer, index, retrieved):
    secret = SECRET
    vllm_template_server.api_key = secret
    instruction = INSTRUCTION
    reranker = Qwen3RerankPostprocessor.from_vllm(
        vllm_template_server.base_url, template="server", api_key=secret, instruction=instruction, top_n=None
    )
    expected = reference_scorer.score(QUERY, embed_texts(retrieved), instruction=instruction)
    engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=RETRIEVE_K), llm=MockLLM(), node_postprocessors=[reranker]
    )
    async with reranker.scorer:  # closes both HTTP clients
        check_reranked((await engine.aquery(QUERY)).source_nodes, retrieved, expected, top_n=None)
    assert [r.json["instruction"] for r in vllm_template_server.scoring_requests()] == [instruction]
    for text in (repr(reranker), str(reranker), reranker.to_json(), str(reranker.to_dict())):
        assert secret not in text


async def test_vllm_faults_reach_the_query_engine_as_rerank_errors(vllm_legacy_server, index):
    vllm_legacy_server.inject("status", status=500, times=2)
    reranker = Qwen3RerankPostprocessor.from_vllm(vllm_legacy_server.base_url, max_retries=0)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=RETRIEVE_K, node_postprocessors=[reranker])
    async with reranker.scorer:  # closes both HTTP clients
        with pytest.raises(ServerError):
            engine.query(QUERY)
        with pytest.raises(ServerError):
            await engine.aquery(QUERY)
