"""A web page to try Qwen3-Reranker: a query and some documents in, the documents ranked with score bars out.

    python examples/webui.py                      # http://127.0.0.1:7860, Qwen/Qwen3-Reranker-0.6B in-process
    python examples/webui.py --model ~/models/Qwen3-Reranker-0.6B --device npu:0 --port 8080
    python examples/webui.py --backend vllm --base-url http://localhost:8000 --template server
    python examples/webui.py --base-url http://localhost:8000     # both: compare the local model and the server

The page takes documents one per line, or reranks the bundled corpus (examples/corpus.jsonl, 50 passages).
It offers the in-process model (``--backend local``, the default) and, when ``--base-url`` is given, the vLLM
server; both are fixed at launch, so a visitor cannot make this machine load a model or call a URL of their
choosing. It listens on 127.0.0.1 only unless ``--host`` says otherwise (``--host 0.0.0.0`` exposes it to your network,
with no login). A vLLM API key comes from ``$VLLM_API_KEY``. A visitor may send at most ``--max-documents`` documents
and ``--max-characters`` characters (query, instruction and documents together) per request; the page says so
when a request is over either.
"""

from __future__ import annotations

import argparse
import html
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from _pipeline_common import (
    DEFAULT_RERANK_MODEL,
    UsageError,
    add_reranker_flags,
    build_scorer,
    check_offline_cache,
    check_reranker_args,
    device_used,
    display_url,
    load_corpus,
    prepare_scorer,
    require_packages,
    run_cli,
)

if TYPE_CHECKING:
    import gradio as gr

    from qwen3_rerank_integrations import Scorer

MY_DOCUMENTS = "My documents (one per line)"
BUNDLED_CORPUS = "Bundled corpus (50 passages)"
# What one request may carry: a page open to others must not let a visitor make this machine score without end.
DEFAULT_MAX_DOCUMENTS = 200
DEFAULT_MAX_CHARACTERS = 200_000
EXAMPLE_QUERY = "How do attackers steal data from a server?"
EXAMPLE_DOCUMENTS = """\
Server hardening means removing unused services, closing unneeded ports and applying security patches.
Most server data theft starts with stolen or weak credentials; attackers log in and copy databases out.
服务器数据被盗往往源于弱口令或泄露的账号。
Beijing is the capital of the People's Republic of China.
Full-disk encryption protects a stolen laptop but not a running server an attacker has logged in to."""

# Scores sit in [0, 1], so a bar is the score as a percentage of the row's width.
CSS = """
.rerank-summary { margin: 0 0 .75rem; color: var(--body-text-color-subdued); }
.rerank-row { display: grid; grid-template-columns: 2.5rem 11rem 4.5rem 1fr; gap: .75rem; align-items: center;
              padding: .45rem .25rem; border-bottom: 1px solid var(--border-color-primary); }
.rerank-rank { font-weight: 600; text-align: right; }
.rerank-bar { height: .8rem; background: var(--neutral-200); border-radius: .4rem; overflow: hidden; }
.rerank-fill { height: 100%; background: var(--color-accent); border-radius: .4rem; }
.rerank-score { font-family: var(--font-mono); }
.rerank-text { overflow-wrap: anywhere; }
"""


