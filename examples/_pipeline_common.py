"""What the two-stage examples share: the bundled corpus, the command-line flags, the reranker backend, the table.

The examples stay short by leaving this plumbing here; the retrieval pipelines themselves (the part worth
reading) live in ``langchain_two_stage.py`` and ``llama_index_two_stage.py``.

Heavy libraries (torch, transformers, LangChain, LlamaIndex) are imported inside the functions that need them,
so a bad flag, a missing package (named with its extra) or, with ``HF_HUB_OFFLINE=1``, a model that is not on disk
is reported in one line, before anything is loaded.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from qwen3_rerank_integrations.errors import ModelLoadError, hub_load_error, hub_offline
from qwen3_rerank_integrations.evaluation import DEFAULT_EMBED_MODEL  # torch-free to import
from qwen3_rerank_integrations.extras import require_extra
from qwen3_rerank_integrations.local import DEFAULT_MODEL as DEFAULT_RERANK_MODEL  # torch-free to import
# A URL fit to show: without `user:password@` (VLLMScorer sends them as Basic auth and never shows them).
from qwen3_rerank_integrations.vllm.protocol import display_url

if TYPE_CHECKING:
    from qwen3_rerank_integrations import Scorer

T = TypeVar("T")

CORPUS_PATH = Path(__file__).with_name("corpus.jsonl")
DEFAULT_QUERY = "How do I protect my server from attackers?"


class UsageError(ValueError):
    """A flag that cannot work; reported as one line, before any model is loaded."""


@dataclass(frozen=True)
class Passage:
    """One passage of the bundled corpus."""

    id: str
    lang: str
    topic: str
    text: str


@dataclass(frozen=True)
class RankedPassage:
    """One row of the result: the passage, its first-stage (embedding) score and its rerank score."""

    text: str
    retrieval_score: float
    rerank_score: float
    id: str | None = None


def load_corpus(path: str | os.PathLike[str] = CORPUS_PATH) -> list[Passage]:
    """Read a JSON-lines corpus with ``id``, ``lang``, ``topic`` and ``text`` on every line."""
    passages = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    passages.append(Passage(**json.loads(line)))
                except (json.JSONDecodeError, TypeError) as exc:
                    raise UsageError(f"{path}, line {number}: not a passage ({exc})") from exc
    return passages


# ------------------------------------------------------------------------------------------------ flags
def build_parser(description: str) -> argparse.ArgumentParser:
    """The flags every two-stage example takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--query", default=DEFAULT_QUERY, help=f"what to search for (default: {DEFAULT_QUERY!r})")
    parser.add_argument("--top-k", type=int, default=20, help="passages the embedding retriever fetches (default 20)")
    parser.add_argument("--top-n", type=int, default=5, help="passages the reranker keeps (default 5)")
    parser.add_argument(
        "--embed-model", default=DEFAULT_EMBED_MODEL,
        help=f"first-stage embedder: a sentence-transformers id or folder (default {DEFAULT_EMBED_MODEL}; for "
        "Chinese-heavy data try BAAI/bge-small-zh-v1.5 or BAAI/bge-m3)",
    )
    add_reranker_flags(parser)
    return parser


