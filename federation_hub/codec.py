"""Binary form of one contribution (a timestep group's LoRA deltas and its metrics), used for
storage and as the plaintext of sealed group payloads. JSON + base64 is the wire format
(schemas.py); this is the compact form behind it:

    b"RVH1" | uint32 LE header length | header (UTF-8 JSON) | float32 LE data

    header = {"metrics": {...}, "tensors": [[linear name, "a" | "b", [rows, cols]], ...]}

Tensors follow in header order, each row-major. Decoding validates every length and shape and
never unpickles anything.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from federation_hub.aggregate.lora import LoraPair
from ruvdllm.errors import RuvdllmError

MAGIC = b"RVH1"
_LEN = struct.Struct("<I")


def encode_contribution(pairs: dict[str, LoraPair], metrics: dict) -> bytes:
    tensors, chunks = [], []
    for name in sorted(pairs):
        for part in ("a", "b"):
            array = np.ascontiguousarray(getattr(pairs[name], part), dtype="<f4")
            tensors.append([name, part, list(array.shape)])
            chunks.append(array.tobytes())
    header = json.dumps({"metrics": metrics, "tensors": tensors}, sort_keys=True).encode()
    return b"".join([MAGIC, _LEN.pack(len(header)), header, *chunks])


def decode_contribution(blob: bytes, what: str = "contribution") -> tuple[dict[str, LoraPair], dict]:
    """Inverse of encode_contribution; arrays are read-only views into `blob`."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise RuvdllmError(f"{what}: not a RVH1 payload")
    (header_len,) = _LEN.unpack_from(blob, 4)
    try:
        header = json.loads(blob[8 : 8 + header_len])
        tensors = header["tensors"]
        metrics = header["metrics"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RuvdllmError(f"{what}: unreadable header ({exc})") from None
    offset = 8 + header_len
    parts: dict[str, dict[str, np.ndarray]] = {}
    for entry in tensors:
        name, part, shape = entry
        count = int(np.prod(shape))
        end = offset + 4 * count
        if part not in ("a", "b") or len(shape) != 2 or end > len(blob):
            raise RuvdllmError(f"{what}: tensor {name}.{part} is malformed or truncated")
        parts.setdefault(name, {})[part] = np.frombuffer(
            blob, dtype="<f4", count=count, offset=offset
        ).reshape(shape)
        offset = end
    if offset != len(blob):
        raise RuvdllmError(f"{what}: {len(blob) - offset} trailing bytes")
    pairs = {}
    for name, ab in parts.items():
        if set(ab) != {"a", "b"} or ab["a"].shape[0] != ab["b"].shape[1]:
            raise RuvdllmError(f"{what}: {name} needs A [rank, in] and B [out, rank] of one rank")
        pairs[name] = LoraPair(a=ab["a"], b=ab["b"])
    return pairs, metrics