class Backends:
    """The scorers the page offers, each under a short key, built on first use and kept.

    ``local`` (the ``--model`` in this process) is offered with ``--backend local``; ``vllm`` whenever
    ``--base-url`` is given. So ``--backend local --base-url URL`` lets the page compare the two, and
    ``--backend vllm`` never loads (or downloads) a model here.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._models: dict[str, str | None] = {}
        if args.backend == "local":
            self._models["local"] = args.model or DEFAULT_RERANK_MODEL
        if args.base_url:
            self._models["vllm"] = args.model if args.backend == "vllm" else None
        self._scorers: dict[str, Scorer] = {}
        self._lock = threading.Lock()

    @property
    def keys(self) -> list[str]:
        """The backends offered, the default (``--backend``) first."""
        return sorted(self._models, key=lambda key: key != self._args.backend)

    def _args_for(self, key: str) -> argparse.Namespace:
        return argparse.Namespace(**{**vars(self._args), "backend": key, "model": self._models[key]})

    def label(self, key: str) -> str:
        """What the page calls a backend: the model and the device it runs on once loaded (``--device auto``
        resolved), or the server (its URL never with credentials)."""
        args = self._args_for(key)
        if key == "local":
            return f"local: {args.model} (device {device_used(args, self._scorers.get(key))})"
        where = display_url(args.base_url)  # never the credentials of http://user:password@host
        return f"vLLM: {args.model or 'served model'} at {where} ({args.template} template)"

    def scorer(self, key: str) -> Scorer:
        if key not in self._models:
            raise KeyError(f"backend {key!r} is not offered; offered: {sorted(self._models)}")
        with self._lock:
            if key not in self._scorers:
                self._scorers[key] = build_scorer(self._args_for(key))
            return self._scorers[key]


class RequestTooLarge(ValueError):
    """A visitor's request is over the page's limits; its message says which and by how much."""


def check_request(query: str, instruction: str, documents: Sequence[str], *, max_documents: int,
                  max_characters: int) -> None:
    """Refuse a request over the limits before anything is scored."""
    if len(documents) > max_documents:
        raise RequestTooLarge(f"{len(documents)} documents sent; this page ranks at most {max_documents} at a time "
                              "(its operator sets --max-documents). Send fewer.")
    characters = len(query) + len(instruction) + sum(len(document) for document in documents)
    if characters > max_characters:
        raise RequestTooLarge(f"{characters:,} characters sent (query, instruction and documents together); this "
                              f"page takes at most {max_characters:,} (its operator sets --max-characters). Send "
                              "fewer or shorter documents.")


def documents_from(source: str, typed: str) -> list[str]:
    """The documents to rank: the bundled corpus, or the typed text's non-blank lines."""
    if source == BUNDLED_CORPUS:
        return [passage.text for passage in load_corpus()]
    return [line.strip() for line in typed.splitlines() if line.strip()]


def render_results(ranked: Sequence[tuple[float, str]], summary: str) -> str:
    """HTML rows best first: rank, a bar as long as the score, the score, the text (escaped: it is user input).
    Each row carries its full-precision score in ``data-score``."""
    rows = []
    for rank, (score, text) in enumerate(ranked, start=1):
        rows.append(
            f'<div class="rerank-row" data-rank="{rank}" data-score="{score!r}">'
            f'<span class="rerank-rank">{rank}</span>'
            f'<div class="rerank-bar" title="{score:.4f}"><div class="rerank-fill" style="width:{100 * score:.1f}%">'
            f"</div></div>"
            f'<span class="rerank-score">{score:.4f}</span>'
            f'<span class="rerank-text">{html.escape(text)}</span></div>'
        )
    return f'<div class="rerank-results"><p class="rerank-summary">{html.escape(summary)}</p>{"".join(rows)}</div>'


def rerank_request(backends: Backends, args: argparse.Namespace, query: str, source: str, typed: str,
                   instruction: str, backend: str, top_n: float) -> str:
    """One press of Rerank: the checks, the scoring, the HTML. Raises ValueError (RerankError for the scorer's
    faults) with a message for the visitor."""
    if not query.strip():
        raise ValueError("Type a query first.")
    documents = documents_from(source, typed)
    if not documents:
        raise ValueError("Add at least one document, one per line.")
    sent = documents if source == MY_DOCUMENTS else []  # the bundled corpus is the operator's, not the visitor's
    check_request(query, instruction, sent, max_documents=args.max_documents, max_characters=args.max_characters)
    started = time.perf_counter()
    scores = backends.scorer(backend).score(query, documents, instruction=instruction.strip() or None)
    elapsed = time.perf_counter() - started
    # sorted() is stable: equal scores keep their input order.
    ranked = sorted(zip(scores, documents), key=lambda pair: -pair[0])[: int(top_n)]
    summary = (f"{len(documents)} documents scored by {backends.label(backend)} in {elapsed:.2f} s; "
               f"top {len(ranked)} shown.")
    return render_results(ranked, summary)


