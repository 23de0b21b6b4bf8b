import math

import pytest

from runtime.backend import StepOutput
from runtime.control import AdapterControl
from runtime.dgr import DgrConfig
from runtime.index import ExactIndex
from runtime.talora import TaloraConfig


def uncertain_output(n, hidden=4):
    """Every row: two equally likely candidates out of a vocabulary of 8 (gap score 1)."""
    return StepOutput(
        topk_ids=[[1, 2]] * n,
        topk_logits=[[math.log(0.5), math.log(0.5)]] * n,
        logsumexp=[0.0] * n,
        entropy=[math.log(2)] * n,
        query=lambda r: [1.0 if i == r % hidden else 0.0 for i in range(hidden)],
    )


def test_rows_without_adapters_are_zero():
    control = AdapterControl(slots=5, groups=3, vocab_size=8)
    rows = control.rows(2, 3, 0.7)
    assert rows == [[0.0] * 5] * 5


def test_dgr_fills_its_slots_for_retrieved_positions_only():
    index = ExactIndex(4)
    index.add([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], [3, 4, 3])
    config = DgrConfig(strategy="confidence-gap", threshold=0.5, budget=2)
    control = AdapterControl(5, 3, 8, TaloraConfig(interpolation="discrete"), config, index)
    retrieved = control.after_step(uncertain_output(4), [0, 1, 3], 1.0, 0)
    assert retrieved == [0, 1]  # budget 2, ties by position
    rows = control.rows(1, 4, 0.5)
    assert rows[0] == [1.0, 0.0, 0.0, 0.0, 0.0]  # the committed row: t = 0
    assert rows[1][:3] == [0.0, 1.0, 0.0] and rows[1][3] > 0.99  # position 0 matched slot 3
    assert rows[2][4] > 0.99  # position 1 matched slot 4
    assert rows[3][3:] == [0.0, 0.0] and rows[4][3:] == [0.0, 0.0]
    control.start_span()
    assert control.rows(0, 2, 0.5)[0][3:] == [0.0, 0.0]


def test_dgr_is_off_without_patterns_or_slots():
    assert AdapterControl(5, 3, 8, None, DgrConfig(), ExactIndex(4)).dgr is None
    index = ExactIndex(4)
    index.add([[1, 0, 0, 0]], [3])
    assert AdapterControl(3, 3, 8, None, DgrConfig(), index).dgr is None
    with pytest.raises(ValueError, match="groups"):
        AdapterControl(5, 2, 8, TaloraConfig(), None, None)


def test_adaptive_threshold_moves():
    index = ExactIndex(4)
    index.add([[1, 0, 0, 0]], [3])
    control = AdapterControl(5, 3, 8, None, DgrConfig(strategy="adaptive", threshold=0.5, budget=10), index)
    control.after_step(uncertain_output(4), [0, 1, 2, 3], 1.0, 0)
    assert control.theta > 0.5  # retrieved everything: above the 25% target
    control.start()
    assert control.theta == 0.5
