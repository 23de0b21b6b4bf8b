"""The static conversion adapter: one trainable LoRA per chosen linear over the frozen base
(QLoRA when the base is 4-bit), and its hand-off forms.

Names follow PEFT under the canonical weight names, e.g.
`model.layers.3.self_attn.q_proj.lora_A.weight` [rank, in] and `...lora_B.weight` [out, rank]
(the static layout of runtime/artifact.py; `lora_as_bank` gives its bank layout);
the merged update of a linear is (alpha / rank) · B A. `lm_head` and `embed_tokens` are
optional targets (embedding: A [rank, vocab], B [hidden, rank]).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ruvdllm_export.reference.linear import EmbeddingLoraDelta, FrozenLinear, LoraDelta
from ruvdllm_export.reference.model import DiffusionLM
from ruvdllm_export.spec import EMBED, LINEARS, LM_HEAD, linear_weight

HEAD = "lm_head"
EMBEDDING = "embed_tokens"


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 16  # DiffuLLaMA-style conversion needs more than TALoRA's rank-4 slots
    alpha: float = 32.0  # scale alpha / rank = 2, PEFT's common choice; keeps lr portable across ranks
    targets: tuple[str, ...] = LINEARS  # every projection: attention changes shape, so MLPs adapt too
    seed: int = 0  # A's initialisation; same seed, same adapter

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> LoraConfig:
        return cls(
            rank=int(raw["rank"]),
            alpha=float(raw["alpha"]),
            targets=tuple(raw["targets"]),
            seed=int(raw["seed"]),
        )


def _weight_name(layer: int, proj: str) -> str:
    return linear_weight(layer, proj)


def _adapted(model: DiffusionLM) -> dict[str, LoraDelta | EmbeddingLoraDelta]:
    """Canonical weight name -> the LoRA attached to it, in model order."""
    found: dict[str, LoraDelta | EmbeddingLoraDelta] = {}
    if model.embed.lora is not None:
        found[EMBED] = model.embed.lora
    for layer, block in enumerate(model.layers):
        for proj, linear in block.proj.items():
            if linear.lora is not None:
                found[_weight_name(layer, proj)] = linear.lora
    if model.head.lora is not None:
        found[LM_HEAD] = model.head.lora
    return found


def apply_lora(model: DiffusionLM, config: LoraConfig) -> list[torch.nn.Parameter]:
    """Attach a fresh LoRA to every target (a fresh adapter is the identity: B or A is zero)
    and return the trainable parameters."""
    unknown = set(config.targets) - set(LINEARS) - {HEAD, EMBEDDING}
    if unknown:
        raise ValueError(
            f"LoRA targets {sorted(unknown)}: not among {', '.join(LINEARS)}, {HEAD}, {EMBEDDING}"
        )
    generator = torch.Generator().manual_seed(config.seed)
    if EMBEDDING in config.targets:
        model.embed.add_lora(config.rank, config.alpha, generator)
    for block in model.layers:
        for proj in LINEARS:
            if proj in config.targets:
                block.proj[proj].add_lora(config.rank, config.alpha, generator)
    if HEAD in config.targets:
        model.head.add_lora(config.rank, config.alpha, generator)
    return lora_parameters(model)


@contextlib.contextmanager
def lora_disabled(model: DiffusionLM):
    """Run `model` as its frozen base inside the block (the AR teacher of conversion training),
    with every adapter put back afterwards."""
    adapted = [m for m in model.modules() if isinstance(getattr(m, "lora", None), torch.nn.Module)]
    saved = [m.lora for m in adapted]
    for module in adapted:
        module.lora = None
    try:
        yield model
    finally:
        for module, lora in zip(adapted, saved, strict=True):
            module.lora = lora


def attach_adapter_file(model: DiffusionLM, path):
    """Attach the adapter `ruvdllm convert` wrote (convert/adapter_file.py) to `model`, trained
    factors loaded; returns the file's description (its LoRA config and training record)."""
    from ruvdllm_export.convert.adapter_file import read_adapter

    adapter = read_adapter(path)
    apply_lora(model, LoraConfig.from_dict(adapter.lora))
    load_lora_state_dict(model, {k: torch.from_numpy(v) for k, v in adapter.factors.items()})
    return adapter


def merge_lora(model: DiffusionLM) -> None:
    """Fold every attached adapter into the frozen weights and detach it: the adapted model
    becomes the base the next adapter (TALoRA banks, a comparison LoRA) trains on."""
    with torch.no_grad():
        if model.embed.lora is not None:
            model.embed.weight = model.embed.weight + model.embed.lora.delta().to(model.embed.weight.dtype)
            model.embed.lora = None
    for module in model.modules():
        if isinstance(module, FrozenLinear):
            module.merge_lora()