def build_page(backends: Backends, args: argparse.Namespace) -> gr.Blocks:
    import gradio as gr

    from qwen3_rerank_integrations import DEFAULT_INSTRUCTION, RerankError

    def rerank(query: str, source: str, typed: str, instruction: str, backend: str, top_n: float) -> str:
        try:
            return rerank_request(backends, args, query, source, typed, instruction, backend, top_n)
        except (RerankError, ValueError) as exc:
            raise gr.Error(" ".join(str(exc).split())) from exc

    with gr.Blocks(title="Qwen3-Reranker", analytics_enabled=False) as page:
        gr.Markdown("# Qwen3-Reranker\nRank documents by how well they answer a query. Scores are "
                    'P("yes") from the official Qwen3-Reranker method, 0 to 1.')
        with gr.Row():
            with gr.Column(scale=2):
                query = gr.Textbox(label="Query", value=EXAMPLE_QUERY, elem_id="query")  # Enter submits
                source = gr.Radio([MY_DOCUMENTS, BUNDLED_CORPUS], value=MY_DOCUMENTS, label="Documents",
                                  elem_id="source")
                typed = gr.Textbox(label="One document per line", value=EXAMPLE_DOCUMENTS, lines=8,
                                   elem_id="documents")
                instruction = gr.Textbox(label="Instruction (optional)", value=args.instruction or "",
                                         placeholder=DEFAULT_INSTRUCTION, elem_id="instruction")
                if len(backends.keys) > 1:
                    backend = gr.Radio([(backends.label(key), key) for key in backends.keys], value=args.backend,
                                       label="Backend", elem_id="backend")
                else:  # one backend: nothing to choose, so no choice shown (its name is in each result's summary)
                    backend = gr.State(args.backend)
                top_n = gr.Slider(1, 50, value=10, step=1, label="Show the top", elem_id="top-n")
                button = gr.Button("Rerank", variant="primary", elem_id="rerank")
            with gr.Column(scale=3):
                results = gr.HTML(elem_id="results")
        source.change(lambda chosen: gr.update(visible=chosen == MY_DOCUMENTS), source, typed)
        inputs = [query, source, typed, instruction, backend, top_n]
        button.click(rerank, inputs, results)
        query.submit(rerank, inputs, results)
    return page


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_reranker_flags(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--max-documents", type=int, default=DEFAULT_MAX_DOCUMENTS,
                        help=f"most documents a visitor may send at once (default {DEFAULT_MAX_DOCUMENTS})")
    parser.add_argument("--max-characters", type=int, default=DEFAULT_MAX_CHARACTERS,
                        help="most characters of query, instruction and documents together in one request "
                        f"(default {DEFAULT_MAX_CHARACTERS:,})")
    args = parser.parse_args(argv)
    for flag, value in (("--max-documents", args.max_documents), ("--max-characters", args.max_characters)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    check_reranker_args(args)
    require_packages("examples/webui.py", ("gradio",))
    if args.backend == "local":
        check_offline_cache("--model", args.model or DEFAULT_RERANK_MODEL, "reranker")
    backends = Backends(args)
    prepare_scorer(backends.scorer(args.backend))  # a bad model or server fails now, not on the first click

    import gradio as gr

    theme = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    # System fonts, not the theme's Google Fonts: the page also works on machines without internet access.
    # quiet: Gradio's own banner suggests share=True (a public tunnel to this machine); this page says where it is.
    page = build_page(backends, args)
    page.launch(server_name=args.host, server_port=args.port, theme=theme, css=CSS, quiet=True,
                prevent_thread_lock=True)
    reach = "this machine only" if args.host in ("127.0.0.1", "localhost", "::1") else "open to your network"
    print(f"Qwen3-Reranker page on {page.local_url} ({reach}); scoring with "
          f"{', '.join(backends.label(key) for key in backends.keys)}. Ctrl-C stops it.", flush=True)
    page.block_thread()


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
