"""`ruvdllm convert`: train the AR -> diffusion conversion adapter (QLoRA) for a checkpoint.

    ruvdllm convert --data corpus/ distill.jsonl                      the default model, BD3LM b=8
    ruvdllm convert --preset default-135m --data corpus/ distill.jsonl   the shipped adapter's recipe
    ruvdllm convert --model m.gguf --data a.txt --objective mdlm --rank 16 --max-steps 2000
    ruvdllm convert --distill data/distill_prompts.jsonl --data corpus/   AR answers first, then train
    ruvdllm convert --resume [--run-dir DIR] [--max-steps N]          continue an interrupted run
    ruvdllm convert --init-adapter A.safetensors --data ... --rank 8 --alpha 16   warm start
    torchrun --nproc-per-node 8 -m ruvdllm convert ...                several GPUs (same flags)

The base is prepared exactly as the exported graph holds it (4-bit linears, 8-bit or exact 4-bit
token table), so the adapter trains against the weights that run. The run directory (default:
the user cache's runs/<model>-<objective>-b<block>) holds checkpoints, the training curve and
`best.safetensors`; `--output` copies the best adapter out at the end.

Each tunable flag takes its default from the config it fills (TrainConfig, LoraConfig,
ObjectiveConfig; ruvdllm_export/flags.py); a `--preset` sets a recipe's values, and a flag given
on the command line wins over both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.convert.data import HELD_OUT
from ruvdllm_export.convert.objectives import OBJECTIVES, ObjectiveConfig
from ruvdllm_export.convert.trainer import PRECISIONS, TrainConfig
from ruvdllm_export.flags import (
    AT_LEAST_1,
    FRACTION,
    HELD_OUT_FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Flag,
    Range,
    add_flags,
    from_args,
    resolve,
)
from ruvdllm_export.reference import LoraConfig

ARGS_FILE = "args.json"

DATA = (
    Flag("distill_tokens", "longest self-distilled answer", default=160, range=AT_LEAST_1),
    Flag("held_out", "fraction of documents never trained on", default=HELD_OUT, range=HELD_OUT_FRACTION),
)
ADAPTER = (
    Flag(
        "objective",
        "block diffusion (bd3lm) or the whole span (mdlm)",
        ObjectiveConfig,
        options={"choices": OBJECTIVES},
    ),
    Flag("block_size", "BD3LM block", ObjectiveConfig, range=AT_LEAST_1),
    Flag("rank", "LoRA rank", LoraConfig, range=AT_LEAST_1),
    Flag("alpha", "LoRA alpha: the scale is alpha / rank", LoraConfig, range=POSITIVE),
    Flag(
        "targets",
        "comma-separated linears; add embed_tokens / lm_head to adapt those too",
        LoraConfig,
        encode=",".join,
    ),
)
TRAINING = (  # every TrainConfig field, in its order
    Flag("seq_len", "tokens per training row", TrainConfig, range=Range(2)),
    Flag("batch_size", "rows per micro-batch per process", TrainConfig, range=AT_LEAST_1),
    Flag("grad_accum", "micro-batches per optimizer step", TrainConfig, range=AT_LEAST_1),
    # 0 is allowed: a warm start evaluated as it is (its factors kept exactly)
    Flag(
        "lr",
        "peak learning rate (AdamW; warm-up, then cosine decay to a tenth)",
        TrainConfig,
        range=NON_NEGATIVE,
    ),
    Flag("weight_decay", "AdamW weight decay", TrainConfig, range=NON_NEGATIVE),
    Flag("warmup_steps", "optimizer steps of linear warm-up", TrainConfig, range=NON_NEGATIVE),
    Flag("max_steps", "optimizer steps", TrainConfig, range=AT_LEAST_1),
    Flag(
        "anneal_steps",
        "steps over which attention opens from causal to block diffusion",
        TrainConfig,
        range=NON_NEGATIVE,
    ),
    Flag(
        "eval_every",
        "steps between held-out evaluations (0: only before and after training)",
        TrainConfig,
        range=NON_NEGATIVE,
    ),
    Flag("eval_rows", "held-out rows per evaluation", TrainConfig, range=AT_LEAST_1),
    Flag("checkpoint_minutes", "minutes between checkpoints", TrainConfig, range=POSITIVE),
    Flag(
        "checkpoint_steps", "also checkpoint every N steps (0: by time only)", TrainConfig, range=NON_NEGATIVE
    ),
    Flag("seed", "data order, masks, annealing and LoRA init", TrainConfig, range=NON_NEGATIVE),
    Flag("gradient_checkpointing", "recompute layers in backward: less memory, ~30% more time", TrainConfig),
    Flag("memory_gb", "CPU memory budget for the batch check", TrainConfig, range=POSITIVE),
    Flag(
        "lean_memory",
        "return freed tensors' memory at once (~15% lower peak at 1B, steps up to ~20% slower; on by itself "
        "when the run fits --memory-gb only so)",
        TrainConfig,
    ),
    Flag("log_every", "steps between log lines", TrainConfig, range=AT_LEAST_1),
    Flag(
        "precision",
        "bf16: run the frozen base in bfloat16 (about 4x faster on CPUs with AVX512-BF16 and on GPUs)",
        TrainConfig,
        options={"choices": PRECISIONS},
    ),
    Flag(
        "teacher_weight",
        "share of the AR model's own next-token distribution in the loss (0 = labels only)",
        TrainConfig,
        range=FRACTION,
    ),
    Flag(
        "certainty_weight",
        "certainty forcing: weight of the mean entropy of correctly predicted masked tokens (0 = off)",
        TrainConfig,
        range=Range(0, 10),
    ),
    Flag(
        "max_minutes",
        "stop, evaluate and save after this many minutes (0 = no limit)",
        TrainConfig,
        range=NON_NEGATIVE,
    ),
)
FLAGS = DATA + ADAPTER + TRAINING

# Named recipes: the values they set; a flag given on the command line still wins.
PRESETS = {
    # The shipped adapter (docs/conversion.md, "The default adapter"): SmolLM2-135M-Instruct with
    # --data <corpus>/docs <corpus>/licences data/distill_smollm2.jsonl --threads 2.
    "default-135m": {
        "rank": 8,
        "alpha": 16.0,
        "seq_len": 128,
        "batch_size": 2,
        "grad_accum": 4,
        "lr": 5e-4,
        "max_steps": 850,
        "warmup_steps": 20,
        "anneal_steps": 50,
        "eval_every": 50,
        "eval_rows": 8,
        "precision": "bf16",
        "teacher_weight": 0.5,
    },
    # Minutes on a laptop CPU: proves data, model and run directory work end to end.
    "cpu-quick": {
        "distill_tokens": 32,
        "rank": 4,
        "alpha": 8.0,
        "seq_len": 64,
        "grad_accum": 2,
        "max_steps": 20,
        "warmup_steps": 2,
        "anneal_steps": 5,
        "eval_every": 10,
        "eval_rows": 2,
    },
}
# What a resumed run may change; everything else is the run's own (its args.json).
RESUMABLE = (
    "max_steps",
    "eval_every",
    "checkpoint_minutes",
    "max_minutes",
    "threads",
    "output",
    "lean_memory",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named recipe for the flags below, flags given still win: default-135m = how the shipped "
        "adapter was trained (docs/conversion.md), cpu-quick = a minutes-long run that proves the setup",
    )
    g = parser.add_argument_group("model and data")
    g.add_argument(
        "--model", type=Path, help="HF directory or GGUF (default: SmolLM2-135M-Instruct from the cache)"
    )
    g.add_argument("--data", type=Path, nargs="*", default=[], help="text / JSONL files or directories")
    g.add_argument(
        "--distill", type=Path, help="prompt file: generate the AR model's answers and train on them too"
    )
    add_flags(g, DATA)
    g.add_argument("--run-dir", type=Path, help="checkpoints and logs (default: user cache runs/...)")
    g.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir with its saved arguments"
    )
    g.add_argument("--output", type=Path, help="copy the best adapter here when done")
    g.add_argument(
        "--init-adapter",
        type=Path,
        help="start from this adapter file's factors (same base and targets, rank up to --rank), fresh optimizer",
    )
    o = parser.add_argument_group("objective and adapter")
    add_flags(o, ADAPTER)
    o.add_argument(
        "--no-complementary", action="store_true", help="one noisy copy instead of two complementary ones"
    )
    t = parser.add_argument_group("training")
    add_flags(t, TRAINING)
    t.add_argument("--threads", type=AT_LEAST_1.parser(int), help="torch CPU threads (default: torch's)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def default_run_dir(args) -> Path:
    from ruvdllm_export.default_model import cache_root

    stem = Path(args.model).stem if args.model else "smollm2-135m"
    return cache_root() / "runs" / f"{stem}-{args.objective}-b{args.block_size}"


def _arguments(given: argparse.Namespace) -> argparse.Namespace:
    """The run's arguments: for a new run each flag as given, else its preset's value, else its
    default; on --resume the saved run's own, with only RESUMABLE ones taken from now."""
    if given.resume and given.preset:
        raise RuvdllmError(
            "convert: --preset starts a new run; --resume continues one with its own arguments"
        )
    args = argparse.Namespace(**vars(given))
    resolve(args, FLAGS, PRESETS[given.preset] if given.preset else {})
    if args.run_dir is None:
        args.run_dir = given.run_dir = default_run_dir(args)
    if given.resume:
        args = _saved_args(given)
        resolve(args, FLAGS)  # flags added since the run was saved: their defaults
    return args


