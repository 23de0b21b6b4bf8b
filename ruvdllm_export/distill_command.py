"""`ruvdllm distill`: the corpus for sequence-level distillation — prompts from material on the
machine, and the AR model's own sampled answers to them.

    ruvdllm distill prompts [--out data/distill_prompts_wordnet.jsonl]     WordNet + package summaries
    ruvdllm distill answers --out answers.jsonl [--split train] [--batch 64]   resumable, tokens/s bar
    ruvdllm distill answers --out answers.jsonl --device cuda --batch 512 --max-minutes 3   on a GPU
    ruvdllm distill store --answers answers.jsonl --out answers.ngrams    the answer store of them

`prompts` writes the prompt file and a manifest beside it (sha256, counts by source and split).
`answers` samples the AR model (the checkpoint's own 4-bit weights, dequantized; temperature 0.7 and
top-p 0.9 as the quality benchmark samples) for every prompt of the chosen split not yet answered.
`store` turns the train split's answers into an answer store (runtime/answer_store.py), the
verified sampler's drafts from the model's own answers; `ruvdllm export --answer-store` ships it.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
import sysconfig
from pathlib import Path

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.flags import AT_LEAST_1, NON_NEGATIVE, Range

DEFAULT_PROMPTS = Path("data/distill_prompts_wordnet.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("prompts", help="build the prompt file from WordNet and package summaries")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_PROMPTS,
        help=f"the prompt file to write (default: {DEFAULT_PROMPTS})",
    )
    p.add_argument("--wordnet", type=Path, default=None, help="WordNet database dir (default: Debian's)")
    p.add_argument(
        "--site-packages",
        type=Path,
        default=None,
        help="where to read package summaries (default: this Python's)",
    )
    p.add_argument("--no-packages", action="store_true", help="WordNet prompts only")
    p.add_argument(
        "--seed",
        type=NON_NEGATIVE.parser(int),
        default=0,
        help="the prompts' sampling and order (the split goes by each prompt's hash) (default: 0)",
    )
    a = sub.add_parser("answers", help="sample the AR model's answers to a prompt file (resumable)")
    a.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL of {prompt, source, split}")
    a.add_argument("--out", type=Path, required=True, help="JSONL of answers; appended to, resumed from")
    a.add_argument(
        "--split",
        choices=("train", "held-out", "all"),
        default="train",
        help="which prompts to answer: held-out ones are what the quality benchmark asks (default: train)",
    )
    a.add_argument("--model", type=Path, help="HF directory or GGUF (default: SmolLM2-135M-Instruct)")
    a.add_argument(
        "--limit", type=NON_NEGATIVE.parser(int), help="answer at most this many prompts of the split"
    )
    a.add_argument(
        "--batch", type=AT_LEAST_1.parser(int), default=64, help="rows sampled together (default: 64)"
    )
    a.add_argument(
        "--max-new", type=AT_LEAST_1.parser(int), default=256, help="longest answer in tokens (default: 256)"
    )
    a.add_argument(
        "--temperature",
        type=NON_NEGATIVE.parser(float),
        default=0.7,
        help="sampling temperature, as the quality benchmark samples; 0 = greedy (default: 0.7)",
    )
    a.add_argument(
        "--top-p",
        type=Range(0, 1, low_open=True).parser(float),
        default=0.9,
        help="nucleus: sample among the likeliest tokens holding this much probability (default: 0.9)",
    )
    a.add_argument(
        "--seed", type=NON_NEGATIVE.parser(int), default=0, help="the sampling generator's seed (default: 0)"
    )
    a.add_argument("--threads", type=AT_LEAST_1.parser(int), help="torch CPU threads (default: torch's)")
    a.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="the model's weights as run (default: bf16)",
    )
    a.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default: cpu)")
    a.add_argument(
        "--max-minutes",
        type=NON_NEGATIVE.parser(float),
        default=0.0,
        help="start no batch after this many minutes; a rerun answers the rest (default: 0, no limit)",
    )
    s = sub.add_parser("store", help="build the answer store (drafts for the verified sampler) from answers")
    s.add_argument("--answers", type=Path, nargs="+", required=True, help="answers JSONL (.gz too)")
    s.add_argument("--out", type=Path, required=True, help="the store file to write")
    s.add_argument("--model", type=Path, help="HF directory or GGUF (default: SmolLM2-135M-Instruct)")
    s.add_argument(
        "--min-count",
        type=AT_LEAST_1.parser(int),
        default=2,
        help="keep n-grams whose best next token was seen this often (default: 2)",
    )


def read_prompt_records(path: Path) -> list[dict]:
    """The prompt file's records; a one-line error naming the file and line for anything else."""
    if not path.is_file():
        raise RuvdllmError(f"{path}: no such prompt file (build it with `ruvdllm distill prompts`)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RuvdllmError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("prompt"), str)
            or not record["prompt"].strip()
        ):
            raise RuvdllmError(f"{path}:{number}: needs a non-empty string 'prompt'")
        records.append(record)
    if not records:
        raise RuvdllmError(f"{path}: the prompt file is empty")
    return records


