"""The verified sampler on the default model: how many tokens a forward commits when the diffusion
model drafts and the AR model checks, and what that buys against plain diffusion decoding and
against the AR model decoded through the same graph — all in one run, on the same threads.

    python benchmarks/verified_bench.py [--model DIR] [--plain DIR] [--threads 2] [--blocks 8]
        [--rules "min_confidence=0.2" ...] [--lean] [--prompts 16] [--repeats 2]

Two tables (ratios compare numbers measured in this run; absolute times on a shared machine are
noisy, so each configuration runs `--repeats` times over all prompts, interleaved prompt by
prompt, and the table shows the fastest repeat):

  switch     ms per forward of the graph with the adapter switch (gate all 1, and half 0 / half 1)
             against the same model exported with --no-adapter-switch (`--plain DIR`), for chunks
             of `--switch-rows` rows (1, 9 and 17) after a 64-token cache: what the per-row switch
             costs, and what one more row does (`--prompts 0` prints this table alone)
  decoding   greedy, on the first held-out prompts of data/distill_prompts_wordnet.jsonl (chat
             template, stop at EOS): `ar` (the AR model, one token per forward), `ltr-1` (BD3LM,
             one token per step, left to right), and per draft block `verified` drafting the full
             block every forward (the sampler before adaptive sizing), `verified` as it runs by
             default (the block sized by recent acceptance, prompt lookup beside it:
             runtime/drafting.py) and under each drafting rule of `--rules`. Per configuration: forwards,
             tokens, tokens per forward (= mean accepted length: kept drafts + the AR token),
             draft acceptance (and of it, the drafts prompt lookup copied: kept/checked), ms per forward, tokens/s and its ratio to `ar`; and whether the
             verified tokens equal the AR tokens on every prompt (they must)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import artifact  # noqa: E402
from runtime.backend import Chunk  # noqa: E402
from runtime.chat_template import chat_prompt  # noqa: E402
from runtime.cpython_model import open_model  # noqa: E402
from runtime.drafting import FULL_BLOCK, Drafting  # noqa: E402
from runtime.ort_backend import OrtBackend, OrtOptions  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402

PROMPTS = Path(__file__).resolve().parents[1] / "data" / "distill_prompts_wordnet.jsonl"
SPLIT = "held-out"  # no training step saw these


def switch_section(
    model_dir: Path, plain_dir: Path | None, threads: int, repeats: int, row_counts=(1, 9, 17)
) -> None:
    options = OrtOptions(device="cpu", intra_op_threads=threads)
    config = artifact.load_config(model_dir)
    graphs = {"switch, gate 1": model_dir, "switch, gate 0|1": model_dir}
    if plain_dir is not None:
        graphs["no switch"] = plain_dir
    backends = {
        name: OrtBackend(d / artifact.GRAPH_NAME, artifact.load_config(d), options)
        for name, d in graphs.items()
    }
    slots, prefix = config.adapter_slots, list(range(100, 164))
    print(
        f"\n## switch: ms per forward after a {len(prefix)}-token cache ({threads} threads, best of {repeats})\n"
    )
    print("| rows | " + " | ".join(graphs) + " | switch / no switch |")
    print("|---|" + "---|" * (len(graphs) + 1))
    for rows in row_counts:
        times: dict[str, list[float]] = {name: [] for name in graphs}
        for _ in range(repeats):
            for name, backend in backends.items():  # interleaved: load changes hit every graph alike
                backend.reset()
                backend.forward(Chunk(prefix, list(range(64)), list(range(64)), 63, [[0.0] * slots] * 64))
                backend.commit(64)
                gate = None
                if backend.has_gate:
                    gate = (
                        [1.0] * rows if "gate 1" in name else [0.0] * (rows // 2) + [1.0] * (rows - rows // 2)
                    )
                chunk = Chunk(
                    list(range(200, 200 + rows)),
                    list(range(64, 64 + rows)),
                    [0] * rows,
                    0,
                    [[0.0] * slots] * rows,
                    gate,
                )
                started = time.perf_counter()
                backend.forward(chunk)
                times[name].append((time.perf_counter() - started) * 1e3)
        best = {name: min(t) for name, t in times.items()}
        ratio = f"{best['switch, gate 1'] / best['no switch']:.3f}" if "no switch" in best else "-"
        print(f"| {rows} | " + " | ".join(f"{best[n]:.1f}" for n in graphs) + f" | {ratio} |")


def parse_rule(spec: str) -> Drafting:
    """ "min_confidence=0.2,lookup=first" over Drafting's fields, each typed as its default
    ("default": Drafting())."""
    types = {f.name: type(f.default) for f in fields(Drafting)}
    values = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "default":
            continue
        if key not in types:
            raise SystemExit(f"rule {spec!r}: {key!r} is not one of {', '.join(types)}")
        kind = types[key]
        values[key] = value.lower() in ("1", "true") if kind is bool else kind(value)
    return Drafting(**values)


def decoding_configs(blocks, rules, length: int, lean: bool = False) -> dict[str, GenerationSettings]:
    configs = {"ar": GenerationSettings(sampler="ar", length=length)}
    if not lean:
        configs["ltr-1"] = GenerationSettings(sampler="bd3lm", order="left-to-right", length=length)
    for block in blocks:
        verified = GenerationSettings(sampler="verified", length=length, block_size=block)
        if not lean:
            configs[f"verified, full block {block}"] = replace(verified, drafting=FULL_BLOCK)
        configs[f"verified {block}, default rule"] = verified
        for spec in rules:
            configs[f"verified {block}, {spec}"] = replace(verified, drafting=parse_rule(spec))
    return configs


def decoding_section(
    model_dir: Path, threads: int, configs: dict, length: int, prompts: int, repeats: int
) -> dict:
    model = open_model(model_dir, options=OrtOptions(device="cpu", intra_op_threads=threads))
    records = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    texts = [r["prompt"] for r in records if r.get("split", SPLIT) == SPLIT][:prompts]
    ids = [model.encode(chat_prompt(model, [{"role": "user", "content": t}])) for t in texts]
    model.warm_up()
    runs: dict[str, list[list]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name in configs:
            runs[name].append([])
        for p in ids:  # interleaved per prompt: a change of load hits every configuration alike
            for name, settings in configs.items():
                runs[name][-1].append(model.generate(p, settings))
    print(f"\n## decoding: {len(ids)} held-out prompts, greedy, length {length}, {threads} threads")
    print(f"(fastest of {repeats} repeats per configuration, interleaved per prompt)\n")
    print(
        "| configuration | forwards | tokens | tokens/forward | drafts kept | of them copied | ms/forward "
        "| tokens/s | × ar |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary, ar_rate = {}, None
    for name, repeat in runs.items():
        done = min(repeat, key=lambda r: sum(c.result.wall_ms for c in r))
        forwards = sum(c.result.steps for c in done)
        tokens = sum(len(c.tokens) for c in done)
        committed = sum(len(e.committed) for c in done for e in c.trace)
        drafted = sum(e.drafted for c in done for e in c.trace)
        kept = committed - forwards if drafted else 0
        wall_s = sum(c.result.wall_ms for c in done) / 1e3
        rate = tokens / wall_s
        ar_rate = ar_rate or rate
        ms = sum(c.result.forward_ms for c in done) / forwards
        accepted = f"{kept}/{drafted} ({kept / drafted:.0%})" if drafted else "-"
        copied_kept = sum(c.result.looked_up[0] for c in done)
        copied = sum(c.result.looked_up[1] for c in done)
        from_lookup = f"{copied_kept}/{copied}" if copied else "-"
        print(
            f"| {name} | {forwards} | {tokens} | {committed / forwards:.2f} | {accepted} | {from_lookup} | {ms:.1f} | "
            f"{rate:.1f} | {rate / ar_rate:.2f} |"
        )
        summary[name] = {"tokens": [c.tokens for c in done], "tokens_per_forward": committed / forwards}
    ar_tokens = summary["ar"]["tokens"]
    for name in configs:
        if name.startswith("verified"):
            same = sum(a == b for a, b in zip(ar_tokens, summary[name]["tokens"], strict=True))
            print(f"\n{name}: tokens equal to the AR model's on {same}/{len(ids)} prompts")
    spread = [statistics.median(sum(c.result.wall_ms for c in r) for r in runs[n]) for n in configs]
    print(f"median wall per configuration (s): {', '.join(f'{s / 1e3:.1f}' for s in spread)}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="model directory (default: the default model, exported once)"
    )
    parser.add_argument("--plain", type=Path, help="the same model exported with --no-adapter-switch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, nargs="+", default=[8], help="verified draft blocks (masks)")
    parser.add_argument(
        "--rules",
        nargs="*",
        default=[],
        help='drafting rules to try beside the default, as "min_confidence=0.2,pause_below=0.5"',
    )
    parser.add_argument(
        "--lean", action="store_true", help="only ar, the default rule and --rules (no ltr-1, no full block)"
    )
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--switch-repeats", type=int, default=20, help="0 skips the switch table")
    parser.add_argument(
        "--switch-rows", type=int, nargs="+", default=[1, 9, 17], help="chunk sizes the switch table times"
    )
    args = parser.parse_args()
    model_dir = args.model
    if model_dir is None:
        from ruvdllm.default_artifact import default_model_dir

        model_dir = default_model_dir("cpu")
    if args.switch_repeats > 0:
        switch_section(model_dir, args.plain, args.threads, args.switch_repeats, args.switch_rows)
    if args.prompts < 1:
        return 0
    configs = decoding_configs(args.blocks, args.rules, args.length, args.lean)
    decoding_section(model_dir, args.threads, configs, args.length, args.prompts, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
