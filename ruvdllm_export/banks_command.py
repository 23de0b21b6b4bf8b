"""`ruvdllm train-banks`: TALoRA banks for a converted model — one low-rank adapter per timestep
group, trained on a coarse -> fine curriculum over two or more text domains
(convert/talora_training.py), written as the adapter bank the runtime loads (runtime/banks.py).

    ruvdllm train-banks --data DOMAIN_A DOMAIN_B --output BANK_DIR [--adapter CONVERSION.safetensors]
        [--compare] [--steps 200] [--precision bf16] [--force]

A domain is a directory of documents, a JSONL file of records, or one text file, which is cut at
blank lines into paragraphs (the held-out split goes by document). An existing --output is
replaced only with --force, and only if it holds a bank.

The banks train over the converted model: the conversion adapter (default: the shipped one, for
the default model) is folded into the frozen base first, so the banks learn what is left per
timestep group. `--compare` also trains one static LoRA with the same parameter count on the
same rows for the same steps, and prints both against each domain's held-out masked-token NLL
(the TALoRA claim, docs/conversion.md). `ruvdllm export --banks BANK_DIR` puts the bank into a
model directory's banks/, where `ruvdllm generate` finds it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from runtime.artifact import sha256_file
from runtime.banks import BANK_JSON, TRAINING_JSON
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.convert.data import HELD_OUT, Document
from ruvdllm_export.convert.objectives import ObjectiveConfig
from ruvdllm_export.convert.talora_training import BankTrainConfig
from ruvdllm_export.convert.trainer import PRECISIONS, TrainConfig
from ruvdllm_export.flags import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, Flag, Range, add_flags, resolve

FLAGS = (
    Flag(
        "steps",
        "optimizer steps (each bank steps only when its group had weight)",
        BankTrainConfig,
        range=AT_LEAST_1,
    ),
    Flag("batch_size", "rows per step", BankTrainConfig, range=AT_LEAST_1),
    Flag("seq_len", "tokens per row", TrainConfig, range=Range(2)),
    Flag("block_size", "BD3LM block the banks train for", ObjectiveConfig, range=AT_LEAST_1),
    Flag("lr", "learning rate (AdamW, one optimizer per bank)", BankTrainConfig, range=POSITIVE),
    Flag(
        "curriculum",
        "share of the steps per group stage, coarse first (the rest: every t)",
        BankTrainConfig,
        range=FRACTION,
    ),
    # a domain with nothing held out could not be scored
    Flag(
        "held_out",
        "fraction of each domain never trained on",
        default=HELD_OUT,
        range=Range(0, 1, True, True),
    ),
    Flag("eval_rows", "held-out rows scored per domain", default=16, range=AT_LEAST_1),
    Flag(
        "precision",
        "bf16: the forward under bfloat16 autocast",
        BankTrainConfig,
        options={"choices": PRECISIONS},
    ),
    Flag("seed", "data order, masks and bank init", BankTrainConfig, range=NON_NEGATIVE),
)
PRESETS = {
    # The shipped banks (docs/conversion.md): with --data <corpus>/docs <corpus>/licences
    # data/distill_smollm2.jsonl --compare --threads 2, over the shipped conversion adapter.
    "default-135m": {
        "steps": 400,
        "batch_size": 2,
        "seq_len": 128,
        "lr": 1e-3,
        "eval_rows": 16,
        "precision": "bf16",
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named recipe for the flags below, flags given still win: default-135m = how the shipped "
        "banks were trained (docs/conversion.md)",
    )
    parser.add_argument("--model", type=Path, help="HF directory or GGUF (default: SmolLM2-135M-Instruct)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--adapter",
        type=Path,
        help="the conversion adapter the banks sit on (default: the shipped one for the default model)",
    )
    which.add_argument("--no-adapter", action="store_true", help="train over the unconverted model")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="one file or directory per text domain (two or more)",
    )
    parser.add_argument("--output", type=Path, required=True, help="the bank directory to write")
    parser.add_argument(
        "--force", action="store_true", help="replace the bank already in --output (never another directory)"
    )
    parser.add_argument(
        "--compare", action="store_true", help="also train the same-size static LoRA and compare"
    )
    add_flags(parser, FLAGS)
    parser.add_argument("--threads", type=AT_LEAST_1.parser(int), help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_output(output: Path, force: bool) -> None:
    """Refuse to write over anything but a bank, before minutes of loading and training: saving
    a bank replaces the whole directory (runtime/banks.py), so `--output .` must never get there."""
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not force:
        raise RuvdllmError(
            f"{output}: already exists (choose another --output, or --force to replace the bank)"
        )
    if not (output / BANK_JSON).is_file():
        raise RuvdllmError(
            f"{output}: not an adapter bank (no {BANK_JSON}); --force replaces only a bank, choose another --output"
        )


def check_domains(paths) -> None:
    """Every --data path there and readable, all problems in one line, before the model loads."""
    problems = []
    for path in map(Path, paths):
        if not path.exists():
            problems.append(f"{path}: no such file or directory")
        elif not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            problems.append(f"{path}: not readable")
        elif path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            problems.append(f"{path}: the directory holds no files")
    if problems:
        raise RuvdllmError(f"train-banks --data: {'; '.join(problems)}")


def paragraphs(document: Document) -> list[Document]:
    """A lone document cut at blank lines: a domain given as one text file is one document, and
    the held-out split, which goes by document, needs two or more."""
    parts = [part.strip() for part in re.split(r"\n\s*\n", document.text) if part.strip()]
    return [Document(part, f"{document.source}, paragraph {i}") for i, part in enumerate(parts, 1)]


def load_domains(paths, checkpoint, seq_len: int, held_out: float, seed: int):
    """(training rows per domain, {domain name: held-out rows}): one domain per path, each split
    on its own, so every domain is scored on text its training never saw. Needs only the
    checkpoint's tokenizer and spec, so a bad domain is named before the weights load."""
    from ruvdllm_export.convert.data import build_sequences, read_training_documents

    spec = checkpoint.spec
    eos = spec.eos_token_ids[0]
    train, held = [], {}
    for path in paths:
        documents = read_training_documents(
            [path], checkpoint.tokenizer, eos, spec.chat_template, spec.bos_token_id
        )
        if len(documents) == 1:
            documents = paragraphs(documents[0])
        if len(documents) < 2:
            raise RuvdllmError(
                f"{path}: one document cannot be split into training and held-out text; a domain is a directory "
                "of documents, a JSONL file of records, or a text file of two or more paragraphs (blank-line separated)"
            )
        try:
            rows, held_rows = build_sequences(documents, checkpoint.tokenizer, seq_len, eos, held_out, seed)
        except RuvdllmError as exc:  # the packing error names no file
            raise RuvdllmError(f"{path}: {exc}") from None
        if held_rows is None:
            raise RuvdllmError(
                f"{path}: the held-out share (--held-out {held_out:g}) of its {len(documents)} documents is "
                f"shorter than one row of --seq-len {seq_len} tokens; give more text or a larger --held-out"
            )
        train.append(rows)
        held[Path(path).name] = held_rows
    return train, held


