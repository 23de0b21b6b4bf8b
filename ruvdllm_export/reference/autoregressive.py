"""The AR model itself, decoded greedily: the reference the verified sampler (runtime/verified.py)
must reproduce token for token at temperature 0.

The converted model without its conversion adapter, attending causally, is the checkpoint it was
converted from; this runs it the way the checkpoint was trained to run — one token per forward
over a key/value cache, argmax over the whole vocabulary — written apart from the runtime so the
golden test compares two implementations.
"""

from __future__ import annotations

import torch

from runtime import artifact
from ruvdllm_export.reference.lora import lora_disabled
from ruvdllm_export.reference.masks import causal_block_ids
from ruvdllm_export.reference.model import DiffusionLM


@torch.no_grad()
def greedy(
    model: DiffusionLM, prompt: list[int], length: int, eos_token_ids: tuple[int, ...] = ()
) -> list[int]:
    """Up to `length` tokens after `prompt`, cut before the first EOS. Any LoRA attached to
    `model` is switched off for the call: this is the base model."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    generated: list[int] = []
    chunk, past, start = list(prompt), None, 0
    with lora_disabled(model):
        while len(generated) < length:
            out = model(
                torch.tensor([chunk]),
                torch.arange(start, start + len(chunk))[None],
                causal_block_ids(len(chunk)),
                output_offset=len(chunk) - 1,
                past=past,
            )
            token = int(out["logits"][0, -1].argmax())
            if token in eos_token_ids:
                break
            generated.append(token)
            past = [
                (out[artifact.present_key(i)], out[artifact.present_value(i)])
                for i in range(model.spec.num_layers)
            ]
            start += len(chunk)
            chunk = [token]
    return generated
