"""Loop B, in the background: learn MicroLoRAs from the answers users liked or corrected.

One run (`LoopB.run_once`):

    1  read     the good trajectories since the last run (latest feedback a correction, or worth
                at least `threshold`), newest first, at most `max_trajectories`; a corrected
                answer's target is the correction, a liked one's is the answer itself
    2  group    each goes to the timestep group where its generation was most uncertain (the
                steps' entropy, normalised by t as DGR does): where help pays; or, with
                `group_by = "every"`, to every group
    3  cluster  within a group, spherical k-means over the prompt embeddings (the DGR key space)
    4  train    per cluster of at least `min_cluster`, a rank-1/2 MicroLoRA on q_proj/v_proj of
                the last `layers` layers, on the masked-token NLL of the cluster's targets (and,
                with `train_prompts`, of its prompts after their first block) at that group's t
                (masked_nll.py), by the injected trainer (trainer.py: SPSA by default,
                first order through torch where the command layer finds it), in a free DGR slot,
                or warm-started in the slot of the MicroLoRA of the same group whose key is closest
    5  keep     only if it lowers the NLL of examples of the cluster it never trained on (every
                4th of a cluster of 4 or more; a smaller cluster's own, under masks it never
                trained on), so a run never installs a MicroLoRA that is worse there
    6  install  the MicroLoRA in its slot and the cluster's centroid as a DGR key pointing at it,
                committed atomically (bank_update.py); a running model gets the new bank

Bounded: trajectories per run, MicroLoRAs (also by the bank's DGR slots: a graph has K − G), DGR
keys. The learnt bank lives in the data directory (banks/<model>), a copy of the model's own bank
at first: a bank inside a model directory is covered by its manifest.

Numpy and the standard library; the forward that returns logits is passed in (a LogitsSession on
CPython).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.banks import BANK_JSON, Bank, bank_lock
from runtime.learning.bank_update import commit_bank, copy_bank, tidy, write_atomic
from runtime.learning.config import LoopBConfig
from runtime.learning.kmeans import normalise_rows, spherical_kmeans
from runtime.learning.masked_nll import NoisyBlock, masked_nll, noisy_block
from runtime.learning.microlora import (
    MicroLora,
    micro_name,
    new_micro,
    parse_micro_name,
    trained_layers,
)
from runtime.learning.store import warn
from runtime.learning.trainer import MicroTrainer, Pair, SpsaTrainer, TrainerUnavailable, TrainJob
from runtime.talora import group_of
from ruvdllm.errors import RuvdllmError

STATE_NAME = "loop_b.json"  # beside the learnt bank: what the runs have consumed and done
STATE_FORMAT = 1
VALIDATION_BLOCKS = 4  # noisy blocks per example in the keep-or-drop check
VALIDATION_EVERY = 4  # every 4th example of a large cluster is kept out of training, for the check
VALIDATION_MIN = 4  # from this size on; below it every example is needed for training
EARLY_STOP_BLOCKS = 2  # noisy blocks per check example for a trainer's early stopping: half the check's cost
DUPLICATE_KEY = 0.99  # a new key this close to one its slot has adds nothing


@dataclass(frozen=True)
class Example:
    """One good trajectory as loop B trains on it."""

    feedback_id: int
    prompt: tuple[int, ...]
    target: tuple[int, ...]  # the answer, or the correction's tokens
    embedding: np.ndarray  # the prompt's DGR key (unit vector)
    group: int


@dataclass
class Cluster:
    group: int
    centroid: np.ndarray  # unit vector: the DGR key of the MicroLoRA trained on it
    members: list[Example]


@dataclass
class Trained:
    name: str
    group: int
    slot: int
    examples: int
    steps: int
    nll_before: float  # the cluster's own examples, validation masks
    nll_after: float
    kept: bool
    seconds: float = 0.0
    trainer: str = ""  # which trainer (trainer.py): "spsa", "adam (torch)"
    loss_first: float = math.nan  # its training loss over the first and last steps (nan: not seen)
    loss_last: float = math.nan
    notes: list[str] = field(default_factory=list)  # the trainer's: steps taken, early stopping


@dataclass
class RunReport:
    read: int = 0  # good trajectories read
    clusters: int = 0  # clusters large enough to train
    trained: list[Trained] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per cluster not trained, and why
    seconds: float = 0.0


# --- steps 1-3: examples, groups, clusters (pure) -----------------------------------------------


def uncertain_group(steps: Sequence[dict], boundaries: Sequence[float], floor: float = 0.5) -> int:
    """The group whose steps had the highest mean timestep-normalised entropy (runtime/dgr.py's
    normalisation: early steps are uncertain by construction); no steps: the middle group."""
    groups = len(boundaries) - 1
    sums, counts = [0.0] * groups, [0] * groups
    for step in steps:
        t = float(step.get("t", 0.0))
        g = group_of(t, tuple(boundaries))
        sums[g] += float(step.get("entropy", 0.0)) / (floor + (1.0 - floor) * t)
        counts[g] += 1
    means = [s / c if c else -1.0 for s, c in zip(sums, counts, strict=True)]
    return groups // 2 if max(counts) == 0 else int(np.argmax(means))


def examples_from(
    rows: Sequence[tuple[int, object, str | None]],
    encode: Callable[[str], list[int]],
    boundaries: Sequence[float],
    group_by: str = "uncertainty",
) -> list[Example]:
    """Examples from the store's (feedback id, trajectory, correction) rows; trajectories without
    a prompt embedding (the AR sampler's) or an empty target are left out. Each is in the group
    where it was most uncertain, or (`group_by` "every") once in every group."""
    out = []
    for feedback_id, trajectory, correction in rows:
        if trajectory.embedding is None:
            continue
        target = encode(correction) if correction is not None else list(trajectory.answer_tokens)
        if not target or not trajectory.prompt_tokens:
            continue
        key = normalise_rows(np.asarray([trajectory.embedding], np.float64))[0]
        groups = (
            range(len(boundaries) - 1)
            if group_by == "every"
            else [uncertain_group(trajectory.steps, boundaries)]
        )
        for group in groups:
            out.append(Example(feedback_id, tuple(trajectory.prompt_tokens), tuple(target), key, group))
    return out


def clusters_of(examples: Sequence[Example], config: LoopBConfig, rng: np.random.Generator) -> list[Cluster]:
    """Per group, up to `clusters` topics (fewer when there are fewer than min_cluster examples
    per topic); k-means splits even one tight topic k ways, so clusters whose centroids are within
    merge_similarity are joined again; clusters smaller than min_cluster are dropped."""
    out = []
    for group in sorted({e.group for e in examples}):
        members = [e for e in examples if e.group == group]
        k = max(1, min(config.clusters, len(members) // config.min_cluster))
        centroids, labels = spherical_kmeans(np.stack([e.embedding for e in members]), k, rng)
        found = [
            [e for e, label in zip(members, labels, strict=True) if label == c] for c in range(len(centroids))
        ]
        for chosen in merge_close([c for c in found if c], config.merge_similarity):
            if len(chosen) >= config.min_cluster:
                out.append(Cluster(group, centroid_of(chosen), chosen))
    return out


def centroid_of(members: Sequence[Example]) -> np.ndarray:
    return normalise_rows(np.sum([e.embedding for e in members], axis=0, keepdims=True))[0]


def merge_close(clusters: list[list[Example]], similarity: float) -> list[list[Example]]:
    """Join clusters whose centroids are at least `similarity` apart in cosine, closest first."""
    clusters = [list(c) for c in clusters]
    while len(clusters) > 1:
        centroids = np.stack([centroid_of(c) for c in clusters])
        cosine = centroids @ centroids.T
        np.fill_diagonal(cosine, -np.inf)
        i, j = np.unravel_index(int(np.argmax(cosine)), cosine.shape)
        if cosine[i, j] < similarity:
            break
        clusters[min(i, j)].extend(clusters.pop(max(i, j)))
    return clusters


def validation_split(members: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(training examples, check examples) of a cluster. With VALIDATION_MIN or more, every
    VALIDATION_EVERY-th (by feedback id, so a run is reproducible) is kept out of training: the
    keep-or-drop check then asks whether the MicroLoRA helps sentences it never saw, not only its
    own sentences under new masks (which it can fit without learning anything that carries over).
    Smaller clusters train and check on all their examples (under different masks). Measured with
    benchmarks/learning.py (docs/learning.md): both devices' own domains did better than with the
    old check, through the smaller training sets as much as through the decisions; and with one
    check sentence the judge is noisy."""
    ordered = sorted(members, key=lambda e: e.feedback_id)
    if len(ordered) < VALIDATION_MIN:
        return ordered, list(ordered)
    check = ordered[VALIDATION_EVERY - 1 :: VALIDATION_EVERY]
    kept_out = {e.feedback_id for e in check}  # one example per feedback row
    return [e for e in ordered if e.feedback_id not in kept_out], check


def training_pairs(train: Sequence[Example], block_size: int, prompts: bool) -> list[Pair]:
    """The (context, target) pairs a cluster's MicroLoRA trains on: each training example's answer
    after its prompt, and with `prompts` (LoopBConfig.train_prompts) each prompt after its first
    block as well. A prompt window is laid out as an answer is (masked_nll.py: blocks from where
    its target starts, the context clean), so both trainers and the golden loss treat it alike. A
    prompt of one block or less has nothing left to train on after its context. Only `train`'s
    prompts: the check examples' prompts stay unseen, like their answers."""
    pairs = [(e.prompt, e.target) for e in train]
    if prompts:
        for e in train:
            if len(e.prompt) > block_size:
                pairs.append((e.prompt[:block_size], e.prompt[block_size:]))
    return pairs


# --- step 4: where a cluster's MicroLoRA goes ----------------------------------------------------


def micro_slots(bank: Bank) -> dict[int, tuple[str, int, int]]:
    """slot -> (adapter name, group, version) of the MicroLoRAs in the bank."""
    out = {}
    for name, adapter in bank.adapters.items():
        parsed = parse_micro_name(name)
        if parsed is not None:
            out[adapter.slot] = (name, parsed[0], parsed[2])
    return out


def slot_keys(bank: Bank, slot: int) -> np.ndarray:
    """The DGR keys pointing at `slot`, [n, H] unit rows."""
    rows = [bank.pattern(i) for i, s in enumerate(bank.pattern_slots) if s == slot]
    if not rows:
        return np.zeros((0, bank.hidden_size))
    return normalise_rows(np.asarray(rows, np.float64))


def choose_slot(cluster: Cluster, bank: Bank, config: LoopBConfig) -> tuple[int, bool] | None:
    """(slot, warm start) for the cluster's MicroLoRA: the same group's MicroLoRA whose keys are
    within merge_similarity, else a free DGR slot while fewer than max_micro are kept, else the
    same group's nearest MicroLoRA; None when the bank has no room (every DGR slot holds another
    adapter, or MicroLoRAs of other groups only)."""
    micros = micro_slots(bank)
    nearest: tuple[float, int] | None = None
    for slot, (_, group, _) in micros.items():
        keys = slot_keys(bank, slot)
        if group != cluster.group or len(keys) == 0:
            continue
        similarity = float(np.max(keys @ cluster.centroid))
        if nearest is None or similarity > nearest[0]:
            nearest = (similarity, slot)
    if nearest is not None and nearest[0] >= config.merge_similarity:
        return nearest[1], True
    taken = {a.slot for a in bank.adapters.values()}
    free = [s for s in range(bank.groups, bank.slots) if s not in taken]
    if free and len(micros) < config.max_micro:
        return free[0], False
    return (nearest[1], True) if nearest is not None else None


# --- the loop ------------------------------------------------------------------------------------


class LoopB:
    """Loop B over one learnt bank. `read_good(after, threshold, limit)` is the trajectory store's
    good_feedback (run on the store's own thread when loop A owns it); `forward(chunk, slot,
    micro)` returns logits (LogitsSession.forward), and `set_bank(bank)` gives it the bank; it is
    the keep-or-drop check's forward whatever `trainer` (trainer.py; default SPSA through it) is."""

    def __init__(
        self,
        config: LoopBConfig,
        bank_dir: Path,
        model_config,
        encode: Callable[[str], list[int]],
        read_good: Callable[[int, float, int], list],
        session,
        on_bank: Callable[[Bank, Path], None] | None = None,
        on_warning: Callable[[str], None] = warn,
        after_run: Callable[[], None] | None = None,
        trainer: MicroTrainer | None = None,
    ):
        self.config = config
        # SPSA through `session` unless another trainer is given (the command layer gives the
        # torch one where torch and the model's reference load: trainer.py)
        self.trainer = trainer or SpsaTrainer(session, config.steps, config.batch, config.lr, config.epsilon)
        self.after_run = after_run  # on the same thread after each run (loop C, when it is due)
        self.bank_dir = Path(bank_dir)
        self.model_config = model_config
        self.encode = encode
        self.read_good = read_good
        self.session = session
        self.on_bank = on_bank
        self.on_warning = on_warning
        self.state = self._load_state()
        self.runs = 0
        self._stop = threading.Event()
        self._resumed = threading.Event()  # cleared by pause(): training waits between SPSA steps
        self._resumed.set()
        self._step_started: float | None = None
        self._thread: threading.Thread | None = None
        self.last: RunReport | None = None

    # --- the learnt bank and loop B's state ------------------------------------------------------

    @staticmethod
    def prepare_bank(bank_dir: Path, source: Bank) -> Bank:
        """The learnt bank in `bank_dir`, created as a copy of `source` the first time; what an
        interrupted update left behind is removed."""
        bank_dir = Path(bank_dir)
        with bank_lock(bank_dir):
            if not (bank_dir / BANK_JSON).is_file():
                source.save(bank_dir)
            bank = Bank.load(bank_dir)
            tidy(bank_dir, bank)
        return bank

    def _load_state(self) -> dict:
        try:
            state = json.loads((self.bank_dir / STATE_NAME).read_text())
            if state.get("format") == STATE_FORMAT:
                return state
        except (OSError, ValueError):
            pass
        return {"format": STATE_FORMAT, "after": 0, "version": 0}

    def _save_state(self) -> None:
        write_atomic(self.bank_dir / STATE_NAME, json.dumps(self.state).encode())

    # --- one run ---------------------------------------------------------------------------------

    def run_once(self) -> RunReport:
        started = time.perf_counter()
        c = self.config
        report = RunReport()
        bank = Bank.load(self.bank_dir)
        # a crash between a commit and the state file: names must still be new
        versions = [v for _, _, v in micro_slots(bank).values()]
        self.state["version"] = max([int(self.state["version"]), *versions])
        rows = self.read_good(int(self.state["after"]), c.threshold, c.max_trajectories)
        report.read = len(rows)
        examples = examples_from(rows, self.encode, bank.timestep_groups, c.group_by)
        rng = np.random.default_rng([c.seed, self.state["version"]])
        clusters = clusters_of(examples, c, rng) if examples else []
        report.clusters = len(clusters)
        for cluster in clusters:
            if self._stop.is_set():
                break
            placed = choose_slot(cluster, bank, c)
            if placed is None:
                report.skipped.append(f"group {cluster.group}: no DGR slot free for a MicroLoRA")
                continue
            trained, bank = self._train_and_install(bank, cluster, *placed, rng)
            report.trained.append(trained)
        if rows and not self._stop.is_set():
            self.state["after"] = max(int(self.state["after"]), max(r[0] for r in rows))
            self._save_state()
        report.seconds = time.perf_counter() - started
        self.runs += 1
        self.last = report
        return report

    def _train_and_install(
        self, bank: Bank, cluster: Cluster, slot: int, warm: bool, rng: np.random.Generator
    ) -> tuple[Trained, Bank]:
        started = time.perf_counter()
        c, config = self.config, self.model_config
        layers = trained_layers(bank.layers, c.layers)
        existing = micro_slots(bank).get(slot)
        if warm and existing is not None:
            micro = MicroLora.from_bank(
                bank.adapters[existing[0]].factors,
                cluster.group,
                slot,
                layers,
                c.rank,
                bank.layers,
                bank.rank,
            )
        else:
            micro = new_micro(cluster.group, slot, bank.targets, layers, c.rank, rng)
        self.session.set_bank(bank)
        t_range = (bank.timestep_groups[cluster.group], bank.timestep_groups[cluster.group + 1])
        block = config.block_size
        talora = bank.talora_config()

        train, check = validation_split(cluster.members)

        def loss(trained: MicroLora, data: list[NoisyBlock]) -> float:
            factors = trained.to_bank(bank.layers, bank.rank)
            return masked_nll(
                lambda chunk: self.session.forward(chunk, slot, factors),
                data,
                config.mask_token_id,
                bank.slots,
                bank.groups,
                talora,
                slot,
            )

        validation_rng = np.random.default_rng([c.seed, 7919, self.state["version"], slot])
        validation = [  # the check examples, VALIDATION_BLOCKS times, under masks of their own
            noisy_block(e.prompt, e.target, block, t_range, validation_rng)
            for e in check
            for _ in range(VALIDATION_BLOCKS)
        ]
        before = loss(micro, validation)
        # the same sentences under masks of their own, for a trainer that stops early (the Adam one):
        # it picks its best state on these, and the keep-or-drop check judges it under other masks
        stopping_rng = np.random.default_rng([c.seed, 104729, self.state["version"], slot])
        stopping = [
            noisy_block(e.prompt, e.target, block, t_range, stopping_rng)
            for e in check
            for _ in range(EARLY_STOP_BLOCKS)
        ]

        self._step_started = None
        job = TrainJob(
            micro,
            training_pairs(train, block, c.train_prompts),
            bank,
            t_range,
            block,
            config.mask_token_id,
            rng,
            self._should_stop,
            stopping,
        )
        try:
            result = self.trainer.train(job)
        except TrainerUnavailable as exc:  # the first-order trainer's reference did not build
            if self.config.trainer == "adam":  # asked for by name: no quiet fallback
                raise RuvdllmError(f"loop_b.trainer = adam: {exc}") from None
            self.on_warning(f"loop B trains MicroLoRAs by SPSA from now on: {exc}")
            c = self.config
            self.trainer = SpsaTrainer(self.session, c.steps, c.batch, c.lr, c.epsilon)
            result = self.trainer.train(job)
        version = int(self.state["version"]) + 1
        name = micro_name(cluster.group, slot, version)
        after, kept = math.nan, False
        if not self._stop.is_set():  # shutting down: no validation, nothing installed
            # The check runs the real forward whatever computed the gradient (a trainer may train on
            # a float reference of the model): nothing worse on the graph the runtime runs goes in.
            after = loss(result.micro, validation)
            self.state["version"] = version
            kept = bool(after < before)
            if kept:
                bank = self._install(bank, result.micro, name, cluster)
        seconds = time.perf_counter() - started
        trained = Trained(name, cluster.group, slot, len(cluster.members), result.steps, before, after, kept)
        trained.seconds, trained.trainer = seconds, self.trainer.name
        trained.loss_first, trained.loss_last = result.loss_first, result.loss_last
        trained.notes = list(result.notes)
        return trained, bank

    def _install(self, bank: Bank, micro: MicroLora, name: str, cluster: Cluster) -> Bank:
        # Under the writer lock, onto the bank as it is now: a federation merge or loop C may have
        # changed it while this MicroLoRA trained, and committing over a stale copy would undo them.
        with bank_lock(self.bank_dir):
            bank = Bank.load(self.bank_dir)
            new = copy_bank(bank)
            new.add_adapter(name, micro.slot, micro.to_bank(bank.layers, bank.rank))
            keys = slot_keys(bank, micro.slot)
            duplicate = len(keys) and float(np.max(keys @ cluster.centroid)) >= DUPLICATE_KEY
            if not duplicate and len(new.pattern_slots) < self.config.max_patterns:
                new.add_patterns([cluster.centroid.astype(np.float32)], [micro.slot])
            index = new.build_index()
            commit_bank(self.bank_dir, new, bank, index)
        if self.on_bank is not None:
            self.on_bank(new, self.bank_dir)
        return new

    # --- in the background -----------------------------------------------------------------------

    def start(self) -> bool:
        """Run every `interval` seconds on a daemon thread; False where threads cannot start."""
        if self._thread is not None:
            return True
        thread = threading.Thread(target=self._run, name="ruvdllm-loop-b", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no threads here (Pyodide): the caller runs run_once when idle
            return False
        self._thread = thread
        return True

    def _run(self) -> None:
        lower_thread_priority()
        while not self._stop.wait(self.config.interval):
            try:
                self.run_once()
            except Exception as exc:  # a damaged bank, a full disk: say so, try again next time
                self.on_warning(f"loop B run failed ({type(exc).__name__}: {exc}); retrying later")
            if self.after_run is not None and not self._stop.is_set():
                try:
                    self.after_run()
                except Exception as exc:
                    self.on_warning(f"loop C run failed ({type(exc).__name__}: {exc}); retrying later")

    def pause(self) -> None:
        """Hold training after its current SPSA step until `resume` (a burst of requests)."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def _should_stop(self) -> bool:
        """Between two SPSA steps: rest so that training takes at most `duty` of the wall time,
        wait while paused, and say whether to stop."""
        now = time.perf_counter()
        if self._step_started is not None and self.config.duty < 1.0:
            worked = now - self._step_started
            self._stop.wait(worked * (1.0 - self.config.duty) / self.config.duty)
        while not self._resumed.wait(0.1):
            if self._stop.is_set():
                break
        self._step_started = time.perf_counter()
        return self._stop.is_set()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop after the current SPSA step; what was committed stays."""
        self._stop.set()
        self._resumed.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def lower_thread_priority(niceness: int = 19) -> None:
    """Give the calling thread the lowest CPU priority (Linux: each thread has its own nice value,
    and loop B's one-thread onnxruntime session computes on the calling thread): when generation
    and training want the same core, the kernel gives it to generation. A no-op elsewhere."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
