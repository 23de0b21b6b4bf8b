"""`ruvdllm generate "prompt"`: sample from a model directory (the default model when --model is
not given), showing the denoising live in a terminal, streaming plain text otherwise, or printing
tokens, the per-step trace and timings as JSON with --json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runtime.artifact import sampler_warning
from runtime.dgr import STRATEGIES
from runtime.display import LiveView, StreamPrinter
from runtime.learning.feedback_command import add_learning_arguments, learning_loop
from runtime.schedules import SCHEDULES
from runtime.settings import (
    AUTO,
    DECODINGS,
    ORDERS,
    SAMPLERS,
    USER_ACCEPTANCE,
    GenerationSettings,
    acceptance_that_runs,
    check_acceptance,
    check_settings,
    inputs_of,
    new_seed,
    settings_from,
)
from ruvdllm.errors import RuvdllmError

DEFAULTS = GenerationSettings()  # the flags' defaults: one source, the dataclass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help='the prompt text ("-" reads it from standard input)')
    parser.add_argument(
        "--model", type=Path, help="model directory from `ruvdllm export` (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--length",
        type=int,
        default=DEFAULTS.length,
        help=f"new tokens to generate (default {DEFAULTS.length})",
    )
    parser.add_argument("--steps", type=int, help="denoising steps per span (default: one token per step)")
    parser.add_argument(
        "--block-size",
        type=int,
        help="BD3LM block size, or the verified sampler's draft block (default: the model's)",
    )
    parser.add_argument(
        "--sampler",
        default=DEFAULTS.sampler,
        help=f"{' | '.join(SAMPLERS)} (default {DEFAULTS.sampler}: verified — the AR model's own text, "
        "drafted by the diffusion model — where the model has the adapter switch, else its diffusion "
        "sampler, which --steps, --decoding, --threshold, --entropy-bound, --order or --schedule also choose)",
    )
    parser.add_argument(
        "--acceptance",
        default=USER_ACCEPTANCE,
        help="the verified sampler's check of drafts: exact (the AR model's own text), lenient (also "
        "keeps a draft the AR model finds at least 0.2x as likely as its own token: more tokens per "
        "forward, a little further from its text), auto (default: lenient when greedy, exact when sampling)",
    )
    parser.add_argument(
        "--decoding", default=DEFAULTS.decoding, help=f"{' | '.join(DECODINGS)} (default {DEFAULTS.decoding})"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULTS.threshold,
        help=f"confidence threshold for --decoding threshold (default {DEFAULTS.threshold})",
    )
    parser.add_argument(
        "--entropy-bound",
        type=float,
        default=DEFAULTS.entropy_bound,
        help="nats of summed entropy a step may commit, for --decoding entropy-bounded "
        f"(default {DEFAULTS.entropy_bound:g})",
    )
    parser.add_argument(
        "--order",
        default=DEFAULTS.order,
        help=f"which masked positions commit first: {' | '.join(ORDERS)} (default {DEFAULTS.order})",
    )
    parser.add_argument(
        "--schedule",
        default=DEFAULTS.schedule,
        help=f"noise schedule: {', '.join(SCHEDULES)} (default {DEFAULTS.schedule})",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=DEFAULTS.temperature,
        help=f"0 = greedy (default {DEFAULTS.temperature:g})",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULTS.top_k,
        help=f"sample among the k best candidates (0 = all; default {DEFAULTS.top_k})",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=DEFAULTS.top_p,
        help=f"nucleus sampling mass (default {DEFAULTS.top_p:g})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="random seed: same seed, same tokens (default: a fresh one when sampling, shown in the "
        "summary and --json so a run can be replayed; 0 when greedy)",
    )
    parser.add_argument(
        "--bank", type=Path, help="TALoRA/DGR adapter bank directory (default: the model's banks/)"
    )
    parser.add_argument(
        "--talora",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.talora,
        help="timestep-aware adapters",
    )
    parser.add_argument(
        "--dgr",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.dgr,
        help="retrieve adapters when uncertain",
    )
    parser.add_argument(
        "--dgr-strategy",
        default=DEFAULTS.dgr_config.strategy,
        help=f"{' | '.join(STRATEGIES)} (default {DEFAULTS.dgr_config.strategy})",
    )
    parser.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    parser.add_argument(
        "--no-eos-stop", action="store_true", help="keep generating past an end-of-sequence token"
    )
    parser.add_argument(
        "--json", action="store_true", help="print tokens, the per-step trace and timings as JSON"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = one per core)"
    )
    parser.add_argument("--verify", default="cached", help="manifest check: cached (default) | full | sizes")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print the summary line (the sampler that ran, tokens per forward, speed) to stderr "
        "also when the output is not a terminal",
    )
    add_learning_arguments(parser)


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The flags that name a setting (runtime.settings.INPUTS), plus --no-eos-stop."""
    settings = settings_from({**inputs_of(vars(args)), "stop_at_eos": not args.no_eos_stop})
    check_settings(settings)
    return settings


