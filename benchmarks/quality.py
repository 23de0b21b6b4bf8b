"""Parallel decoding against the AR model it came from: for every decoding configuration of the
runtime, on held-out prompts, how good the text is (judged by the AR model), how varied, how many
tokens each forward commits and how fast it runs — beside the AR baselines on the same threads.

    python benchmarks/quality.py [--model DIR] [--num-prompts 64] [--length 64] [--threads 2]
        [--temperatures 0.7 0] [--configs NAME|SPEC ...] [--no-baselines] [--json FILE]

What runs where:
- The diffusion configurations run through the real runtime (`runtime.cpython_model.open_model`
  on the default model's CPU export, or --model DIR), so the figures are what users get.
- The AR model (the checkpoint's own weights, 4-bit blocks dequantized, in transformers, float32)
  writes the reference samples at each temperature (top-p as given; temperature 0 is greedy), and
  judges every sample: generative perplexity = exp(mean NLL of the sampled tokens given the
  prompt); "x AR" = that ÷ the AR samples' at the same temperature. distinct-2 (unique ÷ all
  bigrams over the samples) sits beside it so that repetition cannot pass for quality.
- Tokens per forward = committed positions ÷ denoising steps over the quality pass (stopping at
  EOS, as `ruvdllm generate` does). Tokens/s comes from a separate speed pass: `--length` tokens
  without the EOS stop on the first `--speed-prompts` prompts, in `--rounds` rounds that
  interleave every configuration with the AR baselines (llama.cpp on the same GGUF,
  onnxruntime-genai on the same model; benchmarks/baselines.py), the median round reported, so
  that a shared machine's drifting load falls on all of them alike.

Configurations are named (CONFIGS; `--configs` picks some) or written as settings,
"decoding=entropy-bounded,entropy_bound=1.5" (the names of runtime.settings.INPUTS; the verified
sampler's drafting rule as "sampler=verified,drafting.lookup=first"). A decoding
the runtime gains later (runtime.settings.DECODINGS) gets a row with its defaults. Everything is
seeded: the same command gives the same samples.

Prompts: `--prompts` JSONL records with "prompt" (and "split": only `--split` is used when
records carry one); default: the WordNet prompts' held-out split, which no training step saw.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runtime, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts: the metrics, the baselines
from conversion_quality import distinct_n  # noqa: E402

from runtime.drafting import LENIENT, Drafting  # noqa: E402
from runtime.settings import DECODINGS, GenerationSettings, check_settings, settings_from  # noqa: E402
from ruvdllm.errors import RuvdllmError  # noqa: E402

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "distill_prompts_wordnet.jsonl"
GOAL_PARALLEL = 2.0  # tokens per forward the issue asks for ...
GOAL_PPL = 1.5  # ... at no more than this x the AR samples' generative perplexity ...
GOAL_DISTINCT = 0.05  # ... and distinct-2 within this of the AR's
GOAL_ONE_PER_STEP = 1.2  # x AR at one token per step

# name -> settings over GenerationSettings' defaults, as a function of the model's block size. Each
# names its order, so that a change of the default order leaves the rows as they are.
CONFIDENCE, LEFT_TO_RIGHT = {"order": "confidence"}, {"order": "left-to-right"}
CONFIGS = {
    "fixed-1": lambda block: {"steps": block} | CONFIDENCE,  # LLaDA's low-confidence remasking
    "fixed-2": lambda block: {"steps": max(1, block // 2)} | CONFIDENCE,
    "fixed-4": lambda block: {"steps": max(1, block // 4)} | CONFIDENCE,
    "threshold": lambda block: {"decoding": "threshold", "threshold": 0.9} | CONFIDENCE,  # Fast-dLLM's
    "entropy-bounded": lambda block: {"decoding": "entropy-bounded", "entropy_bound": 0.5} | CONFIDENCE,
    "ltr-1": lambda block: {"steps": block} | LEFT_TO_RIGHT,  # the order the AR parent writes in
    "ltr-2": lambda block: {"steps": max(1, block // 2)} | LEFT_TO_RIGHT,
    "ltr-4": lambda block: {"steps": max(1, block // 4)} | LEFT_TO_RIGHT,
    "ltr-entropy-bounded": lambda block: (
        {"decoding": "entropy-bounded", "entropy_bound": 0.5} | LEFT_TO_RIGHT
    ),
    # the diffusion model drafts a block, the AR model keeps what it would have written (lossless)
    "verified": lambda block: {"sampler": "verified"},
    # the same, keeping drafts the AR model finds nearly as likely as its own token (lossy)
    "verified-lenient": lambda block: {"sampler": "verified", "drafting": drafting_overrides(LENIENT)},
}


def drafting_overrides(drafting: Drafting) -> dict:
    """The fields of `drafting` that differ from the default rule's."""
    default = Drafting()
    return {
        f.name: getattr(drafting, f.name)
        for f in fields(Drafting)
        if getattr(drafting, f.name) != getattr(default, f.name)
    }


