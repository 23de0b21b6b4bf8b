"""The conversion objectives over the reference model, trained for exactly the attention
pattern and the shift the samplers use (docs/sampling.md §1-3).

BD3LM (block diffusion). A row of N tokens is cut into blocks of `block_size` starting at a
random offset o in [1, B] (the sampler's blocks start wherever the prompt ends; tokens before o
are a clean prefix). Each block gets its own timestep: k ~ U{1..b} of its b tokens are masked,
t = k / b — exactly the `t = len(masked) / span_length` the runtime feeds TALoRA. One forward
runs over [noisy copy(ies) | clean copy], all at positions 0..N-1:

    query \\ key     noisy copy c                    clean copy
    noisy c, blk β  its own block β (bidirectional) clean tokens before block β
    clean           none                            causal (the AR model on clean text)

which is what the BD3LM sampler computes: committed tokens causal, the block seeing them and
itself. With the shift, block position 0 is predicted by the clean row just before the block
(the sampler's lead token) and position j > 0 by noisy row j - 1. With `complementary` two noisy
copies carry complementary masks (Fast-dLLM v2), so every token of every block is a target once.

MDLM. One noisy copy, everything bidirectional, position 0 clean (the shift needs a lead), k of
the N - 1 others masked, t = k / (N - 1); row p - 1 predicts p.

The loss is the ELBO per token, sum over masked targets of CE / t, divided by the number of
positions that could be masked (so it is comparable across block sizes); `nll` / `count` give the
plain masked-token NLL reported beside it.

Teacher (self-distillation of distributions). With `teacher_weight` w > 0 each target's CE
becomes (1 - w) CE(token) + w CE(p_AR), where p_AR is the unadapted base model's own next-token
distribution at the row before the target, reading the clean row causally: what the AR model
would have said there. The soft target carries the whole distribution instead of one sampled
token, so each training token teaches more (the reason distillation converges faster than
training on labels); it costs one forward of the clean row without gradients, about a tenth of
a BD3LM step. A target whose left neighbours are masked cannot reach the teacher's certainty;
the soft CE's minimum there is the teacher averaged over what is hidden, as the hard CE's is.

Certainty forcing (dParallel, Chen et al. 2025). With `certainty_weight` β > 0 the loss gains
β · mean entropy of the predicted distribution over the masked targets whose most likely token
already is the target. Parallel decoding commits only confident positions, and a model trained
on labels alone learns to be right long before it learns to be sure; the term sharpens exactly
the predictions that are right (wrong ones are left to the cross-entropy, so the model is not
pushed to be confidently wrong). The entropy is at temperature 1, the confidence the runtime's
threshold and low-confidence rules read. The same pass reports, for every loss, how many targets
were right, their mean entropy and confidence, and how many cleared the runtime's threshold.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from runtime.artifact import ArtifactConfig
from runtime.settings import GenerationSettings
from ruvdllm_export.convert.annealing import annealed
from ruvdllm_export.reference.lora import lora_disabled
from ruvdllm_export.reference.model import AdapterBank, DiffusionLM

OBJECTIVES = ("bd3lm", "mdlm")
CONFIDENT = GenerationSettings.threshold  # what threshold decoding commits: the share above it is reported


def check_teacher_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"teacher weight {weight}: need 0 <= w <= 1")


def check_certainty_weight(weight: float) -> None:
    if not 0.0 <= weight <= 10.0:
        raise ValueError(f"certainty weight {weight}: need 0 <= w <= 10")


@dataclass(frozen=True)
class ObjectiveConfig:
    objective: str = "bd3lm"  # small blocks keep most of the AR model's ability (DESIGN.md)
    block_size: int = ArtifactConfig.block_size  # train for the block the artifact's sampler runs
    complementary: bool = True  # Fast-dLLM v2: every token is a target once per step, at +50% compute
    t_range: tuple[float, float] = (0.0, 1.0)  # timesteps drawn from (lo, hi]; TALoRA's curriculum narrows it

    def __post_init__(self) -> None:
        lo, hi = self.t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"t_range {self.t_range}: need 0 <= lo < hi <= 1")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r}: not one of {OBJECTIVES}")
        if self.block_size < 1:
            raise ValueError(f"block size must be >= 1, got {self.block_size}")


@dataclass
class LossResult:
    loss: torch.Tensor  # ELBO per token (differentiable)
    nll: float  # sum of masked-token cross-entropies
    count: int  # masked targets
    positions: int  # positions that could be masked (the ELBO's denominator)
    elbo: float  # sum of CE / t
    certainty: float = 0.0  # the certainty-forcing term (mean entropy over correct targets)
    correct: int = 0  # targets whose most likely token is the target
    correct_entropy: float = 0.0  # sum of their entropies (nats)
    correct_confidence: float = 0.0  # sum of their probabilities
    confident: int = 0  # targets whose top probability reaches CONFIDENT
    confident_correct: int = 0  # ... and whose top token is the target


def certainty_terms(log_probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy [T] of each predicted distribution, correct [T] bool: its most likely token is the
    target) from log-probabilities [T, vocab]."""
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return entropy, log_probs.argmax(-1) == targets


