"""`cir demo` in a real browser: Debian's Chromium driven by Playwright, tiny models, photos."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CIR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOP_K = 5
STARTUP_SECONDS = 180
QUERY_SECONDS = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unreachable_pipeline(folder: Path) -> Path:
    """clip_fusion's text side rewritten by an LLM behind a port where nothing listens."""
    llm = {
        "backend": "openai",
        "model": "any-model",
        "base_url": f"http://127.0.0.1:{_free_port()}/v1",
        "max_retries": 0,
        "timeout": 5.0,
    }
    spec = {
        "name": "llm_down",
        "description": "Recompose with an LLM server that is not running.",
        "stages": [
            {"stage": "caption", "params": {"captioner": {"backend": "scripted", "echo": True}}},
            {"stage": "recompose", "params": {"llm": llm}},
            {"stage": "encode_text", "params": {"source": "targets", "output": "target"}},
            {"stage": "retrieve", "params": {"query": "target"}},
        ],
    }
    path = folder / "llm_down.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory, tiny_clip, sample_photos):
    work = tmp_path_factory.mktemp("demo_browser")
    port = _free_port()
    command = [
        str(Path(sys.executable).with_name("cir")), "demo",
        "--gallery", str(sample_photos),
        "--model", tiny_clip,
        "--index-out", str(work / "index"),
        "--pipeline", "clip_fusion",
        "--pipeline", str(_unreachable_pipeline(work)),
        "--set", f"stages.retrieve.k={TOP_K}",
        "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "CIR_CACHE_DIR": str(work / "cache"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (work / "server.log").open("w")
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, server, work / "server.log")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"cir demo exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"cir demo did not answer within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def page(demo_url):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}; run scripts/setup_browser.sh")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(demo_url)
        page.wait_for_selector("#cir-search", timeout=60_000)
        yield page
        browser.close()


def _choose_pipeline(page, name: str) -> None:
    box = page.locator("#cir-pipeline input")
    box.click()
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_function(
        "name => document.querySelector('#cir-pipeline input').value === name", arg=name
    )


def _search(page) -> None:
    """Click Search and wait until the footer counts one more answered or failed query."""
    before = _served(page.locator("#cir-status").inner_text())
    page.click("#cir-search")
    deadline = time.monotonic() + QUERY_SECONDS
    while _served(page.locator("#cir-status").inner_text()) == before:
        if time.monotonic() > deadline:
            pytest.fail(
                f"no answer within {QUERY_SECONDS} s; page says:\n{page.inner_text('body')}"
            )
        page.wait_for_timeout(200)


def _served(status: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"(?:answered|failed): (\d+)", status))


def test_a_query_shows_results_and_trace(page):
    _search(page)  # the first example is preloaded: the first click works
    page.wait_for_function(
        f"document.querySelectorAll('#cir-results img').length === {TOP_K}", timeout=10_000
    )
    captions = page.locator("#cir-results").inner_text()
    assert captions.count(" · ") >= 2 * TOP_K  # "#rank · score · id" on each tile
    trace = page.locator("#cir-trace").inner_text()
    for expected in ("clip_fusion", f"{TOP_K} results", "encode_image", "fuse", "retrieve"):
        assert expected in trace
    assert "Fusion weights" in trace
    out = REPO / "artifacts" / "demo.png"
    out.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000


def test_an_unreachable_llm_is_a_message_and_the_page_goes_on(page):
    _choose_pipeline(page, "llm_down")
    _search(page)
    message = page.locator("#cir-trace .cir-error").inner_text()
    assert "Could not answer this query" in message and "127.0.0.1" in message
    assert "Traceback" not in page.content()
    page.screenshot(path=str(REPO / "artifacts" / "demo_error.png"), full_page=True)
    _choose_pipeline(page, "clip_fusion")
    _search(page)
    assert "encode_text" in page.locator("#cir-trace").inner_text()
    page.wait_for_function(
        f"document.querySelectorAll('#cir-results img').length === {TOP_K}", timeout=10_000
    )
