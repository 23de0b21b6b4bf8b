"""The learning config: one small file that turns the loops on and off and sets their knobs, read
by `ruvdllm generate`, `ruvdllm serve` and `ruvdllm feedback` alike, and where learning data lives.

    # learning.toml (or learning.json with the same structure)
    [loop_a]
    enabled = true            # record every request and accept feedback
    store = "/path/to/trajectories.db"
    queue_size = 256
    score_rate = 0.2
    score_weight = 0.05
    score_floor = -0.5
    score_extra = 4

    [loop_b]
    enabled = false           # train MicroLoRAs on the good trajectories in the background
    interval = 600            # seconds between runs
    ...                       # the knobs of LoopBConfig below

    [loop_c]
    enabled = false           # fold loop B's MicroLoRAs into the group adapters, with EWC++
    interval = 3600           # seconds between consolidations (checked after each loop B run)
    ...                       # the knobs of LoopCConfig below

Looked for at --learning-config, else $RUVDLLM_LEARNING_CONFIG, else `learning.toml` in the data
directory; none of them: the defaults below. A section or key this version does not know is an
error (a misspelt key must not silently keep a loop on).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from runtime.learning.federation_config import FederationConfig
from ruvdllm.errors import RuvdllmError

CONFIG_ENV = "RUVDLLM_LEARNING_CONFIG"
DATA_ENV = "RUVDLLM_DATA"
CONFIG_NAME = "learning.toml"
STORE_NAME = "trajectories.db"
TRAINERS = ("auto", "spsa", "adam")  # loop B's MicroLoRA trainer (runtime/learning/trainer.py)
FOLD_INTO = ("every", "own")  # loop C: which group adapters take a MicroLoRA (consolidate.py)
GROUP_BY = ("uncertainty", "every")  # loop B: the timestep groups a good trajectory trains (loop_b.py)


def data_root() -> Path:
    """Where learning data lives: $RUVDLLM_DATA, else the user data directory for "ruvdllm" (the
    sibling of the model cache in runtime.verify.cache_root: a cache may be wiped, this may not)."""
    override = os.environ.get(DATA_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir  # CPython only; the browser keeps its data in IndexedDB

    return Path(user_data_dir("ruvdllm"))


@dataclass(frozen=True)
class LoopAConfig:
    enabled: bool = True  # loop A is local and cheap; nothing it keeps leaves the device
    store: str = ""  # the trajectory store file; "": trajectories.db in the data directory
    queue_size: int = 256  # trajectories waiting for the writer: minutes of requests if the disk stalls
    score_rate: float = 0.2  # EMA rate of a pattern's usefulness: ~5 ratings dominate it
    score_weight: float = 0.05  # similarity added per unit of usefulness: re-ranks near ties only
    score_floor: float = -0.5  # patterns rated at or below this are no longer retrieved
    score_extra: int = 4  # neighbours fetched beyond DgrConfig.neighbours, to re-rank among

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise RuvdllmError(f"learning config: loop_a.queue_size {self.queue_size}: must be at least 1")
        if not 0.0 < self.score_rate <= 1.0:
            raise RuvdllmError(f"learning config: loop_a.score_rate {self.score_rate}: must be in (0, 1]")
        if not (math.isfinite(self.score_weight) and self.score_weight >= 0.0):
            raise RuvdllmError(f"learning config: loop_a.score_weight {self.score_weight}: must be >= 0")
        if not -1.0 <= self.score_floor < 0.0:  # at 0 or above, every pattern without feedback would drop
            raise RuvdllmError(f"learning config: loop_a.score_floor {self.score_floor}: must be in [-1, 0)")
        if self.score_extra < 0:
            raise RuvdllmError(f"learning config: loop_a.score_extra {self.score_extra}: must be >= 0")

    def store_path(self) -> Path:
        return Path(self.store).expanduser() if self.store else data_root() / STORE_NAME


@dataclass(frozen=True)
class LoopBConfig:
    enabled: bool = False  # background training costs CPU; a user turns it on knowingly
    interval: float = 600.0  # seconds between runs: feedback arrives over minutes, not per request
    bank: str = ""  # the learnt bank directory; "": banks/<model> in the data directory
    threshold: float = 0.5  # feedback value a trajectory needs (rating 4 of 5 is 0.5; up is 1)
    max_trajectories: int = 256  # read per run, newest first: bounds a run's memory and time
    max_micro: int = 16  # MicroLoRAs kept (also bounded by the bank's free DGR slots)
    max_patterns: int = 4096  # DGR keys in the bank: exact search in the browser stays cheap
    clusters: int = 4  # topics per timestep group (k of k-means; fewer when there is less data)
    min_cluster: int = 2  # trajectories a cluster needs to train a MicroLoRA: one answer is noise
    merge_similarity: float = 0.8  # a cluster this close (cosine) to a MicroLoRA's key trains that one
    # "uncertainty": a trajectory trains the one timestep group where its generation was least sure
    # (where help pays); "every": it trains a MicroLoRA in every group, each at its own group's t
    # (every group specialises on the same answers: G times the training, and the way to compare
    # timestep groups at equal data, benchmarks/talora_loops.py)
    group_by: str = "uncertainty"
    rank: int = 2  # MicroLoRA rank: 1 or 2 (DESIGN.md); padded with zeros into the bank's rank
    layers: int = 0  # the last n layers get a MicroLoRA (0: all): fewer parameters, faster learning
    # the prompts train too, each after its first block (kept as context): the user's own words are
    # text of their domain, twice the answer's length in the demonstration, and they stay on the
    # device as everything loop B reads does. Under a chat template the template's tokens train too;
    # the model predicts those well already, so they cost steps more than they teach.
    train_prompts: bool = True
    steps: int = 300  # SPSA steps per MicroLoRA: two forwards per step and example
    batch: int = 4  # examples per SPSA step (one noisy block each)
    lr: float = 2.0  # SPSA step length per unit of directional derivative (spsa.py); tiny model: 2-5
    epsilon: float = 0.05  # SPSA perturbation of each b entry: the loss difference must beat float noise
    seed: int = 0  # masks, clustering and initialisation: same data, same MicroLoRAs
    duty: float = 0.5  # share of wall time training may compute: it rests between SPSA steps
    # "auto": first order (Adam through the model's torch reference) where torch is installed and the
    # reference can be built, else SPSA; "spsa": always SPSA; "adam": first order or an error
    trainer: str = "auto"
    # Adam steps per MicroLoRA: `adam_epochs` passes over the training pairs' blocks (a cluster of 3
    # answers does not take the steps one of 200 needs), at most `adam_steps`; exact gradients need
    # far fewer than SPSA. Early stopping usually ends it sooner (adam_eval_every).
    adam_epochs: float = 8.0
    adam_steps: int = 400
    # early stopping: every n steps the held-back check examples' NLL through the reference (masks of
    # their own, not the keep-or-drop check's); the best state is kept, and training stops after
    # `adam_patience` evaluations without a new best, so a high learning rate cannot over-fit silently
    adam_eval_every: int = 10
    adam_patience: int = 3
    adam_lr: float = 1e-3  # the default model's best of 1e-3/2e-3/5e-3; larger over-fit (docs/learning.md)
    threads: int = 1  # torch threads of the first-order trainer: one core, like SPSA's session

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, value, rule: str) -> None:
            if not ok:
                raise RuvdllmError(f"learning config: loop_b.{key} {value}: {rule}")

        need(math.isfinite(self.interval) and self.interval > 0, "interval", self.interval, "must be > 0")
        need(-1.0 <= self.threshold <= 1.0, "threshold", self.threshold, "must be in [-1, 1]")
        for key in (
            "max_trajectories",
            "max_micro",
            "max_patterns",
            "clusters",
            "min_cluster",
            "steps",
            "batch",
            "adam_steps",
            "adam_eval_every",
            "adam_patience",
            "threads",
        ):
            need(getattr(self, key) >= 1, key, getattr(self, key), "must be at least 1")
        need(
            -1.0 <= self.merge_similarity <= 1.0,
            "merge_similarity",
            self.merge_similarity,
            "must be in [-1, 1]",
        )
        need(self.rank in (1, 2), "rank", self.rank, "must be 1 or 2 (a MicroLoRA)")
        need(
            self.group_by in GROUP_BY,
            "group_by",
            repr(self.group_by),
            f"must be one of {', '.join(GROUP_BY)}",
        )
        need(self.layers >= 0, "layers", self.layers, "must be >= 0")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "must be > 0")
        need(math.isfinite(self.epsilon) and self.epsilon > 0, "epsilon", self.epsilon, "must be > 0")
        need(0.0 < self.duty <= 1.0, "duty", self.duty, "must be in (0, 1]")
        need(self.trainer in TRAINERS, "trainer", self.trainer, f"must be one of {', '.join(TRAINERS)}")
        need(math.isfinite(self.adam_lr) and self.adam_lr > 0, "adam_lr", self.adam_lr, "must be > 0")
        need(
            math.isfinite(self.adam_epochs) and self.adam_epochs > 0,
            "adam_epochs",
            self.adam_epochs,
            "must be > 0",
        )

    def bank_path(self, model_name: str) -> Path:
        return Path(self.bank).expanduser() if self.bank else data_root() / "banks" / model_name


@dataclass(frozen=True)
class LoopCConfig:
    enabled: bool = False  # consolidation rewrites the group adapters every prompt uses: opt in
    interval: float = 3600.0  # seconds between runs: several loop B runs' MicroLoRAs per fold
    ewc_lambda: float = 10000.0  # EWC strength λ: tiny model, forgetting −45% at a sixth of the learning
    decay: float = 0.7  # EWC++: weight of the running Fisher against a new measurement (0.7³ ≈ 0.34)
    weight: float = 1.0  # share of a MicroLoRA folded in: it was trained as an addition, so all of it
    min_micro: int = 1  # MicroLoRAs a group needs before it is consolidated
    # which group adapters take a MicroLoRA: "every" (DGR applied it at every timestep: folding it
    # into all keeps that; measured in docs/learning.md) or "own" (the group it was trained for)
    fold_into: str = "every"
    fisher_blocks: int = 8  # noisy blocks per Fisher estimate (2 forwards per component each)
    fisher_epsilon: float = 0.01  # finite-difference step on a singular value
    seed: int = 0  # the Fisher's masks: same data, same Fisher

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, value, rule: str) -> None:
            if not ok:
                raise RuvdllmError(f"learning config: loop_c.{key} {value}: {rule}")

        need(math.isfinite(self.interval) and self.interval > 0, "interval", self.interval, "must be > 0")
        need(
            math.isfinite(self.ewc_lambda) and self.ewc_lambda >= 0,
            "ewc_lambda",
            self.ewc_lambda,
            "must be >= 0",
        )
        need(0.0 <= self.decay < 1.0, "decay", self.decay, "must be in [0, 1)")
        need(0.0 < self.weight <= 1.0, "weight", self.weight, "must be in (0, 1]")
        need(self.min_micro >= 1, "min_micro", self.min_micro, "must be at least 1")
        need(
            self.fold_into in FOLD_INTO,
            "fold_into",
            repr(self.fold_into),
            f"must be one of {', '.join(FOLD_INTO)}",
        )
        need(self.fisher_blocks >= 1, "fisher_blocks", self.fisher_blocks, "must be at least 1")
        need(
            math.isfinite(self.fisher_epsilon) and self.fisher_epsilon > 0,
            "fisher_epsilon",
            self.fisher_epsilon,
            "must be > 0",
        )


@dataclass(frozen=True)
class LearningConfig:
    loop_a: LoopAConfig = field(default_factory=LoopAConfig)
    loop_b: LoopBConfig = field(default_factory=LoopBConfig)
    loop_c: LoopCConfig = field(default_factory=LoopCConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    source: str = ""  # the file it was read from ("": the defaults)


def _section(name: str, values: object, kind: type, where: str):
    if not isinstance(values, dict):
        raise RuvdllmError(f"{where}: [{name}] must be a table of settings")
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise RuvdllmError(f"{where}: [{name}] has unknown {', '.join(unknown)} (known: {', '.join(known)})")
    defaults = kind()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise RuvdllmError(f"{where}: {name}.{key} = {value!r}: expected {expected.__name__}")
    try:
        return replace(
            defaults, **{k: float(v) if known[k].type == "float" else v for k, v in values.items()}
        )
    except RuvdllmError as exc:  # a range check in __post_init__: name the file, not "learning config"
        raise RuvdllmError(f"{where}: {str(exc).removeprefix('learning config: ')}") from None


def parse_learning_config(text: str, where: str, suffix: str = ".toml") -> LearningConfig:
    """The config from a file's text (TOML, or JSON when `suffix` is .json)."""
    try:
        if suffix == ".json":
            values = json.loads(text)
        else:
            import tomllib

            values = tomllib.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise RuvdllmError(f"{where}: not valid {suffix.lstrip('.').upper()} ({exc})") from None
    if not isinstance(values, dict):
        raise RuvdllmError(f"{where}: must hold a table of sections")
    sections = {
        "loop_a": LoopAConfig,
        "loop_b": LoopBConfig,
        "loop_c": LoopCConfig,
        "federation": FederationConfig,
    }
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise RuvdllmError(f"{where}: unknown section {', '.join(unknown)} (known: {', '.join(sections)})")
    parsed = {name: _section(name, values.get(name, {}), kind, where) for name, kind in sections.items()}
    return LearningConfig(**parsed, source=where)


def load_learning_config(path: Path | str | None = None) -> LearningConfig:
    """The config at `path` (it must exist), else at $RUVDLLM_LEARNING_CONFIG (likewise), else
    `learning.toml` in the data directory when there is one, else the defaults."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    if path is None:
        default = data_root() / CONFIG_NAME
        if not default.is_file():
            return LearningConfig()
        path = default
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuvdllmError(f"{path}: cannot read the learning config ({exc.strerror or exc})") from None
    return parse_learning_config(text, str(path), path.suffix.lower())