def certainty_loss(entropy: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """dParallel's certainty forcing: the mean entropy over correctly predicted targets (0 when
    none is correct); differentiable through the entropy only."""
    return (entropy * correct).sum() / correct.sum().clamp(min=1)


# Per-row TALoRA slot weights from per-row timesteps: t [B, S] -> [B, S, slots].
SlotWeights = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """One sample's noisy inputs and where its targets are read."""

    input_ids: torch.Tensor  # [S]
    position_ids: torch.Tensor  # [S]
    target: torch.Tensor  # bool [S, S] the diffusion pattern
    start: torch.Tensor  # bool [S, S] its causal start (inside target), for annealing
    row_t: torch.Tensor  # [S] timestep of each row's input (0 for clean rows)
    source_rows: torch.Tensor  # [T] rows whose logits predict the targets
    targets: torch.Tensor  # [T] token ids
    weights: torch.Tensor  # [T] 1 / t
    target_positions: torch.Tensor  # [T] position of each target in the row
    target_copies: torch.Tensor  # [T] which noisy copy masked it
    positions: int  # positions that could be masked, over all copies
    offset: int  # first position of the first block
    row: int = 0  # the batch row it was made from


def _mask_counts(b: int, t_range: tuple[float, float]) -> list[int]:
    """The k in 1..b with k / b in t_range (lo, hi]; the nearest k when a short block has none."""
    lo, hi = t_range
    counts = [k for k in range(1, b + 1) if lo < k / b <= hi]
    return counts or [min(range(1, b + 1), key=lambda k: abs(k / b - (lo + hi) / 2))]


def _block_masks(length: int, offset: int, block_size: int, generator: torch.Generator, t_range=(0.0, 1.0)):
    """Per block: k uniform over the counts whose t = k / b lies in t_range, k positions masked.
    Returns (masked [N] bool, t [N] per position, block start [N]) for positions >= offset;
    prefix positions are unmasked with t 0."""
    masked = torch.zeros(length, dtype=torch.bool)
    t = torch.zeros(length)
    start = torch.zeros(length, dtype=torch.long)
    for begin in range(offset, length, block_size):
        b = min(block_size, length - begin)
        counts = _mask_counts(b, t_range)
        k = counts[int(torch.randint(len(counts), (1,), generator=generator))]
        chosen = torch.randperm(b, generator=generator)[:k] + begin
        masked[chosen] = True
        t[begin : begin + b] = k / b
        start[begin : begin + b] = begin
    return masked, t, start


@functools.lru_cache(maxsize=64)
def bd3lm_pattern(n: int, block_size: int, offset: int, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, causal start) bool [S, S], S = (copies + 1) · n: the attention pattern of a row of
    n tokens whose blocks start at `offset`. It depends on nothing random but the offset, so one
    pattern per offset is built and shared (callers must not write into it): at a GPU's row
    lengths building it per row would cost more host time than the step's compute."""
    b, size = block_size, (copies + 1) * n
    pos = torch.arange(n)
    block = torch.where(pos >= offset, (pos - offset) // b, torch.full_like(pos, -1))
    start = torch.where(pos >= offset, offset + block * b, torch.zeros_like(pos))

    causal = pos[None, :] <= pos[:, None]  # [N, N]
    same_block = (block[None, :] == block[:, None]) & (block[:, None] >= 0)
    before_block = pos[None, :] < start[:, None]
    in_prefix = (pos < offset)[:, None]
    noisy_to_clean = torch.where(in_prefix, causal, before_block)

    target = torch.zeros(size, size, dtype=torch.bool)
    begin = torch.zeros(size, size, dtype=torch.bool)
    clean = slice(copies * n, size)
    target[clean, clean] = causal
    begin[clean, clean] = causal
    for c in range(copies):
        rows = slice(c * n, (c + 1) * n)
        target[rows, clean] = noisy_to_clean
        begin[rows, clean] = noisy_to_clean
        target[rows, rows] = same_block
        begin[rows, rows] = same_block & causal
    return target, begin


def bd3lm_layout(tokens: torch.Tensor, mask_token_id: int, config: ObjectiveConfig, generator) -> Layout:
    n, b = tokens.shape[0], config.block_size
    offset = int(torch.randint(1, min(b, n - 1) + 1, (1,), generator=generator))
    masked, t, start = _block_masks(n, offset, b, generator, config.t_range)
    masks = [masked]
    ts = [t]
    if config.complementary:
        complement = ~masked
        complement[:offset] = False
        masks.append(complement)
        ts.append(torch.where(complement | masked, 1.0 - t, torch.zeros_like(t)))
    copies = len(masks)
    target, begin = bd3lm_pattern(n, b, offset, copies)
    pos = torch.arange(n)
    ids, row_t, sources, targets, weights, where, which = [], [], [], [], [], [], []
    for c, (m, tc) in enumerate(zip(masks, ts, strict=True)):
        ids.append(torch.where(m, torch.full_like(tokens, mask_token_id), tokens))
        row_t.append(torch.where(pos >= offset, tc, torch.zeros_like(tc)))
        p = torch.nonzero(m).flatten()
        lead = p == start[p]  # a block's first position: predicted by the clean row before it
        sources.append(torch.where(lead, copies * n + p - 1, c * n + p - 1))
        targets.append(tokens[p])
        weights.append(1.0 / tc[p])
        where.append(p)
        which.append(torch.full_like(p, c))
    ids.append(tokens)
    row_t.append(torch.zeros(n))
    return Layout(
        input_ids=torch.cat(ids),
        position_ids=torch.arange(n).repeat(copies + 1),
        target=target,
        start=begin,
        row_t=torch.cat(row_t),
        source_rows=torch.cat(sources),
        targets=torch.cat(targets),
        weights=torch.cat(weights),
        target_positions=torch.cat(where),
        target_copies=torch.cat(which),
        positions=copies * (n - offset),
        offset=offset,
    )


def mdlm_layouts(
    tokens: torch.Tensor, mask_token_id: int, config: ObjectiveConfig, generator
) -> list[Layout]:
    """One layout per noisy copy (MDLM copies share nothing, so they are separate rows)."""
    n = tokens.shape[0]
    masked, t, _ = _block_masks(n, 1, n - 1, generator, config.t_range)
    masks = [(masked, float(t[1]))]
    if config.complementary and not masked[1:].all():
        complement = ~masked
        complement[0] = False
        masks.append((complement, 1.0 - float(t[1])))
    everything = torch.ones(n, n, dtype=torch.bool)
    causal = everything.tril()
    layouts = []
    for copy, (m, tc) in enumerate(masks):
        p = torch.nonzero(m).flatten()
        layouts.append(
            Layout(
                input_ids=torch.where(m, torch.full_like(tokens, mask_token_id), tokens),
                position_ids=torch.arange(n),
                target=everything,
                start=causal,
                row_t=torch.full((n,), tc),
                source_rows=p - 1,
                targets=tokens[p],
                weights=torch.full((len(p),), 1.0 / tc),
                target_positions=p,
                target_copies=torch.full_like(p, copy),
                positions=n - 1,
                offset=1,
            )
        )
    return layouts


def make_layouts(batch: torch.Tensor, mask_token_id: int, config: ObjectiveConfig, generator) -> list[Layout]:
    if batch.shape[1] < 2:
        raise ValueError("sequences need at least 2 tokens (the shift predicts from a lead token)")
    if config.objective == "bd3lm":
        return [
            replace(bd3lm_layout(row, mask_token_id, config, generator), row=i) for i, row in enumerate(batch)
        ]
    return [
        replace(layout, row=i)
        for i, row in enumerate(batch)
        for layout in mdlm_layouts(row, mask_token_id, config, generator)
    ]


@torch.no_grad()
def teacher_probabilities(model: DiffusionLM, batch: torch.Tensor, layouts: list[Layout]) -> torch.Tensor:
    """[T, vocab]: the unadapted base model's next-token distribution for every target of
    `layouts`, read causally over the clean rows of `batch` at the position before the target."""
    device = model.final_norm.device
    n = batch.shape[1]
    causal = torch.ones(1, n, n, dtype=torch.bool, device=device).tril()
    positions = torch.arange(n, device=device).expand(batch.shape[0], n)
    with lora_disabled(model):
        hidden, _ = model.backbone(batch.to(device), positions, visible=causal)
    rows = torch.cat([lay.target_positions - 1 + lay.row * n for lay in layouts]).to(device)
    return torch.softmax(model.head(hidden.reshape(-1, hidden.shape[-1])[rows]).float(), dim=-1)


def diffusion_loss(
    model: DiffusionLM,
    batch: torch.Tensor,
    config: ObjectiveConfig,
    generator: torch.Generator,
    progress: float = 1.0,
    adapter_bank: AdapterBank | None = None,
    slot_weights: SlotWeights | None = None,
    teacher_weight: float = 0.0,
    certainty_weight: float = 0.0,
) -> LossResult:
    """The ELBO-per-token loss of `batch` [B, N] under `config`; all randomness (offsets, masks,
    annealing) comes from `generator`, so one seed gives one loss on every device.
    `teacher_weight`: the share of the AR teacher's soft targets in each target's CE;
    `certainty_weight`: β of the certainty-forcing term (module doc)."""
    check_teacher_weight(teacher_weight)
    check_certainty_weight(certainty_weight)
    device = model.final_norm.device
    layouts = make_layouts(batch.cpu(), model.mask_token_id, config, generator)
    visible = torch.stack([annealed(lay.target, lay.start, progress, generator) for lay in layouts])
    input_ids = torch.stack([lay.input_ids for lay in layouts]).to(device)
    position_ids = torch.stack([lay.position_ids for lay in layouts]).to(device)
    adapter_weights = None
    if adapter_bank is not None and slot_weights is not None:
        adapter_weights = slot_weights(torch.stack([lay.row_t for lay in layouts])).to(device)
    hidden, _ = model.backbone(
        input_ids,
        position_ids,
        visible=visible.to(device),
        adapter_weights=adapter_weights,
        adapter_bank=adapter_bank,
    )
    size = hidden.shape[1]
    rows = torch.cat([lay.source_rows + i * size for i, lay in enumerate(layouts)]).to(device)
    targets = torch.cat([lay.targets for lay in layouts]).to(device)
    weights = torch.cat([lay.weights for lay in layouts]).to(device)
    positions = sum(lay.positions for lay in layouts)
    logits = model.head(hidden.reshape(-1, hidden.shape[-1])[rows])  # only rows that predict a target
    log_probs = F.log_softmax(logits.float(), dim=-1)  # [T, vocab]
    ce = -log_probs.gather(-1, targets[:, None]).squeeze(-1)
    per_target = ce
    if teacher_weight > 0:
        teacher = teacher_probabilities(model, batch, layouts)
        soft = -(teacher * log_probs).sum(-1)
        per_target = (1 - teacher_weight) * ce + teacher_weight * soft
    loss = (per_target * weights).sum() / positions
    # The entropy keeps its graph only when it is trained on; otherwise it is a measurement.
    with torch.set_grad_enabled(torch.is_grad_enabled() and certainty_weight > 0):
        entropy, correct = certainty_terms(log_probs, targets)
        certainty = certainty_loss(entropy, correct)
    if certainty_weight > 0:
        loss = loss + certainty_weight * certainty
    with torch.no_grad():
        top = log_probs.max(-1).values.exp()
        confident = top >= CONFIDENT
        return LossResult(
            loss=loss,
            nll=float(ce.sum()),
            count=int(targets.numel()),
            positions=positions,
            elbo=float((ce * weights).sum()),
            certainty=float(certainty),
            correct=int(correct.sum()),
            correct_entropy=float((entropy * correct).sum()),
            correct_confidence=float((top * correct).sum()),
            confident=int(confident.sum()),
            confident_correct=int((confident & correct).sum()),
        )
