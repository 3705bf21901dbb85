"""A web page to try Qwen3-Reranker: a query and some documents in, the documents ranked with score bars out.

    python examples/webui.py                      # http://127.0.0.1:7860, Qwen/Qwen3-Reranker-0.6B in-process
    python examples/webui.py --rerank-model ~/models/Qwen3-Reranker-0.6B --device npu:0 --port 8080
    python examples/webui.py --backend vllm --base-url http://localhost:8000 --template server
    python examples/webui.py --base-url http://localhost:8000     # both: compare the local model and the server

The page takes documents one per line, or reranks the bundled corpus (examples/corpus.jsonl, 50 passages).
It offers the in-process model (``--backend local``, the default) and, when ``--base-url`` is given, the vLLM
server; both are fixed at launch, so a visitor cannot make this machine load a model or call a URL of their
choosing. It listens on 127.0.0.1 only unless ``--host`` says otherwise (``--host 0.0.0.0`` exposes it to your network,
with no login). A vLLM API key comes from ``$VLLM_API_KEY``.
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
    add_reranker_flags,
    build_scorer,
    check_reranker_args,
    display_url,
    load_corpus,
    prepare_scorer,
    run_cli,
)

if TYPE_CHECKING:
    import gradio as gr

    from qwen3_rerank_integrations import Scorer

MY_DOCUMENTS = "My documents (one per line)"
BUNDLED_CORPUS = "Bundled corpus (50 passages)"
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

    ``local`` (the ``--rerank-model`` in this process) is offered with ``--backend local``; ``vllm`` whenever
    ``--base-url`` is given. So ``--backend local --base-url URL`` lets the page compare the two, and
    ``--backend vllm`` never loads (or downloads) a model here.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._models: dict[str, str | None] = {}
        self.labels: dict[str, str] = {}
        if args.backend == "local":
            self._models["local"] = args.rerank_model or DEFAULT_RERANK_MODEL
            self.labels["local"] = f"local: {self._models['local']} (device {args.device})"
        if args.base_url:
            self._models["vllm"] = args.rerank_model if args.backend == "vllm" else None
            where = display_url(args.base_url)  # never the credentials of http://user:password@host
            served = self._models["vllm"] or "served model"
            self.labels["vllm"] = f"vLLM: {served} at {where} ({args.template} template)"
        self._scorers: dict[str, Scorer] = {}
        self._lock = threading.Lock()

    def scorer(self, key: str) -> Scorer:
        if key not in self.labels:
            raise KeyError(f"backend {key!r} is not offered; offered: {sorted(self.labels)}")
        with self._lock:
            if key not in self._scorers:
                self._scorers[key] = build_scorer(
                    argparse.Namespace(**{**vars(self._args), "backend": key, "rerank_model": self._models[key]})
                )
            return self._scorers[key]


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


def build_page(backends: Backends, args: argparse.Namespace) -> gr.Blocks:
    import gradio as gr

    from qwen3_rerank_integrations import DEFAULT_INSTRUCTION, RerankError

    def rerank(query: str, source: str, typed: str, instruction: str, backend: str, top_n: float) -> str:
        if not query.strip():
            raise gr.Error("Type a query first.")
        documents = documents_from(source, typed)
        if not documents:
            raise gr.Error("Add at least one document, one per line.")
        started = time.perf_counter()
        try:
            scores = backends.scorer(backend).score(query, documents, instruction=instruction.strip() or None)
        except (RerankError, ValueError) as exc:
            raise gr.Error(" ".join(str(exc).split())) from exc
        elapsed = time.perf_counter() - started
        # sorted() is stable: equal scores keep their input order.
        ranked = sorted(zip(scores, documents), key=lambda pair: -pair[0])[: int(top_n)]
        summary = (f"{len(documents)} documents scored by {backends.labels[backend]} in {elapsed:.2f} s; "
                   f"top {len(ranked)} shown.")
        return render_results(ranked, summary)

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
                backend = gr.Radio([(label, key) for key, label in backends.labels.items()], value=args.backend,
                                   label="Backend", elem_id="backend")
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
    args = parser.parse_args(argv)
    check_reranker_args(args)
    backends = Backends(args)
    prepare_scorer(backends.scorer(args.backend))  # a bad model or server fails now, not on the first click

    import gradio as gr

    theme = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    # System fonts, not the theme's Google Fonts: the page also works on machines without internet access.
    build_page(backends, args).launch(server_name=args.host, server_port=args.port, theme=theme, css=CSS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
