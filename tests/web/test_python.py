"""Pyodide in Chromium (web/js/python.js): boots from our own served files and installs the runtime
wheel that `ruvdllm web` builds, with pyodide.loadPackage(url)."""

from __future__ import annotations

import pytest

from tests.web.conftest import open_probe, rpc

pytestmark = pytest.mark.browser


def test_pyodide_loads_the_runtime_wheel(browser, web_server):
    served = []
    browser.context.on("request", lambda r: served.append(r.url))
    page = open_probe(browser, web_server)
    wheel = web_server.site.config["wheel"]
    code = (
        "import sys, runtime.artifact, ruvdllm.errors\n"
        "from pyodide.ffi import run_sync\n"
        "import js\n"
        "(sys.version_info[:2], runtime.artifact.__file__, runtime.artifact.GRAPH_NAME)"
    )
    version, module_file, graph_name = rpc(page, "python", {"wheelUrl": "/" + wheel, "code": code})
    assert tuple(version) >= (3, 12)
    assert module_file.endswith("site-packages/runtime/artifact.py")  # installed from the wheel
    assert graph_name == "model.onnx"
    assert all(url.startswith(web_server.url) or url.startswith("data:") for url in served), (
        "fetched from elsewhere"
    )


def test_python_waits_on_javascript_promises(browser, web_server):
    """The sampler is synchronous Python; it awaits onnxruntime-web through run_sync (JSPI)."""
    page = open_probe(browser, web_server)
    wheel = web_server.site.config["wheel"]
    code = (
        "from pyodide.ffi import run_sync\nimport js\n[run_sync(js.Promise.resolve(i * 2)) for i in range(3)]"
    )
    assert rpc(page, "python", {"wheelUrl": "/" + wheel, "code": code}) == [0, 2, 4]
