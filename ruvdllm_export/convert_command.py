"""`ruvdllm convert`: train the AR -> diffusion conversion adapter (QLoRA) for a checkpoint.

    ruvdllm convert --data corpus/ distill.jsonl                      the default model, BD3LM b=8
    ruvdllm convert --model m.gguf --data a.txt --objective mdlm --rank 16 --max-steps 2000
    ruvdllm convert --distill data/distill_prompts.jsonl --data corpus/   AR answers first, then train
    ruvdllm convert --resume [--run-dir DIR] [--max-steps N]          continue an interrupted run
    torchrun --nproc-per-node 8 -m ruvdllm convert ...                several GPUs (same flags)

The base is prepared exactly as the exported graph holds it (4-bit linears, 8-bit or exact 4-bit
token table), so the adapter trains against the weights that run. The run directory (default:
the user cache's runs/<model>-<objective>-b<block>) holds checkpoints, the training curve and
`best.safetensors`; `--output` copies the best adapter out at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ruvdllm.errors import RuvdllmError

ARGS_FILE = "args.json"
# Arguments a resumed run may change; they default to None so that "given now" is visible.
# Options added after runs were already saved: an older run resumes with what it trained with.
ADDED_LATER = {"precision": "fp32", "teacher_weight": 0.0}
RESUMABLE = {"max_steps": 1000, "threads": 0, "output": None, "checkpoint_minutes": 3.0, "eval_every": 25}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and data")
    g.add_argument(
        "--model", type=Path, help="HF directory or GGUF (default: SmolLM2-135M-Instruct from the cache)"
    )
    g.add_argument("--data", type=Path, nargs="*", default=[], help="text / JSONL files or directories")
    g.add_argument(
        "--distill", type=Path, help="prompt file: generate the AR model's answers and train on them too"
    )
    g.add_argument("--distill-tokens", type=int, default=160, help="longest self-distilled answer")
    g.add_argument("--held-out", type=float, default=0.1, help="fraction of documents never trained on")
    g.add_argument("--run-dir", type=Path, help="checkpoints and logs (default: user cache runs/...)")
    g.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir with its saved arguments"
    )
    g.add_argument("--output", type=Path, help="copy the best adapter here when done")
    o = parser.add_argument_group("objective and adapter")
    o.add_argument("--objective", choices=("bd3lm", "mdlm"), default="bd3lm")
    o.add_argument("--block-size", type=int, default=8)
    o.add_argument(
        "--no-complementary", action="store_true", help="one noisy copy instead of two complementary ones"
    )
    o.add_argument("--rank", type=int, default=16)
    o.add_argument("--alpha", type=float, default=32.0)
    o.add_argument(
        "--targets",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        help="comma-separated linears; add embed_tokens / lm_head to adapt those too",
    )
    t = parser.add_argument_group("training")
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--grad-accum", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--max-steps", type=int, help="optimizer steps (default 1000)")
    t.add_argument("--warmup-steps", type=int, default=10)
    t.add_argument("--anneal-steps", type=int, default=50)
    t.add_argument("--eval-every", type=int, help="steps between held-out evaluations (default 25)")
    t.add_argument("--eval-rows", type=int, default=8)
    t.add_argument("--checkpoint-minutes", type=float, help="minutes between checkpoints (default 3)")
    t.add_argument("--checkpoint-steps", type=int, default=0)
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--memory-gb", type=float, default=24.0, help="CPU memory budget for the batch check")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    t.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: run the frozen base in bfloat16 (about 4x faster on CPUs with AVX512-BF16 and on GPUs)",
    )
    t.add_argument(
        "--teacher-weight",
        type=float,
        default=0.0,
        help="share of the AR model's own next-token distribution in the loss (0 = labels only)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def default_run_dir(args) -> Path:
    from ruvdllm_export.default_model import cache_root

    stem = Path(args.model).stem if args.model else "smollm2-135m"
    return cache_root() / "runs" / f"{stem}-{args.objective}-b{args.block_size}"


def _saved_args(args) -> argparse.Namespace:
    """On --resume: the run's own arguments, with only the ones that may change taken from now."""
    path = args.run_dir / ARGS_FILE
    if not path.is_file():
        raise RuvdllmError(f"{args.run_dir}: no {ARGS_FILE}; is this a `ruvdllm convert` run directory?")
    saved = {**ADDED_LATER, **json.loads(path.read_text())}
    for key in RESUMABLE:
        if getattr(args, key) is not None:
            saved[key] = getattr(args, key)
    saved["quiet"] = args.quiet
    saved["run_dir"] = str(args.run_dir)  # the directory being resumed, wherever it has moved
    for key in ("model", "run_dir", "output", "distill", "data"):
        if saved.get(key) is not None:
            saved[key] = [Path(p) for p in saved[key]] if key == "data" else Path(saved[key])
    saved["resume"] = True
    return argparse.Namespace(**saved)


