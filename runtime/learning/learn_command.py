"""`ruvdllm learn consolidate`: one run of loop C now (for cron, a script, or before sharing), on a
learnt bank, with the Fisher measured on the good answers in loop A's store (docs/learning.md
"Loop C"). `ruvdllm serve` runs the same after loop B when the config turns loop C on."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ruvdllm.errors import RuvdllmError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="learn_command", metavar="STEP", required=True)
    step = sub.add_parser(
        "consolidate",
        help="fold loop B's MicroLoRAs into the TALoRA group adapters (EWC++)",
        description="fold loop B's MicroLoRAs into the TALoRA group adapters (EWC++)",
    )
    step.add_argument(
        "--bank",
        type=Path,
        help="the learnt bank (default: the config's loop_b.bank, else banks/<model> in the data directory)",
    )
    step.add_argument("--model", type=Path, help="the bank's model directory (default: the default model)")
    step.add_argument(
        "--learning-config",
        type=Path,
        help="learning config file ([loop_c] knobs, loop A's store; default: $RUVDLLM_LEARNING_CONFIG, "
        "else learning.toml in the data directory, else built-in defaults)",
    )
    step.add_argument(
        "--lambda", dest="ewc_lambda", type=float, help="EWC strength (overrides loop_c.ewc_lambda)"
    )
    step.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, default_model: Callable[..., Path]) -> int:
    from dataclasses import asdict, replace

    from runtime.banks import BANK_JSON
    from runtime.learning.config import load_learning_config
    from runtime.learning.loop_c_service import consolidate_bank

    learning = load_learning_config(args.learning_config)
    if args.ewc_lambda is not None:
        learning = replace(learning, loop_c=replace(learning.loop_c, ewc_lambda=args.ewc_lambda))
    model_dir = args.model if args.model is not None else default_model("cpu", progress=not args.json)
    bank_dir = args.bank if args.bank is not None else learning.loop_b.bank_path(Path(model_dir).name)
    if not (Path(bank_dir) / BANK_JSON).is_file():
        raise RuvdllmError(f"{bank_dir}: no learnt bank (loop B creates it; or pass --bank)")
    report = consolidate_bank(bank_dir, model_dir, learning)
    if args.json:
        body = {
            "groups": [asdict(g) for g in report.groups],
            "skipped": report.skipped,
            "removed": report.removed,
            "retired_keys": report.retired_keys,
            "seconds": report.seconds,
        }
        print(json.dumps(body))
    else:
        print("\n".join(report.lines))
    return 0