def read_prompt(args: argparse.Namespace) -> str:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise RuvdllmError("prompt: empty (give some text)")
    return prompt


def run(args: argparse.Namespace, default_model: Callable[..., Path]) -> int:
    """`default_model(target, progress)` finds or exports the default model (ruvdllm.default_artifact,
    handed in by the command layer: runtime cannot reach the exporter)."""
    from runtime.chat_template import chat_prompt
    from runtime.cpython_model import open_model
    from runtime.ort_backend import OrtOptions

    prompt = read_prompt(args)
    settings = generation_settings(args)
    loop = learning_loop(args)
    started = time.perf_counter()
    directory = args.model if args.model is not None else default_model("cpu", progress=not args.json)
    options = OrtOptions(device=args.device, intra_op_threads=args.threads)
    model = open_model(
        directory,
        bank=args.bank,
        options=options,
        verify=args.verify,
        settings=settings,  # they decide the graph: the AR graph where only `ar` will run
        acceptance=args.acceptance,
    )
    text = (
        prompt
        if args.raw or not model.config.chat_template
        else chat_prompt(model, [{"role": "user", "content": prompt}])
    )
    ids = model.encode(text)
    model.check(len(ids), settings)
    asked_auto = settings.sampler == AUTO
    settings = model.concrete(settings, args.acceptance)  # sampler auto -> the one that runs, reported below
    # auto ran `ar` because drafts do not pay on this CPU: said with the sampler (runtime/row_cost.py)
    extra_row = model.extra_row_cost() if asked_auto and settings.sampler == "ar" else None
    check_acceptance(args.acceptance, settings.sampler)
    # Allowed (a comparison may want it), but said: the text will be poor (config `samplers`).
    warnings = [w for w in (sampler_warning(model.config, settings.sampler),) if w]
    warnings += unused_by_ar(args, settings.sampler, asked_auto)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    load_ms = (time.perf_counter() - started) * 1e3
    if loop is not None:
        loop.attach(model)
    control = model.control(settings)
    seed = seed_for(args.seed, settings)

    if args.json:
        done = model.generate(ids, settings, seed=seed, control=control)
        completion_id = record(loop, model, ids, settings, done, control, text)
        graph = getattr(model.backend, "graph", None)
        body = report(
            done, settings, load_ms, seed, str(directory), warnings, extra_row, graph and graph.name
        )
        print(json.dumps({"completion_id": completion_id, **body}, indent=1))
        return 0
    if sys.stdout.isatty():
        with LiveView(model.token_text) as view:
            done = model.generate(ids, settings, seed=seed, on_step=view, control=control)
        print(done.text)  # the live view erased itself
        print(summary(done, settings, extra_row, seed), file=sys.stderr)
    else:
        printer = StreamPrinter(model.decode, sys.stdout, set(model.config.eos_token_ids))
        done = model.generate(ids, settings, seed=seed, on_step=printer, control=control)
        printer.finish(done.text)
        if args.verbose:
            print(summary(done, settings, extra_row, seed), file=sys.stderr)
    completion_id = record(loop, model, ids, settings, done, control, text)
    if completion_id is not None:
        print(
            f"completion {completion_id} (feedback: ruvdllm feedback {completion_id} --up)", file=sys.stderr
        )
    return 0


def unused_by_ar(args: argparse.Namespace, sampler: str, asked_auto: bool) -> list[str]:
    """One line per flag given that the `ar` sampler does not read (it runs the AR model alone,
    one token per forward), so an answer is not taken for theirs; under sampler auto, why it ran."""
    if sampler != "ar":
        return []
    why = " (sampler auto ran it: drafts do not pay on this CPU)" if asked_auto else ""
    given = [flag for flag, value in (("--bank", args.bank), ("--block-size", args.block_size)) if value]
    return [f"{flag}: not used by the ar sampler, which runs the AR model alone{why}" for flag in given]


def seed_for(given: int | None, settings: GenerationSettings) -> int:
    """The seed a run uses: the one given; else, when sampling, a fresh one (a fixed default made
    every sampled answer to a prompt the same); else 0 (greedy text does not depend on it)."""
    if given is not None:
        return given
    return new_seed() if settings.temperature > 0 else 0


