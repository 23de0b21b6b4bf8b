"""`ruvdllm web`: serve the browser client, its vendored libraries, the runtime wheel and a model.

A Starlette app on uvicorn: StaticFiles per directory, and every response (errors included) gets
the cross-origin isolation headers from a middleware, because without `crossOriginIsolated` there
is no SharedArrayBuffer and onnxruntime-web silently falls back to one wasm thread:

    Cross-Origin-Opener-Policy: same-origin
    Cross-Origin-Embedder-Policy: require-corp
    Cross-Origin-Resource-Policy: same-origin

and `Cache-Control: no-cache`: the browser revalidates every time (ETag / Last-Modified, 304 when
unchanged); the model cache and the service worker decide what is kept offline, not the HTTP cache.

URL layout (the client only uses relative URLs, so it also works below a path prefix):

    /                      web/ (index.html, css/, js/, sw.js)
    /vendor/pyodide/       web/node_modules/pyodide/             (npm: pyodide)
    /vendor/ort/           web/node_modules/onnxruntime-web/dist/ (npm: onnxruntime-web)
    /vendor/tokenizers/    web/node_modules/@huggingface/tokenizers/dist/
    /vendor/jinja/         web/node_modules/@huggingface/jinja/dist/   (chat templates)
    /wheels/<wheel>        the runtime modules the browser runs, as a wheel (runtime/web_wheel.py)
    /model/                the exported model directory (manifest.json, model.onnx, ...)
    /model-wasm/           the same model exported for the wasm target (the default model's, or
                           --wasm-model's; none for a given model without it): the page loads
                           it instead on WebAssembly
    /app-config.json       what the client needs to find the above

Compression, for clients that accept gzip: the client's scripts and wasm are gzipped per response
(Starlette's GZipMiddleware; Pyodide's and onnxruntime-web's wasm shrink 2.7-4x for ~0.5 s of CPU
each). Opaque binary files (application/octet-stream: the model's weights) never are: on the fly,
the default model's 130 MB of weights would cost ~10 s of CPU per download for a 20% saving. The
exporter writes gzip copies of a browser model instead (`name.gz`, runtime/artifact.py), sent as
they are while they are not older than the file they copy.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.artifact import GZIP_SUFFIX, load_config, verify_manifest
from runtime.web_wheel import build_wheel, cached_wheel
from ruvdllm.errors import RuvdllmError

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
RESPONSE_HEADERS = ISOLATION_HEADERS | {"Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
# npm package directory -> URL prefix; only these parts of node_modules are served.
VENDOR_DIRS = {
    "/vendor/pyodide/": "pyodide",
    "/vendor/ort/": "onnxruntime-web/dist",
    "/vendor/tokenizers/": "@huggingface/tokenizers/dist",
    "/vendor/jinja/": "@huggingface/jinja/dist",
}
HIDDEN = {"node_modules"}  # served only through the /vendor/ mounts, never wholesale
CONTENT_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",  # needed for WebAssembly.instantiateStreaming
    ".whl": "application/zip",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".json": "application/json",
    ".zip": "application/zip",
}
GZIP_LEVEL = 6  # zlib's default: level 9 saves <1% more on the wasm for twice the CPU
NOT_COMPRESSED_ON_THE_FLY = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/octet-stream")


def default_web_dir() -> Path:
    """The client ships beside the runtime package in the source tree (web/)."""
    return Path(__file__).resolve().parent.parent / "web"


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def accepts_gzip(scope: Scope) -> bool:
    return "gzip" in Headers(scope=scope).get("accept-encoding", "")


class SiteFiles(StaticFiles):
    """One served directory: no dot-files, no node_modules, a directory answers with its index.html
    (never a listing), and a fresh `name.gz` beside `name` goes to clients that accept gzip."""

    def __init__(self, directory: Path):
        super().__init__(directory=directory, html=True)

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if any(part.startswith(".") or part in HIDDEN for part in PurePosixPath(path).parts):
            return "", None
        return super().lookup_path(path)

    def file_response(self, full_path, stat_result: os.stat_result, scope: Scope, status_code: int = 200):
        path, headers = Path(full_path), {}
        if accepts_gzip(scope) and (copy := _fresh_gzip_copy(path, stat_result)) is not None:
            full_path, stat_result = copy
            headers["Content-Encoding"] = "gzip"
        response = FileResponse(
            full_path,
            status_code=status_code,
            headers=headers,
            media_type=content_type(path),
            stat_result=stat_result,
        )
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


def _fresh_gzip_copy(path: Path, stat: os.stat_result) -> tuple[Path, os.stat_result] | None:
    """`path.gz` when it exists and is not older than `path` (a rewritten file has no copy yet)."""
    copy = path.with_name(path.name + GZIP_SUFFIX)
    try:
        copy_stat = copy.stat()
    except OSError:
        return None
    return (copy, copy_stat) if copy_stat.st_mtime_ns >= stat.st_mtime_ns else None


class ResponseHeaders:
    """ASGI middleware: `headers` on every response, unless the response set the header itself."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]):
        self.app, self.headers = app, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Site:
    """What the server serves: URL prefix -> directory (longest prefix first; more can be mounted
    while serving), and app-config.json."""

    def __init__(self, config: dict):
        self.config = config
        self.mounts: dict[str, Path] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            middleware=[
                Middleware(ResponseHeaders, headers=RESPONSE_HEADERS),
                Middleware(
                    GZipMiddleware, compresslevel=GZIP_LEVEL, exclude_content_types=NOT_COMPRESSED_ON_THE_FLY
                ),
            ]
        )
        self._update_routes()

    def mount(self, prefix: str, directory: Path) -> None:
        with self._lock:
            self.mounts[prefix.rstrip("/") + "/"] = Path(directory).resolve()
            self._update_routes()

    def _update_routes(self) -> None:
        mounts = sorted(self.mounts.items(), key=lambda item: -len(item[0]))
        self.app.router.routes = [  # replaced whole: a request in flight sees the old list or the new
            Route("/app-config.json", self._app_config),
            *(Mount(prefix.rstrip("/"), app=SiteFiles(directory)) for prefix, directory in mounts),
        ]

    async def _app_config(self, request: Request) -> Response:
        return JSONResponse(self.config)


