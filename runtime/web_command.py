"""`ruvdllm web`: serve the browser client, its vendored libraries, the runtime wheel and a model.

A small static server (standard library `http.server`, threaded). Every response carries the
cross-origin isolation headers, because without `crossOriginIsolated` there is no
SharedArrayBuffer and onnxruntime-web silently falls back to one wasm thread:

    Cross-Origin-Opener-Policy: same-origin
    Cross-Origin-Embedder-Policy: require-corp
    Cross-Origin-Resource-Policy: same-origin

URL layout (the client only uses relative URLs, so it also works below a path prefix):

    /                      web/ (index.html, css/, js/, sw.js)
    /vendor/pyodide/       web/node_modules/pyodide/             (npm: pyodide)
    /vendor/ort/           web/node_modules/onnxruntime-web/dist/ (npm: onnxruntime-web)
    /vendor/tokenizers/    web/node_modules/@huggingface/tokenizers/dist/
    /vendor/jinja/         web/node_modules/@huggingface/jinja/dist/   (chat templates)
    /wheels/<wheel>        the runtime modules the browser runs, as a wheel (runtime/web_wheel.py)
    /model/                the exported model directory (manifest.json, model.onnx, ...)
    /app-config.json       what the client needs to find the above
"""

from __future__ import annotations

import argparse
import email.utils
import json
import mimetypes
import os
import posixpath
import threading
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from runtime.artifact import verify_manifest
from runtime.web_gzip import GzipCache
from runtime.web_wheel import build_wheel, cached_wheel
from ruvdllm.errors import RuvdllmError

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
# npm package directory -> URL prefix; only these parts of node_modules are served.
VENDOR_DIRS = {
    "/vendor/pyodide/": "pyodide",
    "/vendor/ort/": "onnxruntime-web/dist",
    "/vendor/tokenizers/": "@huggingface/tokenizers/dist",
    "/vendor/jinja/": "@huggingface/jinja/dist",
}
# Large client files every visit downloads: compressed in the background from the start.
PREPARE_GZIP = (
    "/vendor/pyodide/pyodide.asm.wasm",
    "/vendor/ort/ort-wasm-simd-threaded.wasm",
    "/vendor/ort/ort-wasm-simd-threaded.jspi.wasm",
)
HIDDEN = {"node_modules"}  # served only through the /vendor/ mounts, never wholesale
EXTRA_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",  # needed for WebAssembly.instantiateStreaming
    ".whl": "application/zip",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".json": "application/json",
    ".zip": "application/zip",
}


def default_web_dir() -> Path:
    """The client ships beside the runtime package in the source tree (web/)."""
    return Path(__file__).resolve().parent.parent / "web"


@dataclass
class Site:
    """What the server serves: URL prefix -> directory, plus in-memory files (the wheel, the config)."""

    mounts: dict[str, Path] = field(default_factory=dict)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (body, content type)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gzip: GzipCache = field(default_factory=GzipCache)

    def mount(self, prefix: str, directory: Path) -> None:
        with self.lock:
            self.mounts[prefix.rstrip("/") + "/"] = Path(directory).resolve()

    def add_file(self, path: str, body: bytes, content_type: str) -> None:
        with self.lock:
            self.files[path] = (body, content_type)

    def resolve(self, url_path: str) -> Path | None:
        """Map a URL path to a file inside one mount, longest prefix first; None if outside all."""
        with self.lock:
            mounts = sorted(self.mounts.items(), key=lambda item: -len(item[0]))
        for prefix, directory in mounts:
            if not url_path.startswith(prefix):
                continue
            parts = [p for p in posixpath.normpath(url_path[len(prefix) :]).split("/") if p not in ("", ".")]
            if ".." in parts or any(p.startswith(".") or p in HIDDEN for p in parts):
                return None
            candidate = directory.joinpath(*parts)
            if candidate.is_dir():
                candidate = candidate / "index.html"
            return candidate
        return None


