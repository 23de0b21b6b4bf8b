"""TALoRA bank training: one low-rank adapter per timestep group (fine / domain / coarse), mixed
per row by the runtime's own `talora_weights(t)` (docs/sampling.md §7), trained with one
optimizer per bank on a coarse -> fine curriculum:

    stage 0  coarse   t in (2/3, 1]    first the structure: what a mostly-masked block holds
    stage 1  domain   t in (1/3, 2/3]
    stage 2  fine     t in (0, 1/3]    then the details of nearly-clean blocks
    stage 3  all      t in (0, 1]      finally every timestep, blends at the boundaries included

A bank whose group had no weight in a step gets no gradient, and its optimizer does not step
(Adam's momentum would otherwise keep moving it). The banks are written in the runtime's bank
format (runtime/banks.py), slots [0, G), so the sampler loads exactly what was trained.

`static_equivalent` is the comparison the design's claim needs: one static LoRA of rank G·r on
the same targets (the same parameter count), trained on the same rows for the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from runtime.artifact import Features, bank_factor_shapes
from runtime.banks import Bank
from runtime.talora import TaloraConfig, group_names
from ruvdllm_export.convert.objectives import ObjectiveConfig, diffusion_loss
from ruvdllm_export.convert.trainer import check_precision, precision_autocast
from ruvdllm_export.onnx_graph.options import GraphOptions
from ruvdllm_export.reference.control import timestep_slot_weights
from ruvdllm_export.reference.model import DiffusionLM
from ruvdllm_export.spec import LINEARS

OnStep = Callable[[dict], None]  # called with each step's log record (progress bars)


@dataclass(frozen=True)
class BankTrainConfig:
    rank: int = GraphOptions.adapter_rank  # the graph's bank rank per slot: the banks fill its slots
    alpha: float = 8.0  # scale alpha / rank = 2, as the static adapter
    targets: tuple[str, ...] = GraphOptions.adapter_targets  # the graph's bank targets
    talora: TaloraConfig = field(default_factory=TaloraConfig)  # the runtime's groups and blending
    # Share of the steps per group stage, coarse first, the rest over all t: each group first
    # learns alone, then the blends at the boundaries.
    curriculum: tuple[float, ...] = (0.2, 0.2, 0.2)
    lr: float = 1e-3  # small adapters on few steps: a larger rate than the conversion LoRA
    steps: int = 200  # minutes on a CPU; the shipped banks took 400 (docs/conversion.md)
    batch_size: int = 4  # rows per step; small banks learn from few rows
    seed: int = 0  # data order, masks and bank init: same seed, same banks
    precision: str = "fp32"  # "bf16": the forward under bfloat16 autocast (weights cached to match)
    # FedProx's mu: mu/2 ||w - w_start||^2 keeps a device's banks near the round's start (0: off)
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if any(f < 0 for f in self.curriculum) or sum(self.curriculum) > 1 + 1e-9:
            raise ValueError(f"curriculum {self.curriculum}: step shares must be >= 0 and sum to at most 1")
        if self.proximal_mu < 0:
            raise ValueError(f"proximal_mu {self.proximal_mu}: must be >= 0")
        if len(self.curriculum) > self.groups:
            raise ValueError(f"curriculum {self.curriculum}: at most one stage per group ({self.groups})")

    @property
    def groups(self) -> int:
        return self.talora.groups


class TaloraBanks(nn.Module):
    """Per group g and target: a_g [layers, in, r] and b_g [layers, r, out], the bank layout of
    runtime/artifact.py (b zero at the start: fresh banks leave the model unchanged)."""

    def __init__(self, model: DiffusionLM, config: BankTrainConfig):
        super().__init__()
        self.config = config
        self.scaling = config.alpha / config.rank
        generator = torch.Generator().manual_seed(config.seed)
        layers = model.spec.num_layers
        self.shapes = {}
        self.a, self.b = nn.ParameterDict(), nn.ParameterDict()
        for target in config.targets:
            if target not in LINEARS:
                raise ValueError(f"bank target {target!r}: not one of {LINEARS}")
            linear = model.layers[0].proj[target]
            features = Features(linear.in_features, linear.out_features)
            self.shapes[target] = features
            a_shape, b_shape = bank_factor_shapes(features, layers, config.rank)
            for g in range(config.groups):
                bound = 1.0 / math.sqrt(features.in_features)  # PEFT's kaiming_uniform(a=sqrt(5)) bound
                a = (torch.rand(a_shape, generator=generator) * 2 - 1) * bound
                self.a[f"{target}_{g}"] = nn.Parameter(a)
                self.b[f"{target}_{g}"] = nn.Parameter(torch.zeros(b_shape))

    def group_parameters(self, g: int) -> list[nn.Parameter]:
        return [p for t in self.config.targets for p in (self.a[f"{t}_{g}"], self.b[f"{t}_{g}"])]

    def bank(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The graph's layout: a [layers, in, G·r], b [layers, G·r, out], slot g in block g."""
        groups = range(self.config.groups)
        return {
            t: (
                torch.cat([self.a[f"{t}_{g}"] for g in groups], dim=-1),
                torch.cat([self.b[f"{t}_{g}"] * self.scaling for g in groups], dim=1),
            )
            for t in self.config.targets
        }

    def slot_weights(self, row_t: torch.Tensor) -> torch.Tensor:
        """[B, S] timesteps -> [B, S, G] group weights, exactly the runtime's."""
        groups = self.config.groups
        return timestep_slot_weights(row_t, self.config.talora, groups, groups)

    def to_runtime(self, hidden_size: int, slots: int | None = None) -> Bank:
        """The runtime's bank: groups in slots [0, G), `slots` in all (the graph's count, so the
        slots past G stay free for DGR adapters); default G."""
        bank = Bank(
            layers=next(iter(self.a.values())).shape[0],
            hidden_size=hidden_size,
            rank=self.config.rank,
            slots=max(self.config.groups, slots or 0),
            targets=dict(self.shapes),
            timestep_groups=tuple(self.config.talora.boundaries),
        )
        with torch.no_grad():
            for g, name in enumerate(group_names(self.config.groups)):
                factors = {
                    t: (
                        self.a[f"{t}_{g}"].float().cpu().numpy(),
                        (self.b[f"{t}_{g}"] * self.scaling).float().cpu().numpy(),
                    )
                    for t in self.config.targets
                }
                bank.add_adapter(name, g, factors)
        return bank

    def save(self, directory: Path, hidden_size: int, slots: int | None = None) -> None:
        self.to_runtime(hidden_size, slots).save(Path(directory))