def add_reranker_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose and configure the reranker backend (also used by the web page)."""
    parser.epilog = "A vLLM server's API key is read from the VLLM_API_KEY environment variable."
    parser.add_argument("--backend", choices=("local", "vllm"), default="local",
                        help="run the reranker in this process (local) or call a vLLM server (vllm)")
    parser.add_argument(
        "--model", "--rerank-model", "-m", dest="model", default=None,
        help=f"the reranker. local: a Qwen3-Reranker hub id or folder (default {DEFAULT_RERANK_MODEL}); "
        "vllm: the served model name (default: the server's only model). --rerank-model is the same option",
    )
    parser.add_argument("--device", default="auto",
                        help="where models run in this process: auto (NPU > CUDA > MPS > CPU), npu[:N], cuda[:N], mps, cpu")
    parser.add_argument("--base-url", default=None, help="vllm backend: the server, e.g. http://localhost:8000")
    parser.add_argument(
        "--template", choices=("auto", "client", "server"), default="auto",
        help="vllm backend: 'auto' finds out from the server; 'client' formats the Qwen3 prompt here (a server "
        "without a score template); 'server' sends raw text (a server started with the qwen3_reranker chat "
        "template)",
    )
    parser.add_argument("--instruction", default=None,
                        help="task instruction for the reranker (default: the model card's web-search one)")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the flags; a flag that cannot work raises :class:`UsageError` naming it."""
    args = parser.parse_args(argv)
    if not args.query.strip():
        raise UsageError("--query must not be empty")
    for flag, value in (("--top-k", args.top_k), ("--top-n", args.top_n)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.top_n > args.top_k:
        raise UsageError(f"--top-n ({args.top_n}) cannot exceed --top-k ({args.top_k}): the reranker keeps "
                         "passages from those the retriever fetched")
    check_reranker_args(args)
    check_model_location("--embed-model", args.embed_model)
    return args


def check_reranker_args(args: argparse.Namespace) -> None:
    """Check the backend flags before anything is loaded or contacted."""
    if args.instruction is not None and not args.instruction.strip():
        raise UsageError("--instruction must not be empty; leave it out for the default instruction")
    if args.backend == "local":
        check_model_location("--model", args.model or DEFAULT_RERANK_MODEL)
    elif not args.base_url:
        raise UsageError("--backend vllm needs --base-url, e.g. --base-url http://localhost:8000")
    if args.base_url and not args.base_url.startswith(("http://", "https://")):
        raise UsageError(f"--base-url must start with http:// or https://, got {display_url(args.base_url)!r}")


def check_model_location(flag: str, value: str) -> None:
    """A value that is clearly a path (absolute, ./, ~, or more than one '/') must be an existing folder;
    anything else is left to the hub (``org/name``)."""
    expanded = os.path.expanduser(value)
    if os.path.isdir(expanded):
        return
    if os.path.exists(expanded):
        raise UsageError(f"{flag} {value!r} is a file; pass the model's folder or a hub id")
    if expanded.startswith((".", "/", "~")) or expanded.count("/") > 1 or "\\" in expanded:
        raise UsageError(f"{flag} {value!r}: no such folder")


def check_offline_caches(args: argparse.Namespace) -> None:
    """Both models of a two-stage example are on disk when the hub is offline (see :func:`check_offline_cache`)."""
    if args.backend == "local":
        check_offline_cache("--model", args.model or DEFAULT_RERANK_MODEL, "reranker")
    check_offline_cache("--embed-model", args.embed_model, "embedder")


def check_offline_cache(flag: str, model: str, what: str) -> None:
    """With the hub offline (``HF_HUB_OFFLINE=1``), a hub id must be in the local cache: say so now, naming the
    model, the flag and how to get it, rather than after the other model has loaded."""
    if not hub_offline() or os.path.isdir(os.path.expanduser(model)):
        return
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(model, local_files_only=True)
    except LocalEntryNotFoundError as exc:
        raise hub_load_error(f"the {what} {flag} {model!r}", model, f"{model} is not in the Hugging Face cache",
                             folder_option=f"{flag} PATH", offline_switch="HF_HUB_OFFLINE=1") from exc


def require_packages(needed_by: str, modules: Sequence[str]) -> None:
    """The example's own packages are installed (one line naming the ``examples`` extra otherwise)."""
    require_extra("examples", needed_by=needed_by, modules=modules)


def load_embedder(model: str, build: Callable[[], T]) -> T:
    """``build()``, the first-stage embedder; a failure to load ``model`` becomes a :class:`ModelLoadError` that
    names it, ``--embed-model`` and, for a hub id, ``hf download`` and the offline switch."""
    try:
        return build()
    except ImportError:
        raise
    except Exception as exc:  # sentence-transformers and the hub raise OSError, ValueError, HTTP errors...
        if os.path.isdir(os.path.expanduser(model)):
            reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
            raise ModelLoadError(f"could not load the embedder --embed-model {model!r} (a local folder): {reason}. "
                                 "It must hold a sentence-transformers model.") from exc
        raise hub_load_error(f"the embedder --embed-model {model!r}", model, exc, folder_option="--embed-model PATH",
                             offline_switch="HF_HUB_OFFLINE=1" if hub_offline() else None) from exc


# ------------------------------------------------------------------------------------------------ backend
def build_scorer(args: argparse.Namespace) -> Scorer:
    """The reranker backend the flags ask for: a :class:`LocalScorer` or a :class:`VLLMScorer`."""
    if args.backend == "local":
        from qwen3_rerank_integrations import LocalScorer

        return LocalScorer(args.model or DEFAULT_RERANK_MODEL, device=args.device, instruction=args.instruction)
    from qwen3_rerank_integrations import VLLMScorer

    # The API key comes from $VLLM_API_KEY (VLLMScorer's default), never from a flag that `ps` would show.
    return VLLMScorer(args.base_url, model=args.model, template=args.template, instruction=args.instruction)


def prepare_scorer(scorer: Scorer) -> None:
    """Fail early: load a local model, or check that a vLLM server answers, before the (slower) first stage is
    built. Doubts the server check raises (a double prompt template, an embed-mode server...) are printed as
    warnings and the run goes on; a server that cannot be used stops it."""
    load = getattr(scorer, "load", None)
    if load is not None:
        load()
        return
    report = scorer.check()  # type: ignore[attr-defined]  # a VLLMScorer
    if report.error:
        raise UsageError(f"the vLLM server cannot be used: {report.error}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def device_used(args: argparse.Namespace, scorer: Scorer | None) -> str:
    """The device a loaded local ``scorer`` runs on (``--device auto`` resolved, e.g. ``cuda:0``), or the flag as
    given while nothing is loaded."""
    if scorer is not None and getattr(scorer, "loaded", False):
        return str(scorer.torch_device)  # type: ignore[attr-defined]  # a LocalScorer
    return str(args.device)


def describe_backend(args: argparse.Namespace, scorer: Scorer | None = None) -> str:
    """A short phrase for the table header, e.g. ``Qwen/Qwen3-Reranker-0.6B (local, device cpu)``."""
    if args.backend == "local":
        return f"{args.model or DEFAULT_RERANK_MODEL} (local, device {device_used(args, scorer)})"
    where = display_url(args.base_url)
    return f"{args.model or 'the served model'} (vLLM at {where}, {args.template} template)"


# ------------------------------------------------------------------------------------------------ output
def print_table(rows: Sequence[RankedPassage], *, file: TextIO | None = None, width: int | None = None) -> None:
    """Print rank, retrieval score, rerank score and text, one row per line, cutting text to the terminal."""
    out = file or sys.stdout
    width = width or shutil.get_terminal_size((120, 24)).columns
    header = f"{'rank':>4}  {'retrieval':>9}  {'rerank':>6}  text"
    print(header, file=out)
    print("-" * min(width, 100), file=out)
    text_width = max(20, width - len(header) + len("text"))
    for rank, row in enumerate(rows, start=1):
        print(f"{rank:>4}  {row.retrieval_score:>9.4f}  {row.rerank_score:>6.4f}  "
              f"{fit_to_width(row.text, text_width)}", file=out)


@dataclass(frozen=True)
class Table:
    """Rows under named columns, shown by a notebook as an HTML table (``_repr_html_``, the text escaped) and as
    aligned text elsewhere. Floats are shown with 4 decimals."""

    columns: Sequence[str]
    rows: Sequence[Sequence[object]]

    @staticmethod
    def _cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(column)}</th>" for column in self.columns)
        body = "".join(
            "<tr>" + "".join(
                f'<td style="text-align:{"right" if isinstance(v, (int, float)) else "left"}">'
                f"{html.escape(self._cell(v))}</td>" for v in row) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        lines = ["  ".join(self.columns)]
        lines += ["  ".join(self._cell(value) for value in row) for row in self.rows]
        return "\n".join(lines)

    __repr__ = __str__


def ranked_table(rows: Sequence[RankedPassage]) -> Table:
    """Rank, retrieval score, rerank score and text of ``rows``, best first, as a :class:`Table`."""
    return Table(("rank", "retrieval", "rerank", "text"),
                 [(rank, row.retrieval_score, row.rerank_score, row.text) for rank, row in enumerate(rows, start=1)])


def fit_to_width(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` terminal columns (CJK characters take two), ending a cut with an ellipsis."""
    text = " ".join(text.split())
    columns = 0
    for index, char in enumerate(text):
        columns += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if columns > width - 1:
            return text[:index] + "…"
    return text


def print_report(args: argparse.Namespace, rows: Sequence[RankedPassage], scorer: Scorer | None = None) -> None:
    """The query, what ran both stages, and the table."""
    print(f"Query: {args.query}")
    print(f"Top {args.top_k} by {args.embed_model}, reranked by {describe_backend(args, scorer)}:\n")
    print_table(rows)


def run_two_stage(
    description: str,
    argv: Sequence[str] | None,
    build_pipeline: Callable[[argparse.Namespace, list[Passage], Scorer], Callable[[str], list[RankedPassage]]],
    needs: Sequence[str] = (),
    script: str = "this example",
) -> list[RankedPassage]:
    """What both two-stage examples do around their pipeline: parse the flags, check the packages (``needs``:
    the modules ``script``'s pipeline imports), get the reranker ready, build the pipeline over the bundled corpus,
    run the query, print the table. Returns the rows, best first."""
    args = parse_args(build_parser(description), argv)
    require_packages(script, needs)
    check_offline_caches(args)
    scorer = build_scorer(args)
    prepare_scorer(scorer)  # a bad model or an unreachable server fails here, before the embedder loads
    search = build_pipeline(args, load_corpus(), scorer)
    rows = search(args.query)
    print_report(args, rows, scorer)
    return rows


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run an example's body; expected failures (bad flags, a model that will not load, a server that does not
    answer) print one line to stderr and return 1, instead of a traceback."""
    from qwen3_rerank_integrations import RerankError

    program = os.path.basename(sys.argv[0])
    try:
        main(argv)
    except KeyboardInterrupt:
        return 130
    except (RerankError, OSError, ValueError) as exc:
        # ValueError: UsageError and the package's own argument checks (e.g. an unknown --device);
        # OSError: what transformers/sentence-transformers raise for a model they cannot find or download.
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{program}: error: {message}", file=sys.stderr)
        return 1
    return 0
