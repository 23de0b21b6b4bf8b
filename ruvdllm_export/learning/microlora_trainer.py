"""Loop B's first-order MicroLoRA trainer: Adam on both factors, the gradient backpropagated
through the model's torch reference (reference_model.py), for a loop B that runs where torch is.

SPSA (runtime/learning/spsa.py) estimates a gradient from two forwards along one random direction;
its variance grows with the parameter count, so on the default model a few hundred steps barely
move the loss (docs/learning.md). Backpropagation gives the exact gradient of the same loss for
about three forwards' cost, so both factors train (a as well as b), and Adam takes it from there.

The loss is loop B's own, laid out by the same code (runtime/learning/masked_nll.py): one noisy
block of a training example per forward, its context clean with TALoRA at t = 0, its rows with
TALoRA at t and the MicroLoRA's slot at weight 1; the mean NLL of the masked positions. The
gradient comes from the float reference while loop B's keep-or-drop check runs the real ONNX
forward (runtime/learning/loop_b.py): the two differ by the graph's int8 activations at the cpu
default, and nothing the check finds worse there is installed.

    per step:  draw `batch` examples, each one block under fresh masks at t in the group's range
               for each block: forward (only the trained layers' factors require grad, so autograd
               records those layers and the head's rows, nothing below), loss / masked count,
               backward (gradients accumulate: one block's activations alive at a time)
               Adam step on a and b
    every `eval_every` steps (and after the last): the job's validation blocks through the
               reference, no gradient; the best state so far is kept, and `patience` evaluations
               without a new best end training (early stopping)
    steps:     `epochs` passes over the training pairs' blocks, at most `steps`

Bounded memory: the reference's float weights (4 bytes a parameter; built once, when the first
cluster trains) plus one block's activations of the trained layers. Interruptible between steps
(the job's should_stop: loop B's stop, pause and duty cycle). `threads` torch threads while it
trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from runtime.bd3lm import bd3lm_chunk
from runtime.learning.masked_nll import NoisyBlock, adapter_rows
from runtime.learning.microlora import MicroLora
from runtime.learning.trainer import TrainerUnavailable, TrainJob, TrainResult, epoch_steps, training_blocks
from runtime.ort_backend import assemble_numpy
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.reference import DiffusionLM

REPORTED_STEPS = 10  # steps averaged for the first and last training loss in the report


class AdamMicroTrainer:
    """Adam on a MicroLoRA's a and b through `reference` (the model's DiffusionLM): `epochs` passes
    over the job's training blocks, at most `steps` steps (trainer.epoch_steps); with the job's
    validation blocks, early stopping (below)."""

    name = "adam (torch)"

    def __init__(
        self,
        reference: DiffusionLM | Callable[[], DiffusionLM],
        steps: int,
        lr: float,
        batch: int,
        threads: int = 1,
        epochs: float = math.inf,
        eval_every: int = 10,
        patience: int = 3,
    ):
        # a callable builds the reference when the first job comes (hundreds of MB of float weights,
        # seconds to build): a loop B that never trains a cluster never pays for it
        self._reference = reference.eval() if isinstance(reference, torch.nn.Module) else None
        self._build = None if self._reference is not None else reference
        self.steps, self.lr, self.batch, self.threads = steps, lr, batch, threads
        self.epochs, self.eval_every, self.patience = epochs, eval_every, patience

    @property
    def built(self) -> bool:
        return self._reference is not None

    @property
    def reference(self) -> DiffusionLM:
        """The reference, built on first use; TrainerUnavailable (with the reason) if it cannot be."""
        if self._reference is None:
            try:
                self._reference = self._build().eval()
            except (RuvdllmError, OSError, ValueError) as exc:
                raise TrainerUnavailable(f"no torch reference of the model ({exc})") from exc
        return self._reference

    def train(self, job: TrainJob) -> TrainResult:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._train(job)
        finally:
            torch.set_num_threads(previous)

    def _train(self, job: TrainJob) -> TrainResult:
        micro = job.micro
        a = {t: torch.nn.Parameter(torch.from_numpy(micro.a[t].copy())) for t in micro.targets}
        b = {t: torch.nn.Parameter(torch.from_numpy(micro.b[t].copy())) for t in micro.targets}
        optimizer = torch.optim.Adam([*a.values(), *b.values()], lr=self.lr)
        loss = BankedLoss(self.reference, job)
        steps = epoch_steps(job.examples, job.block_size, self.batch, self.epochs, self.steps)
        stopping = EarlyStopping(loss, job.validation, self.patience, a, b)
        losses: list[float] = []
        for step in range(1, steps + 1):
            if job.should_stop():
                break
            blocks = training_blocks(job.examples, self.batch, job.block_size, job.t_range, job.rng)
            count = sum(len(block.targets) for block in blocks)
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for block in blocks:
                nll = loss.block_nll(block, a, b)  # rebuilt per block: the graph is freed after backward
                (nll / count).backward()
                total += float(nll.detach())
            optimizer.step()
            losses.append(total / count)
            if (step % self.eval_every == 0 or step == steps) and stopping.worse_for_too_long(step, a, b):
                break
        a_best, b_best = stopping.best(a, b)
        trained = MicroLora(
            micro.group,
            micro.slot,
            micro.layers,
            {t: p.detach().numpy().astype(np.float32) for t, p in a_best.items()},
            {t: p.detach().numpy().astype(np.float32) for t, p in b_best.items()},
        )
        first = float(np.mean(losses[:REPORTED_STEPS])) if losses else math.nan
        last = float(np.mean(losses[-REPORTED_STEPS:])) if losses else math.nan
        notes = [f"{len(losses)} of {steps} steps", *stopping.notes()]
        return TrainResult(trained, len(losses), first, last, notes)


class EarlyStopping:
    """The best state by the NLL of held-back blocks (the job's validation: check examples under
    masks of their own) through the reference, measured at the start and every evaluation; training
    stops after `patience` evaluations without a new best. Without validation blocks it keeps the
    last state and never stops training."""

    def __init__(self, loss: BankedLoss, blocks, patience: int, a: dict, b: dict):
        self.loss, self.blocks, self.patience = loss, list(blocks), patience
        self.start = self.best_nll = loss.mean_nll_of(self.blocks, a, b) if self.blocks else math.nan
        self.best_step, self.since = 0, 0
        self.state = self._copy(a, b)

    @staticmethod
    def _copy(a: dict, b: dict) -> tuple[dict, dict]:
        return ({t: p.detach().clone() for t, p in a.items()}, {t: p.detach().clone() for t, p in b.items()})

    def worse_for_too_long(self, step: int, a: dict, b: dict) -> bool:
        if not self.blocks:
            return False
        nll = self.loss.mean_nll_of(self.blocks, a, b)
        if nll < self.best_nll:
            self.best_nll, self.best_step, self.since = nll, step, 0
            self.state = self._copy(a, b)
            return False
        self.since += 1
        return self.since >= self.patience

    def best(self, a: dict, b: dict) -> tuple[dict, dict]:
        return self.state if self.blocks else (a, b)

    def notes(self) -> list[str]:
        if not self.blocks:
            return []
        return [
            f"early stopping: check NLL {self.start:.4f} -> best {self.best_nll:.4f} at step {self.best_step}"
        ]


class BankedLoss:
    """Loop B's masked NLL of one noisy block on the torch reference, with the job's bank in the
    adapter inputs and the MicroLoRA (a, b: target -> [n_layers, in, r] / [n_layers, r, out]
    tensors, trainable or not) in its slot's columns."""

    def __init__(self, reference: DiffusionLM, job: TrainJob):
        bank, micro = job.bank, job.micro
        self.reference, self.job = reference, job
        self.talora = bank.talora_config()
        self.rank = bank.rank
        cols = slice(micro.slot * bank.rank, (micro.slot + 1) * bank.rank)
        self.constant = {}  # target -> per layer (a [in, K·R], b [K·R, out]), the slot's columns zero
        for target, (fan_in, fan_out) in bank.targets.items():
            fa, fb = assemble_numpy(bank, target, fan_in, fan_out)
            fa[:, :, cols], fb[:, cols, :] = 0.0, 0.0
            self.constant[target] = (torch.from_numpy(fa), torch.from_numpy(fb))
        self.cols = cols

    def adapter_bank(self, a: dict, b: dict) -> dict:
        """target -> (per-layer a, per-layer b): the constant bank, and on the MicroLoRA's layers its
        factors padded to the bank's rank in the slot's columns (only those depend on a and b)."""
        micro, cols = self.job.micro, self.cols
        out = {}
        for target, (fa, fb) in self.constant.items():
            layers_a, layers_b = list(fa), list(fb)
            for i, layer in enumerate(micro.layers):
                r = a[target].shape[2]
                pad = self.rank - r
                slot_a = torch.nn.functional.pad(a[target][i], (0, pad))  # [in, R]
                slot_b = torch.nn.functional.pad(b[target][i], (0, 0, 0, pad))  # [R, out]
                layers_a[layer] = torch.cat(
                    [fa[layer][:, : cols.start], slot_a, fa[layer][:, cols.stop :]], 1
                )
                layers_b[layer] = torch.cat([fb[layer][: cols.start], slot_b, fb[layer][cols.stop :]], 0)
            out[target] = (layers_a, layers_b)
        return out

    def block_nll(self, block: NoisyBlock, a: dict, b: dict) -> torch.Tensor:
        """Sum of the masked positions' NLL (a scalar tensor), as runtime/learning/masked_nll.py's
        block_nll computes it from the graph's logits."""
        job, bank = self.job, self.job.bank
        rows = adapter_rows(block, bank.slots, bank.groups, self.talora, job.micro.slot)
        chunk = bd3lm_chunk(block.context, 0, block.block, job.mask_id, rows)
        s = len(chunk)
        hidden, _ = self.reference.backbone(
            torch.tensor(chunk.input_ids).view(1, s),
            torch.tensor(chunk.position_ids).view(1, s),
            torch.tensor(chunk.block_ids).view(1, s),
            adapter_weights=torch.tensor(chunk.adapter_weights, dtype=torch.float32).view(1, s, -1),
            adapter_bank=self.adapter_bank(a, b),
        )
        logits = self.reference.head(hidden[0, chunk.output_offset :])  # [S', vocab]: the output rows
        positions = torch.tensor([p for p, _ in block.targets])
        tokens = torch.tensor([tok for _, tok in block.targets])
        return torch.nn.functional.cross_entropy(logits[positions].float(), tokens, reduction="sum")

    def mean_nll(self, blocks: list[NoisyBlock], micro: MicroLora) -> float:
        """Mean NLL per masked token over `blocks` with `micro`'s factors (no gradient): the number
        runtime/learning/masked_nll.py's masked_nll gives through the graph."""
        a = {t: torch.from_numpy(micro.a[t]) for t in micro.targets}
        b = {t: torch.from_numpy(micro.b[t]) for t in micro.targets}
        return self.mean_nll_of(blocks, a, b)

    def mean_nll_of(self, blocks: list[NoisyBlock], a: dict, b: dict) -> float:
        """mean_nll with the factors as tensors (a trainer's parameters as they stand)."""
        with torch.no_grad():
            total = sum(float(self.block_nll(block, a, b)) for block in blocks)
        return total / max(sum(len(block.targets) for block in blocks), 1)