def _saved_args(args) -> argparse.Namespace:
    """On --resume: the run's own arguments, with only the ones that may change taken from now."""
    path = args.run_dir / ARGS_FILE
    if not path.is_file():
        raise RuvdllmError(f"{args.run_dir}: no {ARGS_FILE}; is this a `ruvdllm convert` run directory?")
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RuvdllmError(f"{path}: not a convert run's saved arguments ({exc})") from None
    if not isinstance(saved, dict):
        raise RuvdllmError(f"{path}: not a convert run's saved arguments (not a JSON object)")
    _refuse_changes(args, saved, path)
    for key in RESUMABLE:
        if getattr(args, key) is not None:
            saved[key] = getattr(args, key)
    saved["quiet"] = args.quiet
    saved["run_dir"] = str(args.run_dir)  # the directory being resumed, wherever it has moved
    saved.setdefault("init_adapter", None)  # runs saved before warm starts existed
    for key in ("model", "run_dir", "output", "distill", "data", "init_adapter"):
        if saved.get(key) is not None:
            saved[key] = [Path(p) for p in saved[key]] if key == "data" else Path(saved[key])
    saved["resume"] = True
    return argparse.Namespace(**saved)


# What --resume never compares with the saved run: how this invocation runs, not what it trains.
NOT_COMPARED = (*RESUMABLE, "command", "debug", "func", "resume", "run_dir", "quiet", "preset")


