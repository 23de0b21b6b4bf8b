"""Quality of the AR -> diffusion conversion: how well the converted model denoises held-out
text, and how good and how varied the text it samples is, judged by the original AR model.

    python benchmarks/conversion_quality.py [--model GGUF|HF_DIR] [--adapter FILE] --data FILE_OR_DIR ...

Two tables:

1. Held-out denoising: masked-token NLL (mean cross-entropy over masked tokens) and the ELBO
   perplexity exp(ELBO per token), for BD3LM at several block sizes and MDLM, with fixed masks,
   for the unconverted model and the adapter. Held-out = the documents training never saw
   (the same hash split as `ruvdllm convert`).
2. Samples: continuations of prompts by the AR model itself (causal, KV cache) and by the
   diffusion samplers (reference sampler, docs/sampling.md) at steps L/4, L/2, L, MDLM vs BD3LM,
   block sizes. Generative perplexity = exp(mean NLL of the generated tokens under the AR model
   given the prompt); distinct-n = unique n-grams / n-grams over all samples, printed beside it
   so that repetition cannot pass for quality; "x AR" = ratio to the AR samples' perplexity.

Without --adapter the converted rows use the unconverted model (the baseline the adapter must
beat). With --banks the converted rows compose the TALoRA banks as the runtime does (group weights
by timestep on every row). Everything is seeded: the same command prints the same table.

3. With `--talora DOMAIN_A DOMAIN_B`: TALoRA banks (one adapter per timestep group, coarse ->
   fine curriculum, one optimizer per bank) against one static LoRA with the same parameter count,
   trained on the same rows of both domains for the same steps, compared on each domain's
   held-out masked-token NLL (the design predicts -8 to -12% for the banks).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from runtime.banks import Bank
from runtime.chat_template import special_tokens
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.banks_command import load_domains
from ruvdllm_export.convert.data import HELD_OUT, read_documents, split_documents, tokenize
from ruvdllm_export.convert.distill import generate_ar, prompt_text
from ruvdllm_export.convert.objectives import ObjectiveConfig
from ruvdllm_export.convert.talora_training import BankTrainConfig, train_banks, train_static
from ruvdllm_export.convert.trainer import TrainConfig, evaluate
from ruvdllm_export.convert_command import load_model
from ruvdllm_export.onnx_graph.builder import graph_weights_as_float, prepare_weights
from ruvdllm_export.onnx_graph.options import GraphOptions
from ruvdllm_export.reference import DiffusionLM, attach_adapter_file
from ruvdllm_export.reference.control import Adapters
from ruvdllm_export.reference.sampler import SamplingConfig, generate

DEFAULT_PROMPTS = (
    "Explain what a compiler does.",
    "Write a short story about a lighthouse keeper.",
    "Why is the sky blue?",
    "Give three tips for learning a new language.",
)


def load_float(path: Path | None):
    """(checkpoint, model) over float copies of the graph's weights: the same numbers as the
    4-bit model, dequantized once instead of in every forward (sampling is forward-bound)."""
    checkpoint, _ = load_model(path, progress=False)
    weights = graph_weights_as_float(prepare_weights(checkpoint.spec, checkpoint.weights, GraphOptions()))
    return checkpoint, DiffusionLM(checkpoint.spec, weights, checkpoint.mask_token_id).eval()


def attach(model, adapter_path: Path | None) -> str:
    if adapter_path is None:
        return "unconverted"
    adapter = attach_adapter_file(model, adapter_path)
    return f"adapter ({adapter.training.get('tokens', '?')} tokens)"


def held_out_rows(paths, tokenizer, eos: int, seq_len: int, rows: int, spec, fraction: float):
    specials = special_tokens(tokenizer.id_to_token, spec.bos_token_id, [eos])
    documents = read_documents(paths, spec.chat_template, specials)
    _, held = split_documents(documents, fraction, 0)
    stream = [t for tokens in tokenize(held, tokenizer) for t in [*tokens, eos]]
    count = min(rows, len(stream) // seq_len)
    if count == 0:
        raise RuvdllmError(f"held-out text: fewer than {seq_len} tokens; give more --data")
    return torch.tensor(stream[: count * seq_len]).view(count, seq_len)


def distinct_n(samples: list[list[int]], n: int) -> float:
    grams = [tuple(s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def ar_nll(judge, prompt: list[int], sample: list[int]) -> tuple[float, int]:
    """Sum of -log p_AR(sample token | prompt, earlier sample tokens) and the count."""
    if not sample:
        return 0.0, 0
    ids = torch.tensor([prompt + sample])
    size = ids.shape[1]
    out = judge(ids, torch.arange(size)[None], torch.arange(size)[None], output_offset=len(prompt) - 1)
    logits = out["logits"][0, len(prompt) - 1 : size - 1].float()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(sample), reduction="sum")
    return float(nll), len(sample)


def sample_rows(model, judge, prompts, eos, args, adapters=None) -> list[dict]:
    length = args.length
    configs = [("AR", None, None, None)]
    for fraction, label in ((0.25, "L/4"), (0.5, "L/2"), (1.0, "L")):
        configs.append(("BD3LM", args.block_size, fraction, label))
        configs.append(("MDLM", None, fraction, label))
    for block in args.other_blocks:
        configs.append(("BD3LM", block, 0.5, "L/2"))
    rows = []
    for name, block, fraction, label in configs:
        started = time.monotonic()
        samples, nll, count = [], 0.0, 0
        for i, prompt in enumerate(prompts):
            rng = random.Random(args.seed + i)
            if name == "AR":
                sample = generate_ar(judge, prompt, length, eos, rng, args.temperature, args.top_p)
            else:
                span = block if name == "BD3LM" else length
                config = SamplingConfig(
                    algorithm=name.lower(),
                    length=length,
                    block_size=block or 8,
                    steps=max(1, round(span * fraction)),
                    temperature=args.temperature,
                    top_p=args.top_p,
                )
                sample = generate(model, prompt, config, rng, adapters, eos_token_ids=eos).tokens
            sample = [t for t in sample if t not in eos]
            total, n = ar_nll(judge, prompt, sample)
            nll, count = nll + total, count + n
            samples.append(sample)
        rows.append(
            {
                "sampler": name,
                "block": block or "-",
                "steps": label or "-",
                "gen_ppl": math.exp(nll / max(count, 1)),
                "distinct1": distinct_n(samples, 1),
                "distinct2": distinct_n(samples, 2),
                "tokens": count,
                "seconds": time.monotonic() - started,
                "example": samples[0],
            }
        )
    return rows


def talora_table(args, checkpoint) -> dict:
    """Banks vs the same-size static LoRA on two domains' held-out text."""
    train, held = load_domains(args.talora, checkpoint, args.seq_len, args.held_out, 0)
    data = torch.cat(train)
    objective = ObjectiveConfig("bd3lm", args.block_size, complementary=True)
    config = BankTrainConfig(
        steps=args.talora_steps,
        batch_size=args.talora_batch,
        lr=args.talora_lr,
        seed=args.seed,
        curriculum=tuple(args.talora_curriculum),
    )
    _, base = load_model(args.model, progress=False)
    _, banks_model = load_model(args.model, progress=False)
    _, static_model = load_model(args.model, progress=False)
    started = time.monotonic()
    banks, _ = train_banks(banks_model, data, objective, config)
    banks_seconds = time.monotonic() - started
    started = time.monotonic()
    train_static(static_model, data, objective, config)
    static_seconds = time.monotonic() - started
    params = sum(p.numel() for p in banks.parameters())
    print(
        f"\n## TALoRA banks vs static LoRA ({config.groups} banks x rank {config.rank} on {', '.join(config.targets)}"
        f" = {params:,} parameters = static rank {config.groups * config.rank}; {config.steps} steps x "
        f"{config.batch_size} rows of {args.seq_len}; curriculum {config.curriculum}; "
        f"train {banks_seconds:.0f} s / {static_seconds:.0f} s)\n"
    )
    print("| domain | unconverted NLL | static LoRA NLL | TALoRA banks NLL | banks vs static |")
    print("|---|---|---|---|---|")
    out = {}
    for name, rows in held.items():
        plain = ObjectiveConfig("bd3lm", args.block_size, complementary=False)
        r = min(args.rows, rows.shape[0])
        before = evaluate(base, rows, plain, r)["masked_nll"]
        static = evaluate(static_model, rows, plain, r)["masked_nll"]
        bank = evaluate(banks_model, rows, plain, r, banks.bank(), banks.slot_weights)["masked_nll"]
        print(
            f"| {name} | {before:.3f} | {static:.3f} | {bank:.3f} | {100 * (bank - static) / static:+.1f}% |"
        )
        out[name] = {"unconverted": before, "static": static, "banks": bank}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", type=Path, help="conversion adapter; none = the unconverted model")
    parser.add_argument(
        "--banks", type=Path, help="TALoRA bank (`ruvdllm train-banks`) composed into the converted model"
    )
    parser.add_argument(
        "--data", type=Path, nargs="+", required=True, help="text whose held-out split is scored"
    )
    parser.add_argument("--held-out", type=float, default=HELD_OUT)
    parser.add_argument("--rows", type=int, default=8, help="held-out rows scored per configuration")
    parser.add_argument("--seq-len", type=int, default=TrainConfig.seq_len)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 16], help="BD3LM block sizes scored")
    parser.add_argument("--prompts", type=Path, help="JSONL of {prompt} (default: four built-in prompts)")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--length", type=int, default=32, help="L, tokens generated per sample")
    parser.add_argument("--block-size", type=int, default=ObjectiveConfig.block_size)
    parser.add_argument("--other-blocks", type=int, nargs="*", default=[4, 16])
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-samples", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--talora", type=Path, nargs=2, metavar="DOMAIN", help="two domains: banks vs static LoRA"
    )
    parser.add_argument("--talora-steps", type=int, default=BankTrainConfig.steps)
    parser.add_argument("--talora-batch", type=int, default=BankTrainConfig.batch_size)
    parser.add_argument("--talora-lr", type=float, default=BankTrainConfig.lr)
    parser.add_argument(
        "--talora-curriculum",
        type=float,
        nargs="*",
        default=list(BankTrainConfig.curriculum),
        help="step fraction per stage",
    )
    parser.add_argument("--skip-denoising", action="store_true", help="only the sample / TALoRA tables")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    checkpoint, judge = load_float(args.model)
    _, model = load_float(args.model)
    label = attach(model, args.adapter)
    adapters = None
    if args.banks:
        adapters = Adapters.from_bank(Bank.load(args.banks))
        label += f" + TALoRA banks {args.banks.name}"
    scored = () if adapters is None else (adapters.bank, adapters.slot_weights)
    spec = checkpoint.spec
    eos = tuple(spec.eos_token_ids)
    held = held_out_rows(
        args.data, checkpoint.tokenizer, eos[0], args.seq_len, args.rows, spec, args.held_out
    )
    print(
        f"model: {checkpoint.source.get('path')}  converted: {label}  held-out rows: {held.shape[0]} x {args.seq_len}"
    )

    if not args.skip_denoising:
        print("\n## Held-out denoising (masked-token NLL, nats; ELBO perplexity)\n")
        print(
            "| objective | block | unconverted NLL | unconverted ELBO ppl | converted NLL | converted ELBO ppl |"
        )
        print("|---|---|---|---|---|---|")
    results = {"label": label, "denoising": [], "samples": []}
    objectives = [ObjectiveConfig("bd3lm", b, complementary=False) for b in args.blocks]
    objectives.append(ObjectiveConfig("mdlm", args.seq_len - 1, complementary=False))
    for objective in [] if args.skip_denoising else objectives:
        base = evaluate(judge, held, objective, args.rows)
        converted = evaluate(model, held, objective, args.rows, *scored) if args.adapter else base
        block = objective.block_size if objective.objective == "bd3lm" else "-"
        print(
            f"| {objective.objective} | {block} | {base['masked_nll']:.3f} | {math.exp(base['elbo']):.1f} | "
            f"{converted['masked_nll']:.3f} | {math.exp(converted['elbo']):.1f} |",
            flush=True,
        )
        results["denoising"].append(
            {"objective": objective.objective, "block": block, "base": base, "converted": converted}
        )

    if not args.skip_denoising:
        ar = sum(ar_nll(judge, row[:1].tolist(), row[1:].tolist())[0] for row in held) / (
            held.numel() - len(held)
        )
        print(
            f"| AR reference: causal next-token NLL of the same rows | - | {ar:.3f} | {math.exp(ar):.1f} | - | - |"
        )
        results["ar_nll"] = ar

    if not args.skip_samples:
        if args.prompts:
            texts = [
                json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines() if line.strip()
            ]
        else:
            texts = list(DEFAULT_PROMPTS)
        texts = texts[: args.num_prompts]
        specials = special_tokens(checkpoint.tokenizer.id_to_token, spec.bos_token_id, eos)
        prompts = [
            checkpoint.tokenizer.encode(
                prompt_text(t, spec.chat_template, **specials), add_special_tokens=False
            ).ids
            for t in texts
        ]
        rows = sample_rows(model, judge, prompts, eos, args, adapters)
        ar = rows[0]["gen_ppl"]
        print(
            f"\n## Samples (L = {args.length}, {len(prompts)} prompts, temperature {args.temperature}, top-p {args.top_p})\n"
        )
        print("| sampler | block | steps | gen. ppl (AR judge) | x AR | distinct-1 | distinct-2 | seconds |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['sampler']} | {row['block']} | {row['steps']} | {row['gen_ppl']:.1f} | "
                f"{row['gen_ppl'] / ar:.2f} | {row['distinct1']:.2f} | {row['distinct2']:.2f} | {row['seconds']:.0f} |"
            )
        print("\nFirst sample of each (prompt 1):")
        for row in rows:
            text = checkpoint.tokenizer.decode(row.pop("example")).replace("\n", " ")
            print(f"- {row['sampler']} {row['block']} {row['steps']}: {text[:160]!r}")
        results["samples"] = rows
    if args.talora:
        results["talora"] = talora_table(args, checkpoint)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuvdllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
