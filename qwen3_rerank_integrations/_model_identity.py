"""What decides a scorer's scores, for score-cache keys: a model's exact revision and a server's public URL.

:func:`model_revision` tells which weights a model name or folder means (a hub snapshot's commit, or a folder's
content fingerprint); :func:`model_identity` keeps that answer with the weights a scorer loaded;
:func:`public_url` names a server without its secrets. The backends' ``cache_identity()`` methods build on these;
:mod:`~qwen3_rerank_integrations.cache` hashes what they return into keys (and re-exports these names).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import RerankError

__all__ = ["LOCAL_FOLDER", "folder_fingerprint", "model_identity", "model_revision", "public_url"]

# The "model" of a local folder's identity: its content fingerprint (the revision) identifies it, not its path.
LOCAL_FOLDER = "local folder"


def public_url(url: str) -> str:
    """``url`` without user, password, query or fragment: what identifies a server, never a secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ============================================================================================== model revision
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TOKENIZER_FILES = frozenset(
    {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
     "added_tokens.json", "chat_template.jinja", "chat_template.json"}
)
_HEAD_BYTES = 1 << 20  # the safetensors header plus this much tensor data is hashed whole
_SAMPLES = 64  # then this many blocks spread evenly over the rest of the file
_SAMPLE_BYTES = 64 << 10
_MAX_HEADER = 100 << 20  # safetensors' own limit on its JSON header
_fingerprints: OrderedDict[tuple[Any, ...], str] = OrderedDict()
_fingerprints_lock = threading.Lock()
_pinned: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_pinned_lock = threading.Lock()


def model_revision(
    location: str, revision: str | None = None, cache_dir: str | None = None, *, required: bool = False
) -> str | None:
    """The exact revision of a model: what a cache key needs so that other weights never match.

    - A local folder: ``"sha256:" +`` :func:`folder_fingerprint` (its content, not its path or dates).
    - A hub id: the commit of the snapshot in the Hugging Face cache that ``revision`` (None: the default
      branch) points to, read from the cache without a network call; ``revision`` itself when it is a commit.
      None when nothing is cached yet (the model is not loaded, so nothing can have been scored with it).

    Raises:
        RerankError: ``required`` (the model is loaded) and the revision cannot be told.
    """
    if os.path.isdir(location):
        return "sha256:" + folder_fingerprint(location)
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(location, "config.json", cache_dir=cache_dir, revision=revision)
    if isinstance(found, str):  # .../models--org--name/snapshots/<commit>/config.json
        snapshot = Path(found).parent
        if snapshot.parent.name == "snapshots" and _COMMIT.fullmatch(snapshot.name):
            return snapshot.name
    if required:
        raise RerankError(
            f"cannot tell which revision of model={location!r} is loaded (it is not in the Hugging Face cache), so "
            "its scores cannot be cached safely; pass revision=<commit hash>, load it from a local folder, or give "
            "CachedScorer an explicit identity="
        )
    return None


def model_identity(
    weights: object | None, locate: Callable[[], str], revision: str | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """``{"model": hub id or LOCAL_FOLDER, "revision": model_revision(...)}`` of a scorer that loads weights.

    A local folder is identified by its content alone (the ``"sha256:..."`` revision of
    :func:`folder_fingerprint`), never by its path: a byte-identical copy of a folder, elsewhere or on another
    machine, hits the same cache entries. ``weights`` is the scorer's loaded model (None before loading) and
    ``locate`` its own resolution of the model (a local folder, or a hub id). Once weights are loaded, the first
    identity resolved after loading stays with that weights object, so replacing the files later never relabels
    the scores of the weights still in memory.
    """

    def resolve() -> dict[str, Any]:
        location = locate()
        local = os.path.isdir(location)
        return {
            "model": LOCAL_FOLDER if local else location,
            "revision": model_revision(location, revision, cache_dir, required=weights is not None),
        }

    if weights is None:
        return resolve()
    with _pinned_lock:
        found = _pinned.get(weights)
    if found is None:
        found = resolve()
        with _pinned_lock:
            found = _pinned.setdefault(weights, found)
    return dict(found)


def folder_fingerprint(folder: str | os.PathLike[str]) -> str:
    """A sha256 over what in a model folder decides its scores, without reading every weight.

    Hashed whole: ``config.json`` and the tokenizer files. For each ``*.safetensors`` file: its name, its size,
    its header (every tensor's name, dtype, shape and offsets) with the first MiB of data, and 64 blocks of
    64 KiB spread evenly over the rest (a few MiB read per file, whatever its size). Retraining or converting a
    checkpoint changes those blocks; a change confined to a few rows between them would go unseen: after such
    an edit, clear the cache or give :class:`CachedScorer` an explicit ``identity``. Paths and dates are not
    hashed, so a copied folder keeps its cache; the result is kept per file size, date and inode, so an
    unchanged folder is hashed once per process. Two folders whose only difference falls between the
    sampled blocks (a few rows edited by hand) share a fingerprint, and so their cache entries.
    """
    folder = os.path.abspath(folder)
    names = sorted(
        name for name in os.listdir(folder)
        if (name == "config.json" or name in _TOKENIZER_FILES or name.endswith(".safetensors"))
        and os.path.isfile(os.path.join(folder, name))
    )
    stats = tuple(
        (name, st.st_size, st.st_mtime_ns, st.st_ino) for name in names for st in [os.stat(os.path.join(folder, name))]
    )
    memo_key = (folder, stats)
    with _fingerprints_lock:
        if memo_key in _fingerprints:
            _fingerprints.move_to_end(memo_key)
            return _fingerprints[memo_key]
    digest = hashlib.sha256()
    for name, size, _, _ in stats:
        digest.update(f"{len(name)}:{name}:{size};".encode())  # name and size, unambiguous
        path = os.path.join(folder, name)
        digest.update(_sampled_digest(path, size) if name.endswith(".safetensors") else _file_digest(path))
    value = digest.hexdigest()
    with _fingerprints_lock:
        _fingerprints[memo_key] = value
        while len(_fingerprints) > 64:
            _fingerprints.popitem(last=False)
    return value


def _file_digest(path: str) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _sampled_digest(path: str, size: int) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))[0]
        head = 8 + min(length, _MAX_HEADER) + _HEAD_BYTES
        f.seek(0)
        digest.update(f.read(head))
        rest = size - head
        if rest > 0:
            step = max(rest // _SAMPLES, 1)
            for offset in range(head, size, step):
                f.seek(offset)
                digest.update(f.read(_SAMPLE_BYTES))
    return digest.digest()