def _refuse_changes(given: argparse.Namespace, saved: dict, path: Path) -> None:
    """A flag given with --resume that the run cannot take (not RESUMABLE) and that differs from
    the run's own value is refused: it would otherwise be silently ignored."""
    defaults = {flag.name: flag.value for flag in FLAGS}
    for key, value in vars(given).items():
        if key in NOT_COMPARED or value is None or value is False or value == []:
            continue  # not given
        was = saved.get(key, defaults.get(key))
        if _as_saved(key, value) != was:
            flag = "--" + key.replace("_", "-")
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            raise RuvdllmError(
                f"convert --resume: {flag} {shown} differs from the run's {was} ({path}); a resumed run "
                f"keeps its own, only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change"
            )


def _as_saved(key: str, value):
    """A value as args.json holds it."""
    return [str(p) for p in value] if key == "data" else (str(value) if isinstance(value, Path) else value)


def _save_args(args) -> None:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    raw = {k: _as_saved(k, v) for k, v in vars(args).items() if k not in ("command", "debug", "func")}
    (args.run_dir / ARGS_FILE).write_text(json.dumps(raw, indent=1))


def load_model(path, progress: bool = True):
    """(checkpoint, DiffusionLM over the graph's weights); `path` may be a loaded checkpoint
    (its weights are still read lazily, here)."""
    from ruvdllm_export.checkpoints import LoadedCheckpoint, load_checkpoint
    from ruvdllm_export.default_model import default_gguf_path
    from ruvdllm_export.onnx_graph.options import GraphOptions
    from ruvdllm_export.onnx_graph.spill import prepared_one_at_a_time
    from ruvdllm_export.reference import DiffusionLM

    if isinstance(path, LoadedCheckpoint):
        checkpoint = path
    else:
        checkpoint = load_checkpoint(path if path is not None else default_gguf_path(progress=progress))
    # as prepare_weights, but a bf16/f32 table is quantized by rows: never widened whole
    weights = dict(prepared_one_at_a_time(checkpoint.spec, checkpoint.weights, GraphOptions()))
    return checkpoint, DiffusionLM(checkpoint.spec, weights, checkpoint.mask_token_id)