def build_site(web_dir: Path, model_dir: Path | None, node_modules: Path | None = None) -> Site:
    web_dir = Path(web_dir)
    node_modules = Path(node_modules or web_dir / "node_modules")
    if not (web_dir / "index.html").is_file():
        raise RuvdllmError(f"{web_dir}: not the browser client (no index.html)")
    site = Site()
    site.mount("/", web_dir)
    for prefix, rel in VENDOR_DIRS.items():
        if (web_dir / prefix.strip("/")).is_dir():
            continue  # a static bundle carries copies in web/vendor/ (git-ignored): "/" serves them
        if not (node_modules / rel).is_dir():
            raise RuvdllmError(
                f"{node_modules / rel}: missing; run `npm ci` in {web_dir.name}/ to install the client's libraries"
            )
        site.mount(prefix, node_modules / rel)
    wheel = cached_wheel()
    site.add_file(f"/wheels/{wheel.name}", wheel.read_bytes(), "application/zip")
    config = {"wheel": f"wheels/{wheel.name}", "model": "model/" if model_dir else None}
    if model_dir is not None:
        verify_manifest(Path(model_dir), full_hash=False)
        site.mount("/model/", Path(model_dir))
        site.gzip.prepare_tree(Path(model_dir))  # the weights take seconds: start now, in the background
    for url_path in PREPARE_GZIP:  # the large client files every visit needs
        resolved = site.resolve(url_path)
        if resolved is not None:
            site.gzip.prepare(resolved)
    site.add_file("/app-config.json", json.dumps(config).encode(), "application/json")
    return site


class Handler(SimpleHTTPRequestHandler):
    site: Site  # set on a per-server subclass
    quiet = True

    def send_head(self):
        url_path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        with self.site.lock:
            in_memory = self.site.files.get(url_path)
        if in_memory is not None:
            body, content_type = in_memory
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return _BytesReader(body)
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            path = Path(self.translate_path(self.path))
            stat = path.stat() if path.is_file() else None
            body = self.site.gzip.body(path, stat) if stat is not None else None
            if body is not None:
                return self._send_gzip(path, stat, body)
        return super().send_head()

    def _send_gzip(self, path: Path, stat: os.stat_result, body: bytes):
        if self._not_modified(stat):
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.end_headers()
            return None
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
        self.end_headers()
        return _BytesReader(body)

    def _not_modified(self, stat: os.stat_result) -> bool:
        """If-Modified-Since as SimpleHTTPRequestHandler answers it."""
        since = self.headers.get("If-Modified-Since")
        if not since or self.headers.get("If-None-Match"):
            return False
        try:
            since_time = email.utils.parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        return int(stat.st_mtime) <= since_time

    def translate_path(self, path: str) -> str:
        url_path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        resolved = self.site.resolve(url_path)
        return str(resolved) if resolved is not None else os.devnull + ".missing"

    def list_directory(self, path):  # no directory listings
        self.send_error(HTTPStatus.NOT_FOUND, "Not found")
        return None

    def guess_type(self, path) -> str:
        return (
            EXTRA_TYPES.get(Path(str(path)).suffix, None)
            or mimetypes.guess_type(str(path))[0]
            or "application/octet-stream"
        )

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        # Revalidate every time (304 when unchanged): the model cache and the service worker
        # decide what is kept offline, not the HTTP cache.
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Vary", "Accept-Encoding")
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if not self.quiet:
            super().log_message(format, *args)


class _BytesReader:
    """A file-like body for SimpleHTTPRequestHandler.copyfile."""

    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk, self._pos = self._data[self._pos : end], min(end, len(self._data))
        return chunk

    def close(self) -> None:
        pass


def make_server(
    site: Site, host: str = "127.0.0.1", port: int = 8000, quiet: bool = True
) -> ThreadingHTTPServer:
    handler = type("SiteHandler", (Handler,), {"site": site, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def default_web_model_dir(progress: bool = True) -> Path:
    """The default model exported once for WebGPU into the cache (the graph the browser runs on both
    of its EPs), conversion adapter baked in (runtime/default_artifact.py)."""
    from runtime.default_artifact import default_model_dir

    return default_model_dir("webgpu", progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        type=Path,
        help="exported model directory (`ruvdllm export --target webgpu`; default: SmolLM2-135M-Instruct, exported once)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    parser.add_argument(
        "--web-dir",
        type=Path,
        default=None,
        help="the client's directory (default: web/ of this source tree)",
    )
    parser.add_argument(
        "--build-wheel", type=Path, metavar="DIR", help="only write the runtime wheel into DIR and exit"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    if args.build_wheel:
        print(build_wheel(args.build_wheel))
        return 0
    model = args.model if args.model is not None else default_web_model_dir()
    site = build_site(args.web_dir or default_web_dir(), model)
    server = make_server(site, args.host, args.port, quiet=not args.verbose)
    host, port = server.server_address[:2]
    shown = "localhost" if host in ("127.0.0.1", "::1") else host  # localhost is a secure context
    print(f"serving the browser client and {model} on http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
