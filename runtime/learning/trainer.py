"""How loop B trains one cluster's MicroLoRA: the trainer protocol, and SPSA, the trainer that runs
wherever loop B runs.

Loop B hands a trainer a `TrainJob` — where the MicroLoRA starts, the cluster's training examples,
the bank and the timestep range it trains at — and installs what comes back only if the keep-or-
drop check on the real forward says it helps (loop_b.py, step 5). So a trainer is free to compute
its gradient however it can:

    SpsaTrainer          zeroth order: two forwards of the runtime's own graph per step (spsa.py);
                         numpy and the forward only, so it runs in Pyodide too. Trains b only.
    first order (torch)  backpropagation through the model's torch reference, where torch is
                         installed (ruvdllm_export/learning/microlora_trainer.py, wired in by the
                         command layer); trains a and b with Adam.

Numpy and the standard library (the browser's loop B uses this module).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from runtime.banks import Bank
from runtime.learning.masked_nll import NoisyBlock, masked_nll, noisy_block
from runtime.learning.microlora import MicroLora
from runtime.learning.spsa import spsa_minimise

Pair = tuple[Sequence[int], Sequence[int]]  # (context, target) tokens of one training example


@dataclass(frozen=True)
class TrainJob:
    """One cluster's training, as loop B asks for it."""

    micro: MicroLora  # where training starts: b = 0 (a new one) or a bank slot's (a warm start)
    # the cluster's training pairs: answers after their prompts, prompts after their first block
    # (loop_b.training_pairs); never its check examples
    examples: Sequence[Pair]
    bank: Bank  # the bank the forward mixes: TALoRA's groups at t, the MicroLoRA's slot at 1
    t_range: tuple[float, float]  # the cluster's timestep group: masks are drawn at t in it
    block_size: int  # the model's BD3LM block (the sampler's grid)
    mask_id: int
    rng: np.random.Generator  # masks (and SPSA's directions): same seed, same MicroLoRA
    should_stop: Callable[[], bool] = lambda: False  # between steps: loop B's stop / pause / duty
    # the cluster's check examples under masks of their own, for a trainer's early stopping; empty:
    # none. Never trained on; the keep-or-drop check judges the same sentences under other masks
    validation: Sequence[NoisyBlock] = ()


@dataclass
class TrainResult:
    micro: MicroLora  # the trained factors
    steps: int  # steps taken (fewer than asked when stopped)
    # training loss (mean masked NLL of the steps' own blocks) over the first and the last steps;
    # nan where the trainer does not see it (SPSA sees only perturbed losses)
    loss_first: float = math.nan
    loss_last: float = math.nan
    notes: list[str] = field(default_factory=list)


class TrainerUnavailable(Exception):
    """A trainer cannot train here after all (the first-order one: its torch reference failed to
    build when first needed). Loop B falls back to SPSA and says why, unless the config asked for
    that trainer by name."""


class MicroTrainer(Protocol):
    name: str  # "spsa", "adam (torch)": printed in loop B's report

    def train(self, job: TrainJob) -> TrainResult: ...


def epoch_steps(examples: Sequence[Pair], block_size: int, batch: int, epochs: float, cap: int) -> int:
    """Steps of `batch` blocks that draw `epochs` times as many blocks as the examples' targets hold
    (masked_nll.py's grid: a started block counts), at least 1, at most `cap`."""
    blocks = sum(max(1, -(-len(target) // block_size)) for _, target in examples)
    wanted = epochs * blocks / batch  # epochs = inf: the cap
    return cap if wanted >= cap else max(1, math.ceil(wanted))


def training_blocks(
    examples: Sequence[Pair], n: int, block_size: int, t_range: tuple[float, float], rng: np.random.Generator
) -> list[NoisyBlock]:
    """`n` examples drawn with replacement, each as one noisy block under fresh masks."""
    picks = rng.integers(len(examples), size=n)
    return [noisy_block(*examples[i], block_size, t_range, rng) for i in picks]


class SpsaTrainer:
    """SPSA on the b factors through the runtime's forward (`session.forward(chunk, slot, factors)`,
    logits_session.py): `steps` steps of `batch` blocks each, two forwards per block and step."""

    name = "spsa"

    def __init__(self, session, steps: int, batch: int, lr: float, epsilon: float):
        self.session = session
        self.steps, self.batch, self.lr, self.epsilon = steps, batch, lr, epsilon

    def train(self, job: TrainJob) -> TrainResult:
        bank, micro, slot = job.bank, job.micro, job.micro.slot
        talora = bank.talora_config()

        def loss(vector: np.ndarray, data: list[NoisyBlock]) -> float:
            factors = micro.with_b(vector).to_bank(bank.layers, bank.rank)
            forward = lambda chunk: self.session.forward(chunk, slot, factors)  # noqa: E731
            return masked_nll(forward, data, job.mask_id, bank.slots, bank.groups, talora, slot)

        def loss_at(step: int):  # fresh masks per step, the same for both of its evaluations
            data = training_blocks(job.examples, self.batch, job.block_size, job.t_range, job.rng)
            return lambda vector: loss(vector, data)

        theta, steps = spsa_minimise(
            loss_at, micro.b_vector(), self.steps, job.rng, self.epsilon, self.lr, job.should_stop
        )
        return TrainResult(micro.with_b(theta), steps)
