"""What a caller chooses for one generation, and the checks that turn bad choices into one-line
errors before any forward runs."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from runtime.artifact import BASE_MODEL_SAMPLERS, ArtifactConfig
from runtime.dgr import DgrConfig
from runtime.drafting import ACCEPTANCE_CHOICES, ACCEPTANCES, LOOKUP_MODES, Drafting, drafting_for
from runtime.row_cost import DRAFTING_PAYS_BELOW
from runtime.schedules import SCHEDULES
from ruvdllm.errors import RuvdllmError

# auto: chosen per model and request (sampler_for); verified: the diffusion model drafts blocks, the
# AR model it came from checks them (the AR's output); ar: that AR model alone, one token per forward
# through the same graph (the lossless baseline)
AUTO = "auto"
SAMPLERS = (AUTO, "bd3lm", "mdlm", "verified", "ar")
DIFFUSION_SAMPLERS = ("bd3lm", "mdlm")  # the ones that denoise (and read the settings below)
DECODINGS = ("low-confidence", "threshold", "entropy-bounded")
ORDERS = ("confidence", "left-to-right")  # which masked positions a step commits first


@dataclass(frozen=True)
class GenerationSettings:
    # verified where the model can run it (the AR model's own text, 1.27 tokens per forward on the
    # default model) and its drafts pay on this machine (else `ar`: runtime/row_cost.py), else the
    # model's diffusion sampler: sampler_for (docs/sampling.md §12)
    sampler: str = AUTO
    length: int = 64  # new tokens: a short answer
    # None: the model's config.block_size (what it was trained with); verified: masks drafted per forward
    block_size: int | None = None
    # per span; None: the span length, one token per step (best quality); verified drafts in one step
    steps: int | None = None
    schedule: str = "linear"  # LLaDA's: equal tokens per step
    decoding: str = "low-confidence"  # commit the schedule's count per step, leading the order below
    threshold: float = 0.9  # Fast-dLLM's default for threshold decoding
    entropy_bound: float = 0.5  # nats, for entropy-bounded decoding
    # The leftmost masked position first: on the default model, one token per step, greedy, 64
    # held-out prompts, 1.14x the AR samples' generative perplexity where LLaDA's most-confident-
    # first gives 2.75x (benchmarks/README.md, "Decoding quality").
    order: str = "left-to-right"
    temperature: float = 0.0  # greedy: reproducible without a seed
    top_k: int = 0  # 0: all of the graph's candidates
    top_p: float = 1.0  # no nucleus truncation
    stop_at_eos: bool = True  # stop after the block that produced an end-of-sequence token
    talora: bool = True  # apply the bank's timestep groups (zero banks leave the model unchanged)
    dgr: bool = True  # retrieve when uncertain (no-op without patterns in the bank)
    dgr_config: DgrConfig = field(default_factory=DgrConfig)
    # verified: how many masks a forward drafts (runtime/drafting.py); a library knob, not a flag
    drafting: Drafting = field(default_factory=Drafting)


# The names a user sets a generation by (a command's flags, a request's fields, the page's form):
# GenerationSettings' own fields, with DgrConfig's strategy flattened to `dgr_strategy` — the one
# DGR knob exposed — and the verified sampler's drafting rule to `acceptance` (one of
# ACCEPTANCE_CHOICES: drafting_for). The rest of DgrConfig and Drafting stay at their measured
# defaults.
INTERNAL = ("dgr_config", "drafting")
INPUTS = tuple(f.name for f in fields(GenerationSettings) if f.name not in INTERNAL) + (
    "dgr_strategy",
    "acceptance",
)
# What the user-facing surfaces (`ruvdllm generate`, the server, the page) take when the user says
# nothing: lenient when greedy, exact when sampling (runtime/drafting.py). The library's own default
# (GenerationSettings().drafting) stays exact, the AR model's text.
USER_ACCEPTANCE = AUTO


def new_seed() -> int:
    """A fresh seed for a run given none (the server and the CLI report it, so a sampled answer
    can be replayed)."""
    return random.SystemRandom().getrandbits(63)


def inputs_of(values: Mapping[str, object]) -> dict[str, object]:
    """The entries of `values` that name a setting (a parsed command line or a request holds
    others too)."""
    return {name: value for name, value in values.items() if name in INPUTS}


def settings_from(values: Mapping[str, object], base: GenerationSettings | None = None) -> GenerationSettings:
    """GenerationSettings from user input named as INPUTS, over `base` (the defaults when None):
    a None keeps the base's value. Raises RuvdllmError for a name that is not a setting, or a
    DGR strategy that does not exist; the other checks are check_settings' and resolve's."""
    base = GenerationSettings() if base is None else base
    unknown = sorted(set(values) - set(INPUTS))
    if unknown:
        raise RuvdllmError(f"settings: unknown {', '.join(unknown)}")
    flattened = ("dgr_strategy", "acceptance")
    given = {k: v for k, v in values.items() if k not in flattened and v is not None}
    if values.get("dgr_strategy"):
        given["dgr_config"] = replace(base.dgr_config, strategy=values["dgr_strategy"])
    acceptance = values.get("acceptance")
    if acceptance is not None:
        if acceptance not in ACCEPTANCE_CHOICES:
            raise RuvdllmError(
                f"acceptance {acceptance!r}: unknown (choose from {', '.join(ACCEPTANCE_CHOICES)})"
            )
        given["drafting"] = drafting_for(acceptance, given.get("temperature", base.temperature))
    return replace(base, **given)


def acceptance_that_runs(settings: GenerationSettings) -> str | None:
    """The verified sampler's acceptance rule ("exact" or "lenient") in `settings` (sampler
    resolved: concrete), None for a sampler that checks no drafts: what a report names."""
    return settings.drafting.acceptance if settings.sampler == "verified" else None


def check_acceptance(acceptance: str | None, sampler: str) -> None:
    """An acceptance rule named explicitly (not auto, not absent) for a sampler that checks no
    drafts (`sampler`: the one that runs) is an error, not ignored."""
    if acceptance not in (None, AUTO) and sampler != "verified":
        raise RuvdllmError(
            f"acceptance {acceptance}: only the verified sampler checks drafts (this runs {sampler})"
        )


# Settings only the diffusion samplers read. Under sampler auto, one away from its default asks for
# denoising, so auto picks the diffusion sampler rather than ignore it (or refuse it, as an
# explicit verified sampler refuses steps).
DIFFUSION_ONLY = ("steps", "schedule", "decoding", "threshold", "entropy_bound", "order")


def diffusion_only(settings: GenerationSettings) -> list[str]:
    """The DIFFUSION_ONLY settings that differ from their defaults."""
    defaults = GenerationSettings()
    return [name for name in DIFFUSION_ONLY if getattr(settings, name) != getattr(defaults, name)]


def diffusion_sampler(config: ArtifactConfig) -> str:
    """The diffusion sampler the model was converted for (config `samplers`), else bd3lm."""
    trained = [s for s in config.samplers if s in DIFFUSION_SAMPLERS]
    return trained[0] if trained else "bd3lm"


def sampler_for(settings: GenerationSettings, config: ArtifactConfig, extra_row: float | None = None) -> str:
    """The sampler that runs: the one asked for, or for auto the fastest that meets the quality
    goal — verified (lossless: the AR model's own output) when the model's conversion adapter has
    the per-row switch and no diffusion-only setting is given, else the model's diffusion sampler.
    `extra_row`: what one more row costs a forward on this machine (runtime/row_cost.py; None:
    not known). Where it is at least DRAFTING_PAYS_BELOW, drafts cost more than they commit and
    auto runs `ar` instead of verified: the same AR model, one token per forward."""
    if settings.sampler != AUTO:
        return settings.sampler
    if config.adapter_gate and not diffusion_only(settings):
        return "ar" if extra_row is not None and extra_row >= DRAFTING_PAYS_BELOW else "verified"
    return diffusion_sampler(config)


def asks_row_cost(settings: GenerationSettings, config: ArtifactConfig, acceptance: str | None) -> bool:
    """Is this machine's row cost asked for the sampler? Where the sampler would be verified and no
    acceptance rule other than auto was named (a named rule asks for the drafts): under auto it
    decides between `ar` and verified."""
    return sampler_for(settings, config) == "verified" and acceptance in (None, AUTO)


def concrete(
    settings: GenerationSettings, config: ArtifactConfig, extra_row: float | None = None
) -> GenerationSettings:
    """`settings` with sampler auto replaced by the sampler that runs on this model (and machine:
    `extra_row`, as sampler_for)."""
    sampler = sampler_for(settings, config, extra_row)
    return settings if sampler == settings.sampler else replace(settings, sampler=sampler)


@dataclass(frozen=True)
class Plan:
    """Settings resolved against a model and a prompt."""

    span: int  # positions denoised together: block size (BD3LM) or length (MDLM)
    steps: int  # steps per full span
    sampler: str = "bd3lm"  # the sampler that runs (auto resolved: sampler_for)


def check_settings(settings: GenerationSettings) -> None:
    """The checks that need no model: names and ranges. Raise RuvdllmError naming the problem."""
    s = settings
    # Values from JSON (the page's window.ruvdllm.run, a config) arrive untyped: "6" would meet `<`
    for name in ("length", "block_size", "steps", "top_k"):
        value = getattr(s, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise RuvdllmError(f"{name.replace('_', ' ')} {value!r}: must be a whole number")
    for name in ("temperature", "top_p", "threshold", "entropy_bound"):
        value = getattr(s, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RuvdllmError(f"{name.replace('_', ' ')} {value!r}: must be a number")
    if s.sampler not in SAMPLERS:
        raise RuvdllmError(f"sampler {s.sampler!r}: unknown (choose from {', '.join(SAMPLERS)})")
    if s.decoding not in DECODINGS:
        raise RuvdllmError(f"decoding {s.decoding!r}: unknown (choose from {', '.join(DECODINGS)})")
    if s.order not in ORDERS:
        raise RuvdllmError(f"order {s.order!r}: unknown (choose from {', '.join(ORDERS)})")
    if s.schedule not in SCHEDULES:
        raise RuvdllmError(f"schedule {s.schedule!r}: unknown (choose from {', '.join(SCHEDULES)})")
    if s.length < 1:
        raise RuvdllmError(f"length {s.length}: must be at least 1")
    if s.block_size is not None and s.block_size < 1:
        raise RuvdllmError(f"block size {s.block_size}: out of range (must be at least 1)")
    if s.steps is not None and s.steps < 1:
        raise RuvdllmError(f"steps {s.steps}: out of range (must be at least 1)")
    if not 0.0 < s.threshold <= 1.0:
        raise RuvdllmError(f"threshold {s.threshold}: must be in (0, 1]")
    if not s.entropy_bound >= 0.0:  # NaN fails too; infinity commits a whole span per step
        raise RuvdllmError(f"entropy bound {s.entropy_bound}: must be >= 0")
    if not 0.0 <= s.temperature < math.inf:  # NaN and infinity sample noise
        raise RuvdllmError(f"temperature {s.temperature}: must be a finite number >= 0")
    if s.top_k < 0:
        raise RuvdllmError(f"top-k {s.top_k}: must be >= 0")
    if not 0.0 < s.top_p <= 1.0:
        raise RuvdllmError(f"top-p {s.top_p}: must be in (0, 1]")
    if s.drafting.window < 1:
        raise RuvdllmError(f"drafting window {s.drafting.window}: must be at least 1")
    if s.drafting.probe_every < 1:
        raise RuvdllmError(f"drafting probe_every {s.drafting.probe_every}: must be at least 1")
    if not 0.0 <= s.drafting.min_confidence <= 1.0:
        raise RuvdllmError(f"drafting min_confidence {s.drafting.min_confidence}: must be in [0, 1]")
    check_lookup(s.drafting)
    if s.drafting.acceptance not in ACCEPTANCES:
        raise RuvdllmError(
            f"drafting acceptance {s.drafting.acceptance!r}: unknown (choose from {', '.join(ACCEPTANCES)})"
        )
    if not 0.0 < s.drafting.lenient_ratio <= 1.0:
        raise RuvdllmError(f"drafting lenient_ratio {s.drafting.lenient_ratio}: must be in (0, 1]")


def check_lookup(drafting: Drafting) -> None:
    d = drafting
    if d.lookup not in LOOKUP_MODES:
        raise RuvdllmError(f"drafting lookup {d.lookup!r}: unknown (choose from {', '.join(LOOKUP_MODES)})")
    if not 1 <= d.lookup_shortest <= d.lookup_longest:
        raise RuvdllmError(
            f"drafting lookup n-grams {d.lookup_shortest}..{d.lookup_longest}: need 1 <= shortest <= longest"
        )
    if d.lookup_drafts < 1:
        raise RuvdllmError(f"drafting lookup_drafts {d.lookup_drafts}: must be at least 1")
    if not 0.0 <= d.answers_floor <= 1.0:
        raise RuvdllmError(f"drafting answers_floor {d.answers_floor}: must be in [0, 1]")


def resolve(settings: GenerationSettings, config: ArtifactConfig, prompt_tokens: int) -> Plan:
    """Check the settings against the model and prompt (sampler auto resolved for this model; the
    machine's row cost is the caller's to weigh first: DiffusionModel.concrete); raise
    RuvdllmError naming the first problem."""
    check_settings(settings)
    s = concrete(settings, config)
    if prompt_tokens < 1:
        raise RuvdllmError("prompt: empty (give at least one token)")
    if prompt_tokens + s.length > config.max_position:
        raise RuvdllmError(
            f"prompt: {prompt_tokens} tokens + length {s.length} exceed the model's context of {config.max_position}"
        )
    block = config.block_size if s.block_size is None else s.block_size
    if not 1 <= block <= config.max_position:
        raise RuvdllmError(f"block size {block}: out of range 1..{config.max_position}")
    if s.sampler in BASE_MODEL_SAMPLERS:
        return base_model_plan(s, config, 1 if s.sampler == "ar" else block)
    span = s.length if s.sampler == "mdlm" else min(block, s.length)
    steps = span if s.steps is None else s.steps
    if not 1 <= steps <= span:
        what = "the length" if s.sampler == "mdlm" else "the block size"
        raise RuvdllmError(f"steps {steps}: out of range 1..{span} (steps per span, at most {what})")
    return Plan(span=span, steps=steps, sampler=s.sampler)


def base_model_plan(settings: GenerationSettings, config: ArtifactConfig, block: int) -> Plan:
    """The verified sampler drafts a block of `block` masks per forward, in one step; both it and
    the AR sampler need rows that compute the AR model exactly: a graph whose conversion adapter
    has the per-row switch, or that has no conversion adapter."""
    if settings.steps not in (None, 1):
        raise RuvdllmError(
            f"steps {settings.steps}: the {settings.sampler} sampler takes no steps (leave it unset)"
        )
    if config.source.get("static_adapter") and not config.adapter_gate:
        raise RuvdllmError(
            f"sampler {settings.sampler}: this model's conversion adapter has no per-row switch "
            "(re-export it without --no-adapter-switch, or choose the bd3lm sampler)"
        )
    return Plan(span=block, steps=1, sampler=settings.sampler)
