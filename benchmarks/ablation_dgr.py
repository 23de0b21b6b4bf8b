"""The DGR ablation (benchmarks/ablations.py): held-out masked NLL over a TALoRA bank with
retrieval off, retrieval keyed by the prompt only, and the runtime's uncertainty-guided retrieval,
plus the row's own domain adapter always on (an oracle: what retrieval could reach at best).

The retrieved adapters are one rank-r adapter per domain, trained by train_banks with a single
timestep group (so the training code is the banks' own), put into the bank's DGR slots [G, K)
with keys: per training row, the mean L2-normalised query of its noisy rows (the runtime's
QUERY output) after a TALoRA-only forward — the same space the scored rows search in.

Scoring one held-out row (docs/sampling.md §8, applied to a training layout instead of a
generation):

    pass 1   TALoRA weights only            -> entropy, top-2 gap and query of every source row
    select   noisy source rows whose timestep-normalised uncertainty beats the threshold
    vote     their nearest keys -> softmax(similarity / temperature) x strength on DGR slots
    pass 2   TALoRA + those DGR weights     -> masked NLL (diffusion_loss with the same masks)

Differences from generation, on purpose: every uncertain position retrieves (no per-step budget:
over a whole generation every position gets its turns), and only noisy rows do (clean rows are
committed context, which the runtime never adapts by retrieval either).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from runtime.banks import Bank
from runtime.dgr import DgrConfig, vote
from runtime.talora import TaloraConfig
from ruvdllm_export.convert.evaluation import EVAL_SEED
from ruvdllm_export.convert.objectives import ObjectiveConfig, diffusion_loss, make_layouts
from ruvdllm_export.convert.talora_training import BankTrainConfig, TaloraBanks, train_banks
from ruvdllm_export.reference.control import Adapters

MODES = ("off", "prompt", "dgr", "oracle")  # the table's columns, in order
PROMPT_TOKENS = 16  # "prompt only": the row's first tokens stand in for a prompt
KEYS_PER_DOMAIN = 8  # pattern keys per domain adapter (one per training row)


def domain_adapters(
    model, train: dict[str, torch.Tensor], objective: ObjectiveConfig, config: BankTrainConfig
) -> dict[str, TaloraBanks]:
    """One adapter per domain at the bank's rank: train_banks with one group over all t."""
    single = replace(config, talora=TaloraConfig(boundaries=(0.0, 1.0)), curriculum=())
    return {name: train_banks(model, rows, objective, single)[0] for name, rows in train.items()}


def _first_pass(model, row: torch.Tensor, plain: ObjectiveConfig, seed: int, adapters: Adapters):
    """The layout diffusion_loss builds from `seed`, its TALoRA-only weights and hidden states."""
    (layout,) = make_layouts(row[None], model.mask_token_id, plain, torch.Generator().manual_seed(seed))
    talora = adapters.slot_weights(layout.row_t[None])  # [1, S, slots]
    hidden, _ = model.backbone(
        layout.input_ids[None],
        layout.position_ids[None],
        visible=layout.target[None],  # progress 1: the full pattern, as diffusion_loss scores
        adapter_weights=talora,
        adapter_bank=adapters.bank,
    )
    return layout, talora, hidden[0].float()


def _noisy_sources(layout, copies: int = 1) -> torch.Tensor:
    """Source rows inside a noisy copy (rows < copies·n); the rest are clean context rows."""
    n = layout.input_ids.shape[0] // (copies + 1)
    return layout.source_rows[layout.source_rows < copies * n]


def domain_keys(model, rows: torch.Tensor, plain: ObjectiveConfig, adapters: Adapters) -> torch.Tensor:
    """[rows, hidden] pattern keys: per row, the normalised mean query of its noisy source rows."""
    keys = []
    for i in range(rows.shape[0]):
        layout, _, hidden = _first_pass(model, rows[i], plain, EVAL_SEED + 10_000 + i, adapters)
        queries = F.normalize(hidden[_noisy_sources(layout)], dim=-1)
        keys.append(F.normalize(queries.mean(0), dim=0))
    return torch.stack(keys)


