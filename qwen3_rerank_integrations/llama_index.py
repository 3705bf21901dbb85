"""Qwen3-Reranker as a LlamaIndex node postprocessor: :class:`Qwen3RerankPostprocessor`.

Use it wherever LlamaIndex takes ``node_postprocessors``::

    from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor

    reranker = Qwen3RerankPostprocessor.from_model("Qwen/Qwen3-Reranker-0.6B", top_n=3)
    query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[reranker])

Importing this module imports llama-index-core and pydantic, never torch, httpx or langchain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle
except ImportError:  # say in one line which extra brings it
    from .extras import require

    require("Qwen3RerankPostprocessor")
    raise
from pydantic import Field

from ._ranking import Ranked, RerankerBase
from .scorer import scorer_name

__all__ = ["Qwen3RerankPostprocessor"]

dispatcher = get_dispatcher(__name__)

_RETRIEVAL_SCORE = "retrieval_score"


class Qwen3RerankPostprocessor(RerankerBase, BaseNodePostprocessor):
    """Reranks LlamaIndex nodes with a Qwen3-Reranker and keeps the best ``top_n``.

    Returns new :class:`~llama_index.core.schema.NodeWithScore` objects whose ``score`` is the rerank score,
    best first (ties in input order), without those scoring below ``score_threshold``. The input nodes are
    never changed. Emits ``ReRankStartEvent``/``ReRankEndEvent`` and the legacy ``CBEventType.RERANKING``.

    Example:
        >>> from qwen3_rerank_integrations.llama_index import Qwen3RerankPostprocessor
        >>> reranker = Qwen3RerankPostprocessor.from_model("Qwen/Qwen3-Reranker-0.6B", device="cpu", top_n=2)
        >>> query_engine = index.as_query_engine(similarity_top_k=10, node_postprocessors=[reranker])
    """

    keep_retrieval_score: bool = Field(
        False, description="Keep each node's retrieval score in node.metadata['retrieval_score'] (on a copy)."
    )
    metadata_mode: MetadataMode = Field(
        MetadataMode.EMBED,
        description="Which metadata goes into the text the reranker reads (node.get_content(metadata_mode=...)); "
        "EMBED, as LlamaIndex's rerankers do: what was embedded is what gets judged.",
    )

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3RerankPostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        bundle, texts = self._inputs(nodes, query_bundle)
        if not texts:
            return []
        with self._events(nodes, bundle) as reranked:
            reranked.extend(self._with_scores(nodes, self._rank(bundle.query_str, texts)))
        return reranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        bundle, texts = self._inputs(nodes, query_bundle)
        if not texts:
            return []
        with self._events(nodes, bundle) as reranked:
            reranked.extend(self._with_scores(nodes, await self._arank(bundle.query_str, texts)))
        return reranked

    def _inputs(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[QueryBundle, list[str]]:
        """The query and each node's text; raises on a missing query or a non-node before any scoring."""
        if query_bundle is None:
            raise ValueError("query_bundle is required: pass query_bundle= or query_str= to postprocess_nodes()")
        if not isinstance(nodes, list):
            raise TypeError(f"nodes must be a list of NodeWithScore, got {type(nodes).__name__}")
        for i, node in enumerate(nodes):
            if not isinstance(node, NodeWithScore):
                raise TypeError(f"nodes[{i}] must be a NodeWithScore, got {type(node).__name__}")
        texts = [node.node.get_content(metadata_mode=self.metadata_mode) for node in nodes]
        # Checked here, once, so a bad query raises before any event is emitted.
        return query_bundle, self._checked(query_bundle.query_str, texts)

    @contextlib.contextmanager
    def _events(self, nodes: list[NodeWithScore], query: QueryBundle) -> Iterator[list[NodeWithScore]]:
        """Wrap one rerank in the instrumentation events and the legacy callback event; the body fills the list."""
        top_n = len(nodes) if self.top_n is None else self.top_n  # the event's top_n is an int
        model_name = scorer_name(self.scorer)
        dispatcher.event(ReRankStartEvent(query=query, nodes=nodes, top_n=top_n, model_name=model_name))
        reranked: list[NodeWithScore] = []
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name,
            EventPayload.QUERY_STR: query.query_str,
            EventPayload.TOP_K: top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            yield reranked
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))

    def _with_scores(self, nodes: list[NodeWithScore], ranked: list[Ranked]) -> list[NodeWithScore]:
        return [NodeWithScore(node=self._result_node(nodes[index]), score=score) for index, score in ranked]

    def _result_node(self, node: NodeWithScore) -> BaseNode:
        if not self.keep_retrieval_score:
            return node.node
        inner = node.node
        # A copy with its own metadata, so the caller's node (and the docstore's) keeps its metadata. The score
        # is bookkeeping, not content: hide it from the embed/LLM text so a later reranker or the LLM never
        # reads it.
        return inner.model_copy(
            update={
                "metadata": {**inner.metadata, _RETRIEVAL_SCORE: node.score},
                "excluded_embed_metadata_keys": _with_key(inner.excluded_embed_metadata_keys),
                "excluded_llm_metadata_keys": _with_key(inner.excluded_llm_metadata_keys),
            }
        )


def _with_key(keys: list[str]) -> list[str]:
    return keys if _RETRIEVAL_SCORE in keys else [*keys, _RETRIEVAL_SCORE]
