"""``python -m qwen3_rerank_integrations`` and the ``qwen3-rerank`` console script: the command line, once the
``cli`` extra is installed (without it, one line naming the extra instead of a traceback from ``import typer``)."""

from __future__ import annotations

import sys


def main() -> None:
    """The ``qwen3-rerank`` console script."""
    from .errors import MissingDependencyError
    from .extras import require

    try:
        require("qwen3-rerank")
    except MissingDependencyError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(3) from None  # the CLI's code for "the work could not be done"
    from .cli import main as run_cli

    run_cli()


if __name__ == "__main__":
    main()
