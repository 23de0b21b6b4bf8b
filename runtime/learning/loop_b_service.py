"""Loop B wired to running models (CPython): the learnt bank installed in them, loop B reading loop
A's store on its writer thread, and started in the background for `ruvdllm serve` when the
learning config turns it on (docs/learning.md, "Loop B"); loop C, when on, runs on the same thread
after a loop B run once its interval has passed ("Loop C").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runtime.banks import Bank
from runtime.learning.config import LoopBConfig, LoopCConfig
from runtime.learning.loop_b import LoopB
from runtime.learning.loop_c_service import consolidation
from runtime.learning.store import warn
from runtime.learning.trainer import MicroTrainer

# (model directory, loop B's config) -> a MicroLoRA trainer, or None for SPSA
TrainerFor = Callable[[Path, LoopBConfig], MicroTrainer | None]


def install_bank(model, bank: Bank, bank_dir: Path) -> None:
    """Let `model` (runtime.model.DiffusionModel) sample with `bank` from its next generation on
    (DiffusionModel.use_bank: swapped in under the model's lock, between generations)."""
    model.use_bank(bank, Path(bank_dir))


def for_model(
    models,
    config: LoopBConfig,
    read_good: Callable[[int, float, int], list],
    on_warning: Callable[[str], None] = warn,
    loop_c: LoopCConfig | None = None,
    trainer_for: TrainerFor | None = None,
) -> LoopB:
    """Loop B for a model opened on CPython, or for the replicas of one (a server's, all on the
    same directory): its learnt bank (created from the model's own bank the first time) is
    installed in them now and after every run that changes it. Attach loop A after this, so that
    its scores are the learnt bank's. `trainer_for(model directory, config)`: the MicroLoRA
    trainer (the command layer's ruvdllm.loop_b_trainer.trainer_for), None: SPSA."""
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
    after_run = None
    if loop_c is not None and loop_c.enabled:
        after_run = consolidation(loop_c, config, bank_dir, first, session, read_good, install_everywhere)
    return LoopB(
        config,
        bank_dir,
        first.config,
        first.encode,
        read_good,
        session,
        on_bank=install_everywhere,
        on_warning=on_warning,
        after_run=after_run,
        trainer=trainer_for(Path(first.directory), config) if trainer_for is not None else None,
    )


def background(
    config_path,
    models,
    loop_a,
    on_warning: Callable[[str], None] = warn,
    trainer_for: TrainerFor | None = None,
) -> LoopB | None:
    """Loop B started on a daemon thread when the learning config turns it on (and loop A, whose
    store it reads, is on); None otherwise. For `ruvdllm serve` (`trainer_for` as in for_model)."""
    from runtime.learning.config import load_learning_config

    learning = load_learning_config(config_path)
    config = learning.loop_b
    if not config.enabled or loop_a is None:
        return None

    def read_good(after: int, threshold: float, limit: int) -> list:
        # on loop A's writer thread, which owns the store's connection
        return loop_a.recorder.call(lambda store: store.good_feedback(after, threshold, limit))

    loop = for_model(models, config, read_good, on_warning, loop_c=learning.loop_c, trainer_for=trainer_for)
    loop.start()
    return loop
