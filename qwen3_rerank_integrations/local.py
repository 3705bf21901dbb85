"""In-process scoring with transformers: :class:`LocalScorer`.

The score of a pair is P("yes") = softmax([logit_no, logit_yes])[1] at the last position, which equals
``sigmoid(h_last · (W[yes] − W[no]))`` where ``h_last`` is the final hidden state of the last token and ``W``
the output embedding. So instead of projecting every position onto the 151,669-token vocabulary (what makes
the official snippet slow and memory-hungry) we run the decoder body and take one dot product per pair with a
precomputed ``W[yes] − W[no]`` row, in fp32.

The part every prompt of a call shares (system prompt, instruction, query: ~80 tokens) is run once and its
keys/values reused for every document; the system prompt's keys/values are computed once per model and reused
by every call. The split is fixed (system prompt, then the rest of the shared part, then the tails), so a call's
scores never depend on the calls before it. The rest is batched from length-sorted prompts under a token budget and a
padding bound (on CPU a padded token costs as much as a real one), right-padded after the shared part so each
row keeps the positions it would have alone; keys/values are never kept past their layer. Scores come back in
input order.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from .base import ScorerBase
from .devices import DTypeName, empty_cache, resolve_device, resolve_dtype
from .errors import RerankError
from .extras import require
from .model_source import ModelSource, context_length
from .prompt import PromptEncoder

if TYPE_CHECKING:
    import torch

__all__ = ["LocalScorer", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-Reranker-0.6B"
# Tokens per forward pass. Larger batches stop paying off once the device is busy; on CPU the attention
# and MLP matmuls are already large at a few thousand tokens.
_DEFAULT_BATCH_TOKENS = {"cpu": 8192, "mps": 8192}
_ACCELERATOR_BATCH_TOKENS = 16384
# Most padding a batch may hold, as a share of its padded tokens (see _batch_size).
_PADDING_SLACK = {"cpu": 0.1}
_ACCELERATOR_PADDING_SLACK = 0.3


class LocalScorer(ScorerBase):
    """Scores (query, document) pairs with a Qwen3-Reranker loaded in this process.

    The model loads lazily on the first non-empty :meth:`score` (or eagerly with :meth:`load`), so building
    a pipeline is cheap and an empty document list never touches the weights. Changing a setting that decides
    the scores (``model``, ``max_length``, ``dtype``, ``device``...: assigned, or in ``model_copy(update=...)``)
    drops the loaded model and tokenizer, so the next call loads them for the new settings; a copy or an
    unpickled scorer loads its own on first use. :meth:`score` raises
    ``ModelLoadError`` when the model cannot be loaded; :meth:`ascore` runs on a worker thread (concurrent calls
    take turns on the model). ``cache=True`` keeps scores in an in-memory LRU (see ``ScorerBase.cache``).

    Example:
        >>> scorer = LocalScorer("Qwen/Qwen3-Reranker-0.6B", device="auto")
        >>> scorer.score("what is the capital of China?", ["Beijing is the capital.", "Gravity pulls."])
        [0.99..., 0.00...]
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Read by every call. Any other setting, once changed, drops the loaded tokenizer and model (see ScorerBase).
    _per_call_settings: ClassVar[frozenset[str]] = ScorerBase._per_call_settings | {
        "max_batch_tokens", "batch_size", "show_progress_bar"
    }

    model: str = Field(
        DEFAULT_MODEL,
        description="A local folder (a str or os.PathLike such as pathlib.Path), a Hugging Face id "
        "(Qwen/Qwen3-Reranker-0.6B, -4B, -8B) or a ModelScope id.",
    )
    source: Literal["huggingface", "modelscope"] = Field(
        "huggingface",
        description="Where to download `model` from when it is not a local folder. 'modelscope' needs "
        "`pip install modelscope` (the usual choice in mainland China).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    cache_dir: str | None = Field(None, description="Download cache folder; the hub library's default if None.")
    local_files_only: bool = Field(False, description="Never go to the network; use cached or local files only.")
    device: str = Field(
        "auto", description="'auto' (NPU > CUDA > MPS > CPU), or 'npu', 'npu:1', 'cuda:0', 'mps', 'cpu'."
    )
    dtype: DTypeName = Field(
        "auto", description="'auto' (bf16 on NPU/CUDA, fp16 where bf16 is unsupported and on MPS, fp32 on CPU)."
    )
    max_length: int = Field(
        8192,
        gt=0,
        description="Most tokens per prompt; longer documents lose their tail (prefix/suffix kept). A value above "
        "the model's context (config max_position_embeddings) raises ValueError at load; the default is lowered "
        "to the context of a model with less than 8192.",
    )
    max_batch_tokens: int | None = Field(
        None, gt=0, description="Token budget per forward pass; None picks 16384 on accelerators, 8192 on CPU/MPS."
    )
    batch_size: int = Field(64, gt=0, description="Most documents per forward pass.")
    show_progress_bar: bool = Field(False, description="Show a tqdm progress bar over batches.")
    fused: bool = Field(
        False,
        description="Opt-in fused decoder: RMSNorm and the SwiGLU MLP fused (torch.compile with dynamic shapes on "
        "CPU/CUDA, compiled by a warm-up at load that logs its time; torch_npu's npu_rms_norm, npu_swiglu and "
        "npu_rotary_mul on Ascend). Scores equal the default path's to ~1e-7 in float32. See fused_report.",
    )

    _encoder: PromptEncoder | None = PrivateAttr(None)
    _config: Any = PrivateAttr(None)
    _model: Any = PrivateAttr(None)
    _head: Any = PrivateAttr(None)  # W[yes] - W[no], fp32, on the model's device
    _system_kv: Any = PrivateAttr(None)  # per-layer keys/values of the system prompt (PromptEncoder.prefix_ids)
    _torch_device: Any = PrivateAttr(None)
    _fused: Any = PrivateAttr(None)  # (FusedDecoder, compile counter or None) once fused=True has been applied
    _lock: Any = PrivateAttr(default_factory=threading.RLock)

    def __init__(self, model: str | os.PathLike[str] | None = None, /, **data: Any) -> None:
        require("LocalScorer")  # torch, transformers...: one line naming the extra, before anything is set up
        # Lets `model` be positional, as in CrossEncoder("..."), on top of pydantic's keyword-only init.
        if model is not None:
            if "model" in data:
                raise TypeError("LocalScorer() got the model both positionally and as model=")
            data["model"] = model
        super().__init__(**data)

    @field_validator("model", mode="before")
    @classmethod
    def _model_path_to_str(cls, value: Any) -> Any:
        # A pathlib.Path is a folder; kept as a str so repr, dumps and cache keys stay plain.
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    # ----------------------------------------------------------------------------------------- scoring
    # score()/ascore() come from ScorerBase: checks, the empty list, the instruction default, the cache. ascore
    # runs this on a worker thread; concurrent calls take turns on the model.
    def _score_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        with self._lock:
            tokens = self._ensure_encoder().encode(query, documents, instruction)
            self._ensure_model()
            return self._score_ids(tokens.ids)

    def load(self) -> LocalScorer:
        """Load the tokenizer and model now (otherwise the first :meth:`score` does). Returns ``self``."""
        with self._lock:
            self._ensure_encoder()
            self._ensure_model()
        return self

    @property
    def loaded(self) -> bool:
        """Whether the model weights are in memory."""
        return self._model is not None

    @property
    def torch_device(self) -> torch.device:
        """The device the model runs on (resolves ``device='auto'`` without loading the model)."""
        if self._torch_device is None:
            self._torch_device = resolve_device(self.device)
        return self._torch_device

    # ----------------------------------------------------------------------------------------- loading
    def _source(self) -> ModelSource:
        """Where the model comes from and how it loads (shared with VLLMEngineScorer); built per use, so it
        always reflects the current settings."""
        return ModelSource(model=self.model, source=self.source, revision=self.revision, cache_dir=self.cache_dir,
                           local_files_only=self.local_files_only)

    def _ensure_config(self) -> Any:
        """The model's config, checked: a Qwen3 causal LM whose context holds an explicitly set ``max_length``."""
        if self._config is None:
            explicit = self.max_length if "max_length" in self.model_fields_set else None
            self._config = self._source().load_config(explicit)
        return self._config

    def _effective_max_length(self) -> int:
        """``max_length``, or the model's context when that is smaller and ``max_length`` was left at its default."""
        context = context_length(self._ensure_config())
        if context is not None and context < self.max_length:
            logger.info("max_length: the default %d lowered to %s's context, %d", self.max_length, self.model, context)
            return context
        return self.max_length

    def _ensure_encoder(self) -> PromptEncoder:
        if self._encoder is None:
            self._encoder = self._source().load_encoder(self._effective_max_length())
        return self._encoder

    def _ensure_model(self) -> None:
        if self._model is not None:
            return
        device = self.torch_device
        dtype = resolve_dtype(self.dtype, device)
        model = self._source().load_weights(self._ensure_config(), dtype, device)
        encoder = self._ensure_encoder()
        weight = model.get_output_embeddings().weight
        self._head = (weight[encoder.yes_id].float() - weight[encoder.no_id].float()).detach().to(device)
        self._model = model
        self._system_kv = None
        self._fused = None
        logger.info("loaded %s on %s as %s", self.model, device, dtype)
        if self.fused:
            self._fuse()

    # ----------------------------------------------------------------------------------------- compute
    @property
    def fused_report(self) -> Any:
        """With ``fused=True`` and the model loaded: a :class:`~qwen3_rerank_integrations.fused.FusedDecoder` (kind,
        graphs compiled so far, warm-up seconds); otherwise None."""
        if self._fused is None:
            return None
        report, counter = self._fused
        return report.refresh(counter)

    def _fuse(self) -> None:
        """Fuse the loaded model's RMSNorms and MLPs, then warm up on calls of the shapes scoring meets (a batch, a
        single document, the shared prefix) so compiling happens now, logged with its time."""
        from .fused import fuse_decoder, fused_kind, warm_up

        report, counter = fuse_decoder(self._model, fused_kind(self.torch_device.type))
        encoder = self._ensure_encoder()

        def calls() -> None:
            instruction = self.instruction or "warm-up"
            self._score_ids(encoder.encode("warm-up query", ["one document", "another, longer document"],
                                           instruction).ids)
            self._score_ids(encoder.encode("warm-up query", ["one document"], instruction).ids)

        self._fused = (warm_up(calls, report, counter), counter)

    def _batch_token_budget(self) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return _DEFAULT_BATCH_TOKENS.get(self.torch_device.type, _ACCELERATOR_BATCH_TOKENS)

    def _score_ids(self, ids: list[list[int]]) -> list[float]:
        """Score token-id prompts in length-sorted batches; results in input order."""
        shared = self._reusable_prefix_length(ids)
        prefix_cache = self._prefix_cache(ids[0][:shared]) if shared else None
        tails = [prompt[shared:] for prompt in ids]
        order = sorted(range(len(tails)), key=lambda i: len(tails[i]), reverse=True)
        lengths = [len(tails[i]) for i in order]
        scores = [0.0] * len(tails)
        budget = self._batch_token_budget()
        slack = _PADDING_SLACK.get(self.torch_device.type, _ACCELERATOR_PADDING_SLACK)
        progress = _progress_bar(len(tails)) if self.show_progress_bar else None
        start = 0
        while start < len(order):
            longest = shared + lengths[start]
            size = _batch_size(lengths, start, self.batch_size, max(1, budget // longest), slack)
            chunk = order[start : start + size]
            try:
                batch_scores = self._forward([tails[i] for i in chunk], prefix_cache)
            except RuntimeError as exc:  # torch.OutOfMemoryError and NPU's OOM are RuntimeErrors
                if not _is_out_of_memory(exc):
                    raise
                if size == 1:
                    raise RerankError(
                        f"out of memory scoring one prompt of {longest} tokens on {self.torch_device}; "
                        "lower max_length or use a smaller dtype/model"
                    ) from exc
                budget = max(longest, (size // 2) * longest)
                logger.warning("out of memory at %d prompts x %d tokens; retrying with fewer", size, longest)
                empty_cache(self.torch_device)
                continue
            for i, value in zip(chunk, batch_scores):
                scores[i] = value
            start += size
            if progress is not None:
                progress.update(len(chunk))
        if progress is not None:
            progress.close()
        return scores

    def _reusable_prefix_length(self, ids: list[list[int]]) -> int:
        """Tokens at the start of every prompt whose keys/values are computed once, leaving each prompt at least
        one token of its own: the prefix all prompts of the call share; for a single prompt, the system prompt."""
        if len(ids) > 1:
            return _shared_prefix_length(ids)
        system = self._ensure_encoder().prefix_ids
        return len(system) if ids[0][: len(system)] == system and len(ids[0]) > len(system) else 0

    def _prefix_cache(self, prefix: list[int]) -> list[tuple[Any, Any]]:
        """Keys/values (per layer, batch 1) of the prompt part every document shares (system prompt, instruction,
        query), computed once per call instead of once per document.

        Always in the same two passes: the system prompt (computed once per model and kept, 0.2 MiB a token for
        the 0.6B in fp32: ~8 MiB), then the rest on top of it. A fixed split keeps scores independent of earlier
        calls (a history-dependent split would move them by ~1e-7: other matrix shapes, other rounding).
        """
        system = self._ensure_encoder().prefix_ids
        if prefix[: len(system)] != system:  # not a PromptEncoder prompt: no shared system part to reuse
            return self._compute_prefix(prefix, None, 0)
        if self._system_kv is None:
            self._system_kv = self._compute_prefix(system, None, 0)
        if len(prefix) == len(system):
            return self._system_kv
        return self._compute_prefix(prefix[len(system) :], self._system_kv, len(system))

    def _compute_prefix(self, tokens: list[int], known: list[tuple[Any, Any]] | None, start: int) -> Any:
        """Per-layer keys/values of ``known`` followed by ``tokens`` (at positions from ``start``)."""
        import torch

        cache = _new_prefix_cache(known, self._model.config.num_hidden_layers, keep=True)
        model = self._model.base_model
        with torch.inference_mode():
            model(
                input_ids=torch.tensor([tokens], device=self.torch_device),
                position_ids=torch.arange(start, start + len(tokens), device=self.torch_device).unsqueeze(0),
                use_cache=True,
                **{_cache_argument(model): cache},
            )
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _forward(self, tails: list[list[int]], prefix_cache: list[tuple[Any, Any]] | None) -> list[float]:
        """Scores of one batch of prompt tails that follow the cached shared prefix.

        Tails are right-padded: under causal attention no real token sees a pad, and every row keeps the
        positions it would have alone, so the last real token's state is exactly the unbatched one. The prefix's
        keys/values are joined to each layer's new ones for that layer's attention only and never stored, so a
        pass holds one layer's keys/values at a time, not all 28 layers' at once.
        """
        import torch

        assert self._encoder is not None
        device = self.torch_device
        rows, width = len(tails), max(len(t) for t in tails)
        pad_id = self._encoder.tokenizer.pad_token_id
        assert pad_id is not None  # set at load; its value never reaches a real token (right padding)
        input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
        for row, tail in enumerate(tails):
            input_ids[row, : len(tail)] = torch.tensor(tail, dtype=torch.long)
        shared = prefix_cache[0][0].shape[2] if prefix_cache else 0
        attention_mask = None  # plain causal attention when no row is padded
        if any(len(t) < width for t in tails):
            real = (torch.arange(width).unsqueeze(0) < torch.tensor([len(t) for t in tails]).unsqueeze(1)).long()
            attention_mask = torch.cat([torch.ones((rows, shared), dtype=torch.long), real], dim=1).to(device)
        position_ids = torch.arange(shared, shared + width, device=device).unsqueeze(0).expand(rows, -1)
        last = torch.tensor([len(t) - 1 for t in tails], device=device)
        model = self._model.base_model
        cache_kwargs = {}
        if prefix_cache:
            cache_kwargs = {_cache_argument(model): _new_prefix_cache(prefix_cache, len(prefix_cache), keep=False)}
        with torch.inference_mode():
            hidden = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=bool(prefix_cache),
                **cache_kwargs,
            ).last_hidden_state
            last_hidden = hidden[torch.arange(rows, device=device), last]
            return torch.sigmoid(last_hidden.float() @ self._head).tolist()

    # ----------------------------------------------------------------------------------------- score cache
    def cache_identity(self) -> dict[str, Any]:
        """What decides this scorer's scores, for score-cache keys (:mod:`~qwen3_rerank_integrations.cache`):
        the model (a hub id, or for a local folder only its content fingerprint, so a byte-identical copy of
        the folder shares the cache) and its exact revision (the hub snapshot's commit), the dtype and device kind it computes in, and ``max_length``. Once the
        model is loaded, the revision it was loaded at stays, even if its files are replaced later.
        """
        device = self.torch_device
        return {
            "backend": "local",
            **self._source().identity(self._model),
            "dtype": str(resolve_dtype(self.dtype, device)).removeprefix("torch."),
            "device": device.type,
            "max_length": self.max_length,
            **({"fused": True} if self.fused else {}),  # unfused keys stay what they were
        }


def _batch_size(lengths: list[int], start: int, most: int, fits: int, slack: float) -> int:
    """How many prompts (tail lengths sorted longest first) the batch that starts at ``start`` takes: at most
    ``most`` and ``fits`` (the token budget), and no more once padding would exceed ``slack`` of the batch.

    Every row is padded to the first (longest) one. On a CPU a forward pass costs about its padded token count
    whatever its shape, so padding is pure waste there (small slack); an accelerator needs wide batches to be
    busy, so it accepts more padding (sorted lists of many documents pad little anyway).
    """
    width, total, size = lengths[start], lengths[start], 1
    limit = min(most, fits, len(lengths) - start)
    while size < limit:
        candidate = lengths[start + size]
        if (size + 1) * width - (total + candidate) > slack * (size + 1) * width:
            break
        total += candidate
        size += 1
    return size


def _cache_argument(model: Any) -> str:
    """The keyword a transformers model takes its key/value cache by: ``cache`` in transformers >= 5.x (where
    ``past_key_values`` is deprecated), ``past_key_values`` before."""
    return _cache_argument_of(type(model))


@functools.lru_cache(maxsize=None)
def _cache_argument_of(model_class: type) -> str:
    # Read once per model class, not once per batch: the signature does not change.
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


_PREFIX_LAYER_CLASS: Any = None


def _new_prefix_cache(prefix: list[tuple[Any, Any]] | None, layers: int, *, keep: bool) -> Any:
    """A transformers cache that holds a shared prefix's keys/values (batch 1, or none) for every layer.

    Each layer's attention gets the prefix's keys/values (broadcast to the batch) joined to the new tokens' ones.
    With ``keep=False`` the joined tensors are not stored (scoring needs no keys/values after the layer), so a
    pass never holds more than one layer's; with ``keep=True`` (computing a prefix, batch 1) they are, to be
    reused.
    """
    from transformers.cache_utils import Cache

    global _PREFIX_LAYER_CLASS
    if _PREFIX_LAYER_CLASS is None:
        _PREFIX_LAYER_CLASS = _define_prefix_layer()
    kv = prefix if prefix is not None else [(None, None)] * layers
    return Cache(layers=[_PREFIX_LAYER_CLASS(k, v, keep) for k, v in kv])


def _define_prefix_layer() -> Any:
    import torch
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):  # type: ignore[misc]
        def __init__(self, keys: Any, values: Any, keep: bool) -> None:
            super().__init__()
            self.keep = keep
            if keys is not None:
                self.keys, self.values = keys, values
                self.device, self.is_initialized = keys.device, True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if self.keys is None or self.keys.numel() == 0:
                joined = (key_states, value_states)
            else:
                rows = key_states.shape[0]
                joined = (
                    torch.cat([self.keys.expand(rows, -1, -1, -1), key_states], dim=-2),
                    torch.cat([self.values.expand(rows, -1, -1, -1), value_states], dim=-2),
                )
            if self.keep:
                self.keys, self.values = joined
                self.device, self.is_initialized = key_states.device, True
            return joined

    return PrefixLayer


def _shared_prefix_length(ids: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving at least one own token per prompt."""
    if len(ids) < 2:
        return 0
    first, limit = ids[0], min(len(x) for x in ids) - 1
    length = 0
    while length < limit and all(x[length] == first[length] for x in ids):
        length += 1
    return length


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="reranking", unit="doc")
