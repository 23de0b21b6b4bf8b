import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.talora import Router, TaloraConfig, group_of, talora_weights
from ruvdllm.errors import RuvdllmError

ts = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
configs = st.sampled_from(
    [
        TaloraConfig(interpolation="discrete"),
        TaloraConfig(interpolation="linear", width=0.1),
        TaloraConfig(interpolation="linear", width=1 / 3),
        TaloraConfig(interpolation="soft", temperature=0.05),
        TaloraConfig(boundaries=(0.0, 0.2, 1.0), interpolation="soft", temperature=0.5),
        TaloraConfig(
            interpolation="learned",
            router=Router(((1.0, 0.0, 2.0), (0.0, 1.0, 0.0), (-1.0, 0.0, -2.0)), (0.0, 0.1, 0.0)),
        ),
    ]
)


@given(config=configs, t=ts)
def test_weights_sum_to_one(config, t):
    weights = talora_weights(t, config)
    assert len(weights) == config.groups
    assert math.isclose(sum(weights), 1.0, rel_tol=1e-9)
    assert all(w >= 0.0 for w in weights)


@given(
    config=st.sampled_from(
        [
            TaloraConfig(interpolation="linear", width=0.1),
            TaloraConfig(interpolation="soft", temperature=0.05),
        ]
    ),
    t=ts,
    dt=st.floats(0.0, 1e-4),
)
def test_linear_and_soft_are_continuous(config, t, dt):
    u = min(t + dt, 1.0)
    a, b = talora_weights(t, config), talora_weights(u, config)
    # Lipschitz: linear ramps at slope 1/width, soft at most 1/(2 temperature) per group.
    bound = (u - t) * max(1 / 0.1, 1 / 0.05) + 1e-12
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= bound


def test_discrete_groups_and_endpoints():
    config = TaloraConfig(interpolation="discrete")
    assert talora_weights(0.0, config) == [1.0, 0.0, 0.0]
    assert talora_weights(0.5, config) == [0.0, 1.0, 0.0]
    assert talora_weights(1.0, config) == [0.0, 0.0, 1.0]
    assert group_of(1 / 3, config.boundaries) == 1


def test_linear_blends_only_near_boundaries():
    config = TaloraConfig(interpolation="linear", width=0.1)
    assert talora_weights(0.2, config) == [1.0, 0.0, 0.0]
    assert talora_weights(1 / 3, config) == pytest.approx([0.5, 0.5, 0.0])
    assert talora_weights(1 / 3 + 0.025, config) == pytest.approx([0.25, 0.75, 0.0])


def test_learned_router_prefers_its_group():
    router = Router(((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), (0.0, 0.0, -5.0)), (0.0, 0.0, 0.0))
    config = TaloraConfig(interpolation="learned", router=router)
    assert max(range(3), key=lambda g: talora_weights(0.0, config)[g]) == 0  # cos(0) = 1
    assert max(range(3), key=lambda g: talora_weights(1.0, config)[g]) == 2  # cos(pi) = -1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"boundaries": (0.0, 0.5, 0.4, 1.0)}, "rise strictly"),
        ({"interpolation": "cubic"}, "unknown"),
        ({"interpolation": "linear", "width": 0.5}, "transition width"),
        ({"interpolation": "soft", "temperature": 0.0}, "temperature"),
        ({"interpolation": "learned"}, "no router"),
    ],
)
def test_bad_configs(kwargs, message):
    with pytest.raises(RuvdllmError, match=message):
        TaloraConfig(**kwargs)
