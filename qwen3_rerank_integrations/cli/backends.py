"""Building a scorer from command-line options: :func:`open_scorer`, the one place every command that scores
gets its backend from (local model, vLLM server or replicas, vLLM's engine in this process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base import ScorerBase
from ..extras import require, require_vllm
from ..local import DEFAULT_MODEL
from .options import Backend, DType, Source, TemplateMode

__all__ = ["BACKEND_CLASSES", "open_scorer", "require_backend"]


BACKEND_CLASSES = {Backend.local: "LocalScorer", Backend.vllm: "VLLMScorer", Backend.engine: "VLLMEngineScorer"}


def require_backend(backend: Backend) -> None:
    """The packages the backend needs are installed (MissingDependencyError, one line, otherwise)."""
    label = f"--backend {backend.value}"
    require(BACKEND_CLASSES[backend], label=label)
    if backend is Backend.engine:
        require_vllm(label)


def _engine_scorer(model: str | None, *, dtype: DType, source: Source, max_length: int | None) -> Any:
    """A VLLMEngineScorer (vLLM's engine in this process); used as a context manager, so the engine stops."""
    from ..engine import VLLMEngineScorer

    options: dict[str, Any] = {"max_length": max_length} if max_length is not None else {}
    return VLLMEngineScorer(model or DEFAULT_MODEL, dtype=dtype.value, source=source.value, **options)


def _vllm_scorer(
    base_url: str | list[str], *, model: str | None, template: TemplateMode, timeout: float, max_retries: int,
    ca_bundle: str | None, max_length: int | None = None,
) -> Any:
    """A VLLMScorer; its API key comes from $VLLM_API_KEY only: a --api-key flag would show in `ps` and
    shell history."""
    from ..vllm import VLLMScorer

    options: dict[str, Any] = {"model": model, "template": template.value, "timeout": timeout,
                               "max_retries": max_retries, "max_length": max_length}
    if ca_bundle is not None:
        if not Path(ca_bundle).is_file():
            raise ValueError(f"--ca-bundle {ca_bundle!r} is not a file")
        options["verify"] = ca_bundle
    # One URL stays a string, so messages and reprs read as they did before replicas.
    return VLLMScorer(base_url[0] if isinstance(base_url, list) and len(base_url) == 1 else base_url, **options)


def open_scorer(
    backend: Backend, *, model: str | None, max_length: int | None = None, device: str = "auto",
    dtype: DType = DType.auto, source: Source = Source.huggingface, show_progress: bool = False,
    base_url: str | list[str] | None = None, template: TemplateMode = TemplateMode.auto, timeout: float = 60.0,
    max_retries: int = 3, ca_bundle: str | None = None,
) -> ScorerBase:
    """The scorer the options ask for; use it in a ``with`` block, which releases what it holds (an engine, HTTP
    connections). Options of the other backends are ignored here (:func:`reject_other_backend_options` refuses
    them where the user typed them).

    Raises:
        ValueError: ``--backend vllm`` without ``--base-url``, or a ``--ca-bundle`` that is not a file.
        MissingDependencyError: the backend's extra is not installed.
    """
    require_backend(backend)
    lengths: dict[str, Any] = {"max_length": max_length} if max_length is not None else {}
    if backend is Backend.local:
        from ..local import LocalScorer

        return LocalScorer(model or DEFAULT_MODEL, device=device, dtype=dtype.value, source=source.value,
                           show_progress_bar=show_progress, **lengths)
    if backend is Backend.engine:
        return _engine_scorer(model, dtype=dtype, source=source, max_length=max_length)
    if not base_url:
        raise ValueError("--backend vllm needs --base-url, e.g. --base-url http://localhost:8000")
    return _vllm_scorer(base_url, model=model, template=template, timeout=timeout, max_retries=max_retries,
                        ca_bundle=ca_bundle, max_length=max_length)