def configurations(block: int, decodings: tuple[str, ...] = DECODINGS) -> dict[str, dict]:
    """Every named configuration, plus one row with its defaults for each decoding no named one
    uses (a decoding added to the runtime later shows up without an edit here)."""
    named = {name: make(block) for name, make in CONFIGS.items()}
    used = {overrides.get("decoding", GenerationSettings.decoding) for overrides in named.values()}
    return named | {d: {"decoding": d} for d in decodings if d not in used}


def parse_spec(spec: str) -> dict:
    """ "key=value,key=value" over the settings' names, each value typed as its field; the
    verified sampler's drafting rule as "drafting.NAME=value" over Drafting's fields (collected
    under "drafting")."""
    skip = ("dgr_config", "drafting")
    types = {f.name: type(f.default) for f in fields(GenerationSettings) if f.name not in skip}
    types |= {f"drafting.{f.name}": type(f.default) for f in fields(Drafting)}
    overrides: dict = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in types or not value:
            raise RuvdllmError(f"configuration {spec!r}: {item!r} is not name=value over {', '.join(types)}")
        kind = int if key in ("steps", "block_size") else types[key]
        try:
            typed = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise RuvdllmError(f"configuration {spec!r}: {key} {value!r} is not a {kind.__name__}") from None
        group, _, name = key.rpartition(".")
        if group:
            overrides.setdefault(group, {})[name] = typed
        else:
            overrides[key] = typed
    return overrides


def settings_of(overrides: dict, base: dict) -> GenerationSettings:
    """GenerationSettings from a configuration's overrides (parse_spec's or CONFIGS') and `base`."""
    inputs = {k: v for k, v in overrides.items() if k != "drafting"} | base
    settings = settings_from(inputs)
    return replace(settings, drafting=replace(settings.drafting, **overrides.get("drafting", {})))


