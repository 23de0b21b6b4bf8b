"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by the fuzzing test and benchmark): the
safetensors update body gets a generator of its own — updates that fit the fuzzing rounds, some
left whole and most damaged (bytes flipped, cut, spliced; header lengths, shapes, dtypes and
offsets rewritten) — since schemathesis alone would only send random bytes, which stop at the
header length."""

import numpy as np
import schemathesis
from hypothesis import strategies as st

from federation_hub import codec
from federation_hub.aggregate.lora import LoraPair
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import SMALL_SHAPES

LIES = [
    (b'"dtype":"F32"', b'"dtype":"I64"'),
    (b'"dtype":"F32"', b'"dtype":"F16"'),
    (b'"shape":[4,16]', b'"shape":[4,17]'),
    (b'"shape":[4,16]', b'"shape":[0,1000000000000000000000000000000]'),
    (b'"data_offsets":[0,', b'"data_offsets":[8,'),
    (b'"coarse/layers.0.q_proj/b"', b'"coarse/layers.0.q_proj/a"'),
    (b'"tier\\":\\"tenant\\"', b'"tier\\":\\"private\\"'),
    (b'"samples\\":', b'"samples\\":-'),
]


@st.composite
def safetensors_updates(draw) -> bytes:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 0.1, 10.0, 1e5]))
    groups = {
        "coarse": {
            name: LoraPair(
                (rng.standard_normal((s["rank"], s["in_features"])) * scale).astype(np.float32),
                (rng.standard_normal((s["out_features"], s["rank"])) * scale).astype(np.float32),
            )
            for name, s in SMALL_SHAPES.items()
        }
    }
    header = {
        "update_id": f"fuzz-{seed}",
        "tier": draw(st.sampled_from([Tier.TENANT.value, Tier.PUBLIC.value])),
        "consent": {"granted": draw(st.booleans()), "policy": "v1"},
        "groups": {
            "coarse": {"metrics": {"perplexity_before": 20.0, "perplexity_after": 18.0, "samples": 5}}
        },
    }
    blob = bytearray(codec.encode(groups, header, dtype=draw(st.sampled_from([np.float32, np.float16]))))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["lie", "flip", "cut", "splice", "length"]))
        if action == "lie":
            old, new = draw(st.sampled_from(LIES))
            blob = bytearray(bytes(blob).replace(old, new, 1))
        elif action == "length":
            blob[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
        elif blob:
            at = draw(st.integers(0, len(blob) - 1))
            if action == "flip":
                blob[at] = draw(st.integers(0, 255))
            elif action == "cut":
                del blob[at : at + draw(st.integers(1, 512))]
            else:
                blob[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(blob)


schemathesis.openapi.media_type(codec.MEDIA_TYPE, safetensors_updates())
