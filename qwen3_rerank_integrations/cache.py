"""The opt-in score cache behind every scorer's ``cache=`` field: the stores and the lookup plan.

A RAG service reranks the same popular queries against the same candidates again and again; each of those
scores is a forward pass (or a request) that a cache answers in microseconds. A scorer with ``cache=`` set
(``LocalScorer(..., cache=True)``, any :class:`~qwen3_rerank_integrations.ScorerBase` backend) looks every
(query, document) pair up, scores only the documents it does not have in one backend call, stores them, and
returns all scores in input order. The numbers are the backend's own, bit for bit.

A cached score is only ever returned for the configuration that computed it. Its key is a sha256 over a
canonical encoding of:

- the key format (:data:`KEY_VERSION`) and this package's version (a release may change how a prompt is built);
- the scorer's identity, the dict its ``cache_identity()`` returns: for
  :class:`~qwen3_rerank_integrations.LocalScorer` the resolved model and its exact revision (see
  :func:`~qwen3_rerank_integrations.model_source.model_revision`), dtype, device kind and ``max_length``; for
  :class:`~qwen3_rerank_integrations.VLLMScorer` the server URL (no credentials), ``model``, ``template``,
  ``route`` and the prompt limit in force;
- the instruction actually used (after the scorer's default), the query, the document text.

Stores: :class:`InMemoryScoreCache` (a thread-safe LRU, the default), :class:`DiskScoreCache` (diskcache,
persistent and shared between processes), :class:`ByteStoreScoreCache` (any LangChain ``ByteStore``). Every
store keeps hit/miss counts (:attr:`ScoreCache.stats`).

A hit is checked as a fresh score is: an entry that is not a float in [0, 1] (a ``ByteStore`` shared with other
code, a folder written by another version, a damaged entry) is a *miss*: the pair is scored again and the entry
overwritten, with a warning. So a cache can cost a rescoring, never a wrong score.

Copies and pickles (see :class:`ScoreCache`): an in-memory cache carries its entries, a disk cache its folder
(reopened on first use), a ByteStore cache its store.

The logic is written once, as a *plan* (a generator that asks for the identity, cache reads, scores and cache
writes), driven by :func:`cached_scores` and its async twin :func:`acached_scores`, which
:class:`~qwen3_rerank_integrations.ScorerBase` calls for its ``cache=`` field (and the eval runner, through
:func:`score_keys`, for whole calls).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import math
import os
import struct
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, computed_field, model_validator

from ._loaded_state import LoadedStateModel
from .errors import RerankError
from .extras import require
from .scorer import checked_scores

__all__ = [
    "KEY_VERSION",
    "ScoreCache",
    "CacheStats",
    "InMemoryScoreCache",
    "DiskScoreCache",
    "ByteStoreScoreCache",
    "cached_scores",
    "acached_scores",
    "score_keys",
]

logger = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the key's encoding changes: old entries then simply stop matching
KEY_PREFIX = f"qwen3-rerank-score-v{KEY_VERSION}-"  # also lets ByteStoreScoreCache.clear() find its own keys

Identity = Mapping[str, Any]
IdentitySource = Union[Identity, Callable[[], Identity]]
AsyncIdentitySource = Union[Identity, Callable[[], Union[Identity, Awaitable[Identity]]]]


# ============================================================================================== keys
def score_keys(identity: Identity, instruction: str | None, query: str, documents: Sequence[str]) -> list[str]:
    """The cache key of each (query, document) pair under ``identity`` and ``instruction``.

    What a call shares (format, package version, identity, instruction, query) is encoded once as canonical
    JSON and hashed; each key hashes that fixed-length digest with the document's UTF-8 bytes, so no two
    different inputs can produce the same encoded bytes.
    """
    from . import __version__

    head = _canonical(
        {"key": KEY_VERSION, "package": __version__, "identity": identity, "instruction": instruction, "query": query}
    )
    shared = hashlib.sha256(head).digest()
    return [KEY_PREFIX + hashlib.sha256(shared + doc.encode("utf-8", "surrogatepass")).hexdigest() for doc in documents]


def _canonical(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, ASCII; what JSON cannot tell apart is refused."""
    return json.dumps(_jsonable(value, "key"), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _jsonable(item: Any, where: str) -> Any:
    if item is None or isinstance(item, (str, bool, int)):
        return item
    if isinstance(item, float):
        if not math.isfinite(item):
            raise ValueError(f"{where} is {item!r}: a cache key holds finite numbers only")
        return item
    if isinstance(item, Mapping):
        for key in item:
            if not isinstance(key, str):  # JSON would turn 1 and "1" into the same key
                raise TypeError(f"{where} has the non-str key {key!r}: a cache key holds str keys only")
        return {key: _jsonable(value, f"{where}[{key!r}]") for key, value in item.items()}
    if isinstance(item, (list, tuple)):
        return [_jsonable(value, f"{where}[{i}]") for i, value in enumerate(item)]
    raise TypeError(
        f"{where} is a {type(item).__name__}: a cache key holds str, int, float, bool, None, lists and dicts only"
    )


# ============================================================================================== stores
class CacheStats(BaseModel):
    """Lookups a score cache answered (hits) and did not (misses), since it was made or last cleared. Each
    distinct (query, document) pair of a call is one lookup."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hits: int = Field(0, ge=0, description="Lookups that found a score.")
    misses: int = Field(0, ge=0, description="Lookups that found none (those pairs were then scored).")

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented usage
    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ScoreCache(LoadedStateModel, ABC):
    """A store of scores by key, with hit/miss counts. Subclass it for another store: implement
    ``_get_many``, ``_set_many`` and ``_clear`` (and the async ``_aget_many``/``_aset_many`` if the store has
    native async I/O; by default they run the sync ones on a worker thread).

    Anything a store reads back that is not a float in [0, 1] counts as a miss (that pair is rescored and
    overwritten), exactly as an out-of-range fresh score is refused.

    Copies and pickles hold the settings and the data, never a lock or an open handle: ``copy.copy``,
    ``model_copy`` and ``copy.deepcopy`` give an independent cache (an in-memory one with a copy of the entries
    and counts, a disk one on the same folder with its own connection); ``pickle`` does the same, so a scorer
    shipped to another process (multiprocessing, Ray) takes a snapshot of its in-memory cache along (what it
    learns there stays there; share scores between processes with a ``DiskScoreCache`` or a ``ByteStore``).
    Changing a setting (``directory``, ``size_limit``) closes the open handle; the next call opens the new one.
    A subclass's private attributes are loaded state by default (rebuilt on copy); name data to carry in
    ``_carried_private``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)

    _carried_private: ClassVar[frozenset[str]] = frozenset({"_hits", "_misses"})

    _counts_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _hits: int = PrivateAttr(0)
    _misses: int = PrivateAttr(0)

    def get_many(self, keys: Sequence[str]) -> list[float | None]:
        """The score stored under each key, or None."""
        return self._counted(self._get_many(list(keys)) if keys else [])

    def set_many(self, items: Mapping[str, float]) -> None:
        """Store scores by key."""
        if items:
            self._set_many({key: float(value) for key, value in items.items()})

    async def aget_many(self, keys: Sequence[str]) -> list[float | None]:
        """Async twin of :meth:`get_many`; never blocks the event loop on disk or network I/O."""
        return self._counted(await self._aget_many(list(keys)) if keys else [])

    async def aset_many(self, items: Mapping[str, float]) -> None:
        """Async twin of :meth:`set_many`."""
        if items:
            await self._aset_many({key: float(value) for key, value in items.items()})

    def clear(self) -> None:
        """Drop every stored score and reset the counts."""
        self._clear()
        self.reset_stats()

    def reset_stats(self) -> None:
        """Reset the hit/miss counts (the scores stay)."""
        with self._counts_lock:
            self._hits = self._misses = 0

    @property
    def stats(self) -> CacheStats:
        """Hits, misses and hit rate so far."""
        with self._counts_lock:
            return CacheStats(hits=self._hits, misses=self._misses)

    def _carried_state(self) -> dict[str, Any]:
        with self._counts_lock:
            return super()._carried_state()

    def _counted(self, values: list[Any]) -> list[float | None]:
        # Anything but a float in [0, 1] (a foreign, damaged or out-of-range entry) is a miss, never a score:
        # the same check a fresh score gets (scorer.checked_scores). NaN fails the range test too.
        checked = [v if type(v) is float and 0.0 <= v <= 1.0 else None for v in values]
        hits = sum(v is not None for v in checked)
        invalid = sum(v is not None for v in values) - hits
        if invalid:
            logger.warning(
                "%s: %d cached entries held no probability in [0, 1] (written by other code or damaged); "
                "scoring those pairs again and overwriting them", type(self).__name__, invalid,
            )
        with self._counts_lock:
            self._hits += hits
            self._misses += len(checked) - hits
        return checked

    @abstractmethod
    def _get_many(self, keys: list[str]) -> list[Any]: ...

    @abstractmethod
    def _set_many(self, items: dict[str, float]) -> None: ...

    @abstractmethod
    def _clear(self) -> None: ...

    async def _aget_many(self, keys: list[str]) -> list[Any]:
        return await asyncio.to_thread(self._get_many, keys)

    async def _aset_many(self, items: dict[str, float]) -> None:
        await asyncio.to_thread(self._set_many, items)


