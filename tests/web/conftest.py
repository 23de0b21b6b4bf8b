"""Browser test harness: `ruvdllm web`'s own server on a free loopback port, and Debian's Chromium
driven headless by Playwright (never `playwright install`: the browser comes from apt).

Every browser gets a fresh profile directory, so Cache Storage and the service worker start empty
unless a test reuses the profile on purpose (warm start, offline).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.web_command import Site, build_site, default_web_dir, make_server

PAGES = Path(__file__).parent / "pages"
CHROMIUM = os.environ.get("RUVDLLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root in a container
    "--disable-background-networking",  # no traffic but ours
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WEBGPU_ARGS = ["--enable-unsafe-webgpu"]  # headless Chromium then offers SwiftShader's WebGPU adapter


@dataclass
class Served:
    url: str  # base URL, ends with "/"
    site: Site
    data_dir: Path  # files placed here are served under /data/

    def mount_model(self, name: str, directory: Path) -> str:
        """Serve an exported model directory; returns its URL (relative to the base)."""
        self.site.mount(f"/models/{name}/", directory)
        return f"models/{name}/"


@pytest.fixture(scope="session")
def web_server(tmp_path_factory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("served")
    site = build_site(default_web_dir(), None)
    site.mount("/test/", PAGES)
    site.mount("/data/", data_dir)
    server = make_server(site, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Served(f"http://127.0.0.1:{server.server_address[1]}/", site, data_dir)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def playwright_driver():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM}: Chromium is missing (apt-get install chromium; or set RUVDLLM_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    yield driver
    driver.stop()


@dataclass
class Browser:
    """A persistent Chromium context on its own profile directory; `console` collects the log."""

    context: object
    profile: Path
    console: list[str] = field(default_factory=list)

    def new_page(self):
        page = self.context.new_page()
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))
        return page

    def close(self) -> None:
        self.context.close()


def launch(driver, profile: Path, webgpu: bool = False) -> Browser:
    context = driver.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS + (WEBGPU_ARGS if webgpu else []),
        viewport={"width": 1280, "height": 900},
    )
    context.set_default_timeout(120_000)
    return Browser(context, profile)


@pytest.fixture
def browser(playwright_driver, tmp_path) -> Iterator[Browser]:
    """Chromium without WebGPU (the wasm path)."""
    b = launch(playwright_driver, tmp_path / "profile")
    yield b
    b.close()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.fixture
def webgpu_browser(playwright_driver, tmp_path) -> Iterator[Browser]:
    """Chromium with WebGPU on SwiftShader (software Vulkan): slow, but the real WebGPU EP."""
    b = launch(playwright_driver, tmp_path / "profile-webgpu", webgpu=True)
    yield b
    b.close()
    shutil.rmtree(tmp_path / "profile-webgpu", ignore_errors=True)


@pytest.fixture(scope="session")
def shared_tiny_model(tmp_path_factory):
    """The tiny exported model with a bank (tests/web/artifacts.py), built once for the modules
    that do not change it (copies with `variant` for those that need another config)."""
    from tests.web.artifacts import tiny_web_model

    return tiny_web_model(tmp_path_factory.mktemp("shared-web-models"))


def open_probe(browser: Browser, served: Served):
    """The probe page (tests/web/pages/probe.html): `page.evaluate("rpc(op, args)")`."""
    page = browser.new_page()
    page.goto(served.url + "test/probe.html")
    page.wait_for_function("window.probeReady === true")
    return page


def rpc(page, op: str, args: dict | None = None):
    return page.evaluate("([op, args]) => window.rpc(op, args)", [op, args or {}])
