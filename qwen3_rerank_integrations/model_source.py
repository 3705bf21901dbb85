"""Where a Qwen3-Reranker checkpoint comes from, how it is loaded, and which revision it is.

:class:`ModelSource` is the one home of model loading for the in-process backends
(:class:`~qwen3_rerank_integrations.LocalScorer` and :class:`~qwen3_rerank_integrations.VLLMEngineScorer`):
resolving ``model`` (a local folder, a Hugging Face id, a ModelScope id), the checks a folder must pass
(config, tokenizer files, safetensors weights), loading the config, tokenizer and weights with the package's
safety settings (safetensors only, no remote code), and the error messages when any of that fails.

For score-cache keys: :func:`model_revision` tells which weights a model name or folder means (a hub snapshot's
commit, or a folder's content fingerprint, :func:`folder_fingerprint`); :func:`model_identity` keeps that answer
with the weights a scorer loaded. The backends' ``cache_identity()`` methods build on these.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ModelLoadError, RerankError, hub_load_error, hub_offline
from .prompt import PromptEncoder

__all__ = ["ModelSource", "LOCAL_FOLDER", "folder_fingerprint", "file_digest", "model_identity", "model_revision"]

logger = logging.getLogger(__name__)

# The "model" of a local folder's identity: its content fingerprint (the revision) identifies it, not its path.
LOCAL_FOLDER = "local folder"
_QWEN3_ARCHITECTURES = {"Qwen3ForCausalLM"}
# A folder holds a usable tokenizer when it has the fast tokenizer's file or the slow one's pair.
_TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
_PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


# ============================================================================================== loading
class ModelSource(BaseModel):
    """A checkpoint's whereabouts (the loading settings a backend shares) and how to load its parts.

    Holds no loaded state: a backend builds one from its fields, calls what it needs (:meth:`location`,
    :meth:`load_config`, :meth:`load_encoder`, :meth:`load_weights`, :meth:`identity`) and keeps the results
    itself, so a changed setting never leaves old parts in use.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="A local folder, a Hugging Face id or a ModelScope id.")
    source: Literal["huggingface", "modelscope"] = Field(
        "huggingface", description="Where to download `model` from when it is not a local folder."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    cache_dir: str | None = Field(None, description="Download cache folder; the hub library's default if None.")
    local_files_only: bool = Field(False, description="Never go to the network; use cached or local files only.")
    owner: str = Field("LocalScorer", description="The backend named in messages (what loads the model).")

    # ------------------------------------------------------------------------------------------ resolving
    def location(self) -> str:
        """A local folder to load from, or a Hugging Face id for transformers to resolve (a ModelScope id is
        downloaded first).

        Raises:
            ModelLoadError: a folder without config.json, a file, a path that does not exist, a failed download.
        """
        expanded = os.path.expanduser(self.model)
        if os.path.isdir(expanded):
            if not os.path.isfile(os.path.join(expanded, "config.json")):
                raise ModelLoadError(
                    f"model={self.model!r} is a local folder but has no config.json; point it at the folder that "
                    "holds the checkpoint (config.json, *.safetensors, tokenizer files)."
                )
            return expanded
        if os.path.exists(expanded):
            raise ModelLoadError(
                f"model={self.model!r} is a file, not a folder; pass the folder that holds the checkpoint "
                f"(config.json, *.safetensors, tokenizer files), e.g. {os.path.dirname(expanded) or '.'!r}."
            )
        if expanded.startswith((".", "/", "~")) or expanded.count("/") > 1 or os.sep + os.sep in expanded:
            raise ModelLoadError(
                f"model={self.model!r} looks like a local path but no such folder exists; "
                "check the path, or pass a hub id such as 'Qwen/Qwen3-Reranker-0.6B'."
            )
        if self.source == "modelscope":
            return self._download_from_modelscope()
        return self.model

    def _download_from_modelscope(self) -> str:
        try:
            from modelscope import snapshot_download  # optional dependency
        except ImportError as exc:
            raise ModelLoadError(
                "source='modelscope' needs the modelscope package: pip install modelscope"
            ) from exc
        try:
            return str(snapshot_download(self.model, revision=self.revision, cache_dir=self.cache_dir))
        except Exception as exc:  # modelscope raises many unrelated types
            raise ModelLoadError(
                f"could not load model={self.model!r}: tried a local folder (none), then ModelScope ({exc}). "
                "Check the id, your network, or download the model and pass its folder."
            ) from exc

    def load_error(self, what: str, exc: Exception) -> ModelLoadError:
        """The ModelLoadError for a part (``what``: config, tokenizer, weights) that failed to load: where it was
        looked for and what to do."""
        subject = f"the {what} of model={self.model!r}"
        if os.path.isdir(os.path.expanduser(self.model)):
            reason = " ".join(str(exc).split()).rstrip(".")
            return ModelLoadError(f"could not load {subject} (a local folder): {reason}.")
        if self.source == "modelscope":
            reason = " ".join(str(exc).split()).rstrip(".")
            return ModelLoadError(f"could not load {subject} (tried a local folder (none), then the ModelScope hub): "
                                  f"{reason}. Check the id and your network.")
        switch = "local_files_only=True" if self.local_files_only else "HF_HUB_OFFLINE=1" if hub_offline() else None
        return hub_load_error(subject, self.model, exc, folder_option="model='/path/to/folder'", offline_switch=switch,
                              alternatives="set HF_ENDPOINT to a mirror, or use source='modelscope'")

    def _hub_kwargs(self) -> dict[str, Any]:
        return {"revision": self.revision, "cache_dir": self.cache_dir, "local_files_only": self.local_files_only}

    # ------------------------------------------------------------------------------------------ loading
    def load_config(self, max_length: int | None = None) -> Any:
        """The model's config, checked: a Qwen3 causal LM, whose context holds ``max_length`` (None: not checked;
        positions past the context were never trained, so a longer limit is refused, loudly).

        Raises:
            ModelLoadError: not loadable, or not a Qwen3 causal LM. ValueError: ``max_length`` above the context.
        """
        from transformers import AutoConfig

        location = self.location()
        try:
            config = AutoConfig.from_pretrained(location, **self._hub_kwargs())
        except Exception as exc:
            raise self.load_error("config", exc) from exc
        architectures = set(getattr(config, "architectures", None) or ["Qwen3ForCausalLM"])
        if config.model_type != "qwen3" or not architectures & _QWEN3_ARCHITECTURES:
            raise ModelLoadError(
                f"model={self.model!r} is not a Qwen3 causal LM (model_type={config.model_type!r}, "
                f"architectures={sorted(architectures)}); {self.owner} needs an original Qwen3-Reranker "
                "checkpoint such as Qwen/Qwen3-Reranker-0.6B (a sequence-classification conversion will not do)."
            )
        context = context_length(config)
        if max_length is not None and context is not None and max_length > context:
            raise ValueError(
                f"max_length={max_length} is more than model={self.model!r} can read: its context "
                f"(config max_position_embeddings) is {context} tokens; use max_length <= {context}."
            )
        return config

    def load_encoder(self, max_length: int) -> PromptEncoder:
        """The model's tokenizer, checked, as a :class:`~qwen3_rerank_integrations.prompt.PromptEncoder` that cuts
        prompts at ``max_length`` tokens.

        Raises:
            ModelLoadError: no tokenizer files in a folder, not loadable, or not a Qwen3 tokenizer.
        """
        from transformers import AutoTokenizer

        location = self.location()
        if os.path.isdir(location):
            _require_tokenizer_files(self.model, location)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, **self._hub_kwargs())
        except Exception as exc:  # hub/IO/parse errors all mean "not loadable"
            raise self.load_error("tokenizer", exc) from exc
        if tokenizer.pad_token is None:  # "Cannot handle batch sizes > 1 if no padding token is defined"
            tokenizer.pad_token = "<|endoftext|>"
        try:
            return PromptEncoder(tokenizer, max_length)
        except ValueError as exc:
            raise ModelLoadError(f"model={self.model!r} does not have a Qwen3 tokenizer: {exc}") from exc

    def load_weights(self, config: Any, dtype: Any, device: Any) -> Any:
        """The causal LM in eval mode on ``device``: safetensors only, never remote code.

        Raises:
            ModelLoadError: a folder with pickle weights only or none, or weights that do not load.
        """
        from transformers import AutoModelForCausalLM

        location = self.location()
        if os.path.isdir(location):
            _require_safetensors(self.model, location, self.owner)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                location,
                config=config,
                dtype=dtype,
                attn_implementation="sdpa",
                use_safetensors=True,  # never unpickle .bin weights
                trust_remote_code=False,
                **self._hub_kwargs(),
            )
        except Exception as exc:
            raise self.load_error("weights", exc) from exc
        model.to(device).eval()
        return model

    def identity(self, weights: object | None) -> dict[str, Any]:
        """``{"model", "revision"}`` for cache keys (:func:`model_identity`), pinned to ``weights`` once loaded."""
        return model_identity(weights, self.location, self.revision, self.cache_dir)