class InMemoryScoreCache(ScoreCache):
    """A thread-safe LRU in this process: the least recently used score goes first once it is full.

    Example:
        >>> scorer = LocalScorer("Qwen/Qwen3-Reranker-0.6B", cache=InMemoryScoreCache(max_entries=10_000))
    """

    max_entries: int = Field(100_000, gt=0, description="Most scores kept (about 200 bytes each).")

    _carried_private: ClassVar[frozenset[str]] = ScoreCache._carried_private | {"_entries"}

    _entries: OrderedDict[str, float] = PrivateAttr(default_factory=OrderedDict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _carried_state(self) -> dict[str, Any]:
        # The entries are data: a copy or a pickle takes a snapshot of them, in LRU order, never the dict itself.
        with self._lock:
            return {**super()._carried_state(), "_entries": OrderedDict(self._entries)}

    def __len__(self) -> int:
        return len(self._entries)

    def _get_many(self, keys: list[str]) -> list[Any]:
        entries, found = self._entries, []
        with self._lock:
            for key in keys:
                value = entries.get(key)
                if value is not None:
                    entries.move_to_end(key)
                found.append(value)
        return found

    def _set_many(self, items: dict[str, float]) -> None:
        entries = self._entries
        with self._lock:
            for key, value in items.items():
                entries[key] = value
                entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

    def _clear(self) -> None:
        with self._lock:
            self._entries.clear()

    async def _aget_many(self, keys: list[str]) -> list[Any]:
        return self._get_many(keys)  # memory only: a thread hop would cost more than the lookup

    async def _aset_many(self, items: dict[str, float]) -> None:
        self._set_many(items)


class DiskScoreCache(ScoreCache):
    """A persistent cache in a folder (diskcache: SQLite), shared by threads and processes; needs the ``cache``
    extra (checked at construction).

    Scores are stored as SQLite REAL (exact doubles), never pickled, and an entry of any other kind (a folder
    written by something else) reads as a miss: reading the cache never unpickles anything. Once the folder
    outgrows ``size_limit``, the least recently stored scores go first.

    Example:
        >>> cache = DiskScoreCache(directory="~/.cache/my-app/rerank-scores")
    """

    directory: str = Field(description="The cache folder (made if missing; '~' expanded).")
    size_limit: int = Field(1 << 30, gt=0, description="Most bytes on disk before old scores are evicted.")

    _db: Any = PrivateAttr(None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, directory: str | os.PathLike[str] | None = None, /, **data: Any) -> None:
        require("DiskScoreCache")  # diskcache: at construction, not after an eval's first stage has run
        # Lets the folder be positional: DiskScoreCache("scores/").
        if directory is not None:
            if "directory" in data:
                raise TypeError("DiskScoreCache() got the directory both positionally and as directory=")
            data["directory"] = os.fspath(directory)
        super().__init__(**data)

    def close(self) -> None:
        """Close the database (it reopens on the next use)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def _release_state(self, old: Mapping[str, Any]) -> None:
        db = old.get("_db")  # a changed directory or size_limit: the next call opens the new one
        if db is not None:
            db.close()

    def __enter__(self) -> DiskScoreCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._cache())

    def _cache(self) -> Any:
        if self._db is None:
            with self._lock:
                if self._db is None:
                    require("DiskScoreCache")  # also here: model_validate and model_copy skip __init__
                    import diskcache

                    self._db = diskcache.Cache(
                        os.path.expanduser(self.directory), disk=_float_disk(), size_limit=self.size_limit
                    )
        return self._db

    def _get_many(self, keys: list[str]) -> list[Any]:
        db = self._cache()
        return [db.get(key) for key in keys]

    def _set_many(self, items: dict[str, float]) -> None:
        db = self._cache()
        with db.transact():  # one commit for the whole call
            for key, value in items.items():
                db.set(key, value)

    def _clear(self) -> None:
        self._cache().clear()


_FLOAT_DISK: Any = None


def _float_disk() -> Any:
    """A diskcache ``Disk`` that reads raw SQLite values only: it never unpickles or opens a value file."""
    global _FLOAT_DISK
    if _FLOAT_DISK is None:
        import diskcache

        class FloatDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache is untyped
            def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
                return value if mode == diskcache.core.MODE_RAW else None

            def get(self, key: Any, raw: bool) -> Any:  # keys as they come back from the table
                return key if raw else None

        _FLOAT_DISK = FloatDisk
    return _FLOAT_DISK


class ByteStoreScoreCache(ScoreCache):
    """Scores in any LangChain ``ByteStore`` (``InMemoryByteStore``, ``LocalFileStore``, Redis, ...), as
    8-byte little-endian doubles (exact; nothing is pickled). Uses the store's native async methods.

    Example:
        >>> from langchain_core.stores import InMemoryByteStore
        >>> cache = ByteStoreScoreCache(store=InMemoryByteStore())
    """

    store: Any = Field(description="A langchain_core.stores.ByteStore (anything with mget/mset/mdelete/yield_keys).")

    @model_validator(mode="after")
    def _check_store(self) -> ByteStoreScoreCache:
        needed = ("mget", "mset", "mdelete", "yield_keys")
        missing = [name for name in needed if not callable(getattr(self.store, name, None))]
        if missing:
            raise TypeError(
                f"store must be a LangChain ByteStore; {type(self.store).__name__} has no {', '.join(missing)}"
            )
        return self

    def _get_many(self, keys: list[str]) -> list[Any]:
        return [_unpack(value) for value in self.store.mget(keys)]

    def _set_many(self, items: dict[str, float]) -> None:
        self.store.mset([(key, struct.pack("<d", value)) for key, value in items.items()])

    def _clear(self) -> None:
        self.store.mdelete(list(self.store.yield_keys(prefix=KEY_PREFIX)))

    async def _aget_many(self, keys: list[str]) -> list[Any]:
        if not hasattr(self.store, "amget"):
            return await super()._aget_many(keys)
        return [_unpack(value) for value in await self.store.amget(keys)]

    async def _aset_many(self, items: dict[str, float]) -> None:
        if not hasattr(self.store, "amset"):
            return await super()._aset_many(items)
        await self.store.amset([(key, struct.pack("<d", value)) for key, value in items.items()])


def _unpack(value: Any) -> float | None:
    if isinstance(value, (bytes, bytearray)) and len(value) == 8:
        return float(struct.unpack("<d", value)[0])
    return None  # absent, or not ours


# ============================================================================================== the plan
_IDENTITY, _GET, _SET, _COMPUTE = "identity", "get", "set", "compute"
_ROUNDS = 3
Step = tuple[str, Any]


def _plan(
    query: str, documents: list[str], instruction: str | None, scorer: object
) -> Generator[Step, Any, list[float]]:
    """Look every distinct document up, score the missing ones in one inner call, store them; input order.

    The identity is asked again after computing: a scorer that resolves its model while computing (a first
    load that found another revision than the cache had) may answer differently, and then the fresh scores
    are stored under the new identity and what the cache gave under the old one is looked up again.
    """
    if not documents:
        return []
    unique = list(dict.fromkeys(documents))  # duplicates within a call are scored once
    identity = yield (_IDENTITY, None)
    found: dict[str, float] = {}
    for _ in range(_ROUNDS):
        keys = dict(zip(unique, score_keys(identity, instruction, query, unique)))
        pending = [doc for doc in unique if doc not in found]
        values = yield (_GET, [keys[doc] for doc in pending])
        found.update((doc, value) for doc, value in zip(pending, values) if value is not None)
        missing = [doc for doc in unique if doc not in found]
        if not missing:
            return [found[doc] for doc in documents]
        fresh = checked_scores(scorer, (yield (_COMPUTE, missing)), len(missing))
        after = yield (_IDENTITY, None)
        if after != identity:
            logger.info("the scorer's cache identity changed while it computed; looking the rest up again")
            keys = dict(zip(missing, score_keys(after, instruction, query, missing)))
            found, identity = {}, after
        yield (_SET, {keys[doc]: score for doc, score in zip(missing, fresh)})
        found.update(zip(missing, fresh))
        if len(found) == len(unique):
            return [found[doc] for doc in documents]
    raise RerankError(
        f"the cache identity of {type(scorer).__name__} changed every time it computed ({_ROUNDS} times in one "
        "call); a cache_identity() must describe the configuration, not the moment"
    )


def cached_scores(
    cache: ScoreCache,
    identity: IdentitySource,
    query: str,
    documents: Sequence[str],
    instruction: str | None,
    compute: Callable[[list[str]], Sequence[float]],
    *,
    scorer: object = None,
) -> list[float]:
    """Scores of ``documents`` from ``cache``, calling ``compute`` once with only the missing ones.

    Args:
        cache: where scores are kept.
        identity: the scorer's identity (a dict), or a function returning it (asked before and after computing).
        query, documents: the call's arguments, already validated (``validate_inputs``).
        instruction: the instruction the scorer will actually use (its default filled in), for the key.
        compute: scores a list of documents for this query and instruction, in order.
        scorer: the scorer behind ``compute``, named in error messages.

    Raises:
        whatever ``compute`` raises, unchanged (nothing is stored); RerankError when it returns other than one
        probability per document.
    """
    plan = _plan(query, list(documents), instruction, scorer)
    reply: Any = None
    while True:
        try:
            kind, arg = plan.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if kind == _IDENTITY:
            reply = identity() if callable(identity) else identity
        elif kind == _GET:
            reply = cache.get_many(arg)
        elif kind == _SET:
            reply = cache.set_many(arg)
        else:
            reply = compute(arg)


async def acached_scores(
    cache: ScoreCache,
    identity: AsyncIdentitySource,
    query: str,
    documents: Sequence[str],
    instruction: str | None,
    compute: Callable[[list[str]], Awaitable[Sequence[float]]],
    *,
    scorer: object = None,
) -> list[float]:
    """Async twin of :func:`cached_scores`: ``compute`` is awaited, ``identity`` may be async, and a disk or
    network store does its I/O off the event loop."""
    plan = _plan(query, list(documents), instruction, scorer)
    reply: Any = None
    while True:
        try:
            kind, arg = plan.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if kind == _IDENTITY:
            reply = identity() if callable(identity) else identity
            if inspect.isawaitable(reply):
                reply = await reply
        elif kind == _GET:
            reply = await cache.aget_many(arg)
        elif kind == _SET:
            reply = await cache.aset_many(arg)
        else:
            reply = await compute(arg)