def build_site(
    web_dir: Path,
    model_dir: Path | None,
    node_modules: Path | None = None,
    wheel: Path | None = None,
    wasm_model_dir: Path | None = None,
) -> Site:
    """The site for `web_dir` and `model_dir` (None: no model); `wheel` defaults to the runtime wheel
    of these sources, built once into the user cache. `wasm_model_dir`: the same model exported for
    the wasm target, which the page loads instead when it runs on WebAssembly."""
    web_dir = Path(web_dir)
    node_modules = Path(node_modules or web_dir / "node_modules")
    if not (web_dir / "index.html").is_file():
        raise RuvdllmError(f"{web_dir}: not the browser client (no index.html)")
    vendor = {}
    for prefix, rel in VENDOR_DIRS.items():
        if (web_dir / prefix.strip("/")).is_dir():
            continue  # a static bundle carries copies in web/vendor/ (git-ignored): "/" serves them
        if not (node_modules / rel).is_dir():
            raise RuvdllmError(
                f"{node_modules / rel}: missing; run `npm ci` in {web_dir.name}/ to install the client's libraries"
            )
        vendor[prefix] = node_modules / rel
    if model_dir is not None:
        verify_manifest(Path(model_dir), full_hash=False)
    config = {"wheel": None, "model": "model/" if model_dir else None}
    if wasm_model_dir is not None:
        verify_manifest(Path(wasm_model_dir), full_hash=False)
        targets = load_config(Path(wasm_model_dir)).targets
        if "wasm" not in targets:
            raise RuvdllmError(
                f"{wasm_model_dir}: built for target {'/'.join(targets)}, not wasm (export it with --target wasm)"
            )
        config["wasmModel"] = "model-wasm/"
    wheel = Path(wheel or cached_wheel())
    site = Site({**config, "wheel": f"wheels/{wheel.name}"})
    site.mount("/", web_dir)
    for prefix, directory in vendor.items():
        site.mount(prefix, directory)
    site.mount("/wheels/", wheel.parent)
    if model_dir is not None:
        site.mount("/model/", Path(model_dir))
    if wasm_model_dir is not None:
        site.mount("/model-wasm/", Path(wasm_model_dir))
    return site


