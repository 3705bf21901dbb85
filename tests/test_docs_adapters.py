"""The LangChain and LlamaIndex code of README.md, docs/langchain.md and docs/llama-index.md, run as pasted.

Offline stand-ins take the place of what a reader brings: the tiny random Qwen3 for ``Qwen/Qwen3-Reranker-0.6B``,
MiniLM for the embedder, a loopback vLLM (tests/vllm_standin.py) for ``http://localhost:8000``, an in-memory
vector store over examples/corpus.jsonl, and a fake LLM. What the pages print and build must be the official
method's ranking of what was retrieved (to 1e-5), and both alternatives a page shows (in-process model, vLLM
server) must rank alike.
"""

from __future__ import annotations

import asyncio
import functools

import pytest
from langchain_core.language_models.fake import FakeListLLM
from pydantic import Field

from tests.adapter_helpers import QUERY, assert_close, expected_ranking
from tests.doc_blocks import (
    EMBEDDER_ID,
    HUB_ID,
    PAGE_URL,
    ROOT,
    blocks_to_run,
    built_by,
    example_corpus,
    hub_model_stand_in,
    printed_ranking,
    run_blocks,
)

TOP_N = 3  # the pages' top_n
RETRIEVE_K = 20  # the pages' k / similarity_top_k


@pytest.fixture(scope="module")
def hub_model_dir(tiny_model_dir, tmp_path_factory):
    return hub_model_stand_in(tiny_model_dir, tmp_path_factory)


def check_ranking(ranked: list[tuple[float, str]], candidates: list[str], reference_scorer) -> None:
    """``ranked`` (score, text) is the official top ``TOP_N`` of ``candidates``, best first."""
    reference = _reference(reference_scorer, tuple(candidates))
    top = expected_ranking(reference, TOP_N)
    assert [text for _, text in ranked] == [candidates[i] for i in top]
    assert_close([score for score, _ in ranked], [reference[i] for i in top])


@functools.lru_cache(maxsize=8)
def _reference(reference_scorer, candidates: tuple[str, ...]) -> list[float]:
    return reference_scorer.score(QUERY, list(candidates))


def close_scorer(reranker) -> None:
    close = getattr(reranker.scorer, "close", None)
    if close is not None:
        close()


# ------------------------------------------------------------------------------------------------ LangChain
class RecordingLLM(FakeListLLM):
    """FakeListLLM that keeps the prompts it was given, to see what the chain put in front of the LLM."""

    prompts: list[str] = Field(default_factory=list)

    def _call(self, prompt, stop=None, run_manager=None, **kwargs):
        self.prompts.append(prompt)
        return super()._call(prompt, stop, run_manager, **kwargs)


@pytest.fixture(scope="module")
def vector_store(minilm_dir):
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_huggingface import HuggingFaceEmbeddings

    return InMemoryVectorStore.from_texts(example_corpus(), HuggingFaceEmbeddings(model_name=str(minilm_dir)))