def context_length(config: Any) -> int | None:
    """The model's context in tokens (config ``max_position_embeddings``), None when it does not say."""
    context = getattr(config, "max_position_embeddings", None)
    return context if isinstance(context, int) else None


def _require_tokenizer_files(model: str, folder: str) -> None:
    """Refuse a checkpoint folder without tokenizer files: transformers would build an empty tokenizer from it
    (every text encodes to nothing, "yes" and "no" both to id 0) instead of failing."""
    names = set(os.listdir(folder))
    if not any(set(needed) <= names for needed in _TOKENIZER_FILE_SETS):
        raise ModelLoadError(
            f"model={model!r} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt, with "
            "tokenizer_config.json). Save the tokenizer beside the weights: copy those files from the original "
            "checkpoint (hf download Qwen/Qwen3-Reranker-0.6B tokenizer.json tokenizer_config.json "
            f"vocab.json merges.txt --local-dir {folder}), or save them there with "
            "AutoTokenizer.from_pretrained(...).save_pretrained(...)."
        )


def _require_safetensors(model: str, folder: str, owner: str) -> None:
    """Name the real problem of a folder without safetensors weights before transformers reports a hub error."""
    names = os.listdir(folder)
    if any(name.endswith(".safetensors") or name.endswith(".safetensors.index.json") for name in names):
        return
    pickles = sorted(name for name in names if name.endswith(_PICKLE_WEIGHT_SUFFIXES))
    if pickles:
        raise ModelLoadError(
            f"model={model!r} holds only pickle weights ({', '.join(pickles[:3])}); {owner} loads safetensors "
            "only, since unpickling a file can run any code in it. If you trust the file, convert it once: "
            f"AutoModelForCausalLM.from_pretrained({folder!r}, use_safetensors=False).save_pretrained({folder!r}) "
            "(writes model.safetensors), or download the official checkpoint, which ships safetensors."
        )
    raise ModelLoadError(
        f"model={model!r} has no weights (*.safetensors); point it at the folder that holds the whole checkpoint."
    )


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
            "its scores cannot be cached safely; pass revision=<commit hash>, or load it from a local folder"
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
    an edit, clear the cache. Paths and dates are not
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
        digest.update(_sampled_digest(path, size) if name.endswith(".safetensors") else file_digest(path))
    value = digest.hexdigest()
    with _fingerprints_lock:
        _fingerprints[memo_key] = value
        while len(_fingerprints) > 64:
            _fingerprints.popitem(last=False)
    return value


def file_digest(path: str) -> bytes:
    """The sha256 of a whole file (read in 1 MiB blocks)."""
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
