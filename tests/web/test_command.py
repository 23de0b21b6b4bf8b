"""`ruvdllm web` as a person starts it: the address it prints is the one it listens on, and the page
opens there, cross-origin isolated and a secure context (service worker and all)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.web.app import open_app, state

pytestmark = pytest.mark.browser


def test_the_printed_address_is_where_it_listens_and_the_page_works_there(browser, shared_tiny_model):
    command = [sys.executable, "-m", "ruvdllm.cli", "web", str(shared_tiny_model), "--host", "127.0.0.1"]
    process = subprocess.Popen([*command, "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://\S+/", line).group(0)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), line
        page = open_app(browser, url + "?ep=wasm")
        page_state = state(page)
        assert page_state["ready"], page_state["error"]
        assert page_state["info"]["crossOriginIsolated"] and page.evaluate("window.isSecureContext")
        assert page.evaluate("navigator.serviceWorker.getRegistration().then((r) => Boolean(r))")
    finally:
        process.terminate()
        process.wait(timeout=10)
