"""Loop C wired to a model (CPython): after loop B on its background thread in `ruvdllm serve`
(`consolidation`), or once from a model directory and the learning config (`consolidate_bank`, for
`ruvdllm learn consolidate` and scripts). The run itself is runtime/learning/consolidate.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from runtime.banks import Bank
from runtime.learning.config import LearningConfig, LoopBConfig, LoopCConfig
from runtime.learning.consolidate import ConsolidationReport, Example, consolidate, good_examples


def consolidation(
    loop_c: LoopCConfig,
    loop_b: LoopBConfig,
    bank_dir: Path,
    model,
    session,
    read_good: Callable[[int, float, int], list],
    on_bank: Callable[[Bank, Path], None],
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], ConsolidationReport | None]:
    """Loop C for loop B's thread: after a loop B run, a consolidation when `interval` seconds have
    passed since the last one (the first after one interval), on loop B's session and store reader."""
    last = [clock()]

    def maybe() -> ConsolidationReport | None:
        if clock() - last[0] < loop_c.interval:
            return None
        last[0] = clock()
        return consolidate_now(loop_c, loop_b, bank_dir, model, session, read_good, on_bank)

    return maybe


def consolidate_now(
    loop_c: LoopCConfig,
    loop_b: LoopBConfig,
    bank_dir: Path,
    model,
    session,
    read_good: Callable[[int, float, int], list],
    on_bank: Callable[[Bank, Path], None] | None = None,
) -> ConsolidationReport:
    """One run of loop C on `bank_dir` now, its Fisher measured on the good answers loop B selects
    (`read_good` returning no rows: no Fisher measured, the carried one kept)."""
    bank = Bank.load(bank_dir)
    examples = good_examples(read_good, model.encode, bank, loop_b.threshold, loop_b.max_trajectories)
    config = model.config
    return consolidate(
        bank_dir, loop_c, session, config.mask_token_id, config.block_size, examples, on_bank=on_bank
    )


def consolidate_bank(
    bank_dir: Path, model_dir: Path, learning: LearningConfig | None = None
) -> ConsolidationReport:
    """Loop C on `bank_dir` for the model in `model_dir`, its Fisher measured on the good answers in
    loop A's store (CPython: the model's graph through onnxruntime, the store through SQLite)."""
    from runtime.artifact import GRAPH_NAME
    from runtime.cpython_model import open_model
    from runtime.learning.logits_session import LogitsSession
    from runtime.learning.sqlite_store import SqliteStore

    learning = learning or LearningConfig()
    model = open_model(model_dir, bank=bank_dir, verify="sizes")
    session = LogitsSession(Path(model_dir) / GRAPH_NAME, model.config)
    examples: dict[int, list[Example]] = {}
    store_path = learning.loop_a.store_path()
    if store_path.is_file():
        store = SqliteStore(store_path)
        try:
            b = learning.loop_b
            examples = good_examples(
                store.good_feedback, model.encode, model.bank, b.threshold, b.max_trajectories
            )
        finally:
            store.close()
    return consolidate(
        bank_dir, learning.loop_c, session, model.config.mask_token_id, model.config.block_size, examples
    )
