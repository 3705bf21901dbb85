"""The ``qwen3-rerank`` command line: rerank documents, check a vLLM server or an accelerator, benchmark.

Needs the ``cli`` extra (typer, rich); each backend needs its own extra (``local`` or ``remote``). Each command
checks the packages it needs (:mod:`qwen3_rerank_integrations.extras`) before it reads input or loads anything, and
names the missing one and its extra in one line (exit code 3).

Exit codes, the same for every command:

- 0: success (the check passed);
- 1: the check ran and failed (``check-server``: the server would give wrong scores; ``check-device``: the
  device's scores are off);
- 2: bad usage or input (an unknown option, a missing or malformed documents file, an empty query);
- 3: the work could not be done (the model could not be loaded, the device is not available, the server is
  unreachable or answered an error).

Expected faults print one line, ``Error: ...``, on stderr and never a traceback.

One module per command (:mod:`.rerank`, :mod:`.check_server`, :mod:`.serve`, :mod:`.check_device`, :mod:`.bench`,
:mod:`.eval`), each registering on the app in :mod:`.app`; the options they share live in :mod:`.options`, the
scorer they score with comes from :func:`.backends.open_scorer`, and what they read and print from :mod:`.io`.
"""

from __future__ import annotations

from . import bench, check_device, check_server, eval, rerank, serve  # noqa: F401  (each registers its command)
from .app import app
from .io import read_documents

__all__ = ["app", "main", "read_documents"]


def main() -> None:
    """Run the command line (the console script goes through ``qwen3_rerank_integrations.__main__``, which checks
    the ``cli`` extra first)."""
    app()