def read_prompts(path: Path, split: str, count: int) -> list[str]:
    """The first `count` prompts of `split` (records without a split all count)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RuvdllmError(f"{path}: cannot read the prompts ({exc})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt, where = record["prompt"], record.get("split", split)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RuvdllmError(f'{path}: line {number} is not a {{"prompt": ...}} record') from None
        if where == split and isinstance(prompt, str) and prompt.strip():
            prompts.append(prompt)
    if not prompts:
        raise RuvdllmError(f"{path}: no prompts in split {split!r}")
    return prompts[:count]


class ArModel:
    """The AR model the diffusion model was converted from: it samples the reference answers and
    judges every sample. Batched: one transformers forward scores a batch of samples."""

    def __init__(self, gguf: Path | None, batch_size: int = 16):
        from ruvdllm_export.checkpoints import load_checkpoint
        from ruvdllm_export.convert.ar_answers import causal_lm
        from ruvdllm_export.default_model import default_gguf_path

        self.path = gguf or default_gguf_path()
        checkpoint = load_checkpoint(self.path)
        self.spec = checkpoint.spec
        self.model = causal_lm(checkpoint, torch.float32)  # float32: a judge, not a speed record
        self.pad = (
            self.spec.pad_token_id if self.spec.pad_token_id is not None else self.spec.eos_token_ids[0]
        )
        self.batch_size = batch_size

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], length: int, temperature: float, top_p: float, seed: int):
        """One answer per prompt (EOS cut off), `length` tokens at most."""
        from ruvdllm_export.convert.ar_answers import answer_batch

        generator = torch.Generator().manual_seed(seed)
        answers = []
        for i in range(0, len(prompts), self.batch_size):
            rows = prompts[i : i + self.batch_size]
            eos = self.spec.eos_token_ids
            answers += [
                a
                for a, _ in answer_batch(
                    self.model, rows, length, temperature, top_p, self.pad, eos, generator
                )
            ]
        return answers

    @torch.no_grad()
    def nll(self, prompts: list[list[int]], samples: list[list[int]]) -> tuple[float, int]:
        """Summed -log p_AR(sample tokens | prompt, earlier sample tokens) and their count."""
        total, count = 0.0, 0
        pairs = [(p, s) for p, s in zip(prompts, samples, strict=True) if s]
        for i in range(0, len(pairs), self.batch_size):
            batch = pairs[i : i + self.batch_size]
            width = max(len(p) + len(s) for p, s in batch)
            ids = torch.tensor([p + s + [self.pad] * (width - len(p) - len(s)) for p, s in batch])
            mask = torch.tensor([[1] * (len(p) + len(s)) + [0] * (width - len(p) - len(s)) for p, s in batch])
            logprobs = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for row, (p, s) in enumerate(batch):
                targets = torch.tensor(s)
                rows = torch.arange(len(p) - 1, len(p) + len(s) - 1)  # row r predicts token r + 1
                total -= float(logprobs[row, rows, targets].sum())
                count += len(s)
        return total, count


def quality_row(name, samples, ar: ArModel, prompts, decode, steps=None, committed=None) -> dict:
    nll, count = ar.nll(prompts, samples)
    return {
        "config": name,
        "gen_ppl": math.exp(nll / max(count, 1)),
        "distinct2": distinct_n(samples, 2),
        "tokens": count,
        "tokens_per_forward": committed / steps if steps else None,
        "example": decode(samples[0]),  # the first prompt's answer, for the eye
    }


def run_config(model, prompts, settings: GenerationSettings, seed: int, bar) -> tuple[list, int, int]:
    """(samples, denoising steps, committed positions) over the prompts, prompt i seeded seed + i."""
    samples, steps, committed = [], 0, 0
    for i, prompt in enumerate(prompts):
        done = model.generate(prompt, settings, seed=seed + i)
        samples.append(done.tokens)
        steps += done.result.steps
        committed += sum(len(event.committed) for event in done.trace)
        bar.update(1)
    return samples, steps, committed


def speed_pass(model, settings_of: dict, prompts, args, gguf: Path | None) -> dict:
    """Tokens/s per configuration and per AR baseline: `args.rounds` rounds, each running every
    configuration on the speed prompts (`length` tokens, no EOS stop) and each baseline once; the
    median round per entry."""
    from tqdm import tqdm

    times: dict[str, list[float]] = {name: [] for name in settings_of}
    baselines: dict[str, list] = {}
    if not args.no_baselines:
        import baselines as ar_baselines  # benchmarks/baselines.py

        runners = {"llama.cpp": ar_baselines.llama_cpp_ar, "onnxruntime-genai": ar_baselines.genai_ar}
        baselines = {name: [] for name in runners}
    tokens = args.length * len(prompts)
    with tqdm(total=args.rounds * len(settings_of), desc="speed", unit="config", file=sys.stderr) as bar:
        for _ in range(args.rounds):
            for name, settings in settings_of.items():
                started = time.perf_counter()
                for i, prompt in enumerate(prompts):
                    model.generate(prompt, replace(settings, stop_at_eos=False), seed=args.seed + i)
                times[name].append(time.perf_counter() - started)
                bar.update(1)
            for name in baselines:
                baselines[name].append(runners[name](gguf, prompts[0], args.length, args.threads, repeats=1))
    out = {name: tokens / statistics.median(t) for name, t in times.items()}
    for name, results in baselines.items():
        measured = [r.tokens_per_s for r in results if r.tokens_per_s]
        out[name] = statistics.median(measured) if measured else None
        if not measured:
            out[f"{name} (why not)"] = results[-1].reason
    return out


def meets_goal(row: dict, ar: dict) -> bool:
    """>= GOAL_PARALLEL tokens per forward at <= GOAL_PPL x the AR's perplexity, distinct-2 close."""
    return (
        (row["tokens_per_forward"] or 0) >= GOAL_PARALLEL
        and row["gen_ppl"] / ar["gen_ppl"] <= GOAL_PPL
        and abs(row["distinct2"] - ar["distinct2"]) <= GOAL_DISTINCT
    )


