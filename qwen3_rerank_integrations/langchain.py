"""Qwen3-Reranker as a LangChain document compressor: :class:`Qwen3RerankCompressor`.

Use it in a ``ContextualCompressionRetriever`` (langchain-classic) or anywhere in an LCEL chain::

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor

    reranker = Qwen3RerankCompressor.from_model("Qwen/Qwen3-Reranker-0.6B", top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=vector_store.as_retriever())

Each compression is a run of its own for LangChain callbacks (LangSmith, Langfuse...): a child of the caller's run
(the compression retriever passes its ``callbacks``), of run type "retriever" with the query as input and the
reranked Documents, ``relevance_score`` in their metadata, as output; failures end it with the error.

Importing this module imports langchain-core and pydantic, never torch, httpx or llama_index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
except ImportError:  # say in one line which extra brings it
    from .extras import require

    require("Qwen3RerankCompressor")
    raise

from ._ranking import Ranked, RerankerBase
from .scorer import scorer_name

__all__ = ["Qwen3RerankCompressor"]


class Qwen3RerankCompressor(RerankerBase, BaseDocumentCompressor):
    """Reranks LangChain documents with a Qwen3-Reranker and keeps the best ``top_n``.

    Returns new :class:`~langchain_core.documents.Document` objects (the inputs are never changed) with all
    their metadata plus ``metadata["relevance_score"]``, best first (ties in input order), without those
    scoring below ``score_threshold``.

    Example:
        >>> from qwen3_rerank_integrations.langchain import Qwen3RerankCompressor
        >>> reranker = Qwen3RerankCompressor.from_model("Qwen/Qwen3-Reranker-0.6B", device="cpu", top_n=2)
        >>> docs = reranker.compress_documents(documents, "What is the capital of China?")
        >>> [(d.page_content, d.metadata["relevance_score"]) for d in docs]
    """

    def rerank(self, documents: Sequence[str | Document], query: str) -> list[dict[str, Any]]:
        """Rank ``documents`` (texts or Documents) against ``query`` without building new Documents.

        Returns:
            ``[{"index": position in documents, "relevance_score": score}, ...]``, best first, after
            ``score_threshold`` and ``top_n``.
        """
        return _as_dicts(self._rank(query, self._checked(query, _texts(documents))))

    async def arerank(self, documents: Sequence[str | Document], query: str) -> list[dict[str, Any]]:
        """The async twin of :meth:`rerank`, awaiting the scorer's ``ascore``."""
        return _as_dicts(await self._arank(query, self._checked(query, _texts(documents))))

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rerank ``documents`` against ``query``: new Documents with ``metadata["relevance_score"]``, best first.

        ``callbacks`` (what a ``ContextualCompressionRetriever`` passes down) see the rerank as a run of its own.

        Raises:
            TypeError, ValueError: a bad query, instruction or document (before any scoring or run).
            RerankError: the scorer failed.
        """
        texts = self._checked_texts(documents, query)
        run = CallbackManager.configure(callbacks, local_metadata=self._run_metadata()).on_retriever_start(
            None, query, name=type(self).__name__
        )
        try:
            reranked = _with_scores(documents, self._rank(query, texts))
        except BaseException as exc:
            run.on_retriever_error(exc)
            raise
        run.on_retriever_end(reranked)
        return reranked

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The async twin of :meth:`compress_documents`: awaits the scorer's ``ascore`` (no thread hop)."""
        texts = self._checked_texts(documents, query)
        manager = AsyncCallbackManager.configure(callbacks, local_metadata=self._run_metadata())
        run = await manager.on_retriever_start(None, query, name=type(self).__name__)
        try:
            reranked = _with_scores(documents, await self._arank(query, texts))
        except BaseException as exc:
            await run.on_retriever_error(exc)
            raise
        await run.on_retriever_end(reranked)
        return reranked

    def _checked_texts(self, documents: Sequence[Document], query: str) -> list[str]:
        # Bad input raises before a callback run starts, so a trace never shows a run for a call that never ran.
        return self._checked(query, _texts(documents, documents_only=True))

    def _run_metadata(self) -> dict[str, Any]:
        return {"reranker_model": scorer_name(self.scorer), "top_n": self.top_n,
                "score_threshold": self.score_threshold}


def _texts(documents: object, *, documents_only: bool = False) -> list[str]:
    """The text of each input, checking the inputs first so a bad one is named before any scoring."""
    expected = "Document" if documents_only else "str or Document"
    if isinstance(documents, (str, bytes, Document)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a sequence of {expected}, got {type(documents).__name__}")
    texts = []
    for i, doc in enumerate(documents):
        if isinstance(doc, Document):
            texts.append(doc.page_content)
        elif isinstance(doc, str) and not documents_only:
            texts.append(doc)
        else:
            raise TypeError(f"documents[{i}] must be a {expected}, got {type(doc).__name__}")
    return texts


def _with_scores(documents: Sequence[Document], ranked: list[Ranked]) -> list[Document]:
    # model_copy keeps id and every other field; the metadata dict is new, so the input stays untouched.
    return [
        documents[index].model_copy(update={"metadata": {**documents[index].metadata, "relevance_score": score}})
        for index, score in ranked
    ]


def _as_dicts(ranked: list[Ranked]) -> list[dict[str, Any]]:
    return [{"index": index, "relevance_score": score} for index, score in ranked]
