"""The ``qwen3-rerank`` application object every command registers on, the exit codes, and the one place where
expected faults become an ``Error: ...`` line and an exit code (never a traceback)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from .. import __version__
from .._secrets import redact
from ..errors import RerankError

__all__ = ["EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_BAD_INPUT", "EXIT_RUNTIME_ERROR", "app", "exit_on_error", "fail",
           "one_line"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME_ERROR = 3

app = typer.Typer(
    name="qwen3-rerank",
    help="Rerank documents with Qwen3-Reranker (locally or via vLLM); check servers and accelerators; benchmark.",
    epilog="Exit codes: 0 ok, 1 check failed, 2 bad usage or input, 3 model/device/server error.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs; "[default: x]" in help would be eaten as markup
    # Expected faults are caught and printed in one line; anything else is a bug and shows a plain traceback.
    pretty_exceptions_enable=False,
)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in exc.errors())
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def fail(message: str, code: int) -> NoReturn:
    # Errors of the package are masked already; this also covers a ValueError or OSError quoting a secret.
    typer.echo(f"Error: {redact(message)}", err=True)
    raise typer.Exit(code)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn the faults a user can cause or meet into one ``Error:`` line and an exit code."""
    try:
        yield
    except (ValueError, TypeError) as exc:  # bad arguments, a malformed file (ValidationError is a ValueError)
        fail(one_line(exc), EXIT_BAD_INPUT)
    except (RerankError, OSError) as exc:  # model, device, server
        fail(one_line(exc), EXIT_RUNTIME_ERROR)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qwen3-rerank {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Rerank documents with Qwen3-Reranker (locally or via vLLM); check servers and accelerators; benchmark."""
