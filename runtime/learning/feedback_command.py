"""`ruvdllm feedback COMPLETION-ID --up | --down | --rating N | --correct TEXT`: feedback on an
answer `ruvdllm generate` printed the completion id of. Stored beside the trajectory; the DGR
patterns that answer used move their usefulness (docs/learning.md). A running `ruvdllm serve`
takes feedback on its own answers at POST /v1/feedback instead (it holds the scores in memory)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.learning.trajectory import RATING_RANGE
from ruvdllm.errors import RuvdllmError


def add_learning_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every command that runs loop A shares."""
    parser.add_argument(
        "--learning-config",
        type=Path,
        help="learning config file, TOML or JSON (default: $RUVDLLM_LEARNING_CONFIG, else "
        "learning.toml in the data directory, else built-in defaults; docs/learning.md)",
    )
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record the trajectory for learning (default: the config's loop_a.enabled, on)",
    )


def learning_loop(args: argparse.Namespace):
    """Loop A as the learning config and --record/--no-record say (None: not recording)."""
    from runtime.learning.config import load_learning_config
    from runtime.learning.loop_a import LoopA

    config = load_learning_config(args.learning_config)
    if args.record is False or (args.record is None and not config.loop_a.enabled):
        return None
    return LoopA(config.loop_a)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("completion_id", help="the id `ruvdllm generate` printed (cmpl-...)")
    kind = parser.add_mutually_exclusive_group(required=True)
    low, high = RATING_RANGE
    kind.add_argument(
        "--rating", type=float, help=f"rate the answer {low:g}..{high:g} ({(low + high) / 2:g}: neutral)"
    )
    kind.add_argument("--up", action="store_true", help="thumbs up")
    kind.add_argument("--down", action="store_true", help="thumbs down")
    kind.add_argument("--correct", metavar="TEXT", help="the corrected answer")
    parser.add_argument(
        "--learning-config", type=Path, help="learning config file (where the trajectory store is)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from runtime.learning.config import load_learning_config
    from runtime.learning.loop_a import LoopA
    from runtime.learning.trajectory import make_feedback

    feedback = make_feedback(args.completion_id, args.rating, args.up, args.down, args.correct)
    config = load_learning_config(args.learning_config)
    if not config.loop_a.enabled:
        raise RuvdllmError(f"feedback: loop A is off in {config.source or 'the learning config'}")
    if not config.loop_a.store_path().is_file():
        raise RuvdllmError(f"{config.loop_a.store_path()}: no trajectory store yet (nothing recorded)")
    with LoopA(config.loop_a, threaded=False) as loop:
        result = loop.feedback(feedback)
    if args.json:
        print(
            json.dumps(
                {
                    "completion_id": result.completion_id,
                    "kind": result.kind,
                    "value": result.value,
                    "patterns": result.patterns,
                }
            )
        )
    else:
        moved = f"; {len(result.patterns)} retrieval pattern(s) rescored" if result.patterns else ""
        print(f"feedback on {result.completion_id} recorded ({result.kind}, {result.value:+.2f}){moved}")
    return 0
