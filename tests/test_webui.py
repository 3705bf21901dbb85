"""examples/webui.py served on 127.0.0.1 and used through headless Chromium, as a person would: type a query and
documents, press Rerank, read the ranked rows. Screenshots go to $TEST_ARTIFACTS_DIR (default artifacts/).

The page tests (marker ``browser``) need Debian's chromium and chromium-driver: without them they skip with the
reason, except where QWEN3_RERANK_REQUIRE names "browser" (.ci/run, which installs them), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.test_examples import EXAMPLES, assert_one_line_error, closed_port_url, corpus_texts, run_script

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or Path(__file__).resolve().parents[1] / "artifacts")
SECURITY_INSTRUCTION = "Given a question about computer security, retrieve passages that answer it"
STARTUP_SECONDS = 240  # importing gradio and torch on a busy 2-core machine


@pytest.fixture(scope="module")
def browser_binaries() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        skip_or_fail("browser", "the web page tests need Debian's chromium and chromium-driver: "
                     "apt-get install chromium chromium-driver (.ci/run installs them when missing)")
    assert chromium and driver  # skip_or_fail never returns
    return chromium, driver


@pytest.fixture(scope="module")
def page_url(browser_binaries, tiny_model_dir, vllm_template_server, tmp_path_factory):
    """The page on a free loopback port, offering the tiny model in-process and the template vLLM stand-in."""
    port = int(closed_port_url().rsplit(":", 1)[1])
    log_path = tmp_path_factory.mktemp("webui") / "webui.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "webui.py"), "--model", str(tiny_model_dir), "--device", "cpu",
             "--base-url", vllm_template_server.base_url, "--template", "server", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"webui.py exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"webui.py did not answer on {url} within {STARTUP_SECONDS} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser(browser_binaries):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_binaries
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1150"):
        options.add_argument(argument)
    # An explicit driver path: selenium must not try to download one.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 60).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#rerank")))


def type_into(browser, selector: str, text: str) -> None:
    """Replace a textbox's text by typing, so the page sees real input events."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, f"{selector} textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if text:
        box.send_keys(text)


def choose(browser, group: str, label_fragment: str) -> None:
    from selenium.webdriver.common.by import By

    labels = browser.find_elements(By.CSS_SELECTOR, f"#{group} label")
    matching = [label for label in labels if label_fragment in label.text]
    assert len(matching) == 1, [label.text for label in labels]
    matching[0].click()