def goals(rows: list[dict], ar: dict) -> list[str]:
    """The issue's goals, met or missed by how much (a report, not an assertion)."""
    goal = f">= {GOAL_PARALLEL:g} tokens/forward at <= {GOAL_PPL}x AR, distinct-2 within {GOAL_DISTINCT}"
    meets = [r["config"] for r in rows if meets_goal(r, ar)]
    if meets:
        lines = [f"goal {goal}: met by {', '.join(meets)}"]
    else:
        parallel = [r for r in rows if (r["tokens_per_forward"] or 0) >= GOAL_PARALLEL]
        best = min(parallel, key=lambda r: r["gen_ppl"], default=None)
        closest = f" (best such: {best['config']} at {best['gen_ppl'] / ar['gen_ppl']:.2f}x)" if best else ""
        lines = [f"goal {goal}: NOT met{closest}"]
    one = [r for r in rows if r["tokens_per_forward"] == 1.0]
    if one:
        best = min(one, key=lambda r: r["gen_ppl"])
        ratio = best["gen_ppl"] / ar["gen_ppl"]
        verdict = "met" if ratio <= GOAL_ONE_PER_STEP else "NOT met"
        lines.append(
            f"goal one token per step <= {GOAL_ONE_PER_STEP}x AR: {verdict} ({best['config']} at {ratio:.2f}x)"
        )
    return lines


def recommend(rows: list[dict], ar: dict, speeds: dict) -> str:
    """`ruvdllm generate`'s default by this table: the fastest configuration that meets the goal
    (by tokens/s, else tokens per forward); until one does, the best quality."""
    meets = [r for r in rows if meets_goal(r, ar)]
    if meets:
        best = max(meets, key=lambda r: (speeds.get(r["config"]) or 0, r["tokens_per_forward"]))
        return f"default by this table: {best['config']} (the fastest that meets the goal)"
    best = min(rows, key=lambda r: r["gen_ppl"])
    return f"default by this table: {best['config']} (none meets the goal: the best quality)"


