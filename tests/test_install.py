"""Installable as written, release-ready: every install line of the README and the docs works today (from a
checkout; the index name only where the text says "once released"), the version is written once and means
something, the CHANGELOG and the release workflow are there, and the BUILT wheel (not the source tree) installs into
a fresh virtual environment whose console script and scorer work.

The fresh environments use ``--system-site-packages`` (the dependencies are this machine's) and ``PIP_NO_INDEX``:
nothing is downloaded, so a requirement the machine cannot satisfy fails instead of quietly fetching.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import qwen3_rerank_integrations as package

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NAME = PYPROJECT["project"]["name"]
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
QUERY = "What is the capital of China?"


# ------------------------------------------------------------------------------------------------ install lines
def _documents() -> dict[str, str]:
    """Every text a user may copy an install line from: the README, the docs, the examples (the notebook's
    markdown too) and the changelog."""
    texts = {"README.md": (ROOT / "README.md").read_text(), "CHANGELOG.md": (ROOT / "CHANGELOG.md").read_text()}
    for path in sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "examples").glob("*.py")):
        texts[str(path.relative_to(ROOT))] = path.read_text()
    notebook = json.loads((ROOT / "examples/rag_two_stage.ipynb").read_text())
    texts["examples/rag_two_stage.ipynb"] = "\n".join("".join(cell["source"]) for cell in notebook["cells"])
    return texts


_INLINE = re.compile(r"`([^`\n]*pip install[^`\n]*)`")
_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", re.DOTALL | re.MULTILINE)


def install_commands() -> list[tuple[str, int, str]]:
    """(document, offset, command) for each `pip install` in inline code or a shell block, split at `&&`."""
    found = []
    for name, text in _documents().items():
        spans = [(m.start(1), m.group(1)) for m in _INLINE.finditer(text)]
        for block in _BLOCK.finditer(text):
            offset = block.start(1)
            for line in block.group(1).splitlines(keepends=True):
                if "pip install" in line:
                    spans.append((offset, line.split("#", 1)[0].strip()))
                offset += len(line)
        for offset, code in spans:
            for part in code.split("&&"):
                if "pip install" in part:
                    found.append((name, offset, part.strip()))
    return found


def _targets(command: str) -> list[str]:
    """What a pip install command installs (its options dropped, with their values)."""
    words = shlex.split(command[command.index("pip install") + len("pip install"):])
    targets, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("--index-url", "--extra-index-url", "-i", "-c", "-r", "--constraint"):
            skip = True
        elif not word.startswith("-"):
            targets.append(word)
    return targets


def _extras(target: str) -> set[str]:
    inner = re.search(r"\[(.*?)\]", target)
    return {extra.strip() for extra in inner.group(1).split(",")} if inner else set()


def checkout_lines() -> list[tuple[str, str]]:
    """(document, command) of the lines that install this package from a checkout ("." or ".[extras]")."""
    return [(name, command) for name, _, command in install_commands()
            if any(target == "." or target.startswith(".[") for target in _targets(command))]


def test_every_install_line_of_this_package_works_today_from_a_checkout():
    commands = install_commands()
    assert len(commands) > 10
    checked = 0
    for name, offset, command in commands:
        for target in _targets(command):
            where = f"{name}: {command}"
            if target == "." or target.startswith(".["):
                assert _extras(target) <= EXTRAS, where  # an extra pip would silently ignore
                checked += 1
            elif target.split("[")[0].lower() == NAME:
                # Not on the index yet: the index form is only shown as what will work once released.
                text = _documents()[name]
                assert "once released" in " ".join(text[max(0, offset - 300):offset].lower().split()), where
                assert _extras(target) <= EXTRAS, where
            else:
                assert target.split("[")[0].split("=")[0].split(">")[0] not in ("qwen3_rerank_integrations",), where
    assert checked >= 8


def test_the_readme_says_how_to_install_from_a_checkout_and_the_name_on_the_index():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert re.search(r"(?i)from (a|the) checkout", readme)
    assert re.search(rf"(?i)once released on pypi, the package is\s+`{NAME}`", readme)


def test_the_documented_lines_bring_what_each_command_needs():
    from qwen3_rerank_integrations.extras import NEEDS

    lines = [command for _, command in checkout_lines()]

    def extras_of(fragment: str) -> set[str]:
        matching = [line for line in lines if fragment in line]
        assert matching, fragment
        return _extras(next(t for t in _targets(matching[0]) if t.startswith(".[")))

    assert set(NEEDS["qwen3-rerank eval"]) | {"local"} <= extras_of('".[eval')
    assert set(NEEDS["qwen3-rerank"]) | {"local"} <= extras_of('".[cli,local]"')
    assert {"langchain", "local"} <= extras_of('".[langchain,local]"')
    assert {"llama-index", "local"} <= extras_of('".[llama-index,local]"')


# ------------------------------------------------------------------------------------------------ version, changelog
def test_the_version_is_written_once_and_follows_the_releases():
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "qwen3_rerank_integrations.__version__"}
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(\.dev\d+|rc\d+)?", package.__version__)
    assert match and tuple(map(int, match.groups()[:3])) >= (0, 3, 0)  # 0.1 and 0.2 have landed
    # the CHANGELOG's newest heading is this version (without its pre-release part)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[(.*?)\](?: - (\S+))?", changelog, re.MULTILINE)
    assert headings[0][0] == "Unreleased" and headings[0][1] == ".".join(match.groups()[:3])
    assert [h[0] for h in headings[1:3]] == ["0.2.0", "0.1.0"]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) for _, date in headings[1:])


def test_the_cli_prints_the_version():
    done = subprocess.run([sys.executable, "-m", "qwen3_rerank_integrations", "--version"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == f"qwen3-rerank {package.__version__}"


def test_the_changelog_keeps_a_changelog_sections():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "keepachangelog.com" in changelog
    unreleased = changelog.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
    assert "### Added" in unreleased and "### Changed" in unreleased


# ------------------------------------------------------------------------------------------------ release workflow
def test_the_release_workflow_builds_checks_and_publishes_tags_with_trusted_publishing():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert trigger == {"push": {"tags": ["v*"]}}
    build, publish = workflow["jobs"]["build"], workflow["jobs"]["publish"]
    commands = "\n".join(step.get("run", "") for step in build["steps"])
    assert "python -m build" in commands and "twine check --strict dist/*" in commands
    assert "GITHUB_REF_NAME" in commands  # the tag must be the package's version
    assert publish["needs"] == "build" and publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    uses = [step.get("uses", "") for step in publish["steps"]]
    assert "pypa/gh-action-pypi-publish@release/v1" in uses
    text = (ROOT / ".github/workflows/release.yml").read_text()
    assert "secrets." not in text and "password" not in text  # no long-lived token
    assert workflow["permissions"] == {"contents": "read"}


# ------------------------------------------------------------------------------------------------ fresh venvs
def _copy_checkout(destination: Path) -> Path:
    """The files a fresh clone has (git's tracked files and new ones it does not ignore), nothing built."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist: no git, nothing built in it yet
        shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "artifacts", ".pytest_cache"))
        return destination
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _fresh_venv(path: Path) -> Path:
    """A venv that sees this machine's packages; without its own copy of pip, so `python -m pip` runs the
    machine's pip and builds use the machine's setuptools (a venv's bundled one may be older than the build
    requires). Its `pip` command runs that pip for the venv's python, as a venv's own `pip` would."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    shim = path / "bin" / "pip"
    shim.write_text('#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n')
    shim.chmod(0o755)
    return path / "bin" / "python"


def _env(venv_python: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv_python.parent}{os.pathsep}{env.get('PATH', '')}", PIP_NO_INDEX="1",
               PIP_NO_BUILD_ISOLATION="0",  # pip's inverted switch: 0 turns build isolation off
               PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1",
               PIP_REQUIRE_VIRTUALENV="1")  # a pip outside the venv refuses: this machine's packages stay as they are
    return env


def _installed_copy(venv_python: Path, cwd: Path) -> Path:
    code = "import qwen3_rerank_integrations as q; print(q.__file__)"
    out = subprocess.run([str(venv_python), "-c", code], cwd=cwd, env=_env(venv_python), capture_output=True,
                         text=True, check=True).stdout.strip()
    return Path(out)


@pytest.mark.slow
def test_the_built_wheel_installs_in_a_fresh_venv_and_runs(tmp_path, tiny_model_dir, reference_scorer):
    source = _copy_checkout(tmp_path / "checkout")
    dist = tmp_path / "dist"
    # sdist first, then the wheel built from the sdist (what `python -m build` does), so the sdist is complete
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel, = dist.glob("*.whl")
    sdist, = dist.glob("*.tar.gz")
    assert wheel.name == f"qwen3_rerank_integrations-{package.__version__}-py3-none-any.whl"
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    names = zipfile.ZipFile(wheel).namelist()
    assert "qwen3_rerank_integrations/templates/qwen3_reranker.jinja" in names
    assert "qwen3_rerank_integrations/py.typed" in names and not any(n.startswith("tests/") for n in names)
    metadata = zipfile.ZipFile(wheel).read(f"qwen3_rerank_integrations-{package.__version__}.dist-info/METADATA")
    assert f"Version: {package.__version__}" in metadata.decode()
    assert "Provides-Extra: remote" in metadata.decode()
    members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
    assert {"LICENSE", "CHANGELOG.md", "tests/conftest.py", "examples/corpus.jsonl", "pyproject.toml"} <= members

    python = _fresh_venv(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", str(wheel)], env=_env(python), check=True,
                   capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing may be imported from a source tree
    elsewhere.mkdir()
    assert _installed_copy(python, elsewhere).is_relative_to(tmp_path / "venv")

    script = python.parent / "qwen3-rerank"
    version = subprocess.run([str(script), "--version"], cwd=elsewhere, env=_env(python), capture_output=True,
                             text=True, timeout=120)
    assert version.stdout.strip() == f"qwen3-rerank {package.__version__}", version.stderr
    documents = ["Beijing is the capital of China.", "Gravity pulls.", "北京是首都。"]
    ranked = subprocess.run(
        [str(script), "rerank", QUERY, "-", "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32"],
        input="\n".join(documents), cwd=elsewhere, env=_env(python), capture_output=True, text=True, timeout=300)
    assert ranked.returncode == 0, ranked.stderr
    expected = reference_scorer.score(QUERY, documents)
    for row in json.loads(ranked.stdout):
        assert abs(row["score"] - expected[row["index"]]) <= 1e-5
    code = ("import json, sys; from qwen3_rerank_integrations import LocalScorer; "
            f"print(json.dumps(LocalScorer(sys.argv[1], device='cpu').score({QUERY!r}, {documents!r})))")
    scored = subprocess.run([str(python), "-c", code, str(tiny_model_dir)], cwd=elsewhere, env=_env(python),
                            capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout) == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_the_readme_checkout_lines_install_as_written(tmp_path):
    """The README's lines that install the package from a checkout, run word for word in a fresh venv. Those
    whose extras need packages the test extra does not install (npu: modelscope) cannot run offline; each line's
    extras are then a subset of one that ran, which pip resolves the same way."""
    from tests.test_extras import _pyproject_extra

    installable = _pyproject_extra("test")
    source = _copy_checkout(tmp_path / "checkout")
    python = _fresh_venv(tmp_path / "venv")
    wanted = ['".[examples]"', '-e ".[test]"', '".[langchain,local]"']  # the setup line, the test line, Install's
    readme = [command for name, command in checkout_lines() if name == "README.md"]
    ran: list[set[str]] = []
    for fragment in wanted:
        command = next(c for c in readme if fragment in c)
        done = subprocess.run(command, shell=True, cwd=source, env=_env(python), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        ran.append(_extras(next(t for t in _targets(command) if t.startswith(".["))))
        copy = _installed_copy(python, tmp_path)
        assert copy.is_relative_to(source if "-e" in command.split() else tmp_path / "venv"), command
    # Every other line asks for packages one of those resolved, except modelscope (npu), which the test extra
    # does not install and this offline check cannot fetch.
    resolved = set().union(*(_pyproject_extra(extra) for extras in ran for extra in extras))
    assert resolved <= installable
    for name, command in checkout_lines():
        extras = set().union(*(_extras(t) for t in _targets(command)))
        closure = set().union(*(_pyproject_extra(extra) for extra in extras))
        assert closure - resolved <= {"modelscope"}, f"{name}: {command}"
