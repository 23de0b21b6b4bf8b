"""Distillation data and conversion training at scale on one CUDA GPU, in one time budget: the AR
model's own answers to the committed prompt set, then `ruvdllm convert` over them for about 10^8
training tokens, writing the adapter and its training curve. Never needed by the tests.

    python benchmarks/gpu/distill_and_train.py --out DIR [--budget-minutes 12] [--train-tokens 1e8]
        [--data MORE.jsonl ...] [--init-adapter A.safetensors] [--certainty-weight 0.1] ...
    python benchmarks/gpu/distill_and_train.py --out DIR --dry-run [--model tiny.gguf]   CPU, tiny sizes

Phases, each a plain command a user could type (printed as it runs):

1. `ruvdllm distill answers --device cuda --batch N --max-minutes M`: sampled answers (temperature
   0.7, top-p 0.9) to the training split of data/distill_prompts_wordnet.jsonl -> DIR/answers.jsonl.
2. `ruvdllm convert --data DIR/answers.jsonl [--data ...] --precision bf16 --max-steps S
   --max-minutes T`: S = train-tokens / (batch x seq-len), T = what is left of the budget after a
   margin for loading and the last evaluation, so the run ends in time even when the GPU is slower
   than planned (it then stops short of the token target, and the summary says by how much).
3. DIR/adapter.safetensors (the held-out-best adapter), DIR/curve.md (the training curve), and
   DIR/summary.json (phase times, answers, tokens, tokens/s, the final held-out numbers).

Rerunning with the same --out continues: answers already in the file are kept, and the training
run resumes from its checkpoint (each rerun gets the budget afresh).

--dry-run runs the same three phases on the CPU at tiny sizes (a few prompts, a few steps): it is
what the test suite runs, on a tiny model, to keep the pipeline working without a GPU.

What the GPU needs: torch with CUDA, the `train` and `export` extras, and the model file (the
default model's GGUF in the user cache, or --model PATH): nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ruvdllm_export.convert.adapter_file import read_adapter
from ruvdllm_export.convert.curve import curve, markdown, read_log

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "data" / "distill_prompts_wordnet.jsonl"
MARGIN_MINUTES = 1.0  # model loading, data packing and the last evaluation and save after the time limit


@dataclass(frozen=True)
class Plan:
    """The sizes of one run; `--dry-run` swaps in DRY_RUN."""

    device: str = "cuda"
    answers: int = 0  # prompts to answer (0: the whole training split, 21,701 prompts)
    answer_batch: int = 1024  # rows decoded together: at 135M a step costs little more than at 1 row
    max_new: int = 256  # longest answer, as the CPU corpus
    answer_minutes: float = 3.5  # no answer batch starts later; the rest is for training
    seq_len: int = 256  # about one answer per row; attention cost grows with the square of the row
    batch_size: int = 32  # 8,192 tokens per micro-batch, inside the converter's memory estimate for 141 GB
    grad_accum: int = 1
    lr: float = 5e-4  # the shipped recipe's, at 8x its tokens per step
    warmup_steps: int = 100
    anneal_steps: int = 200  # 0 when warm-starting from a converted adapter
    eval_every: int = 500
    eval_rows: int = 64
    checkpoint_minutes: float = 2.0
    threads: int = 0  # torch CPU threads (0: torch's default)


DRY_RUN = Plan(
    device="cpu",
    answers=6,
    answer_batch=3,
    max_new=12,
    answer_minutes=0.0,
    seq_len=32,
    batch_size=2,
    lr=1e-3,
    warmup_steps=1,
    anneal_steps=1,
    eval_every=2,
    eval_rows=2,
    checkpoint_minutes=1e9,
    threads=2,
)


def ruvdllm(*argv: str) -> None:
    """`ruvdllm ARGV` in a child process of this Python (the same package as this script's)."""
    command = [sys.executable, "-m", "ruvdllm", *argv]
    print("+ " + shlex.join(["ruvdllm", *argv]), file=sys.stderr, flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"`ruvdllm {argv[0]}` failed; rerun this script with the same --out to continue")


def count_answers(path: Path) -> tuple[int, int]:
    """(answers, answer tokens) in the answers file."""
    if not path.is_file():
        return 0, 0
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return len(records), sum(r.get("tokens", 0) for r in records)


def distill(args, plan: Plan, answers: Path) -> dict:
    started = time.monotonic()
    before = count_answers(answers)
    ruvdllm(
        "distill",
        "answers",
        "--prompts",
        str(args.prompts),
        "--out",
        str(answers),
        "--split",
        "train",
        "--device",
        plan.device,
        "--batch",
        str(plan.answer_batch),
        "--max-new",
        str(plan.max_new),
        "--max-minutes",
        str(plan.answer_minutes),
        *(["--limit", str(plan.answers)] if plan.answers else []),
        *(["--model", str(args.model)] if args.model else []),
        *(["--threads", str(plan.threads)] if plan.threads else []),
    )
    seconds = time.monotonic() - started
    after = count_answers(answers)
    new_tokens = after[1] - before[1]
    return {
        "seconds": seconds,
        "answers": after[0],
        "new_answers": after[0] - before[0],
        "answer_tokens": after[1],
        "answer_tokens_per_s": new_tokens / max(seconds, 1e-9),
    }


def adapter_shape(args) -> list[str]:
    """--rank/--alpha/--targets: as given, else a warm start's own, else rank 16. A warm start
    widened to a larger --rank keeps its scale alpha/rank unless --alpha is given."""
    given = {"rank": args.rank, "alpha": args.alpha, "targets": args.targets}
    if args.init_adapter is not None:
        lora = read_adapter(args.init_adapter).lora
        theirs = {"rank": lora["rank"], "alpha": lora["alpha"], "targets": ",".join(lora["targets"])}
        if args.rank is not None and args.alpha is None:
            theirs["alpha"] = float(lora["alpha"]) / int(lora["rank"]) * args.rank
        given = {k: theirs[k] if v is None else v for k, v in given.items()}
    flags = []
    for key, value in given.items():
        if value is not None:
            flags += [f"--{key}", str(value)]
    return flags


def train(args, plan: Plan, answers: Path, run_dir: Path, minutes: float) -> dict:
    tokens_per_step = plan.batch_size * plan.grad_accum * plan.seq_len
    steps = max(1, math.ceil(args.train_tokens / tokens_per_step))
    limits = ["--max-steps", str(steps), "--max-minutes", f"{max(minutes, 0.1):.2f}"]
    started = time.monotonic()
    if (run_dir / "checkpoint.pt").is_file():
        ruvdllm("convert", "--resume", "--run-dir", str(run_dir), *limits, "--quiet")
    else:
        anneal = 0 if args.init_adapter is not None else plan.anneal_steps
        ruvdllm(
            "convert",
            "--data",
            str(answers),
            *map(str, args.data),
            "--run-dir",
            str(run_dir),
            *(["--model", str(args.model)] if args.model else []),
            *(["--init-adapter", str(args.init_adapter)] if args.init_adapter else []),
            *adapter_shape(args),
            "--objective",
            "bd3lm",
            "--block-size",
            str(args.block_size),
            "--seq-len",
            str(plan.seq_len),
            "--batch-size",
            str(plan.batch_size),
            "--grad-accum",
            str(plan.grad_accum),
            "--lr",
            str(plan.lr),
            "--warmup-steps",
            str(plan.warmup_steps),
            "--anneal-steps",
            str(anneal),
            "--eval-every",
            str(plan.eval_every),
            "--eval-rows",
            str(plan.eval_rows),
            "--checkpoint-minutes",
            str(plan.checkpoint_minutes),
            "--precision",
            "bf16",
            "--teacher-weight",
            str(args.teacher_weight),
            "--certainty-weight",
            str(args.certainty_weight),
            *(["--no-complementary"] if args.no_complementary else []),
            *(["--threads", str(plan.threads)] if plan.threads else []),
            *limits,
            "--quiet",
        )
    return {"seconds": time.monotonic() - started, "max_steps": steps, "tokens_per_step": tokens_per_step}


def report(args, run_dir: Path, phases: dict) -> dict:
    records = read_log(run_dir)
    rows = curve(records)
    (args.out / "curve.md").write_text(markdown(rows), encoding="utf-8")
    best = run_dir / "best.safetensors"
    shutil.copyfile(
        best if best.is_file() else run_dir / "adapter.safetensors", args.out / "adapter.safetensors"
    )
    steps = [r for r in records if "loss" in r]
    tokens = steps[-1]["tokens"] if steps else 0
    summary = {
        **phases,
        "tokens": tokens,
        "train_tokens_target": int(args.train_tokens),
        "reached_target": tokens >= args.train_tokens,
        "train_tokens_per_s": steps[-1]["tokens_per_s"] if steps else 0.0,
        "final_eval": rows[-1] if rows else None,
        "best_masked_nll": min((r["masked_nll"] for r in rows), default=None),
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="answers, run directory, adapter, curve")
    parser.add_argument("--model", type=Path, help="checkpoint (default: SmolLM2-135M-Instruct's GGUF)")
    parser.add_argument("--prompts", type=Path, default=PROMPTS)
    parser.add_argument(
        "--data", type=Path, nargs="*", default=[], help="more training data (e.g. a CPU corpus)"
    )
    parser.add_argument("--budget-minutes", type=float, default=12.0, help="wall clock for everything")
    parser.add_argument("--train-tokens", type=float, default=1e8, help="training tokens to aim for")
    parser.add_argument("--answers", type=int, help="prompts to answer (default: the whole training split)")
    parser.add_argument("--answer-minutes", type=float, help="time for the answers phase (default 3.5)")
    parser.add_argument("--init-adapter", type=Path, help="warm-start from this adapter (no annealing)")
    parser.add_argument("--rank", type=int)
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--targets")
    parser.add_argument("--block-size", type=int, default=8)
    parser.add_argument("--teacher-weight", type=float, default=0.5)
    parser.add_argument("--certainty-weight", type=float, default=0.0)
    parser.add_argument(
        "--no-complementary", action="store_true", help="one noisy copy: 2 positions per token instead of 3"
    )
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--dry-run", action="store_true", help="the same pipeline on the CPU at tiny sizes")
    args = parser.parse_args(argv)
    plan = DRY_RUN if args.dry_run else Plan()
    overrides = {"answers": args.answers, "answer_minutes": args.answer_minutes}
    overrides.update(seq_len=args.seq_len, batch_size=args.batch_size)
    plan = Plan(**{**plan.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    if args.dry_run:
        args.train_tokens = min(args.train_tokens, 3 * plan.batch_size * plan.seq_len)
    elif not _cuda():
        sys.exit("no CUDA GPU here: run with --dry-run to check the pipeline on the CPU")
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    answers, run_dir = args.out / "answers.jsonl", args.out / "run"
    phases = {"distill": distill(args, plan, answers)}
    left = args.budget_minutes - (time.monotonic() - started) / 60 - MARGIN_MINUTES
    phases["train"] = train(args, plan, answers, run_dir, left)
    summary = report(args, run_dir, phases)
    summary["seconds"] = time.monotonic() - started
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(
        f"{summary['seconds'] / 60:.1f} min: {phases['distill']['answers']} answers "
        f"({phases['distill']['answer_tokens']:,} tokens), {summary['tokens']:,} training tokens "
        f"at {summary['train_tokens_per_s']:,.0f}/s ({'reached' if summary['reached_target'] else 'short of'} "
        f"{int(args.train_tokens):,}); best held-out masked NLL {summary['best_masked_nll']}; "
        f"{args.out / 'adapter.safetensors'}, {args.out / 'curve.md'}"
    )
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