def rerank_and_read(browser, expect_in_summary: str) -> tuple[str, list[tuple[int, float, str, str]]]:
    """Press Rerank, wait for the results naming ``expect_in_summary``, and read (rank, score, shown score, text)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.CSS_SELECTOR, "#rerank").click()

    def summary(driver):
        found = driver.find_elements(By.CSS_SELECTOR, "#results .rerank-summary")
        return found and expect_in_summary in found[0].text and found[0].text

    text = WebDriverWait(browser, 60).until(summary)
    rows = [
        (int(row.get_attribute("data-rank")), float(row.get_attribute("data-score")),
         row.find_element(By.CSS_SELECTOR, ".rerank-score").text, row.find_element(By.CSS_SELECTOR, ".rerank-text").text)
        for row in browser.find_elements(By.CSS_SELECTOR, "#results .rerank-row")
    ]
    return text, rows


def screenshot(browser, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(ARTIFACTS / name))


def assert_ranked_like_reference(rows, ranking_scores, texts, top_n, reference_scores):
    """The rows are the ``top_n`` of ``texts`` by ``ranking_scores``, best first, each showing the score the
    official method gives it (``reference_scores``: text -> score)."""
    expected = sorted(zip(ranking_scores, texts), key=lambda pair: -pair[0])[:top_n]
    assert [rank for rank, *_ in rows] == list(range(1, len(expected) + 1))
    assert [text for *_, text in rows] == [text for _, text in expected]
    for _, score, shown, text in rows:
        assert score == pytest.approx(reference_scores[text], abs=1e-5)
        assert shown == f"{score:.4f}"


@pytest.mark.slow
@pytest.mark.browser
def test_typed_documents_ranked_by_the_vllm_server(page_url, browser, reference_scorer):
    documents = [
        "Most server data theft starts with stolen or weak credentials.",
        "服务器加固包括关闭不必要的服务和端口。",
        "<b>Markup</b> & symbols are shown as text, not rendered",
        "Beijing is the capital of China.",
    ]
    query = "How do attackers steal data from a server?"
    open_page(browser, page_url)
    type_into(browser, "#query", query)
    type_into(browser, "#documents", "\n".join(documents) + "\n\n")  # blank lines are not documents
    choose(browser, "backend", "vLLM")
    summary, rows = rerank_and_read(browser, "vLLM")
    assert summary.startswith("4 documents scored by vLLM")
    expected = reference_scorer.score(query, documents)
    assert_ranked_like_reference(rows, expected, documents, 10, dict(zip(documents, expected)))
    screenshot(browser, "webui_typed_documents_vllm.png")


@pytest.mark.slow
@pytest.mark.browser
def test_bundled_corpus_ranked_by_the_local_model(page_url, browser, local_scorer, reference_scorer):
    query = "Which passages explain how servers get broken into?"
    open_page(browser, page_url)
    type_into(browser, "#query", query)
    choose(browser, "source", "Bundled corpus")
    type_into(browser, "#instruction", SECURITY_INSTRUCTION)
    choose(browser, "backend", "local:")
    summary, rows = rerank_and_read(browser, "local:")
    texts = corpus_texts()
    assert summary.startswith(f"{len(texts)} documents scored by local:")
    # The ranking of all 50 by LocalScorer (equal to the official method, tests/test_local_scorer.py); the
    # shown scores by the official method itself (full-vocabulary logits: seconds for all 50 on CPU).
    ranking = local_scorer.score(query, texts, instruction=SECURITY_INSTRUCTION)
    shown = [text for *_, text in rows]
    reference = dict(zip(shown, reference_scorer.score(query, shown, instruction=SECURITY_INSTRUCTION)))
    assert_ranked_like_reference(rows, ranking, texts, 10, reference)
    screenshot(browser, "webui_bundled_corpus_local.png")


@pytest.mark.slow
@pytest.mark.browser
def test_empty_query_is_refused_on_the_page(page_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, page_url)
    type_into(browser, "#query", "")
    browser.find_element(By.CSS_SELECTOR, "#rerank").click()
    WebDriverWait(browser, 30).until(lambda driver: "Type a query first." in driver.page_source)
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .rerank-row")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "fragments"),
    [(["--model", "/no/such/reranker"], ["--model", "no such folder"]),
     (["--backend", "vllm"], ["--base-url"])],
    ids=["missing-model", "vllm-without-url"],
)
def test_bad_flags_fail_in_one_line_before_serving(flags, fragments):
    assert_one_line_error(run_script("webui", *flags), *fragments)


# ------------------------------------------------------------------------------------------- without a browser
@pytest.fixture(scope="module")
def webui():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import webui as module

        yield module
    finally:
        sys.path.remove(str(EXAMPLES))


class _CountingScorer:
    calls = 0

    def score(self, query, documents, instruction=None):
        type(self).calls += 1
        return [1.0 / (i + 1) for i in range(len(documents))]


def _args(**overrides):
    import argparse

    values = {"backend": "local", "model": "m", "device": "auto", "base_url": None, "template": "client",
              "instruction": None, "max_documents": 3, "max_characters": 100}
    return argparse.Namespace(**{**values, **overrides})


def test_a_request_over_the_caps_is_refused_with_the_limit_named_before_scoring(webui, monkeypatch):
    args = _args()
    backends = webui.Backends(args)
    monkeypatch.setattr(backends, "scorer", lambda key: _CountingScorer())
    ask = lambda typed, source=webui.MY_DOCUMENTS, query="q": webui.rerank_request(  # noqa: E731
        backends, args, query, source, typed, "", "local", 10)
    with pytest.raises(webui.RequestTooLarge, match=r"^4 documents sent; this page ranks at most 3 .*--max-documents"):
        ask("a\nb\nc\nd")
    with pytest.raises(webui.RequestTooLarge, match=r"^101 characters sent .* at most 100 .*--max-characters"):
        ask("x" * 100)
    with pytest.raises(webui.RequestTooLarge, match="characters"):
        ask("short", query="q" * 100)  # the query counts too
    assert _CountingScorer.calls == 0
    assert "3 documents scored by local: m (device auto)" in ask("a\nb\nc")  # at the limits: scored
    # The bundled corpus (50 passages) is the operator's: the caps are for what visitors send.
    assert "50 documents scored" in ask("", source=webui.BUNDLED_CORPUS)


@pytest.mark.slow
def test_one_backend_shows_no_backend_choice_and_two_do(webui):
    from gradio.components import Radio

    def radios(page):
        return [b for b in page.blocks.values() if isinstance(b, Radio) and b.elem_id == "backend"]

    assert radios(webui.build_page(webui.Backends(_args()), _args())) == []
    both = _args(base_url="http://127.0.0.1:9")
    (radio,) = radios(webui.build_page(webui.Backends(both), both))
    assert [value for _, value in radio.choices] == ["local", "vllm"]


@pytest.mark.slow
def test_the_page_says_where_it_is_without_gradios_share_hint_and_names_the_device_used(tiny_model_dir, tmp_path):
    import json

    port = int(closed_port_url().rsplit(":", 1)[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "webui.py"), "--model", str(tiny_model_dir), "--device", "auto",
         "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        lines = []
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        output = "".join(lines)
        assert f"Qwen3-Reranker page on http://127.0.0.1:{port}/ (this machine only)" in output, output
        assert "local: " in output and "(device cpu)" in output and "device auto" not in output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = json.load(response)
        elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"query", "documents", "rerank"} <= elem_ids and "backend" not in elem_ids  # one backend: no radio
    finally:
        server.terminate()
        try:
            rest = server.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            rest = server.communicate()[0]
    assert "share=True" not in output + rest


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--max-documents", "--max-characters"])
def test_caps_below_one_are_refused_in_one_line(flag):
    assert_one_line_error(run_script("webui", flag, "0"), f"{flag} must be at least 1")
