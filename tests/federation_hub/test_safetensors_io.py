"""The strict safetensors reader: what the `safetensors` package writes it reads, what it writes
the package reads, and every lie a hostile file can tell is an `Invalid` naming it."""

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from federation_hub import safetensors_io
from federation_hub.errors import Invalid

ARRAYS = {
    "coarse/layers.0.q_proj/a": np.arange(12, dtype=np.float32).reshape(3, 4),
    "coarse/layers.0.q_proj/b": np.linspace(-1, 1, 10).astype(np.float16).reshape(5, 2),
    "fine/nonce": np.arange(12, dtype=np.uint8),
    "partial/dense": np.eye(3),
}


def raw(header: dict | bytes, data: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_the_package_reads_what_we_write():
    blob = safetensors_io.encode(ARRAYS, {"ruvdllm.update": '{"a": 1}'})
    theirs = st_load(blob)
    assert set(theirs) == set(ARRAYS)
    for name, array in ARRAYS.items():
        assert theirs[name].dtype == array.dtype
        np.testing.assert_array_equal(theirs[name], array)
    assert (8 + struct.unpack_from("<Q", blob)[0]) % 8 == 0  # data 8-byte aligned


def test_we_read_what_the_package_writes(tmp_path):
    blob = st_save(ARRAYS, metadata={"k": "v"})
    ours, metadata = safetensors_io.decode(blob)
    assert metadata == {"k": "v"}
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(ours[name], array)
        assert not ours[name].flags.writeable  # a view into the bytes, not a copy


@pytest.mark.parametrize(
    "blob, problem",
    [
        (b"\x01\x02", "shorter than a safetensors header"),
        (struct.pack("<Q", 2**40), "over the limit"),
        (struct.pack("<Q", 100) + b"{}", "runs past the end"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "not strict JSON"),
        (raw([1, 2]), "not a JSON object"),
        (raw(b'{"x": NaN}'), "not strict JSON"),
        (
            raw(
                b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "t": {"dtype": "F32"}}',
                b"\0" * 4,
            ),
            "duplicate key",
        ),
        (raw({"__metadata__": {"k": 1}}), "__metadata__"),
        (raw({"t": {"dtype": "F32", "shape": [2]}}), "exactly dtype, shape and data_offsets"),
        (
            raw({"t": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
            "unknown dtype 'I64'",
        ),
        (raw({"t": {"dtype": "F32", "shape": 5, "data_offsets": [0, 4]}}, b"\0" * 4), "shape must be"),
        (raw({"t": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, b"\0" * 8), "shape must be"),
        (raw({"t": {"dtype": "F32", "shape": [0, 10**30], "data_offsets": [0, 0]}}), "shape must be"),
        (raw({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "shape must be"),
        (raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8), "data_offsets must be"),
        (raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8), "end before"),
        (
            raw({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
            "lies about its size",
        ),
        (raw({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "ends at byte 16"),
        (
            raw(
                {
                    "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                b"\0" * 12,
            ),
            "overlaps",
        ),
        (raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "uncovered"),
        (
            raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9),
            "after the last tensor",
        ),
    ],
)
def test_lies_are_named(blob, problem):
    with pytest.raises(Invalid, match=problem):
        safetensors_io.decode(blob)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_damage_is_refused_or_read_never_crashes(data):
    """Flip, cut or splice bytes of a valid file: the reader answers Invalid or arrays that fit
    the bytes; it never raises anything else."""
    blob = bytearray(safetensors_io.encode(ARRAYS, {"m": "x"}))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(blob) - 1))
        if action == "flip":
            blob[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del blob[at : at + data.draw(st.integers(1, 16))]
        else:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not blob:
            break
    try:
        tensors, _ = safetensors_io.decode(bytes(blob))
    except Invalid:
        return
    assert sum(a.nbytes for a in tensors.values()) <= len(blob)
