"""runtime/web_command.py (`ruvdllm web`): a real server on a free loopback port serves the client,
its npm libraries, the runtime wheel and a model directory, every response cross-origin isolated;
gzip on the fly for the client's files, the exporter's gzip copies for the model's."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from runtime.artifact import write_gzip_copies, write_manifest
from runtime.web_command import ISOLATION_HEADERS, build_site, make_server
from runtime.web_wheel import build_wheel
from ruvdllm.errors import RuvdllmError


@pytest.fixture
def web_dir(tmp_path):
    web = tmp_path / "web"
    (web / "js").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>client</title>")
    (web / "js" / "app.js").write_text("export const x = 1;\n")
    for rel, name in [
        ("pyodide", "pyodide.asm.wasm"),
        ("onnxruntime-web/dist", "ort.wasm.min.mjs"),
        ("@huggingface/tokenizers/dist", "tokenizers.min.mjs"),
        ("@huggingface/jinja/dist", "index.js"),
    ]:
        (web / "node_modules" / rel).mkdir(parents=True)
        (web / "node_modules" / rel / name).write_bytes(
            b"\0asm" if name.endswith(".wasm") else b"export {};\n"
        )
    (tmp_path / "secret.txt").write_text("not to be served")
    return web


@pytest.fixture
def model_dir(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.onnx").write_bytes(b"graph bytes")
    write_manifest(model)
    return model


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Built once: every test has a cache of its own, where build_site would build it again."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def serve(web_dir, model_dir, wheel):
    servers = []

    def start(model=model_dir):
        server = make_server(build_site(web_dir, model, wheel=wheel), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("", "text/html"),
        ("js/app.js", "text/javascript"),
        ("vendor/pyodide/pyodide.asm.wasm", "application/wasm"),
        ("vendor/ort/ort.wasm.min.mjs", "text/javascript"),
        ("vendor/tokenizers/tokenizers.min.mjs", "text/javascript"),
        ("vendor/jinja/index.js", "text/javascript"),
        ("model/model.onnx", "application/octet-stream"),
        ("model/manifest.json", "application/json"),
        ("app-config.json", "application/json"),
    ],
)
def test_serves_with_isolation_headers(serve, path, content_type):
    status, headers, _ = get(serve() + path)
    assert status == 200
    assert headers["Content-Type"].startswith(content_type)
    for name, value in ISOLATION_HEADERS.items():
        assert headers[name] == value


def test_app_config_names_the_wheel_and_the_wheel_is_served(serve):
    base = serve()
    config = json.loads(get(base + "app-config.json")[2])
    assert config["model"] == "model/"
    status, headers, body = get(base + config["wheel"])
    assert status == 200 and body[:2] == b"PK"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


@pytest.mark.parametrize(
    "path", ["../secret.txt", "%2e%2e/secret.txt", "model/../../secret.txt", "vendor/", "js/", "nothing.js"]
)
def test_nothing_outside_the_mounts_and_no_listings(serve, path):
    status, headers, body = get(serve() + path)
    assert status == 404, path
    assert b"not to be served" not in body
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"


def test_node_modules_outside_the_vendored_parts_are_not_served(serve, web_dir):
    (web_dir / "node_modules" / "other").mkdir()
    (web_dir / "node_modules" / "other" / "x.js").write_text("x")
    assert get(serve() + "node_modules/other/x.js")[0] == 404
    assert get(serve() + "node_modules/pyodide/pyodide.asm.wasm")[0] == 404
    assert get(serve() + "vendor/other/x.js")[0] == 404


def test_without_a_model_the_config_says_so(serve):
    config = json.loads(get(serve(model=None) + "app-config.json")[2])
    assert config["model"] is None


def test_missing_npm_packages_are_a_clear_error(web_dir, model_dir):
    import shutil

    shutil.rmtree(web_dir / "node_modules" / "pyodide")
    with pytest.raises(RuvdllmError, match="npm ci"):
        build_site(web_dir, model_dir)


def test_a_directory_without_manifest_is_not_served(web_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuvdllmError, match="manifest"):
        build_site(web_dir, tmp_path / "empty")


def test_cli_builds_the_wheel(tmp_path, capsys):
    from ruvdllm.cli import main

    assert main(["web", "--build-wheel", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.endswith(".whl") and (tmp_path / printed.split("/")[-1]).is_file()


def test_ordinary_mistakes_are_one_line_errors_before_any_model_is_exported(tmp_path, capsys, monkeypatch):
    import socket

    from ruvdllm import default_artifact
    from ruvdllm.cli import main

    exported = []  # without MODEL the default model is exported first: a bad address must not wait for it
    monkeypatch.setattr(default_artifact, "default_model_dir", lambda *a, **k: exported.append(a))
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    wheel_file = tmp_path / "a-file"
    wheel_file.write_text("x")
    cases = [
        (["--port", str(port)], f"127.0.0.1:{port}: cannot listen"),
        (["--port", "-1"], "--port -1: out of range 0..65535"),
        (["--port", "99999"], "--port 99999: out of range"),
        (["--host", "nosuchhost.invalid", "--port", "0"], "nosuchhost.invalid:0: cannot listen"),
        (["--build-wheel", str(wheel_file)], "a file, not a directory"),
    ]
    try:
        for flags, message in cases:
            assert main(["web", *flags]) == 1, flags
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and "\n" not in err and message in err, err
    finally:
        taken.close()
    assert exported == []


def test_cli_serves_until_stopped(web_dir, model_dir):
    import re
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "ruvdllm.cli",
        "web",
        str(model_dir),
        "--port",
        "0",
        "--web-dir",
        str(web_dir),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://\S+/", line).group(0)
        status, headers, body = get(url + "model/model.onnx")
        assert status == 200 and body == b"graph bytes"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        process.terminate()
        process.wait(timeout=10)


def get_encoded(url: str, encoding: str = "gzip", since: str | None = None):
    headers = {"Accept-Encoding": encoding} | ({"If-Modified-Since": since} if since else {})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_gzip_when_asked_identity_otherwise(serve, web_dir):
    import gzip

    text = "export const answer = 42;\n" * 500
    (web_dir / "js" / "big.js").write_text(text)
    url = serve() + "js/big.js"
    status, headers, body = get_encoded(url)
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(body) < len(text) // 10
    assert gzip.decompress(body).decode() == text
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp" and headers["Vary"] == "Accept-Encoding"
    status, headers, body = get_encoded(url, encoding="identity")
    assert headers["Content-Encoding"] is None and body.decode() == text
    status, _, _ = get_encoded(url, since=headers["Last-Modified"])
    assert status == 304


def test_the_exporters_gzip_copies_are_sent_while_fresh(serve, model_dir):
    """The model's binary files are never compressed on the fly; their gzip copy (written by the
    exporter) is sent as it is to clients that accept gzip, and not once the file is newer."""
    import gzip
    import os

    graph = model_dir / "model.onnx"
    graph.write_bytes(b"weights " * 4096)
    write_manifest(model_dir)
    url = serve() + "model/model.onnx"
    status, headers, body = get_encoded(url)
    assert status == 200 and headers["Content-Encoding"] is None and body == graph.read_bytes()

    assert [p.name for p in write_gzip_copies(model_dir)] == ["model.onnx.gz"]
    status, headers, body = get_encoded(url)
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/octet-stream" and headers["Vary"] == "Accept-Encoding"
    assert body == (model_dir / "model.onnx.gz").read_bytes() and gzip.decompress(body) == graph.read_bytes()
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert get_encoded(url, encoding="identity")[2] == graph.read_bytes()

    graph.write_bytes(b"rewritten " * 4096)  # the copy is now older than the file: not sent
    stamp = (model_dir / "model.onnx.gz").stat().st_mtime_ns
    os.utime(graph, ns=(stamp + 10**9, stamp + 10**9))
    status, headers, body = get_encoded(url)
    assert headers["Content-Encoding"] is None and body == graph.read_bytes()


def test_the_address_printed_is_the_one_bound():
    from runtime.web_command import listening_at

    assert listening_at("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert listening_at("::1", 8000) == "http://[::1]:8000/"
    assert (
        listening_at("0.0.0.0", 80)
        == "http://0.0.0.0:80/ (every interface; on this machine http://127.0.0.1:80/)"
    )


def _browser_model(directory, target: str):
    from runtime.artifact import CONFIG_NAME, ArtifactConfig

    directory.mkdir()
    config = ArtifactConfig(
        architecture="llama",
        vocab_size=8,
        hidden_size=4,
        num_layers=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=4,
        max_position=16,
        mask_token_id=7,
        targets=(target,),
    )
    (directory / CONFIG_NAME).write_text(config.to_json())
    (directory / "model.onnx").write_bytes(target.encode())
    write_manifest(directory)
    return directory


def test_a_wasm_variant_is_served_beside_the_model_and_named_in_the_config(
    web_dir, model_dir, wheel, tmp_path
):
    wasm = _browser_model(tmp_path / "wasm", "wasm")
    server = make_server(build_site(web_dir, model_dir, wheel=wheel, wasm_model_dir=wasm), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        config = json.loads(get(base + "app-config.json")[2])
        assert config["model"] == "model/" and config["wasmModel"] == "model-wasm/"
        assert get(base + "model-wasm/model.onnx")[2] == b"wasm"
    finally:
        server.shutdown()
        server.server_close()


def test_a_wasm_variant_of_another_target_is_refused_in_one_line(web_dir, model_dir, wheel, tmp_path):
    webgpu = _browser_model(tmp_path / "webgpu", "webgpu")
    with pytest.raises(
        RuvdllmError, match=r"built for target webgpu, not wasm \(export it with --target wasm\)"
    ):
        build_site(web_dir, model_dir, wheel=wheel, wasm_model_dir=webgpu)


def test_without_a_wasm_variant_the_config_names_none(serve):
    assert "wasmModel" not in json.loads(get(serve() + "app-config.json")[2])


def test_the_default_model_comes_with_its_wasm_variant_a_given_model_without():
    """Without MODEL the page gets the default model for WebGPU and its wasm-target export for
    WebAssembly; a given model is served as it is, with the variant only when named."""
    import argparse

    from runtime.web_command import models_to_serve

    asked = []

    def default_model(target):
        asked.append(target)
        return Path(f"default-{target}")

    args = argparse.Namespace(model=None, wasm_model=None)
    assert models_to_serve(args, default_model) == (Path("default-webgpu"), Path("default-wasm"))
    assert models_to_serve(argparse.Namespace(model=None, wasm_model=Path("w")), default_model)[1] == Path(
        "w"
    )
    given = argparse.Namespace(model=Path("m"), wasm_model=None)
    asked.clear()
    assert models_to_serve(given, default_model) == (Path("m"), None) and asked == []
