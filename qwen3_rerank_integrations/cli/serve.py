"""``qwen3-rerank serve``: start a vLLM server for a Qwen3-Reranker with the recipe of :mod:`..vllm.launch`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..local import DEFAULT_MODEL
from .app import EXIT_RUNTIME_ERROR, app, exit_on_error, fail
from .options import DType, Template

__all__ = ["serve"]


@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", show_default=False,
                            help=f"A checkpoint folder or hub id, e.g. {DEFAULT_MODEL}.")
    ],
    vllm_args: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- VLLM_ARGS", show_default=False,
                       help="More vLLM arguments after --, passed through (e.g. -- --gpu-memory-utilization 0.5).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8000,
    template: Annotated[
        Template,
        typer.Option(help="'server': start vLLM with the reranker --chat-template (clients send raw text); 'client': "
                     "without it (clients format the prompt, VLLMScorer's default)."),
    ] = Template.client,
    dtype: Annotated[
        DType,
        typer.Option(help="vLLM's --dtype, always passed explicitly; 'auto': float32 on CPU (the official scores), "
                     "the checkpoint's own on an accelerator."),
    ] = DType.auto,
    max_model_len: Annotated[
        int | None,
        typer.Option("--max-length", "--max-model-len", min=1, show_default=False,
                     help="Most tokens per prompt, vLLM's --max-model-len (default: the reranker's 8192, or the "
                     "model's context when smaller)."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(show_default=False, help="The model name clients use (default: MODEL).")
    ] = None,
    python: Annotated[
        str | None,
        typer.Option(show_default=False,
                     help="The interpreter that has vLLM, e.g. a venv's bin/python (default: this one)."),
    ] = None,
    startup_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for the server to become healthy.")
    ] = 900.0,
    tensor_parallel_size: Annotated[
        int | None,
        typer.Option("--tensor-parallel-size", "-tp", min=1, show_default=False,
                     help="vLLM's --tensor-parallel-size: devices one copy of the model is split over (a model too "
                     "big for one device)."),
    ] = None,
    data_parallel_size: Annotated[
        int | None,
        typer.Option("--data-parallel-size", "-dp", min=1, show_default=False,
                     help="vLLM's --data-parallel-size: copies of the model behind this one URL, one per device "
                     "(group); vLLM spreads the requests over them (docs: scale.md)."),
    ] = None,
) -> None:
    """Start a vLLM (or vllm-ascend) server for a Qwen3-Reranker and keep it running; Ctrl-C stops it.

    Picks the flags for the installed vLLM (--runner pooling, or --task score before 0.10.1), the reranker's
    --hf-overrides, safetensors loading and, with --template server, the package's reranker chat template. Once
    /health answers it prints the base URL, the matching VLLMScorer(...) and check-server command. The server's
    log goes to stderr. An API key comes from $VLLM_API_KEY only, which vLLM reads itself.
    """
    from ..errors import ServerStartError
    from ..vllm.server import ServeConfig
    from ..vllm.server import serve as run_server

    with exit_on_error():
        options: dict[str, Any] = {"python": python} if python else {}
        config = ServeConfig(
            model=model, host=host, port=port, template=template.value, dtype=dtype.value,
            max_model_len=max_model_len, served_model_name=served_model_name, vllm_args=vllm_args or [],
            startup_timeout=startup_timeout, tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size, **options,
        )
        try:
            run_server(config, out=typer.echo, log=lambda line: typer.echo(line, err=True))
        except ServerStartError as exc:  # its log (with the tail) went to stderr already
            fail(exc.reason, EXIT_RUNTIME_ERROR)