def write_manifest(path: Path, records: list[dict], how: dict) -> Path:
    by_source = collections.Counter(r["source"].rsplit(":", 1)[0] for r in records)
    manifest = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "prompts": len(records),
        "splits": dict(collections.Counter(r["split"] for r in records)),
        "sources": dict(sorted(by_source.items())),
        "built_with": how,
    }
    out = path.with_suffix(".manifest.json")
    out.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return out


def _prompts(args) -> int:
    from ruvdllm_export.convert.prompt_sources import WORDNET_DIR, build_prompts

    wordnet = args.wordnet or WORDNET_DIR
    site = None if args.no_packages else (args.site_packages or Path(sysconfig.get_paths()["purelib"]))
    records = build_prompts(wordnet, site, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(args.out)
    how = {"command": "ruvdllm distill prompts", "seed": args.seed, "packages": site is not None}
    manifest = write_manifest(args.out, records, how)
    print(f"{len(records)} prompts -> {args.out} (manifest {manifest})", file=sys.stderr)
    return 0


def _answers(args) -> int:
    records = read_prompt_records(args.prompts)
    if args.split != "all":
        records = [r for r in records if r.get("split", "train") == args.split]
    if args.limit is not None:
        records = records[: args.limit]
    if args.batch < 1 or args.max_new < 1 or args.max_minutes < 0:
        raise RuvdllmError("--batch and --max-new must be at least 1, --max-minutes at least 0")
    import torch

    from runtime.chat_template import special_tokens
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.convert.ar_answers import answer_prompts, causal_lm, resolve_device
    from ruvdllm_export.convert.distill import prompt_text
    from ruvdllm_export.default_model import default_gguf_path

    resolve_device(args.device)  # before minutes of loading
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.model if args.model is not None else default_gguf_path())
    spec = checkpoint.spec
    model = causal_lm(checkpoint, torch.bfloat16 if args.precision == "bf16" else torch.float32, args.device)
    eos = tuple(spec.eos_token_ids)
    pad = spec.pad_token_id if spec.pad_token_id is not None else eos[0]

    specials = special_tokens(checkpoint.tokenizer.id_to_token, spec.bos_token_id, eos)

    def render(prompt: str) -> str:
        return prompt_text(prompt, spec.chat_template, **specials)

    summary = answer_prompts(
        model,
        checkpoint.tokenizer,
        render,
        records,
        args.out,
        eos,
        pad,
        args.batch,
        args.max_new,
        args.temperature,
        args.top_p,
        args.seed,
        max_minutes=args.max_minutes,
    )
    left = f", {summary['left']} left for a rerun" if summary["left"] else ""
    print(
        f"{summary['answered']} answered ({summary['skipped']} already there{left}), "
        f"{summary['tokens']} tokens at {summary['tokens_per_s']:.0f} tokens/s -> {args.out}",
        file=sys.stderr,
    )
    return 0


def _store(args) -> int:
    from ruvdllm_export.answer_store_build import build_answer_store
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.default_model import default_gguf_path

    if args.min_count < 1:
        raise RuvdllmError("--min-count must be at least 1")
    for path in args.answers:
        if not path.is_file():
            raise RuvdllmError(f"{path}: no such answers file")
    checkpoint = load_checkpoint(args.model if args.model is not None else default_gguf_path())
    store = build_answer_store(
        args.answers, checkpoint, args.min_count, log=lambda m: print(m, file=sys.stderr)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    store.write(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def run(args) -> int:
    return {"prompts": _prompts, "answers": _answers, "store": _store}[args.action](args)
