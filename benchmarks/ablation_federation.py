"""The federation ablation (benchmarks/ablations.py): DAF against FedAvg and FedProx on simulated
non-IID devices, in process, with the hub's own strategy code (federation_hub.strategies).

    devices   client i holds a disjoint shard of domain i mod D, and a few rows of it for its own
              validation (the perplexities its update reports to the hub)
    local     each trains TALoRA banks from the round's start (train_banks; FedProx adds its
              proximal term μ/2·||w − w_start||²), then submits one update per timestep group:
              per layer and target the delta B·A as a LoraPair, as a device's loop C does
    hub       per group, run_strategy(make_strategy(name, group)) — DAF picks its policy by group
              (coarse: weighted average, domain: quality-weighted, fine: conservative) — and
              releases at the contributions' rank (the hub's default)
    merge     each device replaces its group adapters by the released ones; a group withheld
              (DAF's conservative fine group without an agreeing cluster) keeps the local one
    score     every device's banks on every domain's held-out rows, local-only and after merging

Federation benefit = mean over devices of (local-only NLL − merged NLL) / local-only NLL, the NLL
averaged over all domains: what a device gains on its own domain and on the others' together.
Updates are whole adapters (B·A), not differences from the start: the strategies' weights sum to
one, so averaging adapters is averaging differences plus the shared start.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from federation_hub.aggregate.lora import LoraPair
from federation_hub.strategies import ContributionMeta, make_strategy
from federation_hub.strategies.run import run_strategy
from runtime.talora import group_names
from ruvdllm_export.convert.evaluation import evaluate
from ruvdllm_export.convert.objectives import ObjectiveConfig
from ruvdllm_export.convert.talora_training import BankTrainConfig, TaloraBanks, train_banks
from ruvdllm_export.convert.trainer import precision_autocast

STRATEGIES = ("fedavg", "fedprox", "daf")
VALIDATION_ROWS = 4  # per device, never trained on: the perplexities its update reports
PROXIMAL_MU = 0.01  # the hub's FedProx default (strategies/baselines.py)


@dataclass
class Device:
    name: str
    domain: str
    train: torch.Tensor  # [rows, seq]
    validation: torch.Tensor  # [VALIDATION_ROWS, seq]


def make_devices(train: dict[str, torch.Tensor], count: int) -> list[Device]:
    """`count` devices over the domains round robin, each domain's rows split evenly among its own."""
    domains = list(train)
    devices = []
    for d, domain in enumerate(domains):
        mine = [i for i in range(count) if i % len(domains) == d]
        for k, shard in zip(mine, torch.chunk(train[domain], len(mine)), strict=False):
            if shard.shape[0] <= VALIDATION_ROWS:
                raise ValueError(f"domain {domain}: too few rows for {len(mine)} devices")
            devices.append(Device(f"device{k}", domain, shard[VALIDATION_ROWS:], shard[:VALIDATION_ROWS]))
    return sorted(devices, key=lambda d: int(d.name.removeprefix("device")))


def group_pairs(banks: TaloraBanks, group: int) -> dict[str, LoraPair]:
    """One timestep group's adapter as the hub's linears: '{layer}.{target}' -> (a [r, in], b [out, r])."""
    pairs = {}
    with torch.no_grad():
        for target in banks.config.targets:
            a = banks.a[f"{target}_{group}"].float()  # [L, in, r]
            b = banks.b[f"{target}_{group}"].float() * banks.scaling  # [L, r, out]
            for layer in range(a.shape[0]):
                pairs[f"{layer}.{target}"] = LoraPair(a=a[layer].T.numpy(), b=b[layer].T.numpy())
    return pairs


def set_group(banks: TaloraBanks, group: int, factors: dict) -> None:
    """Write released factors (name -> Factorized) into one group of `banks`, zero-padded to its rank."""
    rank = banks.config.rank
    with torch.no_grad():
        for target in banks.config.targets:
            a, b = banks.a[f"{target}_{group}"], banks.b[f"{target}_{group}"]
            a.zero_()
            b.zero_()
            for layer in range(a.shape[0]):
                pair = factors[f"{layer}.{target}"].pair
                k = min(pair.rank, rank)
                a[layer, :, :k] = torch.from_numpy(np.ascontiguousarray(pair.a[:k].T)).to(a.dtype)
                b[layer, :k, :] = (
                    torch.from_numpy(np.ascontiguousarray(pair.b[:, :k].T)).to(b.dtype) / banks.scaling
                )