def _save_args(args) -> None:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    raw = {
        k: [str(p) for p in v] if k == "data" else (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("command", "debug", "func")
    }
    (args.run_dir / ARGS_FILE).write_text(json.dumps(raw, indent=1))


def load_model(path: Path | None, progress: bool = True):
    """(checkpoint, DiffusionLM over the graph's weights)."""
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.default_model import default_gguf_path
    from ruvdllm_export.onnx_graph.builder import prepare_weights
    from ruvdllm_export.onnx_graph.options import GraphOptions
    from ruvdllm_export.reference import DiffusionLM

    checkpoint = load_checkpoint(path if path is not None else default_gguf_path(progress=progress))
    weights = prepare_weights(checkpoint.spec, checkpoint.weights, GraphOptions())
    return checkpoint, DiffusionLM(checkpoint.spec, weights, checkpoint.mask_token_id)


def run(args) -> int:
    import torch

    from ruvdllm_export.convert.adapter_file import base_identity
    from ruvdllm_export.convert.data import build_sequences
    from ruvdllm_export.convert.trainer import BEST, Trainer, check_memory, pick_device
    from ruvdllm_export.reference import LoraConfig, apply_lora

    if args.run_dir is None:
        args.run_dir = default_run_dir(args)
    if args.resume:
        args = _saved_args(args)
    elif (args.run_dir / "checkpoint.pt").exists():
        raise RuvdllmError(f"{args.run_dir}: holds a run already; add --resume or choose another --run-dir")
    for key, default in RESUMABLE.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if not args.data and not args.distill:
        raise RuvdllmError("no training data: give --data FILE ... and/or --distill PROMPTS")
    if not 0.0 <= args.teacher_weight <= 1.0:
        raise RuvdllmError(f"convert: --teacher-weight {args.teacher_weight}: need a value in [0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume:
        _save_args(args)

    checkpoint, model = load_model(args.model, progress=not args.quiet)
    config = _train_config(args)
    objective = _objective(args)
    check_memory(model, config, objective, pick_device())  # before any data is read
    data = list(args.data)
    if args.distill is not None:
        data.append(_distill(args, checkpoint))
    train, held_out = build_sequences(
        data,
        checkpoint.tokenizer,
        args.seq_len,
        checkpoint.spec.eos_token_ids[0],
        args.held_out,
        args.seed,
        checkpoint.spec.chat_template,
    )
    lora = LoraConfig(
        rank=args.rank, alpha=args.alpha, targets=tuple(args.targets.split(",")), seed=args.seed
    )
    try:
        apply_lora(model, lora)
    except ValueError as exc:
        raise RuvdllmError(f"convert: {exc}") from None
    trainer = Trainer(
        model,
        lora,
        objective,
        config,
        train,
        held_out,
        args.run_dir,
        base_identity(checkpoint),
        progress=not args.quiet,
    )
    if args.resume:
        trainer.resume()
    print(
        f"{args.run_dir}: {train.shape[0]} training rows of {args.seq_len} tokens"
        f"{f', {held_out.shape[0]} held out' if held_out is not None else ''}; step {trainer.state.step}",
        file=sys.stderr,
    )
    state = trainer.fit()
    best = args.run_dir / BEST
    if args.output is not None and trainer.rank == 0:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best if best.is_file() else args.run_dir / "adapter.safetensors", args.output)
    print(
        f"{state.step} steps, {state.tokens} tokens; best held-out masked NLL {state.best_nll:.4f}",
        file=sys.stderr,
    )
    return 0


def _objective(args):
    from ruvdllm_export.convert.objectives import ObjectiveConfig

    try:
        return ObjectiveConfig(args.objective, args.block_size, not args.no_complementary)
    except ValueError as exc:
        raise RuvdllmError(f"convert: {exc}") from None


def _train_config(args):
    from ruvdllm_export.convert.trainer import TrainConfig

    if min(args.seq_len, args.batch_size, args.grad_accum, args.max_steps) < 1 or args.seq_len < 2:
        raise RuvdllmError("convert: --seq-len must be >= 2 and --batch-size, --grad-accum, --max-steps >= 1")
    return TrainConfig(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        anneal_steps=args.anneal_steps,
        eval_every=args.eval_every,
        eval_rows=args.eval_rows,
        checkpoint_minutes=args.checkpoint_minutes,
        checkpoint_steps=args.checkpoint_steps,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        memory_gb=args.memory_gb,
        precision=args.precision,
        teacher_weight=args.teacher_weight,
    )


def _distill(args, checkpoint) -> Path:
    """Self-distilled answers (generated once, kept in the run directory, resumed if cut short)."""
    from ruvdllm_export.convert.distill import distill, read_prompts
    from ruvdllm_export.onnx_graph.builder import graph_weights_as_float, prepare_weights
    from ruvdllm_export.onnx_graph.options import GraphOptions
    from ruvdllm_export.reference import DiffusionLM

    prompts = read_prompts(args.distill)
    # Float copies of the graph's weights: the same numbers, dequantized once instead of per token.
    weights = graph_weights_as_float(prepare_weights(checkpoint.spec, checkpoint.weights, GraphOptions()))
    ar = DiffusionLM(checkpoint.spec, weights, checkpoint.mask_token_id).eval()
    output = args.run_dir / "distill.jsonl"
    return distill(
        ar,
        checkpoint.tokenizer,
        checkpoint.spec.chat_template,
        prompts,
        output,
        args.distill_tokens,
        args.seed,
    )


if __name__ == "__main__":
    # The module torchrun runs is the command line's own (the exporter never imports the layer above).
    sys.exit("run `python -m ruvdllm convert ...` (several GPUs: `torchrun ... -m ruvdllm convert ...`)")