def base_checkpoint(args):
    """The checkpoint `--model` names, else the default model's GGUF: opened, weights not read."""
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.default_model import default_gguf_path

    return load_checkpoint(
        args.model if args.model is not None else default_gguf_path(progress=not args.quiet)
    )


def _converted_model(args, checkpoint):
    """(checkpoint, model, adapter path or None): the base with the conversion adapter folded in,
    its weights cached in the training precision."""
    import torch

    from ruvdllm_export.convert_command import load_model
    from ruvdllm_export.reference import attach_adapter_file, merge_lora

    checkpoint, model = load_model(checkpoint, progress=not args.quiet)
    adapter = None
    if not args.no_adapter:
        adapter = args.adapter
        if adapter is None and args.model is None:
            from ruvdllm_export.adapters import DEFAULT_ADAPTER

            adapter = DEFAULT_ADAPTER
        if adapter is not None:
            attach_adapter_file(model, adapter)
    model.cache_dequantized(True, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    merge_lora(model)
    return checkpoint, model, adapter


def _bar(total: int, label: str, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="step", disable=quiet, dynamic_ncols=True, file=sys.stderr)

    def on_step(record: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if bar.n == total:
            bar.close()

    return on_step


def run(args) -> int:
    import torch

    from ruvdllm_export.convert.talora_training import train_banks, train_static
    from ruvdllm_export.convert.trainer import evaluate, precision_autocast
    from ruvdllm_export.onnx_graph.options import GraphOptions

    resolve(args, FLAGS, PRESETS[args.preset] if args.preset else {})
    if len(args.data) < 2:
        raise RuvdllmError("train-banks: give two or more --data domains (one file or directory each)")
    if min(args.steps, args.batch_size, args.eval_rows) < 1 or args.seq_len < 2 * args.block_size:
        raise RuvdllmError("train-banks: --steps, --batch-size, --eval-rows >= 1 and --seq-len >= 2 blocks")
    check_output(args.output, args.force)  # before anything is loaded: fails in the first second
    check_domains(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = BankTrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            curriculum=tuple(args.curriculum),
            precision=args.precision,
        )
    except ValueError as exc:
        raise RuvdllmError(f"train-banks: {exc}") from None
    checkpoint = base_checkpoint(args)  # headers and tokenizer: the domains are read before any weight
    train, held = load_domains(args.data, checkpoint, args.seq_len, args.held_out, args.seed)
    checkpoint, model, adapter = _converted_model(args, checkpoint)
    data = torch.cat(train)
    objective = ObjectiveConfig("bd3lm", args.block_size, complementary=True)
    plain = ObjectiveConfig("bd3lm", args.block_size, complementary=False)

    def scores(m, *bank) -> dict[str, float]:
        with torch.no_grad(), precision_autocast(args.precision):
            return {
                name: evaluate(m, rows, plain, min(args.eval_rows, rows.shape[0]), *bank)["masked_nll"]
                for name, rows in held.items()
            }

    before = scores(model)
    started = time.monotonic()
    banks, log = train_banks(model, data, objective, config, _bar(args.steps, "banks", args.quiet))
    seconds = {"banks": time.monotonic() - started}
    after = scores(model, banks.bank(), banks.slot_weights)
    banks.save(args.output, checkpoint.spec.hidden_size, GraphOptions().adapter_slots)
    report = {
        "model": str(args.model) if args.model else "default (SmolLM2-135M-Instruct)",
        "adapter": str(adapter) if adapter else None,
        "adapter_sha256": sha256_file(Path(adapter)) if adapter else None,  # which adapter they sit on
        "domains": [str(p) for p in args.data],
        "rows": {"train": int(data.shape[0]), "seq_len": args.seq_len},
        "config": {k: v for k, v in vars(args).items() if k not in ("command", "func", "debug")},
        "heldout_masked_nll": {"converted": before, "banks": after},
        "final_loss": log[-1]["loss"],
    }
    if args.compare:
        _, static_model, _ = _converted_model(args, checkpoint)
        started = time.monotonic()
        train_static(static_model, data, objective, config, _bar(args.steps, "static LoRA", args.quiet))
        seconds["static"] = time.monotonic() - started
        report["heldout_masked_nll"]["static"] = scores(static_model)
    report["seconds"] = seconds
    (Path(args.output) / TRAINING_JSON).write_text(json.dumps(report, indent=1, default=str))
    _print_table(report, banks, config)
    return 0


def _print_table(report: dict, banks, config) -> None:
    params = sum(p.numel() for p in banks.parameters())
    nll = report["heldout_masked_nll"]
    static = nll.get("static")
    print(
        f"{config.groups} banks x rank {config.rank} on {', '.join(config.targets)} = {params:,} parameters"
        f"{f' = one static LoRA of rank {config.groups * config.rank}' if static else ''}; "
        f"{config.steps} steps x {config.batch_size} rows of {report['rows']['seq_len']} tokens"
    )
    head = "| domain | converted | TALoRA banks |" + (" static LoRA | banks vs static |" if static else "")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for name, converted in nll["converted"].items():
        line = f"| {name} | {converted:.3f} | {nll['banks'][name]:.3f} |"
        if static:
            change = 100 * (nll["banks"][name] - static[name]) / static[name]
            line += f" {static[name]:.3f} | {change:+.1f}% |"
        print(line)