def build_dgr_bank(bank: Bank, adapters: dict[str, TaloraBanks], keys: dict[str, torch.Tensor]) -> dict:
    """Put each domain adapter into a DGR slot of `bank` (in place) with its keys; {domain: slot}."""
    free = bank.slots - bank.groups
    if len(adapters) > free:
        raise ValueError(f"{len(adapters)} domain adapters, the bank has {free} DGR slots")
    slots = {}
    for offset, (name, trained) in enumerate(adapters.items()):
        slot = bank.groups + offset
        (single,) = trained.to_runtime(bank.hidden_size).adapters.values()
        bank.add_adapter(f"dgr-{offset}", slot, single.factors)
        bank.add_patterns(keys[name].double().tolist(), [slot] * len(keys[name]))
        slots[name] = slot
    return slots


def _retrieved(adapters: Adapters, dgr: DgrConfig, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """[Q, slots - G] vote weights for unit queries [Q, hidden] (runtime.dgr.vote per query)."""
    similarity = queries.double() @ keys.T  # [Q, N]
    nearest = torch.sort(-similarity, dim=1, stable=True).indices[:, : dgr.neighbours]
    slots = adapters.pattern_slots.tolist()
    rows = []
    for q in range(queries.shape[0]):
        neighbours = [(slots[j], float(similarity[q, j])) for j in nearest[q].tolist()]
        rows.append(vote(neighbours, dgr, adapters.groups, adapters.slots))
    return torch.tensor(rows, dtype=torch.float32)


def mode_weights(mode, model, layout, talora, hidden, adapters: Adapters, dgr: DgrConfig, own_slot: int):
    """[1, S, slots] adapter weights of one ablation mode for one scored row."""
    weights = talora.clone()
    groups, n = adapters.groups, layout.input_ids.shape[0] // 2
    keys = F.normalize(adapters.patterns.double(), dim=-1)
    noisy = torch.arange(2 * n) < n
    if mode == "oracle":
        weights[0, noisy, own_slot] = dgr.strength
    elif mode == "prompt":  # one search for the whole row, from its first tokens (clean rows)
        prompt = F.normalize(hidden[n : n + min(PROMPT_TOKENS, n // 2)].mean(0), dim=0)
        weights[0, noisy, groups:] = _retrieved(adapters, dgr, keys, prompt[None])[0]
    elif mode == "dgr":
        sources = _noisy_sources(layout)
        log_probs = F.log_softmax(model.head(hidden[sources]).float(), dim=-1)
        probs = log_probs.exp()
        entropy_u = (-(probs * log_probs).sum(-1) / math.log(log_probs.shape[-1])).clamp(0, 1)
        top = probs.topk(2, dim=-1).values
        gap_u = (1.0 - (top[:, 0] - top[:, 1])).clamp(0, 1)
        raw = {"entropy": entropy_u, "confidence-gap": gap_u}.get(dgr.strategy, (entropy_u + gap_u) / 2)
        t = layout.row_t[sources]
        score = raw / (dgr.floor + (1.0 - dgr.floor) * t)
        chosen = sources[score > dgr.threshold]  # the bar of a span's first step (hybrid)
        if len(chosen):
            queries = F.normalize(hidden[chosen], dim=-1)
            weights[0, chosen, groups:] = _retrieved(adapters, dgr, keys, queries)
    return weights


def score_modes(
    model,
    held: torch.Tensor,
    plain: ObjectiveConfig,
    rows: int,
    adapters: Adapters,
    dgr: DgrConfig,
    own_slot: int,
) -> dict[str, dict]:
    """{mode: {"masked_nll", "retrieved" (share of scored noisy source rows given DGR weights)}}."""
    nll = dict.fromkeys(MODES, 0.0)
    retrieved = dict.fromkeys(MODES, 0)
    count = sources = 0
    for i in range(min(rows, held.shape[0])):
        seed = EVAL_SEED + i  # evaluate()'s masks: "off" is the bank's own held-out score
        layout, talora, hidden = _first_pass(model, held[i], plain, seed, adapters)
        noisy = _noisy_sources(layout)
        sources += len(noisy)
        for mode in MODES:
            weights = mode_weights(mode, model, layout, talora, hidden, adapters, dgr, own_slot)
            retrieved[mode] += int((weights[0, noisy, adapters.groups :].abs().sum(-1) > 0).sum())
            result = diffusion_loss(
                model,
                held[i : i + 1],
                plain,
                torch.Generator().manual_seed(seed),
                1.0,
                adapters.bank,
                lambda _t, w=weights: w,
            )
            nll[mode] += result.nll
        count += result.count
    return {
        m: {"masked_nll": nll[m] / max(count, 1), "retrieved": retrieved[m] / max(sources, 1)} for m in MODES
    }
