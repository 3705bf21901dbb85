"""The options several commands share, defined once: their choices (built from the package's own ``Literal``
types, so the CLI offers exactly what the scorers accept), help texts and panels, and the rule that an option
typed for another backend is an error."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, get_args

import typer

from ..devices import DTypeName
from ..local import DEFAULT_MODEL, LocalScorer
from ..vllm.protocol import Template as TemplateName
from ..vllm.protocol import TemplateSetting

__all__ = [
    "Backend", "BackendName", "DType", "InputFormat", "OutputFormat", "Source", "Template", "TemplateMode",
    "LOCAL_PANEL", "VLLM_PANEL", "LOCAL_ONLY", "VLLM_ONLY", "ENGINE_ONLY", "PROGRESS_MIN_DOCUMENTS",
    "backend_option", "ca_bundle_option", "device_option", "dtype_option", "rerank_model_option", "retries_option",
    "source_option", "template_option", "timeout_option", "reject_other_backend_options",
    "BaseUrlOption", "CaBundleOption", "LocalDTypeOption", "LocalSourceOption", "RetriesOption", "TemplateOption",
    "TimeoutOption",
]

BackendName = Literal["local", "vllm", "engine"]
SourceName = LocalScorer.model_fields["source"].annotation

# A progress bar pays off once scoring takes more than a few batches.
PROGRESS_MIN_DOCUMENTS = 100


def literal_enum(name: str, literal: Any) -> Any:
    """A str Enum of a Literal's values (typer shows and checks Enum choices, not Literals)."""
    return Enum(name, {value: value for value in get_args(literal)}, type=str)


Backend = literal_enum("Backend", BackendName)


class OutputFormat(str, Enum):
    json = "json"
    table = "table"


class InputFormat(str, Enum):
    auto = "auto"
    lines = "lines"
    jsonl = "jsonl"


DType = literal_enum("DType", DTypeName)


Template = literal_enum("Template", TemplateName)  # how serve starts a server
TemplateMode = literal_enum("TemplateMode", TemplateSetting)  # a client's setting: "auto" finds the server's out


Source = literal_enum("Source", SourceName)


LOCAL_PANEL = "Local backend"
VLLM_PANEL = "vLLM backend"
# Options typed for the backend not in use are rejected (see reject_other_backend_options). The engine backend
# (vLLM's engine in this process) loads the model as the local one does, but vLLM picks its own device.
LOCAL_ONLY = ("device", "dtype", "source", "progress")
VLLM_ONLY = ("base_url", "template", "timeout", "max_retries", "ca_bundle")
ENGINE_ONLY = ("dtype", "source")


def device_option(**extra: Any) -> Any:
    return typer.Option(help="'auto' (NPU > CUDA > MPS > CPU), 'npu', 'npu:1', 'cuda:0', 'mps' or 'cpu'.", **extra)


def dtype_option(**extra: Any) -> Any:
    return typer.Option(help="'auto' is bf16 on NPU/CUDA (fp16 where unsupported, and on MPS), fp32 on CPU.", **extra)


def source_option(**extra: Any) -> Any:
    return typer.Option(help="Where to download a hub id from ('modelscope' for mainland China).", **extra)


def template_option(**extra: Any) -> Any:
    return typer.Option(
        help="Who renders the prompt: 'auto' finds out from the server; 'client' formats prompts here (server "
        "started without the reranker --chat-template: older vLLM, vllm-ascend); 'server' sends raw text (server "
        "started with it). A server that contradicts 'client' or 'server' is an error, never wrong scores.",
        **extra,
    )


def timeout_option(**extra: Any) -> Any:
    return typer.Option(
        min=0.001, help="Seconds each HTTP request may take in all, from connecting to the answer's last byte.",
        **extra,
    )


def retries_option(**extra: Any) -> Any:
    return typer.Option(min=0, help="Retries of connect errors, timeouts, 429 and 5xx.", **extra)


def ca_bundle_option(**extra: Any) -> Any:
    return typer.Option(
        show_default=False, help="CA bundle (PEM) to verify the server's TLS certificate (default: system CAs).",
        **extra,
    )


# The backend options as rerank and eval take them, grouped in their help panels.
def backend_option(verb: str) -> Any:
    return typer.Option(help=f"{verb} in this process (local: transformers; engine: vLLM's engine, needs vLLM "
                        "installed), or on a vLLM server.")


def rerank_model_option(*names: str) -> Any:
    return typer.Option(*names, show_default=False,
                        help=f"Local and engine backends: a checkpoint folder or hub id (default {DEFAULT_MODEL}). "
                        "vLLM backend: the served model name (default: the one the server serves).")


LocalDTypeOption = Annotated[DType, dtype_option(rich_help_panel=LOCAL_PANEL)]
LocalSourceOption = Annotated[Source, source_option(rich_help_panel=LOCAL_PANEL)]
BaseUrlOption = Annotated[
    list[str] | None,
    typer.Option(rich_help_panel=VLLM_PANEL, show_default=False,
                 help="The server, e.g. http://localhost:8000 (required with --backend vllm); repeat it for "
                 "replicas of one configuration (requests go to the least busy one, a failing one is set aside)."),
]
TemplateOption = Annotated[TemplateMode, template_option(rich_help_panel=VLLM_PANEL)]
TimeoutOption = Annotated[float, timeout_option(rich_help_panel=VLLM_PANEL)]
RetriesOption = Annotated[int, retries_option(rich_help_panel=VLLM_PANEL)]
CaBundleOption = Annotated[str | None, ca_bundle_option(rich_help_panel=VLLM_PANEL)]


def reject_other_backend_options(
    ctx: typer.Context, backend: Backend, local_only: tuple[str, ...] = LOCAL_ONLY
) -> None:
    """An option typed for another backend is a mistake: say so rather than silently ignore it.

    ``local_only``: the local backend's own options in this command (eval's embedder takes --device and
    --progress whatever the backend, so they are nobody's there)."""
    owners = {Backend.local: local_only, Backend.vllm: VLLM_ONLY,
              Backend.engine: tuple(name for name in ENGINE_ONLY if name in local_only)}
    other = dict.fromkeys(name for options in owners.values() for name in options if name not in owners[backend])
    typed = [name for name in other if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if typed:
        flags = ", ".join("--" + name.replace("_", "-") for name in typed)
        where = " or ".join(b.value for b in Backend if all(name in owners[b] for name in typed))
        if not where:  # flags of different backends: name each one's
            where = "; ".join(f"--{name.replace('_', '-')} is for --backend "
                              + " or ".join(b.value for b in Backend if name in owners[b]) for name in typed)
            raise ValueError(f"{flags} do not apply to --backend {backend.value} ({where})")
        verb = "applies" if len(typed) == 1 else "apply"
        raise ValueError(f"{flags} only {verb} to --backend {where}")
