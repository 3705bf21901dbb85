"""Which optional packages an evaluation needs for the options it was given, found before any work.

An evaluation used to find a missing package late: after the whole first stage (``diskcache`` for the score
cache), or as a raw traceback at the end (``matplotlib`` for the chart). :func:`require_packages` looks every
module up first (:func:`~qwen3_rerank_integrations.extras.missing_module`: nothing is imported) and raises
:class:`~qwen3_rerank_integrations.errors.MissingDependencyError`: one line naming the package, what it is for,
the extra that brings it and, where there is one, the option that does without it. The backend's own packages
are its scorer's business (the command line checks them with the backend, before this).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..errors import MissingDependencyError
from ..extras import install_command, missing_module

__all__ = ["Need", "needs", "require_packages"]


class Need(BaseModel):
    """One package an evaluation needs."""

    model_config = ConfigDict(frozen=True)

    module: str = Field(description="The module imported, e.g. 'sentence_transformers'.")
    package: str = Field(description="The distribution to install, e.g. 'sentence-transformers'.")
    extra: str = Field(description="The extra of qwen3-rerank-integrations that brings it.")
    purpose: str = Field(description="What the evaluation needs it for, as the message says it.")
    instead: tuple[str, str] | None = Field(
        None, description="The way to do without it: (command-line option, run_evaluation/EvalConfig argument)."
    )


def _need(module: str, package: str, purpose: str, instead: tuple[str, str] | None = None) -> Need:
    return Need(module=module, package=package, extra="eval", purpose=purpose, instead=instead)


_ALWAYS = (
    _need("ir_measures", "ir-measures", "the metrics"),
    _need("pytrec_eval", "pytrec-eval-terrier", "the metrics"),
    _need("matplotlib", "matplotlib", "the chart (metrics.png)"),
    _need("tqdm", "tqdm", "the progress bars"),
)
_CACHE = _need("diskcache", "diskcache", "the score cache that lets a run resume", ("--no-cache", "cache=False"))
_DENSE = _need("sentence_transformers", "sentence-transformers", "the dense first stage",
               ("--run FILE (a first stage you have)", "run_file= (a first stage you have)"))


def needs(*, dense_first_stage: bool, cache: bool) -> list[Need]:
    """What an evaluation with these options imports: ir-measures, pytrec_eval, matplotlib and tqdm always;
    diskcache with the score cache; sentence-transformers for the dense first stage (not with a run file).
    The ``eval`` extra brings them all."""
    return [*_ALWAYS, *([_CACHE] if cache else []), *([_DENSE] if dense_first_stage else [])]


def require_packages(*, dense_first_stage: bool, cache: bool, needed_by: str = "run_evaluation") -> None:
    """Raise when a package these options need is not installed.

    ``needed_by``: how the message names what needs it; ``"qwen3-rerank eval"`` also names the ways around it
    as command-line options (``--no-cache``) instead of arguments (``cache=False``).

    Raises:
        MissingDependencyError: one line naming the package, its purpose and the install command.
    """
    wanted = needs(dense_first_stage=dense_first_stage, cache=cache)
    missing = missing_module(need.module for need in wanted)
    if missing is None:
        return
    need = next(need for need in wanted if need.module == missing)
    message = (f"{needed_by} needs {need.package} for {need.purpose}, which is not installed: "
               f"{install_command(need.extra)}")
    if need.instead is not None:
        message += f", or use {need.instead[0] if needed_by.startswith('qwen3-rerank') else need.instead[1]}"
    raise MissingDependencyError(message, package=need.package, extra=need.extra)
