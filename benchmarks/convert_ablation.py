"""Ablations of the conversion recipe: the same data and the same number of training tokens, one
thing changed — certainty forcing on or off, the rank, the targets, the block size — compared on
the held-out numbers that parallel decoding lives on. Asserts nothing; prints a table.

    python benchmarks/convert_ablation.py --out DIR --data answers.jsonl --steps 200 \\
        --common "--preset cpu-quick --precision bf16 --threads 2" \\
        --variant "plain=" --variant "certainty=--certainty-weight 0.1" \\
        [--reference shipped=ruvdllm_export/adapters/smollm2-135m-bd3lm.safetensors] \\
        [--eval-blocks 4 8 16] [--quality "--num-prompts 16 --skip-denoising"]

Each variant is one `ruvdllm convert` run in DIR/NAME with the --common flags, then its own, then
--max-steps --steps (a rerun resumes an interrupted variant and skips finished ones). Keep
--seed and --seq-len in --common: the held-out split hangs on the seed, and the token count on
the row shape — the table prints every run's tokens so that unequal budgets show.

Every final adapter (DIR/NAME/adapter.safetensors: the same step for all, not each run's best)
and every --reference adapter is then scored on the same held-out rows with the same fixed masks
(convert/evaluation.py), in float32 on the exact 4-bit weights, at each --eval-blocks size:
masked-token NLL, accuracy, the entropy and confidence of the correct predictions, the share of
masked tokens at or above threshold decoding's 0.9 and how often those are right. With --quality
each adapter also goes through `benchmarks/conversion_quality.py --adapter FILE ARGS`, its report kept in
DIR/NAME/quality.txt (generation is the judge that counts; the denoising numbers only say why).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from runtime.chat_template import special_tokens
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.convert.adapter_file import read_adapter
from ruvdllm_export.convert.data import HELD_OUT, pack, read_documents, split_documents, tokenize
from ruvdllm_export.convert.evaluation import evaluate
from ruvdllm_export.convert.objectives import ObjectiveConfig
from ruvdllm_export.convert.trainer import TrainConfig
from ruvdllm_export.convert_command import load_model
from ruvdllm_export.onnx_graph.builder import graph_weights_as_float, prepare_weights
from ruvdllm_export.onnx_graph.options import GraphOptions
from ruvdllm_export.reference import DiffusionLM, attach_adapter_file

QUALITY = Path(__file__).with_name("conversion_quality.py")
COLUMNS = (
    ("masked_nll", "masked NLL"),
    ("accuracy", "accuracy"),
    ("correct_entropy", "entropy when right"),
    ("correct_confidence", "confidence when right"),
    ("confident", "share >= 0.9"),
    ("confident_accuracy", "accuracy of those"),
)


def named(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def convert(argv: list[str]) -> None:
    command = [sys.executable, "-m", "ruvdllm", "convert", *argv]
    print("+ " + shlex.join(command[1:]), file=sys.stderr, flush=True)
    if subprocess.run(command).returncode != 0:
        raise RuvdllmError(f"`ruvdllm convert` failed for {argv[argv.index('--run-dir') + 1]}")


def train_variant(name: str, flags: str, args) -> Path:
    """Train (or resume, or skip when done) one variant; its final adapter."""
    run_dir = args.out / name
    adapter = run_dir / "adapter.safetensors"
    if adapter.is_file() and read_adapter(adapter).training.get("steps", 0) >= args.steps:
        return adapter
    common = ["--run-dir", str(run_dir), "--max-steps", str(args.steps), "--quiet"]
    if (run_dir / "checkpoint.pt").is_file():
        convert(["--resume", *common])
    else:
        model = ["--model", str(args.model)] if args.model else []
        data = ["--data", *map(str, args.data)]
        convert([*model, *data, *shlex.split(args.common), *shlex.split(flags), *common])
    return adapter


def held_out_rows(checkpoint, data: list[Path], seq_len: int, rows: int) -> torch.Tensor:
    """The first `rows` packed rows of the documents `ruvdllm convert` holds out (seed 0)."""
    spec, tokenizer = checkpoint.spec, checkpoint.tokenizer
    specials = special_tokens(tokenizer.id_to_token, spec.bos_token_id, spec.eos_token_ids[:1])
    _, held = split_documents(read_documents(data, spec.chat_template, specials), HELD_OUT, 0)
    if not held:
        raise RuvdllmError("the data holds no held-out document: give more --data")
    return pack(tokenize(held, tokenizer), seq_len, spec.eos_token_ids[0])[:rows]


def score(checkpoint, weights, adapter: Path | None, held: torch.Tensor, blocks, rows: int) -> dict:
    model = DiffusionLM(checkpoint.spec, weights, checkpoint.mask_token_id).eval()
    tokens = None
    if adapter is not None:
        tokens = attach_adapter_file(model, adapter).training.get("tokens")
    by_block = {}
    for block in blocks:
        started = time.monotonic()
        by_block[block] = evaluate(model, held, ObjectiveConfig("bd3lm", block), rows)
        by_block[block]["seconds"] = time.monotonic() - started
    return {"adapter": str(adapter) if adapter else None, "tokens": tokens, "blocks": by_block}


def table(results: dict[str, dict], block: int) -> str:
    lines = [
        f"block {block}",
        "| adapter | tokens | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, result in results.items():
        metrics = result["blocks"][block]
        tokens = f"{result['tokens']:,}" if result["tokens"] is not None else "-"
        cells = [f"{metrics[key]:.3f}" for key, _ in COLUMNS]
        lines.append(f"| {name} | {tokens} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality(name: str, adapter: Path, extra: str, out: Path) -> None:
    command = [sys.executable, str(QUALITY), "--adapter", str(adapter), *shlex.split(extra)]
    print("+ " + shlex.join(command[1:]), file=sys.stderr, flush=True)
    run = subprocess.run(command, capture_output=True, text=True)
    (out / "quality.txt").write_text(run.stdout + run.stderr)
    print(f"\n## quality: {name}\n{run.stdout}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="one run directory per variant inside")
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--model", type=Path, help="checkpoint (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps of every variant")
    parser.add_argument("--common", default="", help="`ruvdllm convert` flags every variant gets")
    parser.add_argument("--variant", type=named, action="append", default=[], help="NAME=FLAGS")
    parser.add_argument("--reference", type=named, action="append", default=[], help="NAME=ADAPTER")
    parser.add_argument("--unconverted", action="store_true", help="also score the model without adapter")
    parser.add_argument("--eval-blocks", type=int, nargs="+", default=[ObjectiveConfig.block_size])
    parser.add_argument("--eval-rows", type=int, default=32, help="held-out rows scored")
    parser.add_argument("--seq-len", type=int, default=TrainConfig.seq_len, help="held-out row length")
    parser.add_argument("--threads", type=int, help="torch CPU threads for scoring")
    parser.add_argument(
        "--quality", help="also run benchmarks/conversion_quality.py --adapter FILE with these args"
    )
    args = parser.parse_args(argv)
    if not args.variant and not args.reference:
        parser.error("nothing to compare: give --variant NAME=FLAGS and/or --reference NAME=ADAPTER")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        adapters = {name: train_variant(name, flags, args) for name, flags in args.variant}
        adapters.update({name: Path(path) for name, path in args.reference})
        checkpoint, _ = load_model(args.model, progress=False)
        # float copies of the graph's 4-bit weights: the same numbers, dequantized once
        weights = graph_weights_as_float(prepare_weights(checkpoint.spec, checkpoint.weights, GraphOptions()))
        held = held_out_rows(checkpoint, args.data, args.seq_len, args.eval_rows)
        results = {"unconverted": None} if args.unconverted else {}
        results.update(adapters)
        results = {
            name: score(checkpoint, weights, path, held, args.eval_blocks, args.eval_rows)
            for name, path in results.items()
        }
    except RuvdllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"held-out: {held.shape[0]} rows of {held.shape[1]} tokens, fixed masks, float32")
    for block in args.eval_blocks:
        print("\n" + table(results, block))
    (args.out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    trained = {results[name]["tokens"] for name, _ in args.variant}
    if len(trained) > 1:
        print(f"\nwarning: the variants saw different token counts {sorted(trained)}", file=sys.stderr)
    if args.quality is not None:
        for name, path in adapters.items():
            (args.out / name).mkdir(parents=True, exist_ok=True)
            quality(name, path, args.quality, args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
