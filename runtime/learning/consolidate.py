"""Loop C, deep and rare: consolidate the MicroLoRAs loop B put in DGR slots into the TALoRA group
adapters (every group's, or each into its own timestep group's: `fold_into`), with EWC++ so that
what the adapters knew is not erased.

One run (`consolidate`):

    1  find     the MicroLoRAs in the bank (micro-g<group>-s<slot>-v<n>) and the group adapters
                each goes into (`fold_into`): every group's (the default: DGR applied the MicroLoRA
                at every timestep, and TALoRA's group weights sum to 1 at every t, so adding it to
                every group adapter keeps what it did) or only the group's it was trained for; a
                group with fewer than `min_micro` waits
    2  merge    per group, layer and target: the group adapter plus its MicroLoRAs (at `weight`),
                cut back to the bank's rank in the metric of the running Fisher (ewc.py: the
                closed form of the EWC-penalised merge; λ = 0 is the plain SVD merge)
    3  commit   under the bank's writer lock: the new group adapters (new names, the files beside
                the old one's factors carried over), the MicroLoRAs removed, their DGR keys retired
                (slot RETIRED: the ids stay, retrieval skips them), in one atomic switch of bank.json
                (bank_update.py); their DGR slots are free for loop B again
    4  Fisher   the old Fisher carried onto the new components, then EWC++'s moving average with a
                fresh measurement on the good answers of the MicroLoRAs folded into the group (at
                the group's timesteps), at the new adapter (fisher.py),
                saved atomically beside the bank (fisher.json)

Numpy and the standard library; the forward (a LogitsSession on CPython) and the examples are
passed in. loop_c_service.consolidate_bank is the same with both taken from a model directory and
the learning config (the trajectory store), for `ruvdllm learn consolidate` and scripts.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.banks import RETIRED, Bank, bank_lock
from runtime.learning.bank_update import commit_bank, copy_bank
from runtime.learning.config import LoopCConfig
from runtime.learning.ewc import carry_fisher, ema_fisher, ewc_merge
from runtime.learning.fisher import FisherState, GroupFisher, adapter_components, measure_fisher
from runtime.learning.loop_b import examples_from, micro_slots
from runtime.learning.masked_nll import noisy_block
from runtime.talora import group_names

Example = tuple[Sequence[int], Sequence[int]]  # (prompt tokens, target tokens)
_CONSOLIDATED = re.compile(r"\.c(\d+)$")


@dataclass
class GroupReport:
    group: int
    group_name: str  # fine, domain, coarse
    adapter: str  # the new group adapter's name
    micros: list[str]  # the MicroLoRAs folded into it
    fisher_blocks: int  # blocks the new Fisher was measured on (0: none, the carried one is kept)
    fisher_mean: float  # mean of the group's running Fisher after this run


@dataclass
class ConsolidationReport:
    groups: list[GroupReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per group not consolidated, and why
    removed: list[str] = field(default_factory=list)  # the MicroLoRAs folded and taken out of the bank
    retired_keys: int = 0  # their DGR keys
    seconds: float = 0.0

    @property
    def lines(self) -> list[str]:
        out = [
            f"{g.group_name}: {len(g.micros)} MicroLoRA(s) folded into {g.adapter}, "
            f"Fisher from {g.fisher_blocks} block(s) (mean {g.fisher_mean:.3g})"
            for g in self.groups
        ]
        if self.removed:
            out.append(f"{len(self.removed)} MicroLoRA(s) removed, {self.retired_keys} DGR key(s) retired")
        return out + self.skipped or ["loop C: no MicroLoRA to consolidate"]


def fold_plan(
    micros: Mapping[int, tuple[str, int, int]], groups: int, fold_into: str
) -> dict[int, list[tuple[int, str]]]:
    """group -> the (slot, name) of the MicroLoRAs folded into its adapter, from micro_slots' slot
    -> (name, group, version): all of them into every group ("every") or each into its own."""
    found = [(slot, name, group) for slot, (name, group, _) in sorted(micros.items()) if group < groups]
    if fold_into == "every":
        return {g: [(slot, name) for slot, name, _ in found] for g in range(groups)} if found else {}
    plan: dict[int, list[tuple[int, str]]] = {}
    for slot, name, group in found:
        plan.setdefault(group, []).append((slot, name))
    return plan


def next_adapter_name(bank: Bank, directory: Path, slot: int) -> str:
    """`<group name>.c<n>`, n one more than the highest any adapter of the bank carries (a
    federation merge's `.fedN` suffix on top is dropped, so names do not grow run after run)."""
    numbers = [int(m[1]) for name in bank.adapters if (m := _CONSOLIDATED.search(name.split(".fed")[0]))]
    n = max(numbers, default=0) + 1
    base = group_names(bank.groups)[slot]
    while (Path(directory) / "adapters" / f"{base}.c{n}").exists():  # a crashed run's leftover
        n += 1
    return f"{base}.c{n}"


def _layer_factors(adapter, target: str, bank: Bank) -> tuple[np.ndarray, np.ndarray]:
    fan_in, fan_out = bank.targets[target]
    fa, fb = adapter.factors[target]
    a = np.frombuffer(memoryview(fa).cast("B"), np.float32).reshape(bank.layers, fan_in, bank.rank)
    b = np.frombuffer(memoryview(fb).cast("B"), np.float32).reshape(bank.layers, bank.rank, fan_out)
    return a, b


def merged_group(
    bank: Bank, slot: int, micros: Sequence[str], state: FisherState, config: LoopCConfig
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """The group adapter of `slot` with `micros` folded in (bank-layout factors per target), and the
    old Fisher carried onto its components (target -> [layers, rank])."""
    old_parts = adapter_components(bank, slot)
    factors, carried = {}, {}
    for target, (fan_in, fan_out) in bank.targets.items():
        fisher = state.of(slot, target, bank.layers, bank.rank)
        additions = [_layer_factors(bank.adapters[name], target, bank) for name in micros]
        a = np.zeros((bank.layers, fan_in, bank.rank), np.float32)
        b = np.zeros((bank.layers, bank.rank, fan_out), np.float32)
        carried[target] = np.zeros((bank.layers, bank.rank))
        for layer, old in enumerate(old_parts[target]):
            new = ewc_merge(
                old,
                [(ma[layer], mb[layer]) for ma, mb in additions],
                fisher[layer],
                config.ewc_lambda,
                bank.rank,
                config.weight,
            )
            a[layer], b[layer] = new.factors(bank.rank)
            carried[target][layer] = carry_fisher(old, fisher[layer], new)
        factors[target] = (a, b)
    return factors, carried


def consolidate(
    bank_dir: Path,
    config: LoopCConfig,
    session,
    mask_id: int,
    block_size: int,
    examples: Mapping[int, Sequence[Example]],
    on_bank: Callable[[Bank, Path], None] | None = None,
) -> ConsolidationReport:
    """One run of loop C on the bank in `bank_dir` (module docstring). `session`: a LogitsSession of
    the bank's model (its Fisher forwards); `examples`: group -> (prompt, target) token lists of the
    good answers the Fisher is measured on (a group without any keeps its carried Fisher);
    `on_bank(new bank, directory)` after the commit (a running model takes it)."""
    started = time.perf_counter()
    bank_dir = Path(bank_dir)
    report = ConsolidationReport()
    with bank_lock(bank_dir):
        bank = Bank.load(bank_dir)
        micros = micro_slots(bank)
        plan = fold_plan(micros, bank.groups, config.fold_into)
        state = FisherState.load(bank_dir)
        new = copy_bank(bank)
        done: list[tuple[int, str, list[str], dict]] = []
        folded: dict[int, str] = {}  # slot -> MicroLoRA, each taken out once however many groups took it
        for group, found in sorted(plan.items()):
            if len(found) < config.min_micro:
                report.skipped.append(
                    f"{group_names(bank.groups)[group]}: {len(found)} MicroLoRA(s), "
                    f"consolidated from {config.min_micro}"
                )
                continue
            names = [name for _, name in found]
            factors, carried = merged_group(bank, group, names, state, config)
            old = next((a for a in bank.adapters.values() if a.slot == group), None)
            name = next_adapter_name(bank, bank_dir, group)  # one run: one number for every group
            _carry_side_files(bank_dir, old.name if old is not None else None, name)
            new.add_adapter(name, group, factors)  # replaces the old group adapter in its slot
            folded.update(found)
            done.append((group, name, names, carried))
        if not done:
            report.seconds = time.perf_counter() - started
            return report
        for micro in folded.values():
            new.remove_adapter(micro)
        report.removed = sorted(folded.values())
        report.retired_keys = sum(1 for s in new.pattern_slots if s in folded)
        new.pattern_slots = [RETIRED if s in folded else s for s in new.pattern_slots]
        commit_bank(bank_dir, new, bank, new.build_index())
    if on_bank is not None:
        on_bank(new, bank_dir)
    rng = np.random.default_rng([config.seed, len(state.groups), *[g for g, *_ in done]])
    trained_for = {name: group for name, group, _ in micros.values()}
    for group, name, names, carried in done:
        t_range = (new.timestep_groups[group], new.timestep_groups[group + 1])
        # the answers its MicroLoRAs learnt from, at this group's timesteps
        data = [e for g in sorted({trained_for[n] for n in names}) for e in examples.get(g, ())]
        blocks = (
            [
                noisy_block(prompt, target, block_size, t_range, rng)
                for prompt, target in (
                    data[int(i)] for i in rng.integers(len(data), size=config.fisher_blocks)
                )
            ]
            if data
            else []
        )
        measured = (
            measure_fisher(session, new, group, blocks, mask_id, config.fisher_epsilon) if blocks else {}
        )
        first = group not in state.groups  # no history: the first measurement as is (ema_fisher)
        fisher = {
            t: ema_fisher(None if first else carried[t], measured[t], config.decay)
            if t in measured
            else carried[t]
            for t in carried
        }
        state.groups[group] = GroupFisher(name, fisher)
        mean = float(np.mean([f.mean() for f in fisher.values()]))
        report.groups.append(
            GroupReport(group, group_names(new.groups)[group], name, names, len(blocks), mean)
        )
    state.save(bank_dir)
    report.seconds = time.perf_counter() - started
    return report


def _carry_side_files(bank_dir: Path, old: str | None, new: str) -> None:
    """Files beside an adapter's factors (a federation merge record) travel to its next version,
    so that what they record (releases merged into it) stays true of the adapter that succeeds it."""
    if old is None:
        return
    source, target = bank_dir / "adapters" / old, bank_dir / "adapters" / new
    for path in source.glob("*"):
        if path.is_file() and not path.name.endswith(".f32"):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)


# --- from a model directory and the learning config -----------------------------------------------


def good_examples(read_good, encode, bank: Bank, threshold: float, limit: int) -> dict[int, list[Example]]:
    """group -> (prompt, target) of the newest good trajectories (loop B's selection and grouping)."""
    rows = read_good(0, threshold, limit)
    out: dict[int, list[Example]] = {}
    for e in examples_from(rows, encode, bank.timestep_groups):
        out.setdefault(e.group, []).append((e.prompt, e.target))
    return out
