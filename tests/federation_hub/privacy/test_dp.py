import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub.aggregate.lora import LoraPair, update_norm
from federation_hub.privacy.dp import clip_update, gaussian_noise


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100), st.floats(1e-3, 1e3))
def test_clipped_norm_is_at_most_c_and_direction_is_kept(seed, clip, scale):
    rng = np.random.default_rng(seed)
    pairs = {
        f"l{i}": LoraPair(a=rng.standard_normal((2, 5)), b=scale * rng.standard_normal((4, 2)))
        for i in range(3)
    }
    clipped, norm = clip_update(pairs, clip)
    assert update_norm(clipped) <= clip * (1 + 1e-6)
    assert np.isclose(norm, update_norm(pairs))
    if norm <= clip:
        assert clipped is pairs
    else:
        factor = clip / norm
        for name in pairs:
            np.testing.assert_allclose(
                clipped[name].product(), factor * pairs[name].product(), rtol=1e-5, atol=1e-8
            )


def test_noise_comes_from_the_generator_passed_in():
    a = gaussian_noise((50, 40), 2.0, np.random.default_rng(9))
    b = gaussian_noise((50, 40), 2.0, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert abs(a.std() - 2.0) < 0.1
