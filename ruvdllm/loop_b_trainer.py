"""Which trainer loop B uses for a model: first order (Adam through the model's torch reference)
where torch is installed and the reference can be built, otherwise SPSA through the runtime's own
forward (runtime/learning/trainer.py). Said to the user in one line.

Why here, in the command layer: the first-order trainer is torch and lives in the exporter
(ruvdllm_export/learning), which `runtime` must never import; `ruvdllm serve` and the learning
demonstration get it handed in, as they get `default_model`.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from ruvdllm.errors import RuvdllmError


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def trainer_for(model_dir: Path, config, say: Callable[[str], None] = _stderr):
    """Loop B's trainer for the model in `model_dir` under `config` (LoopBConfig): the first-order
    one, or None for loop B's default (SPSA). `config.trainer` "adam" makes a failure an error."""
    if config.trainer == "spsa":
        say("loop B trains MicroLoRAs by SPSA (learning config: loop_b.trainer = spsa)")
        return None
    forced = config.trainer == "adam"
    if importlib.util.find_spec("torch") is None:
        if forced:
            raise RuvdllmError("loop_b.trainer = adam needs torch: pip install 'ruvdllm[train]'")
        say("loop B trains MicroLoRAs by SPSA: torch is not installed (first order needs ruvdllm[train])")
        return None
    try:
        from ruvdllm_export.learning.microlora_trainer import AdamMicroTrainer
        from ruvdllm_export.learning.reference_model import reference_for_artifact, reference_sources

        # only whether the checkpoint and adapter are there: the reference itself (hundreds of MB,
        # seconds) is built when loop B first trains a cluster, and where that fails after all
        # (a file changed since the export) loop B falls back to SPSA then, saying why
        reference_sources(Path(model_dir))
    except (RuvdllmError, ImportError) as exc:
        if forced:
            raise RuvdllmError(f"loop_b.trainer = adam: no torch reference of the model ({exc})") from None
        say(f"loop B trains MicroLoRAs by SPSA: no torch reference of the model ({exc})")
        return None
    say(
        f"loop B trains MicroLoRAs by Adam through the model's torch reference ({config.adam_epochs:g} "
        f"epochs, at most {config.adam_steps} steps x {config.batch} blocks, lr {config.adam_lr:g}, "
        f"early stopping every {config.adam_eval_every} steps, patience {config.adam_patience}, "
        f"{config.threads} thread(s); the reference is built when a cluster first trains)"
    )
    return AdamMicroTrainer(
        functools.partial(reference_for_artifact, Path(model_dir)),
        config.adam_steps,
        config.adam_lr,
        config.batch,
        config.threads,
        config.adam_epochs,
        config.adam_eval_every,
        config.adam_patience,
    )
