"""Torch reference model on the default model (SmolLM2-135M-Instruct, frozen Q4 base): time of a
LoRA training step (forward + backward + AdamW) and of an inference forward, with the 4-bit base
unpacked on every forward (QLoRA's memory) against the dequantized weights kept (`cache_dequantized`),
at a few batch shapes. Prints a table with the ratio; asserts nothing.

    python benchmarks/reference_train_step.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.default_model import default_gguf_path
from ruvdllm_export.reference import DiffusionLM, LoraConfig, apply_lora, block_causal_block_ids

SHAPES = ((1, 64), (4, 256))  # a sampler step's chunk; a training batch


def timed(fn, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call; CPU time is the steadier figure on a shared machine."""
    fn()  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def train_step(model: DiffusionLM, optimizer, batch: int, length: int, block: int):
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, model.spec.vocab_size, (batch, length), generator=generator)
    noisy = torch.where(torch.rand(batch, length, generator=generator) < 0.5, model.mask_token_id, clean)
    positions = torch.arange(length).expand(batch, -1)
    blocks = block_causal_block_ids(length, block).expand(batch, -1)

    def step():
        optimizer.zero_grad()
        hidden, _ = model.backbone(noisy, positions, blocks)
        logits = model.head(hidden)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), clean[:, 1:].flatten())
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(default_gguf_path(progress=True))
    print(f"threads {args.threads}, repeats {args.repeats}; seconds per call as wall (CPU)")
    print(f"{'weights':>9} {'batch x length':>15} {'train step':>17} {'tokens/CPU-s':>12} {'forward':>15}")
    results = {}
    for cached in (False, True):
        model = DiffusionLM.from_checkpoint(checkpoint).cache_dequantized(cached)
        params = apply_lora(model, LoraConfig(rank=16))
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        name = "cached" if cached else "unpacked"
        for batch, length in SHAPES:
            train = timed(train_step(model, optimizer, batch, length, block=8), args.repeats)
            ids = torch.zeros(1, length, dtype=torch.long)
            with torch.no_grad():
                forward = timed(
                    lambda ids=ids, n=length, m=model: m(ids, torch.arange(n)[None], torch.zeros_like(ids)),
                    args.repeats,
                )
            results[name, batch, length] = (train[1], forward[1])
            print(
                f"{name:>9} {f'{batch} x {length}':>15} {train[0]:>8.2f} ({train[1]:>6.2f}) "
                f"{batch * length / train[1]:>12.0f} {forward[0]:>6.2f} ({forward[1]:>6.2f})"
            )
    for batch, length in SHAPES:
        (t0, f0), (t1, f1) = results["unpacked", batch, length], results["cached", batch, length]
        print(
            f"CPU time unpacked / cached at {batch} x {length}: train step {t0 / t1:.2f}x, forward {f0 / f1:.2f}x"
        )


if __name__ == "__main__":
    main()
