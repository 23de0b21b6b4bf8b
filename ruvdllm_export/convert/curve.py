"""The training curve of a `ruvdllm convert` run, read from its log.jsonl: one row per held-out
evaluation, beside the mean training loss of the steps since the previous one — the table
docs/conversion.md shows, printable for any run directory:

    python -m ruvdllm_export.convert.curve RUN_DIR [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ruvdllm.errors import RuvdllmError

LOG = "log.jsonl"  # the run directory's log (trainer.py writes it); read here without torch
COLUMNS = (
    ("step", "step", "{:d}"),
    ("tokens", "tokens seen", "{:,d}"),
    ("train_loss", "train loss", "{:.3f}"),
    ("masked_nll", "held-out masked NLL", "{:.3f}"),
    ("elbo", "ELBO / token", "{:.3f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("correct_entropy", "entropy when right", "{:.3f}"),
    ("correct_confidence", "confidence when right", "{:.3f}"),
    ("confident", "share >= 0.9", "{:.3f}"),
    ("confident_accuracy", "accuracy of those", "{:.3f}"),
)


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / LOG
    if not path.is_file():
        raise RuvdllmError(f"{run_dir}: no {LOG}; is this a `ruvdllm convert` run directory?")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise RuvdllmError(f"{path}:{number}: not a log record") from None
    return records


def curve(records: list[dict]) -> list[dict]:
    """One row per evaluation: step, tokens, the mean training loss since the previous
    evaluation (None at step 0) and the evaluation's metrics."""
    rows, losses = [], []
    for record in records:
        if "eval" in record:
            loss = sum(losses) / len(losses) if losses else None
            rows.append(
                {"step": record["step"], "tokens": record["tokens"], "train_loss": loss, **record["eval"]}
            )
            losses = []
        elif "loss" in record:
            losses.append(record["loss"])
    return rows


def markdown(rows: list[dict]) -> str:
    """The curve as a markdown table; metrics a run did not log (older runs) print as '-'."""
    lines = [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="rows as JSON lines instead of a table")
    args = parser.parse_args(argv)
    try:
        rows = curve(read_log(args.run_dir))
    except RuvdllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(json.dumps(r) + "\n" for r in rows) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