def _nll(model, rows, plain, count, banks: TaloraBanks) -> float:
    """Under the banks' training precision: a bf16 run caches the model's weights in bf16."""
    bank = (banks.bank(), banks.slot_weights)
    with torch.no_grad(), precision_autocast(banks.config.precision):
        return evaluate(model, rows, plain, count, *bank)["masked_nll"]


def aggregate(strategy_name: str, locals_, start, metas, seed: int) -> tuple[list[TaloraBanks], dict]:
    """Every device's banks after one round: released groups replaced, withheld ones kept local."""
    merged = [copy.deepcopy(local) for local in locals_]
    withheld = {}
    for g, group in enumerate(group_names(start.config.groups)):
        pairs = [group_pairs(local, g) for local in locals_]
        shapes = {name: (p.b.shape[0], p.a.shape[1]) for name, p in pairs[0].items()}
        result = run_strategy(
            make_strategy(strategy_name, group),
            metas,
            lambda indices, pairs=pairs: (pairs[i] for i in indices),
            shapes,
            dict.fromkeys(shapes, start.config.rank),  # the hub's default: the contributions' rank
            np.random.default_rng(seed),
            seed,
        )
        if result.withheld:
            withheld[group] = result.selection.reason
            continue
        for banks in merged:
            set_group(banks, g, result.factors)
    return merged, withheld


def federate(
    model,
    devices: list[Device],
    held: dict[str, torch.Tensor],
    objective: ObjectiveConfig,
    config: BankTrainConfig,
    eval_rows: int,
    rounds: int = 1,
    strategies=STRATEGIES,
) -> dict:
    """{"local": per-device NLL per domain alone, strategy: {per-device merged NLL, benefit, rounds}}.
    Local-only trains as many rounds as the federated runs, each from where its last ended, so
    that every column has had the same local steps."""
    plain = ObjectiveConfig(objective.objective, objective.block_size, complementary=False)
    fresh = TaloraBanks(model, config)  # every device starts from the same banks (same seed)
    alone = _local_round(model, devices, objective, plain, config, 0.0, [fresh] * len(devices), 0)
    local_only = alone[0]
    for r in range(1, rounds):
        local_only, _ = _local_round(model, devices, objective, plain, config, 0.0, local_only, r)
    scores = _score_all(model, held, plain, eval_rows, local_only)
    local_mean = [float(np.mean(list(s.values()))) for s in scores]
    out = {"local": {d.name: {"domain": d.domain, "nll": s} for d, s in zip(devices, scores, strict=True)}}
    for name in strategies:
        mu = PROXIMAL_MU if name == "fedprox" else 0.0
        start, log = [fresh] * len(devices), []
        for r in range(rounds):
            if r == 0 and mu == 0.0:  # the first round of FedAvg and DAF trains what devices alone do
                locals_, metas = alone
            else:
                locals_, metas = _local_round(model, devices, objective, plain, config, mu, start, r)
            start, withheld = aggregate(name, locals_, fresh, metas, config.seed + r)
            log.append({"round": r, "withheld": withheld, "weights_from": [m.client_id for m in metas]})
        merged = _score_all(model, held, plain, eval_rows, start, shared=not withheld)
        merged_mean = [float(np.mean(list(s.values()))) for s in merged]
        out[name] = {
            "devices": {d.name: s for d, s in zip(devices, merged, strict=True)},
            "benefit": float(np.mean([(a - b) / a for a, b in zip(local_mean, merged_mean, strict=True)])),
            "rounds": log,
        }
    return out


def _local_round(model, devices, objective, plain, config, mu, start, r):
    """Every device trains from its start; returns (banks, the metas its update carries)."""
    locals_, metas = [], []
    for i, device in enumerate(devices):
        seeded = replace(config, proximal_mu=mu, seed=config.seed + 101 * r + i)
        local, _ = train_banks(model, device.train, objective, seeded, start=start[i])
        rows = device.validation.shape[0]
        before = _nll(model, device.validation, plain, rows, start[i])
        after = _nll(model, device.validation, plain, rows, local)
        metas.append(
            ContributionMeta(
                key=f"{device.name}-r{r}",
                client_id=device.name,
                samples=config.steps * config.batch_size,
                perplexity_before=math.exp(before),
                perplexity_after=math.exp(after),
            )
        )
        locals_.append(local)
    return locals_, metas


def _score_all(model, held, plain, eval_rows, banks: list[TaloraBanks], shared: bool = False) -> list[dict]:
    """Each device's banks on every domain; `shared`: all devices hold the same banks, score once."""
    if shared:
        one = {d: _nll(model, rows, plain, eval_rows, banks[0]) for d, rows in held.items()}
        return [one] * len(banks)
    return [{d: _nll(model, rows, plain, eval_rows, b) for d, rows in held.items()} for b in banks]
