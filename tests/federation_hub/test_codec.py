"""Hub payloads in safetensors: contributions, releases and update bodies round-trip exactly, and
whatever does not fit the layout is refused by name."""

import numpy as np
import pytest

from federation_hub import codec, safetensors_io
from federation_hub.aggregate.lora import LoraPair
from federation_hub.errors import Invalid

RNG = np.random.default_rng(0)
PAIRS = {
    "layers.0.q_proj": LoraPair(
        RNG.standard_normal((4, 6)).astype(np.float32), RNG.standard_normal((5, 4)).astype(np.float32)
    ),
    "layers.1.v_proj": LoraPair(
        RNG.standard_normal((4, 6)).astype(np.float32), RNG.standard_normal((3, 4)).astype(np.float32)
    ),
}


def test_contribution_roundtrip_is_exact():
    blob = codec.encode_contribution("coarse", PAIRS, {"samples": 3})
    tg, back, metrics = codec.decode_contribution(blob)
    assert tg == "coarse" and metrics == {"samples": 3}
    for name, pair in PAIRS.items():
        np.testing.assert_array_equal(back[name].a, pair.a)
        np.testing.assert_array_equal(back[name].b, pair.b)


def test_float16_keeps_half_the_bytes_and_three_digits():
    f32 = codec.encode_contribution("coarse", PAIRS, {})
    f16 = codec.encode_contribution("coarse", PAIRS, {}, dtype=np.float16)
    _, back, _ = codec.decode_contribution(f16)
    data = sum(p.a.nbytes + p.b.nbytes for p in back.values())
    assert len(f32) - len(f16) == data  # each float16 factor takes half the bytes
    assert back["layers.0.q_proj"].a.dtype == np.float16
    np.testing.assert_allclose(back["layers.0.q_proj"].a, PAIRS["layers.0.q_proj"].a, rtol=1e-3, atol=1e-4)


def test_release_roundtrip_and_its_checks():
    blob = codec.encode_release("fine", PAIRS, {"layers.0.q_proj": 0.0, "layers.1.v_proj": 0.25})
    tg, back, residuals = codec.decode_release(blob)
    assert tg == "fine" and residuals["layers.1.v_proj"] == 0.25
    with pytest.raises(Invalid, match="residual per released linear"):
        codec.decode_release(codec.encode_release("fine", PAIRS, {"layers.0.q_proj": 0.0}))
    with pytest.raises(Invalid, match="not a number in"):
        codec.decode_release(
            codec.encode_release("fine", PAIRS, {"layers.0.q_proj": 0.0, "layers.1.v_proj": 2.0})
        )
    with pytest.raises(Invalid, match="no 'ruvdllm.release'"):
        codec.decode_release(codec.encode_contribution("fine", PAIRS, {}))


def tensors_of(pairs, tg="coarse"):
    return {f"{tg}/{n}/{p}": getattr(pair, p) for n, pair in pairs.items() for p in ("a", "b")}


META = {codec.UPDATE_KEY: '{"groups": {"coarse": {"metrics": {}}}}'}


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda t: t.pop("coarse/layers.0.q_proj/b"), "coarse/layers.0.q_proj/b is missing"),
        (lambda t: t.update({"coarse/layers.0.q_proj/c": np.ones((2, 2), np.float32)}), "is not named"),
        (lambda t: t.update({"Coarse/l/a": np.ones((2, 2), np.float32)}), "is not named"),
        (lambda t: t.update({"coarse/layers.0.q_proj/a": np.ones((4, 6))}), "F32 or F16, not float64"),
        (lambda t: t.update({"coarse/layers.0.q_proj/a": np.ones(24, np.float32)}), "2-D and non-empty"),
        (lambda t: t.update({"coarse/layers.0.q_proj/a": np.ones((0, 6), np.float32)}), "2-D and non-empty"),
        (
            lambda t: t.update({"coarse/layers.0.q_proj/a": np.ones((3, 6), np.float32)}),
            "A is rank 3 but B is rank 4",
        ),
        # all-float32 bodies are checked in one pass; the tensor at fault is still named
        (
            lambda t: t["coarse/layers.0.q_proj/a"].__setitem__((0, 0), np.nan),
            "q_proj/a: contains NaN or infinity",
        ),
        (
            lambda t: t["coarse/layers.0.q_proj/b"].__setitem__((0, 0), np.inf),
            "q_proj/b: contains NaN or infinity",
        ),
        (
            lambda t: t.update(
                {"coarse/layers.0.q_proj/b": np.full_like(t["coarse/layers.0.q_proj/b"], -np.inf)}
            ),
            "q_proj/b: contains NaN or infinity",
        ),
        (  # a float16 factor beside float32 ones: each is checked on its own
            lambda t: t.update(
                {"coarse/layers.0.q_proj/a": np.full(t["coarse/layers.0.q_proj/a"].shape, np.nan, np.float16)}
            ),
            "q_proj/a: contains NaN or infinity",
        ),
    ],
)
def test_damaged_contributions_are_refused_by_name(change, problem):
    tensors = {k: v.copy() for k, v in tensors_of(PAIRS).items()}
    change(tensors)
    with pytest.raises(Invalid, match=problem):
        codec.decode(safetensors_io.encode(tensors, META), "body")


@pytest.mark.parametrize(
    "metadata, problem",
    [
        ({}, "no 'ruvdllm.update'"),
        ({codec.UPDATE_KEY: "[1]"}, "not a JSON object"),
        ({codec.UPDATE_KEY: "{"}, "not strict JSON"),
    ],
)
def test_damaged_metadata_is_refused(metadata, problem):
    with pytest.raises(Invalid, match=problem):
        codec.decode(safetensors_io.encode(tensors_of(PAIRS), metadata), "body")
