"""`ruvdllm federate`: one federation step of this device (or `--loop`: one every interval), as the
`[federation]` section of the learning config says (docs/learning.md "Federation")."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--learning-config",
        type=Path,
        help="learning config file with a [federation] section (default: $RUVDLLM_LEARNING_CONFIG, "
        "else learning.toml in the data directory)",
    )
    parser.add_argument("--now", action="store_true", help="also run the tasks still waiting out a backoff")
    parser.add_argument(
        "--loop", action="store_true", help="run a step every federation.interval_s until interrupted"
    )
    parser.add_argument("--json", action="store_true", help="print each step's report as one JSON line")


def run(args: argparse.Namespace) -> int:
    from runtime.learning.config import data_root, load_learning_config
    from ruvdllm.federate.sync import federate_once

    config = load_learning_config(args.learning_config).federation
    while True:
        report = federate_once(config, data_root(), force=args.now)
        if args.json:
            print(json.dumps({"lines": report.lines, "failed": report.failed}), flush=True)
        else:
            print("\n".join(report.lines), flush=True)
        if not args.loop:
            return 1 if report.failed else 0
        time.sleep(config.interval_s)
