"""The wasm target's weights: 4-bit (and 8-bit) blocks on disk, widened to float32 when the session
is created, outside the graph. CPython only (numpy); the browser's twin is web/js/widen.js.

Why outside the graph: onnxruntime-web's wasm MatMulNBits is 6-10x slower than a float32 MatMul of
the same shape (benchmarks/browser_ops.py), and widening by load-time nodes that onnxruntime folds
kept ~12 float copies of every weight alive during the folding (5.8 GB for SmolLM2; bad_alloc in the
browser). So the graph's linears are plain MatMuls over float32 initializers declared as external
data in a file that is never shipped (`<graph>.widened.f32`); what is shipped is the blocks file and
its index, and the runtime makes the float32 bytes before the session is created:

    <graph>.widened.json   index: per initializer its shape and where its blocks are
    <graph>.widened.bin    the blocks: codes, scales, zero points, block minimums (16-byte aligned)
        ──widen (numpy here, typed arrays in the browser)──►  <graph>.widened.f32 (in memory only)
        ──SessionOptions external initializers / onnxruntime-web externalData──►  MatMul(x, Wᵀ)

One block of 32 weights of row n (`bits` 4: two codes a byte, even k in the low nibble, as
MatMulNBits; `bits` 8: one code a byte):

    w = (code − zero) · scale (+ min)          every operation rounded to float32, in this order

which is what the embedding's quantized gather computes in the graph (onnx_graph/embedding.py), so
the widened weights are bit-identical to the previous load-time nodes' and to widen.js's. Each
initializer is Wᵀ [K, N], MatMul's B, row-major.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ruvdllm.errors import RuvdllmError

FORMAT = 1
INDEX_SUFFIX = ".widened.json"
BLOCKS_SUFFIX = ".widened.bin"
FLOATS_SUFFIX = ".widened.f32"  # the external data location the graph names; never on disk
BLOCK = 32
ALIGN = 16  # every array in the blocks file starts here: typed-array views need aligned offsets
ROWS_PER_CHUNK = 2048  # rows widened at once: bounds the temporaries to a few MB per chunk


def index_path(graph: Path) -> Path:
    return Path(graph).with_name(Path(graph).name + INDEX_SUFFIX)


def has_widened(graph: Path) -> bool:
    return index_path(graph).is_file()


def read_index(graph: Path) -> dict:
    path = index_path(graph)
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RuvdllmError(f"{path}: unreadable ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise RuvdllmError(f"{path}: not a widened-weights index of format {FORMAT}")
    return index


def _array(blob: memoryview, where: list | None, dtype) -> np.ndarray | None:
    if where is None:
        return None
    offset, length = where[0], where[1]
    return np.frombuffer(blob, dtype=dtype, count=length // np.dtype(dtype).itemsize, offset=offset)


def widen_tensor(entry: dict, blob, out: np.ndarray | None = None) -> np.ndarray:
    """One index entry's blocks (in `blob`, the blocks file's bytes) → Wᵀ float32 [K, N], written
    into `out` when given (a view of the in-memory external data file)."""
    n, k, nb, bits = entry["rows"], entry["cols"], entry["blocks"], entry["bits"]
    blob = memoryview(blob)
    codes = _array(blob, entry["codes"], np.uint8).reshape(n, nb, BLOCK * bits // 8)
    scales = _array(blob, entry["scales"], np.dtype(entry["scales"][2])).reshape(n, nb)
    zero_points = _array(blob, entry["zero_points"], np.uint8)
    if zero_points is not None:
        zero_points = zero_points.reshape(n, -(-nb // 2))
    mins = _array(blob, entry["mins"], np.float32)
    mins = None if mins is None else mins.reshape(n, nb)
    if out is None:
        out = np.empty((k, n), np.float32)
    for start in range(0, n, ROWS_PER_CHUNK):
        rows = slice(start, min(start + ROWS_PER_CHUNK, n))
        q = codes[rows]
        if bits == 4:  # low nibble first: element 2j of the block, then 2j + 1
            q = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(q.shape[0], nb, BLOCK)
        if zero_points is None:
            zero = np.float32(entry["zero"])
        else:
            zp = zero_points[rows]
            zero = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(zp.shape[0], -1)[:, :nb, None]
            zero = zero.astype(np.float32)
        w = (q.astype(np.float32) - zero) * scales[rows, :, None].astype(np.float32)
        if mins is not None:
            w += mins[rows, :, None]
        out[:, rows] = w.reshape(w.shape[0], nb * BLOCK)[:, :k].T
    return out


def widen_all(graph: Path) -> tuple[dict, np.ndarray]:
    """The whole in-memory external data file for `graph`: (index, float32 bytes as one array)."""
    index = read_index(graph)
    blocks_path = Path(graph).with_name(index["blocks"])
    try:
        blob = blocks_path.read_bytes()
    except OSError as exc:
        raise RuvdllmError(f"{blocks_path}: unreadable ({exc.strerror})") from None
    if len(blob) != index["blocks_bytes"]:
        raise RuvdllmError(f"{blocks_path}: {len(blob)} bytes, the index says {index['blocks_bytes']}")
    floats = np.empty(index["floats_bytes"] // 4, np.float32)
    for entry in index["tensors"]:
        start = entry["offset"] // 4
        view = floats[start : start + entry["rows"] * entry["cols"]].reshape(entry["cols"], entry["rows"])
        widen_tensor(entry, blob, out=view)
    return index, floats


def add_widened_initializers(options, graph: Path) -> list:
    """Give an onnxruntime SessionOptions the widened weights of `graph` (a no-op without an index),
    by initializer name, as views of one buffer: onnxruntime uses the memory as it is (no copy), so
    the returned OrtValues must outlive the session. (The browser hands the same bytes over as one
    in-memory file, externalData; onnxruntime's Python files-in-memory option would want every
    external file in memory, model.onnx.data too.)"""
    import onnxruntime as ort

    if not has_widened(graph):
        return []
    index, floats = widen_all(graph)
    names, values = [], []
    for entry in index["tensors"]:
        start = entry["offset"] // 4
        view = floats[start : start + entry["rows"] * entry["cols"]].reshape(entry["cols"], entry["rows"])
        names.append(entry["name"])
        values.append(ort.OrtValue.ortvalue_from_numpy(view))
    options.add_external_initializers(names, values)
    return values