def lora_parameters(model: DiffusionLM) -> list[torch.nn.Parameter]:
    return [p for lora in _adapted(model).values() for p in (lora.lora_A, lora.lora_B)]


def lora_state_dict(model: DiffusionLM) -> dict[str, torch.Tensor]:
    """PEFT-named LoRA factors (detached copies), e.g. `...q_proj.lora_A.weight`."""
    state = {}
    for weight, lora in _adapted(model).items():
        stem = weight.removesuffix(".weight")
        state[f"{stem}.lora_A.weight"] = lora.lora_A.detach().clone()
        state[f"{stem}.lora_B.weight"] = lora.lora_B.detach().clone()
    return state


def load_lora_state_dict(model: DiffusionLM, state: dict[str, torch.Tensor]) -> None:
    """Copy factors into an adapter attached with the same config; a missing, extra or
    misshapen factor is an error (a silent partial load would train or export the wrong model)."""
    expected = lora_state_dict(model)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(
            f"LoRA state does not match the model's adapter: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for weight, lora in _adapted(model).items():
            stem = weight.removesuffix(".weight")
            for factor in ("lora_A", "lora_B"):
                source = torch.as_tensor(state[f"{stem}.{factor}.weight"])
                target = getattr(lora, factor)
                if source.shape != target.shape:
                    raise ValueError(
                        f"LoRA {stem}.{factor}: shape {tuple(source.shape)}, expected {tuple(target.shape)}"
                    )
                target.copy_(source)


def widened_lora_state(
    state: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], rescale: float
) -> dict[str, torch.Tensor]:
    """Factors of a lower-rank adapter placed in a fresh wider one, so that the wider adapter
    makes the same update: the old directions fill A's first rows and B's first columns (B times
    `rescale`, the old alpha/rank over the new), and the new directions keep the fresh
    initialisation, in which one factor is zero (B for a linear, A for the embedding), so they
    add nothing until trained. `rescale` alone (equal ranks) carries an adapter to another alpha."""
    widened = {}
    for name, init in fresh.items():
        old = torch.as_tensor(state[name]).to(init.dtype)
        out = init.detach().clone()
        if name.endswith(".lora_A.weight"):
            if old.shape[1:] != out.shape[1:] or old.shape[0] > out.shape[0]:
                raise ValueError(f"LoRA {name}: shape {tuple(old.shape)} does not fit {tuple(out.shape)}")
            out[: old.shape[0]] = old
        else:
            if old.shape[:1] != out.shape[:1] or old.shape[1] > out.shape[1]:
                raise ValueError(f"LoRA {name}: shape {tuple(old.shape)} does not fit {tuple(out.shape)}")
            out[:, : old.shape[1]] = old * rescale
        widened[name] = out
    return widened


def lora_deltas(model: DiffusionLM) -> dict[str, np.ndarray]:
    """Canonical weight name -> merged float32 update (alpha / rank) · B A, shaped like the
    weight ([out, in]; [vocab, hidden] for the embedding): `W + delta` is the adapted weight."""
    with torch.no_grad():
        return {weight: lora.delta().float().cpu().numpy() for weight, lora in _adapted(model).items()}


def lora_factors(model: DiffusionLM) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Canonical weight name -> (a, b) float32 with the scale folded into b: the form the graph
    builder bakes in as a fixed low-rank delta (onnx_graph StaticLora). For a linear
    a [rank, in], b [out, rank] and `W x + b (a x)` is the adapted linear; for the embedding
    (PEFT layout) a [rank, vocab], b [hidden, rank] and row `id` gains `b a[:, id]`."""
    with torch.no_grad():
        return {
            weight: (lora.lora_A.float().cpu().numpy(), (lora.lora_B * lora.scaling).float().cpu().numpy())
            for weight, lora in _adapted(model).items()
        }


def lora_as_bank(model: DiffusionLM) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer LoRA as a one-slot adapter bank in the bank layout of runtime/artifact.py,
    target -> (a = Aᵀ [layers, in, rank], b = s·Bᵀ [layers, rank, out]):
    running the bank with slot weight 1 everywhere equals running the static LoRA."""
    bank = {}
    with torch.no_grad():
        for proj in LINEARS:
            loras = [block.proj[proj].lora for block in model.layers]
            if all(lora is None for lora in loras):
                continue
            if any(lora is None for lora in loras):
                raise ValueError(f"LoRA on {proj} is not on every layer: the bank layout needs all layers")
            a = torch.stack([lora.lora_A.T for lora in loras])
            b = torch.stack([lora.lora_B.T * lora.scaling for lora in loras])
            bank[proj] = (a.contiguous(), b.contiguous())
    return bank
