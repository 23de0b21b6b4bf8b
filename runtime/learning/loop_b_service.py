"""Loop B wired to running models (CPython): the learnt bank installed in them, loop B reading loop
A's store on its writer thread, and started in the background for `ruvdllm serve` when the
learning config turns it on (docs/learning.md, "Loop B").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runtime.banks import Bank
from runtime.learning.config import LoopBConfig
from runtime.learning.loop_b import LoopB
from runtime.learning.store import warn


def install_bank(model, bank: Bank, bank_dir: Path) -> None:
    """Let `model` (runtime.model.DiffusionModel) sample with `bank` from its next generation on:
    the index is built first, then swapped in under the model's lock (between generations)."""
    index = bank.build_index(bank_dir)
    with model.lock:
        if model.backend is not None:
            model.backend.set_bank(bank)
        model.bank, model.index, model.bank_dir = bank, index, Path(bank_dir)
        if model.scores is not None:  # loop A's usefulness scores: the new keys start at 0
            model.scores.patterns = len(bank.pattern_slots)


def for_model(
    models,
    config: LoopBConfig,
    read_good: Callable[[int, float, int], list],
    on_warning: Callable[[str], None] = warn,
) -> LoopB:
    """Loop B for a model opened on CPython, or for the replicas of one (a server's, all on the
    same directory): its learnt bank (created from the model's own bank the first time) is
    installed in them now and after every run that changes it. Attach loop A after this, so that
    its scores are the learnt bank's."""
    from runtime.artifact import GRAPH_NAME
    from runtime.learning.logits_session import LogitsSession

    models = list(models) if isinstance(models, (list, tuple)) else [models]
    first = models[0]
    bank_dir = config.bank_path(Path(first.directory).name)
    source = first.bank or Bank.for_model(first.config, getattr(first.backend, "adapter_shapes", None))
    bank = LoopB.prepare_bank(bank_dir, source)

    def install_everywhere(new: Bank, directory: Path) -> None:
        for model in models:
            install_bank(model, new, directory)

    install_everywhere(bank, bank_dir)
    session = LogitsSession(Path(first.directory) / GRAPH_NAME, first.config)
    return LoopB(
        config,
        bank_dir,
        first.config,
        first.encode,
        read_good,
        session,
        on_bank=install_everywhere,
        on_warning=on_warning,
    )


def background(config_path, models, loop_a, on_warning: Callable[[str], None] = warn) -> LoopB | None:
    """Loop B started on a daemon thread when the learning config turns it on (and loop A, whose
    store it reads, is on); None otherwise. For `ruvdllm serve`."""
    from runtime.learning.config import load_learning_config

    config = load_learning_config(config_path).loop_b
    if not config.enabled or loop_a is None:
        return None

    def read_good(after: int, threshold: float, limit: int) -> list:
        # on loop A's writer thread, which owns the store's connection
        return loop_a.recorder.call(lambda store: store.good_feedback(after, threshold, limit))

    loop = for_model(models, config, read_good, on_warning)
    loop.start()
    return loop