@pytest.mark.slow  # the pages' code (~6 s CPU); the adapter itself: test_langchain_adapter.py
def test_langchain_pages_run_and_rank_what_was_retrieved(vector_store, vllm_legacy_server, hub_model_dir,
                                                         reference_scorer, monkeypatch, capsys):
    from qwen3_rerank_integrations import LocalScorer
    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor

    readme = blocks_to_run(ROOT / "README.md", "langchain")
    page = blocks_to_run(ROOT / "docs/langchain.md", "langchain")
    assert len(page) == 2, "the retriever, then LCEL"
    assert [block.code for block in readme] == [page[0].code], "README's LangChain block is the page's first"

    in_process = built_by(monkeypatch, Qwen3RerankCompressor, "from_model")
    llm = RecordingLLM(responses=["Beijing."])
    any_retriever = vector_store.as_retriever(search_kwargs={"k": 6})
    given = {"vector_store": vector_store, "llm": llm, "any_retriever": any_retriever}
    replace = {HUB_ID: str(hub_model_dir), PAGE_URL: vllm_legacy_server.base_url}
    with run_blocks(page, "docs_langchain", given=given, replace=replace) as namespace:
        printed = printed_ranking(capsys.readouterr().out)
        retrieved = [doc.page_content for doc in vector_store.similarity_search(QUERY, k=RETRIEVE_K)]
        assert len(retrieved) == RETRIEVE_K
        check_ranking(printed, retrieved, reference_scorer)  # the vLLM alternative, which the page runs last

        # The in-process alternative (the page's first reranker) ranks the same documents alike.
        (local,) = in_process
        assert isinstance(local.scorer, LocalScorer) and local.scorer.model == str(hub_model_dir)
        local_docs = local.compress_documents(vector_store.similarity_search(QUERY, k=RETRIEVE_K), QUERY)
        check_ranking([(d.metadata["relevance_score"], d.page_content) for d in local_docs], retrieved,
                      reference_scorer)

        # LCEL: the LLM was handed the reranked context and the question; the RunnableLambda reranks another
        # retriever's documents, sync and async alike.
        assert namespace["answer"] == "Beijing."
        (prompt,) = llm.prompts
        assert "\n\n".join(text for _, text in printed) in prompt and f"Question: {QUERY}" in prompt
        candidates = [doc.page_content for doc in any_retriever.invoke(QUERY)]
        for result in (namespace["chain"].invoke(QUERY), asyncio.run(namespace["chain"].ainvoke(QUERY))):
            check_ranking([(d.metadata["relevance_score"], d.page_content) for d in result], candidates,
                          reference_scorer)
        close_scorer(namespace["reranker"])
    assert vllm_legacy_server.scoring_requests(), "the page's vLLM reranker asked the server"


# ------------------------------------------------------------------------------------------------ LlamaIndex
@pytest.fixture
def llama_index_settings(monkeypatch):
    """LlamaIndex's global Settings as they were, after the page sets its embed model and LLM."""
    from llama_index.core import Settings

    for name, value in list(vars(Settings).items()):
        monkeypatch.setattr(Settings, name, value)
    return Settings


@pytest.mark.slow  # the pages' code; the adapter itself: test_llama_index_adapter.py
def test_llama_index_pages_run_and_rank_what_was_retrieved(minilm_dir, vllm_template_server, hub_model_dir,
                                                           reference_scorer, llama_index_settings, monkeypatch,
                                                           capsys):
    from llama_index.core import Document
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import MetadataMode

    from qwen3_rerank_integrations import LocalScorer
    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    readme = blocks_to_run(ROOT / "README.md", "llama-index")
    page = blocks_to_run(ROOT / "docs/llama-index.md", "llama-index")
    assert [block.code for block in readme] == [block.code for block in page]

    in_process = built_by(monkeypatch, Qwen3RerankPostprocessor, "from_model")
    given = {"documents": [Document(text=text) for text in example_corpus()], "llm": MockLLM()}
    replace = {HUB_ID: str(hub_model_dir), EMBEDDER_ID: str(minilm_dir), PAGE_URL: vllm_template_server.base_url}
    with run_blocks(page, "docs_llama_index", given=given, replace=replace) as namespace:
        printed = printed_ranking(capsys.readouterr().out)
        retrieved = namespace["index"].as_retriever(similarity_top_k=RETRIEVE_K).retrieve(QUERY)
        candidates = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in retrieved]
        assert len(candidates) == RETRIEVE_K
        check_ranking(printed, candidates, reference_scorer)  # the vLLM alternative, which the page runs last

        # The answer was written from the reranked nodes (MockLLM echoes its prompt).
        response = namespace["response"]
        assert [(n.score, n.node.get_content()) for n in response.source_nodes] == printed
        assert printed[0][1] in str(response)
        # The explicit retriever and the reranker on its own give the same nodes.
        again = namespace["query_engine"].query(QUERY)
        for nodes in (again.source_nodes, namespace["nodes"]):
            check_ranking([(n.score, n.node.get_content()) for n in nodes], candidates, reference_scorer)

        # The in-process alternative (the page's first reranker) ranks the same nodes alike.
        (local,) = in_process
        assert isinstance(local.scorer, LocalScorer) and local.scorer.model == str(hub_model_dir)
        local_nodes = local.postprocess_nodes(retrieved, query_str=QUERY)
        check_ranking([(n.score, n.node.get_content()) for n in local_nodes], candidates, reference_scorer)
        close_scorer(namespace["reranker"])
    assert vllm_template_server.scoring_requests(), "the page's vLLM reranker asked the server"
