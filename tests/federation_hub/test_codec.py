import numpy as np
import pytest

from federation_hub.aggregate.lora import LoraPair
from federation_hub.codec import decode_contribution, encode_contribution
from ruvdllm.errors import RuvdllmError


def test_roundtrip_is_exact():
    rng = np.random.default_rng(0)
    pairs = {
        "layers.0.q_proj": LoraPair(
            rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
        )
    }
    blob = encode_contribution(pairs, {"samples": 3})
    back, metrics = decode_contribution(blob)
    assert metrics == {"samples": 3}
    np.testing.assert_array_equal(back["layers.0.q_proj"].a, pairs["layers.0.q_proj"].a)
    np.testing.assert_array_equal(back["layers.0.q_proj"].b, pairs["layers.0.q_proj"].b)


@pytest.mark.parametrize(
    "mangle", [lambda b: b[:-4], lambda b: b + b"\0\0\0\0", lambda b: b"XXXX" + b[4:], lambda b: b[:10]]
)
def test_damaged_payloads_are_refused(mangle):
    pairs = {"l": LoraPair(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))}
    with pytest.raises(RuvdllmError):
        decode_contribution(mangle(encode_contribution(pairs, {})))