def record(loop, model, ids, settings, done, control, prompt: str) -> str | None:
    """Record the generation and write it before the id is offered for feedback; None when not
    recording or the store could not take it (the one-line reason is already on stderr)."""
    if loop is None:
        return None
    completion_id = loop.record_completion(model, ids, settings, done, control, prompt=prompt)
    loop.close()
    return None if loop.recorder.failed or loop.recorder.dropped else completion_id


def sampler_name(settings: GenerationSettings) -> str:
    """The sampler that ran, as the summary and the JSON report name it."""
    acceptance = acceptance_that_runs(settings)
    if acceptance not in (None, "exact"):
        return f"verified ({acceptance})"
    return settings.sampler


def summary(
    done, settings: GenerationSettings, extra_row: float | None = None, seed: int | None = None
) -> str:
    """The one-line summary; `extra_row`: the row cost for which sampler auto ran `ar`; `seed`
    is shown when sampling (the run is replayed with --seed)."""
    result = done.result
    sampler = sampler_name(settings) if result.sampler == settings.sampler else result.sampler
    if extra_row is not None:
        sampler += f" (auto: one more row costs {extra_row:.2f} of a forward on this CPU, drafts do not pay)"
    rate = len(done.tokens) / (result.wall_ms / 1e3) if result.wall_ms else 0.0
    kept, checked = result.drafts
    drafts = f" · drafts kept {kept}/{checked}" if checked else ""
    return (
        f"{sampler} · {len(done.tokens)} tokens in {result.steps} steps · {result.tokens_per_forward:.2f} tokens/step"
        f"{drafts} · {result.wall_ms / 1e3:.2f} s · {rate:.1f} tokens/s · "
        f"{result.forward_ms / max(result.steps, 1):.1f} ms/step · {done.finish_reason}"
        + (f" · seed {seed}" if seed is not None and settings.temperature > 0 else "")
    )


def report(
    done,
    settings: GenerationSettings,
    load_ms: float,
    seed: int,
    model: str,
    warnings: list[str] = (),
    extra_row: float | None = None,
    graph: str | None = None,
) -> dict:
    result = done.result
    wall_s = result.wall_ms / 1e3
    return {
        "model": model,
        "graph": graph,  # the graph file that ran: the model's, or its AR graph
        "warnings": list(warnings),
        # set when sampler auto ran `ar` because one more row costs this much of a forward here
        "extra_row_cost": None if extra_row is None else round(extra_row, 3),
        "text": done.text,
        "tokens": done.tokens,
        "prompt_tokens": done.prompt_tokens,
        "finish_reason": done.finish_reason,
        "seed": seed,
        "settings": {
            "sampler": settings.sampler,
            "acceptance": acceptance_that_runs(settings),
            "length": settings.length,
            "block_size": settings.block_size,
            "steps": settings.steps,
            "schedule": settings.schedule,
            "decoding": settings.decoding,
            "threshold": settings.threshold,
            "entropy_bound": settings.entropy_bound,
            "order": settings.order,
            "temperature": settings.temperature,
            "top_k": settings.top_k,
            "top_p": settings.top_p,
            "talora": settings.talora,
            "dgr": settings.dgr,
        },
        "steps": [
            {
                "span": e.span,
                "step": e.step,
                "t": e.t,
                "committed": {str(k): v for k, v in e.committed.items()},
                "retrieved": e.retrieved,
                "drafted": e.drafted,
                "looked_up": e.looked_up,  # of `drafted`, the ones prompt lookup copied
                "forward_ms": round(e.forward_ms, 3),
            }
            for e in result.trace
        ],
        "timings": {
            "load_ms": round(load_ms, 1),
            "wall_ms": round(result.wall_ms, 1),
            "forward_ms": round(result.forward_ms, 1),
            "steps": result.steps,
            "ms_per_step": round(result.forward_ms / max(result.steps, 1), 3),
            "tokens_per_s": round(len(done.tokens) / wall_s, 2) if wall_s else None,
            # the verified sampler's mean accepted length (kept drafts + the AR token per forward)
            "tokens_per_forward": round(result.tokens_per_forward, 3),
            "drafts_kept": result.drafts[0],
            "drafts_checked": result.drafts[1],
            # of those, the drafts prompt lookup copied (the rest are the diffusion model's)
            "copied_drafts_kept": result.looked_up[0],
            "copied_drafts_checked": result.looked_up[1],
        },
    }