def print_table(temperature, ar_row, rows, speeds, describe) -> None:
    top_p = "" if temperature == 0 else f", top-p {ar_row['top_p']}"
    print(f"\n## Temperature {temperature:g}{top_p} ({ar_row['prompts']} prompts)\n")
    llama = speeds.get("llama.cpp")
    print(
        "| configuration | settings | gen. ppl | x AR | distinct-2 (AR) | tokens/forward | tokens/s | x llama.cpp |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(f"| AR samples | - | {ar_row['gen_ppl']:.2f} | 1.00 | {ar_row['distinct2']:.3f} | 1 | - | - |")
    for r in rows:
        speed = speeds.get(r["config"])
        ratio = f"{speed / llama:.2f}" if speed and llama else "-"
        print(
            f"| {r['config']} | {describe(r['config'])} | {r['gen_ppl']:.2f} | {r['gen_ppl'] / ar_row['gen_ppl']:.2f} | "
            f"{r['distinct2']:.3f} ({ar_row['distinct2']:.3f}) | {r['tokens_per_forward']:.2f} | "
            f"{f'{speed:.1f}' if speed else '-'} | {ratio} |"
        )
    for name in ("llama.cpp", "onnxruntime-genai"):
        if name in speeds:
            value = speeds[name]
            shown = f"{value:.1f}" if value else f"- ({speeds.get(f'{name} (why not)', '')})"
            print(
                f"| {name} (AR baseline) | - | - | - | - | 1 | {shown} | {f'{value / llama:.2f}' if value and llama else '-'} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="model directory (default: the default model's CPU export)"
    )
    parser.add_argument(
        "--gguf", type=Path, help="the AR model, judge and baselines (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL of {prompt, split}")
    parser.add_argument("--split", default="held-out", help="the records' split to use (default held-out)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--length", type=int, default=64, help="new tokens per sample (at most)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 0.0])
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus mass when temperature > 0")
    parser.add_argument(
        "--configs", nargs="+", help=f"names ({', '.join(CONFIGS)}) or settings specs; default all"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="one count for the runtime, the judge and the baselines"
    )
    parser.add_argument(
        "--speed-prompts", type=int, default=1, help="prompts timed per round in the speed pass"
    )
    parser.add_argument("--rounds", type=int, default=3, help="speed-pass rounds (0: no speed pass)")
    parser.add_argument("--no-baselines", action="store_true", help="no llama.cpp / onnxruntime-genai rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json",
        type=Path,
        help="also write the numbers here, after every row; rerunning the command resumes from it",
    )
    args = parser.parse_args(argv)
    from tqdm import tqdm

    from runtime.chat_template import chat_prompt
    from runtime.cpython_model import open_model
    from runtime.ort_backend import OrtOptions

    torch.set_num_threads(args.threads)
    texts = read_prompts(args.prompts, args.split, args.num_prompts)
    if args.model is None:
        from ruvdllm.default_artifact import default_model_dir

        args.model = default_model_dir("cpu")
    model = open_model(args.model, options=OrtOptions(device="cpu", intra_op_threads=args.threads))
    block = model.config.block_size
    named = configurations(block)
    chosen = args.configs or list(named)
    overrides = {name: named[name] if name in named else parse_spec(name) for name in chosen}
    ar = ArModel(args.gguf)
    if ar.spec.vocab_size != model.config.vocab_size:
        raise RuvdllmError(
            f"{ar.path}: vocabulary {ar.spec.vocab_size} differs from the model's {model.config.vocab_size}"
        )
    prompts = [model.encode(chat_prompt(model, [{"role": "user", "content": t}])) for t in texts]
    model.warm_up()
    print(
        f"model: {args.model}  AR: {ar.path}  prompts: {len(prompts)} of {args.prompts.name} ({args.split})  "
        f"L = {args.length}  threads: {args.threads}  block: {block}"
    )

    def settings_for(name: str, temperature: float) -> GenerationSettings:
        top_p = args.top_p if temperature > 0 else 1.0
        settings = settings_of(
            overrides[name], {"length": args.length, "temperature": temperature, "top_p": top_p}
        )
        check_settings(settings)
        return settings

    def describe(name: str) -> str:
        flat = {k: v for k, v in overrides[name].items() if k != "drafting"}
        flat |= {f"drafting.{k}": v for k, v in overrides[name].get("drafting", {}).items()}
        return ", ".join(f"{k}={v}" for k, v in flat.items()) or "defaults"

    run = {
        "model": str(args.model),
        "ar": str(ar.path),
        "prompts": f"{args.prompts.name} ({args.split})",
        "num_prompts": len(prompts),
        "length": args.length,
        "top_p": args.top_p,
        "seed": args.seed,
        "threads": args.threads,
    }
    results = resume(args.json, run)
    save = (lambda: write_atomic(args.json, results)) if args.json else (lambda: None)
    if args.rounds > 0 and not set(overrides) <= set(results["speeds"]):
        speeds = {name: settings_for(name, args.temperatures[0]) for name in overrides}
        results["speeds"] = speed_pass(
            model, speeds, prompts[: args.speed_prompts], args, args.gguf or ar.path
        )
        save()
    speeds = results["speeds"]
    total = len(args.temperatures) * len(overrides) * len(prompts)
    with tqdm(total=total, desc="samples", unit="sample", file=sys.stderr) as bar:
        for temperature in args.temperatures:
            top_p = args.top_p if temperature > 0 else 1.0
            table = results["tables"].setdefault(f"{temperature:g}", {"temperature": temperature, "rows": {}})
            if "ar" not in table:
                ar_samples = ar.sample(prompts, args.length, temperature, top_p, args.seed)
                table["ar"] = quality_row("AR", ar_samples, ar, prompts, model.decode) | {"top_p": top_p}
                save()
            for name in overrides:
                if table["rows"].get(name, {}).get("settings") == overrides[name]:
                    bar.update(len(prompts))  # measured by an earlier, interrupted run of this command
                    continue
                samples, steps, committed = run_config(
                    model, prompts, settings_for(name, temperature), args.seed, bar
                )
                row = quality_row(name, samples, ar, prompts, model.decode, steps, committed)
                table["rows"][name] = row | {"settings": overrides[name]}
                save()
    for temperature in args.temperatures:
        table = results["tables"][f"{temperature:g}"]
        rows = [table["rows"][name] for name in overrides]
        print_table(temperature, table["ar"] | {"prompts": len(prompts)}, rows, speeds, describe)
        print()
        for line in [*goals(rows, table["ar"]), recommend(rows, table["ar"], speeds)]:
            print(f"- {line}")
        print("\nFirst sample of each (prompt 1):")
        for row in [table["ar"], *rows]:
            print(f"- {row['config']}: {row['example'][:160]!r}")
    return 0


def resume(path: Path | None, run: dict) -> dict:
    """The results an interrupted run of the same command left in `path` (its rows are kept), or
    a fresh record. A file from another run is an error, never overwritten."""
    fresh = {"run": run, "speeds": {}, "tables": {}}
    if path is None or not path.exists():
        return fresh
    try:
        previous = json.loads(path.read_text())
        theirs = previous["run"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RuvdllmError(f"{path}: not this benchmark's results; choose another --json") from None
    if theirs != run:
        differ = ", ".join(sorted(k for k in run if theirs.get(k) != run[k]))
        raise RuvdllmError(f"{path}: holds a run with other {differ}; choose another --json")
    return previous


def write_atomic(path: Path, results: dict) -> None:
    """Replace `path` in one step: a crash leaves the previous results, never half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(results, indent=1))
    os.replace(partial, path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuvdllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