def stage_of(step: int, config: BankTrainConfig) -> int | None:
    """The curriculum stage at `step`: group index coarse first (G-1 .. 0), None = all t."""
    edge = 0.0
    for i, fraction in enumerate(config.curriculum):
        edge += fraction * config.steps
        if step < edge:
            return config.groups - 1 - i
    return None


def stage_objective(base: ObjectiveConfig, group: int | None, talora: TaloraConfig) -> ObjectiveConfig:
    """The objective of a curriculum stage: t restricted to the group's interval (one noisy copy,
    since a complementary copy would sit in the mirrored group)."""
    if group is None:
        return base
    lo, hi = talora.boundaries[group], talora.boundaries[group + 1]
    return ObjectiveConfig(base.objective, base.block_size, complementary=False, t_range=(lo, hi))


def _rows(data: torch.Tensor, step: int, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return data[torch.randint(data.shape[0], (batch,), generator=generator)]


def train_banks(
    model: DiffusionLM,
    data: torch.Tensor,
    objective: ObjectiveConfig,
    config: BankTrainConfig,
    on_step: OnStep | None = None,
    start: TaloraBanks | None = None,
) -> tuple[TaloraBanks, list[dict]]:
    """Train TALoRA banks over the (frozen) model; returns the banks and a per-step log.
    `start`: banks to continue from (a federation round's release) instead of fresh ones."""
    banks = TaloraBanks(model, config)
    if start is not None:
        banks.load_state_dict(start.state_dict())
    anchor = [p.detach().clone() for p in banks.parameters()] if config.proximal_mu > 0 else None
    optimizers = [torch.optim.AdamW(banks.group_parameters(g), lr=config.lr) for g in range(config.groups)]
    log = []
    for step in range(config.steps):
        group = stage_of(step, config)
        batch = _rows(data, step, config.batch_size, config.seed)
        generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
        with precision_autocast(config.precision):
            result = diffusion_loss(
                model,
                batch,
                stage_objective(objective, group, config.talora),
                generator,
                1.0,
                banks.bank(),
                banks.slot_weights,
            )
        result.loss.backward()
        if anchor is not None:  # FedProx's term, only where the loss gave a gradient (see below)
            for p, p0 in zip(banks.parameters(), anchor, strict=True):
                if p.grad is not None and bool(p.grad.abs().sum() > 0):
                    p.grad.add_(p.detach() - p0, alpha=config.proximal_mu)
        stepped = []
        for g, optimizer in enumerate(optimizers):
            grads = [p.grad for p in banks.group_parameters(g)]
            if any(grad is not None and bool(grad.abs().sum() > 0) for grad in grads):
                optimizer.step()
                stepped.append(g)
            optimizer.zero_grad(set_to_none=True)
        log.append({"step": step, "stage": group, "loss": float(result.loss.detach()), "stepped": stepped})
        if on_step is not None:
            on_step(log[-1])
    return banks, log


def static_equivalent(config: BankTrainConfig):
    """The static LoRA with the banks' total parameter count: rank G·r on the same targets."""
    from ruvdllm_export.reference import LoraConfig

    rank = config.groups * config.rank
    return LoraConfig(
        rank=rank, alpha=config.alpha / config.rank * rank, targets=config.targets, seed=config.seed
    )


def train_static(
    model: DiffusionLM,
    data: torch.Tensor,
    objective: ObjectiveConfig,
    config: BankTrainConfig,
    on_step: OnStep | None = None,
) -> list[dict]:
    """The comparison run: the static LoRA of `static_equivalent`, same rows, steps and rate."""
    from ruvdllm_export.reference import apply_lora

    params = apply_lora(model, static_equivalent(config))
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    log = []
    for step in range(config.steps):
        batch = _rows(data, step, config.batch_size, config.seed)
        generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
        with precision_autocast(config.precision):
            result = diffusion_loss(model, batch, objective, generator, 1.0)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.append({"step": step, "loss": float(result.loss.detach())})
        if on_step is not None:
            on_step(log[-1])
    return log
