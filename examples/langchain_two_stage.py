"""Two-stage retrieval with LangChain: an embedder fetches candidates, Qwen3-Reranker keeps the best.

Stage 1: the bundled corpus (examples/corpus.jsonl, English and Chinese passages) goes into an
``InMemoryVectorStore`` with ``HuggingFaceEmbeddings`` (default ``BAAI/bge-small-en-v1.5``), which returns the
``--top-k`` passages closest to the query. Stage 2: a ``ContextualCompressionRetriever`` hands them to
``Qwen3RerankCompressor``, which keeps the ``--top-n`` best by Qwen3-Reranker score.

    python examples/langchain_two_stage.py
    python examples/langchain_two_stage.py --query "服务器数据被盗的原因" --top-k 10 --top-n 3
    python examples/langchain_two_stage.py --backend vllm --base-url http://localhost:8000 --template server

The first run downloads the embedder and Qwen/Qwen3-Reranker-0.6B from the Hugging Face hub; pass local folders
with ``--embed-model`` and ``--model`` to work offline. For a vLLM server that needs a key, set the
``VLLM_API_KEY`` environment variable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from _pipeline_common import Passage, RankedPassage, load_embedder, run_cli, run_two_stage

# What the pipeline imports, checked before anything loads (the examples extra brings them all).
NEEDS = ("langchain_core", "langchain_classic", "langchain_huggingface")

if TYPE_CHECKING:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.embeddings import Embeddings

    from qwen3_rerank_integrations import Scorer


def build_retriever(
    passages: Sequence[Passage], embeddings: Embeddings, scorer: Scorer, *, top_k: int, top_n: int
) -> ContextualCompressionRetriever:
    """Vector search for ``top_k`` candidates, then Qwen3-Reranker for the ``top_n`` best."""
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.runnables import chain
    from langchain_core.vectorstores import InMemoryVectorStore

    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor

    store = InMemoryVectorStore.from_texts(
        [p.text for p in passages],
        embeddings,
        metadatas=[{"lang": p.lang, "topic": p.topic} for p in passages],
        ids=[p.id for p in passages],
    )

    # A plain `store.as_retriever()` drops the similarity scores; this is LangChain's documented way to keep
    # them (a runnable over similarity_search_with_score), so the table can show both stages.
    @chain
    def retrieve_with_scores(query: str) -> list[Document]:
        hits = store.similarity_search_with_score(query, k=top_k)
        for document, similarity in hits:
            document.metadata["retrieval_score"] = similarity
        return [document for document, _ in hits]

    return ContextualCompressionRetriever(
        base_retriever=retrieve_with_scores,
        base_compressor=Qwen3RerankCompressor(scorer=scorer, top_n=top_n),
    )


def build_embeddings(model: str, device: str) -> Embeddings:
    """The first-stage embedder: any sentence-transformers model, with unit-length vectors (cosine scores)."""
    from langchain_huggingface import HuggingFaceEmbeddings

    return load_embedder(model, lambda: HuggingFaceEmbeddings(
        model_name=model,
        model_kwargs={} if device == "auto" else {"device": device},
        encode_kwargs={"normalize_embeddings": True},
    ))


def rerank(query: str, retriever: ContextualCompressionRetriever) -> list[RankedPassage]:
    """Run both stages for ``query``; rows come best first."""
    return [
        RankedPassage(
            text=document.page_content,
            retrieval_score=document.metadata["retrieval_score"],
            rerank_score=document.metadata["relevance_score"],
            id=document.id,
        )
        for document in retriever.invoke(query)
    ]


def build_pipeline(
    args: argparse.Namespace, passages: list[Passage], scorer: Scorer
) -> Callable[[str], list[RankedPassage]]:
    """Both stages over ``passages``, configured by the flags, as one function from a query to ranked rows."""
    retriever = build_retriever(
        passages, build_embeddings(args.embed_model, args.device), scorer, top_k=args.top_k, top_n=args.top_n
    )
    return lambda query: rerank(query, retriever)


def run(argv: Sequence[str] | None = None) -> list[RankedPassage]:
    """Parse the flags, build the pipeline, print the table, and return its rows."""
    return run_two_stage(__doc__.splitlines()[0], argv, build_pipeline, needs=NEEDS,
                         script="examples/langchain_two_stage.py")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
