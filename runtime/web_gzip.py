"""gzip bodies for `ruvdllm web`: what a browser downloads shrinks by a third for the client
(onnxruntime-web's and Pyodide's wasm compress ~4×) and by ~18% for the default model (its 4-bit
weights and 8-bit token table still compress, the tokenizer.json 5×).

Small files are compressed on their first request. Large ones (the model's weights) take seconds,
so they are compressed in a background thread — started when the server starts — and served
uncompressed until their gzip body is ready: compression never delays a response. Bodies are kept
in memory, one per file, and dropped when the file changes (size or mtime).
"""

from __future__ import annotations

import gzip
import os
import threading
import time
from pathlib import Path

COMPRESSIBLE = {".js", ".mjs", ".wasm", ".json", ".css", ".html", ".svg", ".onnx", ".data", ".map", ".txt"}
SYNC_LIMIT = 8 << 20  # bytes: compressed on request below this (tens of ms), in the background above
LEVEL = 6  # zlib's default: within a few % of level 9 at a fraction of the time
BACKGROUND_LEVEL = 3  # for the large weights: nearly level 6's ratio, about twice as fast


def _key(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns


class GzipCache:
    def __init__(self, sync_limit: int = SYNC_LIMIT):
        self.sync_limit = sync_limit
        self._bodies: dict[str, tuple[tuple[int, int], bytes]] = {}  # path -> (size/mtime key, body)
        self._pending: set[tuple[str, tuple[int, int]]] = set()
        self._lock = threading.Lock()

    def body(self, path: Path, stat: os.stat_result) -> bytes | None:
        """The gzip body of `path` as it is now, or None (not compressible, or not ready yet)."""
        if path.suffix not in COMPRESSIBLE:
            return None
        key = _key(stat)
        with self._lock:
            cached = self._bodies.get(str(path))
        if cached is not None and cached[0] == key:
            return cached[1]
        if stat.st_size <= self.sync_limit:
            return self._compress(path, key, LEVEL)
        self.prepare(path)
        return None

    def prepare(self, path: Path) -> None:
        """Start compressing a large file in the background (once per version of it)."""
        try:
            stat = path.stat()
        except OSError:
            return
        if path.suffix not in COMPRESSIBLE or stat.st_size <= self.sync_limit:
            return
        job = (str(path), _key(stat))
        with self._lock:
            cached = self._bodies.get(job[0])
            if job in self._pending or (cached is not None and cached[0] == job[1]):
                return
            self._pending.add(job)

        def work():
            try:
                self._compress(path, job[1], BACKGROUND_LEVEL)
            finally:
                with self._lock:
                    self._pending.discard(job)

        threading.Thread(target=work, name=f"gzip {path.name}", daemon=True).start()

    def wait(self, timeout: float) -> bool:
        """Block until no background compression is running (benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.05)
        return False

    def prepare_tree(self, directory: Path) -> None:
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                self.prepare(path)

    def _compress(self, path: Path, key: tuple[int, int], level: int) -> bytes | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if (len(data), path.stat().st_mtime_ns) != key:
            return None  # changed while we read it: the next request tries again
        body = gzip.compress(data, compresslevel=level, mtime=0)
        with self._lock:
            self._bodies[str(path)] = (key, body)
        return body
