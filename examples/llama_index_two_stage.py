"""Two-stage retrieval with LlamaIndex: an embedder fetches candidates, Qwen3-Reranker keeps the best.

Stage 1: the bundled corpus (examples/corpus.jsonl, English and Chinese passages) becomes a
``VectorStoreIndex`` with ``HuggingFaceEmbedding`` (default ``BAAI/bge-small-en-v1.5``); its retriever returns the
``--top-k`` passages closest to the query. Stage 2: ``Qwen3RerankPostprocessor`` runs as the query engine's node
postprocessor and keeps the ``--top-n`` best by Qwen3-Reranker score.

No real LLM is needed: the query engine gets LlamaIndex's ``MockLLM``, which only echoes its prompt and never
leaves the machine, and the result is the engine's ranked ``source_nodes``. Pass a real LLM instead (e.g.
``llm=OpenAI(...)``) and ``response.response`` becomes an answer written from those passages.

    python examples/llama_index_two_stage.py
    python examples/llama_index_two_stage.py --query "服务器数据被盗的原因" --top-k 10 --top-n 3
    python examples/llama_index_two_stage.py --backend vllm --base-url http://localhost:8000 --template server

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
NEEDS = ("llama_index.core", "llama_index.embeddings.huggingface")

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.query_engine import BaseQueryEngine

    from qwen3_rerank_integrations import Scorer


def build_query_engine(
    passages: Sequence[Passage], embed_model: BaseEmbedding, scorer: Scorer, *, top_k: int, top_n: int
) -> BaseQueryEngine:
    """Vector search for ``top_k`` candidates, then Qwen3-Reranker for the ``top_n`` best (MockLLM answers)."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import TextNode

    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    nodes = [
        TextNode(
            id_=p.id,
            text=p.text,
            metadata={"lang": p.lang, "topic": p.topic},
            # Keep the labels out of what is embedded and reranked: both stages should judge the passage alone.
            excluded_embed_metadata_keys=["lang", "topic"],
            excluded_llm_metadata_keys=["lang", "topic"],
        )
        for p in passages
    ]
    index = VectorStoreIndex(nodes, embed_model=embed_model)
    return index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=top_k,
        node_postprocessors=[Qwen3RerankPostprocessor(scorer=scorer, top_n=top_n, keep_retrieval_score=True)],
    )


def build_embed_model(model: str, device: str) -> BaseEmbedding:
    """The first-stage embedder: any sentence-transformers model, with unit-length vectors (cosine scores)."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return load_embedder(model, lambda: HuggingFaceEmbedding(
        model_name=model, device=None if device == "auto" else device, normalize=True
    ))


def rerank(query: str, query_engine: BaseQueryEngine) -> list[RankedPassage]:
    """Run both stages for ``query``; rows come best first."""
    return [
        RankedPassage(
            text=hit.node.get_content(),
            retrieval_score=hit.node.metadata["retrieval_score"],
            rerank_score=hit.score,
            id=hit.node.node_id,
        )
        for hit in query_engine.query(query).source_nodes
    ]


def build_pipeline(
    args: argparse.Namespace, passages: list[Passage], scorer: Scorer
) -> Callable[[str], list[RankedPassage]]:
    """Both stages over ``passages``, configured by the flags, as one function from a query to ranked rows."""
    query_engine = build_query_engine(
        passages, build_embed_model(args.embed_model, args.device), scorer, top_k=args.top_k, top_n=args.top_n
    )
    return lambda query: rerank(query, query_engine)


def run(argv: Sequence[str] | None = None) -> list[RankedPassage]:
    """Parse the flags, build the pipeline, print the table, and return its rows."""
    return run_two_stage(__doc__.splitlines()[0], argv, build_pipeline, needs=NEEDS,
                         script="examples/llama_index_two_stage.py")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