def run(args) -> int:
    import torch

    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.convert.adapter_file import base_identity
    from ruvdllm_export.convert.data import build_sequences, read_training_documents
    from ruvdllm_export.convert.distill import read_prompts
    from ruvdllm_export.convert.trainer import BEST, Trainer, apply_memory_plan, memory_estimate, pick_device
    from ruvdllm_export.default_model import default_gguf_path
    from ruvdllm_export.reference import apply_lora

    args = _arguments(args)
    if not args.resume and (args.run_dir / "checkpoint.pt").exists():
        raise RuvdllmError(f"{args.run_dir}: holds a run already; add --resume or choose another --run-dir")
    if not args.data and not args.distill:
        raise RuvdllmError("no training data: give --data FILE ... and/or --distill PROMPTS")
    config, objective, lora = _configs(args)  # a bad value fails here, before anything is written
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(
        args.model if args.model is not None else default_gguf_path(progress=not args.quiet)
    )  # headers only: the spec sizes the estimate before any weight is read
    estimate = memory_estimate(checkpoint.spec, config, objective, lora)
    # before any weight or data is read: refused here if it cannot fit, lean if it needs to be
    memory_note = apply_memory_plan(estimate, config, pick_device())
    # The inputs next, all cheap to read: a missing or malformed one stops the run here, before
    # the model loads, and leaves no run directory behind.
    chat = (checkpoint.spec.chat_template, checkpoint.spec.bos_token_id)
    eos = checkpoint.spec.eos_token_ids[0]
    documents = read_training_documents(args.data, checkpoint.tokenizer, eos, *chat) if args.data else []
    prompts = read_prompts(args.distill) if args.distill is not None else None
    if not args.resume and args.init_adapter is not None and not args.init_adapter.is_file():
        raise RuvdllmError(f"{args.init_adapter}: no such adapter file (--init-adapter)")
    if not args.resume:  # only now: a refused checkpoint, budget or input leaves no run directory
        _save_args(args)
    checkpoint, model = load_model(checkpoint, progress=not args.quiet)
    if prompts is not None:
        distilled = _distill(args, checkpoint, prompts)
        documents += read_training_documents([distilled], checkpoint.tokenizer, eos, *chat)
    train, held_out = build_sequences(
        documents,
        checkpoint.tokenizer,
        args.seq_len,
        checkpoint.spec.eos_token_ids[0],
        args.held_out,
        args.seed,
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
        trainer.resume()  # the checkpoint holds the factors; a warm start only seeds a new run
    elif args.init_adapter is not None:
        trainer.warm_start(args.init_adapter)
    print(f"{args.run_dir}: {estimate.describe()}", file=sys.stderr)  # checked before the load
    if memory_note:
        print(f"{args.run_dir}: {memory_note}", file=sys.stderr)
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


def _configs(args) -> tuple[TrainConfig, ObjectiveConfig, LoraConfig]:
    try:
        return (
            from_args(TrainConfig, args),
            ObjectiveConfig(args.objective, args.block_size, not args.no_complementary),
            LoraConfig(
                rank=args.rank, alpha=args.alpha, targets=tuple(args.targets.split(",")), seed=args.seed
            ),
        )
    except ValueError as exc:
        raise RuvdllmError(f"convert: {exc}") from None


def _distill(args, checkpoint, prompts: list[str]) -> Path:
    """Self-distilled answers (generated once, kept in the run directory, resumed if cut short)."""
    from ruvdllm_export.convert.distill import distill
    from ruvdllm_export.onnx_graph.builder import graph_weights_as_float, prepare_weights
    from ruvdllm_export.onnx_graph.options import GraphOptions
    from ruvdllm_export.reference import DiffusionLM

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
