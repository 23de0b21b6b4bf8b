"""The safetensors container, read strictly and written plainly (numpy only).

    uint64 LE n | header: n bytes of UTF-8 JSON | data
    header = {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [...],
              "data_offsets": [begin, end]}, ...}             offsets relative to the data

The hub reads this from anyone (devices' update bodies, peers' releases), so the reader trusts
nothing and names what is wrong: a header past its limit or past the end, JSON that is not strict
(strict_json.py: NaN, duplicate names), an unknown dtype, a shape or offsets that disagree about a
tensor's size ("lies about its size"), data that tensors overlap or leave uncovered. It never
unpickles, never copies: arrays are read-only views into the bytes. The `safetensors` package
reads what this writes and the other way round (tests/federation_hub/test_safetensors_io.py).
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from federation_hub import strict_json
from federation_hub.errors import Invalid

DTYPES = {  # what the hub's payloads use; anything else is refused by name
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "U8": np.dtype("u1"),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 16 * 2**20  # 16 groups × 4096 linears × 2 factors at ~100 bytes each, with room
_LENGTH = struct.Struct("<Q")
_ALIGN = 8  # the header is padded with spaces so the data starts 8-byte aligned


def encode(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Tensors in the order given, each C-contiguous little-endian."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = NAMES.get(array.dtype.newbyteorder("<"))
        if dtype is None:
            raise ValueError(f"tensor {name}: dtype {array.dtype} has no safetensors name here")
        data = array.astype(DTYPES[dtype], copy=False).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + _LENGTH.size) % _ALIGN)
    return b"".join([_LENGTH.pack(len(text)), text, *chunks])


def decode(
    blob: bytes, what: str = "safetensors", max_header: int = MAX_HEADER_BYTES
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors in header order, metadata); `Invalid` naming the first problem found."""
    if len(blob) < _LENGTH.size:
        raise Invalid(f"{what}: {len(blob)} bytes, shorter than a safetensors header length")
    (length,) = _LENGTH.unpack_from(blob, 0)
    if length > max_header:
        raise Invalid(f"{what}: header of {length} bytes, over the limit of {max_header}")
    start = _LENGTH.size + length
    if start > len(blob):
        raise Invalid(f"{what}: header of {length} bytes runs past the end ({len(blob)} bytes)")
    try:
        header = strict_json.loads(blob[_LENGTH.size : start])
    except json.JSONDecodeError as exc:
        raise Invalid(f"{what}: header is not strict JSON ({exc.msg})") from None
    if not isinstance(header, dict):
        raise Invalid(f"{what}: header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise Invalid(f"{what}: __metadata__ must map names to strings")
    size = len(blob) - start
    spans, tensors = [], {}
    for name, info in header.items():
        dtype, shape, begin, end = _entry(what, name, info)
        needed = math.prod(shape) * dtype.itemsize
        if end - begin != needed:
            raise Invalid(
                f"{what}: tensor {_short(name)} lies about its size: shape {shape} of {NAMES[dtype]} "
                f"is {needed} bytes, its offsets span {end - begin}"
            )
        if end > size:
            raise Invalid(f"{what}: tensor {_short(name)} ends at byte {end} of {size} bytes of data")
        spans.append((begin, end, name))
        tensors[name] = (dtype, shape, begin)
    covered = 0
    for begin, end, name in sorted(spans):
        if begin != covered:
            problem = "overlaps another" if begin < covered else f"leaves bytes {covered}..{begin} uncovered"
            raise Invalid(f"{what}: tensor {_short(name)} {problem} (the data must be tensors, end to end)")
        covered = end
    if covered != size:
        raise Invalid(f"{what}: {size - covered} bytes of data after the last tensor")
    arrays = {
        name: np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=start + begin).reshape(shape)
        for name, (dtype, shape, begin) in tensors.items()
    }
    return arrays, metadata


_KEYS = {"dtype", "shape", "data_offsets"}


def _entry(what: str, name: str, info) -> tuple[np.dtype, list[int], int, int]:
    if type(info) is not dict or info.keys() != _KEYS:
        raise Invalid(f"{what}: tensor {_short(name)}: needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if type(dtype) is not str or dtype not in DTYPES:
        raise Invalid(
            f"{what}: tensor {_short(name)}: unknown dtype {str(dtype)[:16]!r} (the hub reads {', '.join(DTYPES)})"
        )
    if type(shape) is not list or len(shape) > 8 or not _counts(shape):
        raise Invalid(
            f"{what}: tensor {_short(name)}: shape must be a list of at most 8 non-negative integers"
        )
    if type(offsets) is not list or len(offsets) != 2 or not _counts(offsets):
        raise Invalid(
            f"{what}: tensor {_short(name)}: data_offsets must be [begin, end], non-negative integers"
        )
    begin, end = offsets
    if begin > end:
        raise Invalid(f"{what}: tensor {_short(name)}: data_offsets end before they begin")
    return DTYPES[dtype], shape, begin, end


def _counts(values: list) -> bool:
    """Non-negative integers below 2^53 (not booleans, which JSON keeps apart anyway)."""
    for value in values:  # a loop, not all(genexpr): this runs for every tensor of every body
        if type(value) is not int or not 0 <= value < 2**53:
            return False
    return True


def _short(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:79] + "…")