class WebServer:
    """uvicorn serving an ASGI app on a socket bound at construction, so the address (port 0: a
    free one) is known before serving starts. serve_forever / shutdown / server_close as in
    socketserver, so it can run in a thread."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 8000,
        quiet: bool = True,
        sock: socket.socket | None = None,
    ):
        """`sock`: a socket already listening (the command binds before it exports a model)."""
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = sock or socket.create_server((host, port), family=family)
        self.server_address = self.socket.getsockname()
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning" if quiet else "info",
            access_log=not quiet,
            timeout_graceful_shutdown=2,  # a browser's keep-alive connections must not hold up Ctrl-C
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def listening_at(host: str, port: int) -> str:
    """The address the socket is bound to, as a URL (a loopback address is a secure context as
    `localhost` is, so the service worker works there); for a wildcard address, also where to open
    the page on this machine."""
    if host in ("0.0.0.0", "::"):
        loopback = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"{url_of(host, port)} (every interface; on this machine {url_of(loopback, port)})"
    return url_of(host, port)


def make_server(
    site: Site,
    host: str = "127.0.0.1",
    port: int = 8000,
    quiet: bool = True,
    sock: socket.socket | None = None,
) -> WebServer:
    return WebServer(site.app, host, port, quiet, sock)


# The default model's graph for the browser: the WebGPU target runs on both of the page's EPs; its
# wasm-target export (weights widened before the session is made, docs/web.md "The wasm target")
# is served beside it for the page on WebAssembly.
DEFAULT_MODEL_TARGET = "webgpu"
WASM_MODEL_TARGET = "wasm"  # the default model's variant for the page on WebAssembly


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        type=Path,
        help="exported model directory (`ruvdllm export --target webgpu`; default: SmolLM2-135M-Instruct, exported once)",
    )
    parser.add_argument(
        "--wasm-model",
        type=Path,
        help="the same model exported with --target wasm: what the page loads on WebAssembly "
        "(default: the default model's, exported once, when MODEL is not given; else none, and the "
        "page runs MODEL's graph there too)",
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


def models_to_serve(args: argparse.Namespace, default_model: Callable[..., Path]) -> tuple[Path, Path | None]:
    """(the model, its wasm variant or None). Without MODEL: the default model for WebGPU, and its
    wasm-target export for the page on WebAssembly, unless --wasm-model names another: the wasm
    target's float32 MatMuls run 5-6x faster there than the WebGPU graph's MatMulNBits, and
    WebAssembly is where a device without a hardware GPU runs (docs/web.md, "The wasm target")."""
    if args.model is not None:
        return args.model, args.wasm_model
    return default_model(DEFAULT_MODEL_TARGET), args.wasm_model or default_model(WASM_MODEL_TARGET)


def run(args: argparse.Namespace, default_model: Callable[..., Path]) -> int:
    """`default_model(target)` finds or exports the default model (ruvdllm.default_artifact, handed in
    by the command layer: runtime cannot reach the exporter)."""
    from runtime.server.command import bind

    if args.build_wheel:
        if args.build_wheel.exists() and not args.build_wheel.is_dir():
            raise RuvdllmError(f"--build-wheel {args.build_wheel}: a file, not a directory")
        print(build_wheel(args.build_wheel))
        return 0
    sock = bind(args.host, args.port)  # before the default model is exported: a taken port fails fast
    model, wasm_model = models_to_serve(args, default_model)
    site = build_site(args.web_dir or default_web_dir(), model, wasm_model_dir=wasm_model)
    server = make_server(site, args.host, args.port, quiet=not args.verbose, sock=sock)
    print(
        f"serving the browser client and {model} on {listening_at(*server.server_address[:2])}  (Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
