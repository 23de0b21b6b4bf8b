"""One federation step of a device (loop C, docs/learning.md "Federation"): send one update per
privacy tier the user consented to, then merge the hub's newest released aggregates into the bank.

    send    for each consented tier (group, tenant, public): the bank's TALoRA group adapters whose
            timestep group has an open round of that tier with the bank's shapes, as one update
            (group tier: sealed with the group key); private (everything else) never leaves
    merge   for each timestep group: the newest release this bank has not merged (and, with a group
            key, the newest relayed group round, aggregated here), blended into the adapter at
            `merge_weight` and refactorised to the bank's rank; written atomically (bank_write.py)

Every task (`send:<tier>`, `merge`) fails on its own: a hub that is down, slow or refusing costs
that task a one-line reason and a retry after a backoff (retry_state.py); nothing is lost, since an
update is rebuilt from the bank each time, under the same update id while its content and rounds
are the same (the hub takes a repeat as a replay). Generation never waits on any of this: it runs
in its own process and the bank changes only by the atomic switch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from federation_hub.client import ClientUpdate, GroupContribution, HubClient
from federation_hub.tiers import Tier
from federation_hub.validation import check_deltas
from runtime.artifact import MANIFEST_NAME
from runtime.banks import Bank, bank_lock
from runtime.learning.federation_config import SHARED_TIERS, FederationConfig
from ruvdllm.errors import RuvdllmError
from ruvdllm.federate.bank_pairs import (
    adapter_in_slot,
    adapter_pairs,
    bank_factors,
    bank_shapes,
    fits,
    group_slots,
    merge_pairs,
)
from ruvdllm.federate.bank_write import (
    MERGED_JSON,
    merged_releases,
    remove_unreferenced,
    replace_adapters,
)
from ruvdllm.federate.retry_state import RetryState

STATE_NAME = "federation.json"  # in the data directory: the retry state
METRICS_JSON = (
    "metrics.json"  # optional, in the bank: {"groups": {tg: {perplexity_before, perplexity_after, samples}}}
)
NEUTRAL_METRICS = {"perplexity_before": 1.0, "perplexity_after": 1.0, "samples": 1}  # nothing measured


@dataclass
class StepReport:
    lines: list[str] = field(default_factory=list)  # one per thing done, skipped or failed
    failed: list[str] = field(default_factory=list)  # the tasks that failed this time (retried later)

    def say(self, line: str) -> None:
        self.lines.append(line)


def federate_once(
    config: FederationConfig,
    data_root: Path,
    force: bool = False,
    clock: Callable[[], float] = time.time,
) -> StepReport:
    """Run the tasks that are due (all of them with `force`). Configuration errors (no hub, no
    token, no bank) raise; the hub's failures are reported and scheduled for a retry."""
    report = StepReport()
    if not config.enabled:
        report.say("federation is off ([federation] enabled = false): nothing sent, nothing merged")
        return report
    if not config.hub.strip(","):
        raise RuvdllmError("learning config: federation.hub is not set (the hub's URL)")
    bank_dir = config.bank_path(data_root)
    bank = _load_bank(bank_dir)
    token = _read_secret(config.token_file, "token_file", "the client token the hub's admin issued")
    group_key = None
    if config.consent_group:
        if not config.group:
            raise RuvdllmError("learning config: federation.consent_group needs federation.group")
        group_key = _read_secret(config.group_key_file, "group_key_file", "the group's key")
    state = RetryState.load(data_root / STATE_NAME)
    with bank_lock(bank_dir):  # what a crashed merge left behind
        remove_unreferenced(bank_dir, Bank.load(bank_dir))
    report.say("private: kept on this device (everything not consented to)")
    with HubClient(config.hub, token, timeout_s=config.timeout_s, retries=1) as hub:
        for tier in SHARED_TIERS:
            if tier not in config.consented():
                continue
            task = f"send:{tier}"
            if not _due(state, task, clock(), force, report):
                continue
            try:
                sent = send_tier(hub, bank, bank_dir, tier, config, group_key, state.contributed, report)
                state.contributed.update(sent)
                state.succeeded(task)
            except (RuvdllmError, httpx.HTTPError) as exc:
                _failed(state, task, exc, clock(), config, report)
        if config.pull and _due(state, "merge", clock(), force, report):
            try:
                merge_releases(hub, bank, bank_dir, config, group_key, report)
                state.succeeded("merge")
            except (RuvdllmError, httpx.HTTPError) as exc:
                _failed(state, "merge", exc, clock(), config, report)
    try:
        state.save()
    except OSError as exc:  # a full disk: the next step retries what failed a little early, no more
        report.say(f"{data_root / STATE_NAME}: cannot save the retry state ({exc.strerror or exc})")
    return report


# --- sending ------------------------------------------------------------------------------------


def send_tier(
    hub: HubClient,
    bank: Bank,
    bank_dir: Path,
    tier: str,
    config: FederationConfig,
    group_key: str | None,
    contributed: set[int],
    report: StepReport,
) -> list[int]:
    """Send the tier's update; returns the round ids it contributed to."""
    rounds = [r for r in hub.rounds("open") if _in_scope(r, tier, config)]
    slots = group_slots(bank)
    shapes = bank_shapes(bank)
    metrics = _bank_metrics(bank_dir)
    parts, round_ids = {}, []
    for round_ in sorted(rounds, key=lambda r: r["id"]):
        tg = round_["timestep_group"]
        adapter = adapter_in_slot(bank, slots[tg]) if tg in slots else None
        if round_["id"] in contributed or tg in parts or adapter is None:
            continue
        if round_["shapes"] != shapes:
            report.say(f"{tier}: {tg} round {round_['id']} takes other shapes than this bank's; skipped")
            continue
        pairs = adapter_pairs(bank, adapter)
        try:
            check_deltas(f"{tier} {tg}", pairs, round_["shapes"], round_["max_norm"], round_["id"])
        except RuvdllmError as exc:
            report.say(f"{tier}: {exc}; skipped")
            continue
        part = metrics.get(tg, NEUTRAL_METRICS)
        parts[tg] = GroupContribution(
            pairs, part["perplexity_before"], part["perplexity_after"], part["samples"]
        )
        round_ids.append(round_["id"])
    if not parts:
        report.say(f"{tier}: nothing to send (no open round for this bank's adapters that it has not had)")
        return []
    update = ClientUpdate(
        update_id(tier, round_ids, parts),
        Tier(tier),
        parts,
        consent=True,  # only consented tiers get here
        policy=config.policy,
        group=(config.group or None) if tier == "group" else None,
    )
    receipt = hub.submit(update, group_key=group_key if tier == "group" else None)
    again = " (the hub had it already)" if isinstance(receipt, dict) and receipt.get("duplicate") else ""
    report.say(f"{tier}: sent {', '.join(sorted(parts))} as {update.update_id}{again}")
    return round_ids


def update_id(tier: str, round_ids: list[int], parts: dict[str, GroupContribution]) -> str:
    """The same for the same content and rounds (a retry is a replay at the hub), new otherwise."""
    digest = hashlib.sha256(f"{tier}:{sorted(round_ids)}".encode())
    for tg in sorted(parts):
        part = parts[tg]
        digest.update(f"{tg}:{part.metrics()}".encode())
        for name in sorted(part.pairs):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(part.pairs[name].a, "<f4").tobytes())
            digest.update(np.ascontiguousarray(part.pairs[name].b, "<f4").tobytes())
    return f"{tier}-{digest.hexdigest()[:24]}"


def _in_scope(round_: dict, tier: str, config: FederationConfig) -> bool:
    return round_["tier"] == tier and (tier != "group" or round_.get("group") == config.group)


def _bank_metrics(bank_dir: Path) -> dict:
    """What the training that made the bank measured, per timestep group, when it left a record."""
    path = bank_dir / METRICS_JSON
    if not path.is_file():
        return {}
    try:
        groups = json.loads(path.read_text())["groups"]
        return {
            tg: {
                "perplexity_before": float(m["perplexity_before"]),
                "perplexity_after": float(m["perplexity_after"]),
                "samples": int(m["samples"]),
            }
            for tg, m in groups.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RuvdllmError(f"{path}: not a metrics record ({{'groups': {{tg: {{...}}}}}})") from None


# --- merging ------------------------------------------------------------------------------------


def merge_releases(
    hub: HubClient,
    bank: Bank,
    bank_dir: Path,
    config: FederationConfig,
    group_key: str | None,
    report: StepReport,
) -> None:
    """Blend the newest unmerged aggregates into the bank, all groups in one atomic write. The
    downloads come first; the bank is then read again and written under its lock, so that what
    another writer (loop B) added meanwhile is kept."""
    merged = merged_releases(bank_dir, bank)
    relayed = hub.rounds("relayed") if group_key else []
    fetched = {}  # timestep group -> [(source id, pairs, what)], applied in order
    for tg in group_slots(bank):
        sources = []
        release = _newest_unmerged(hub.releases(tg), merged, bank)
        if release is not None:
            what = f"release {release['id']} ({release['tier']}, {release['contributors']} devices)"
            sources.append((release["id"], hub.release_pairs(release["id"]), what))
        mine = [r for r in relayed if r["timestep_group"] == tg and r.get("group") == config.group]
        for round_ in sorted(mine, key=lambda r: -r["id"]):
            source_id = f"group-round-{round_['id']}"
            if source_id in merged:
                break
            if not fits(bank, round_["shapes"]):
                continue
            result = hub.aggregate_group_round(
                round_["id"], group_key, np.random.default_rng(round_["sketch_seed"])
            )
            if result.withheld:
                report.say(f"{tg}: group round {round_['id']} too few members agreed; nothing to merge")
                continue
            pairs = {name: f.pair for name, f in result.factors.items()}
            sources.append((source_id, pairs, f"group round {round_['id']} (aggregated here)"))
            break
        if sources:
            fetched[tg] = sources
    if not fetched:
        report.say("merge: no new release for this bank")
        return
    with bank_lock(bank_dir):
        bank = Bank.load(bank_dir)
        merged = merged_releases(bank_dir, bank)  # another step may have merged them meanwhile
        slots = group_slots(bank)
        new = {}
        for tg, sources in fetched.items():
            sources = [s for s in sources if s[0] not in merged]
            if not sources:
                continue
            old = adapter_in_slot(bank, slots[tg])
            local = None if old is None else adapter_pairs(bank, old)
            history = [] if old is None else _history(bank_dir, old.name)
            for source_id, pairs, what in sources:
                local = merge_pairs(local, pairs, config.merge_weight, bank.rank)
                history.append(source_id)
                report.say(f"{tg}: merged {what} at weight {config.merge_weight:g}")
            new[slots[tg]] = (tg, bank_factors(bank, local), history)
        if new:
            replace_adapters(bank_dir, bank, new)


def _newest_unmerged(releases: list[dict], merged: set[str], bank: Bank) -> dict | None:
    """The newest release that fits the bank, among those newer than the newest one merged."""
    for release in releases:  # the hub lists them newest first
        if release["id"] in merged:
            return None
        if fits(bank, release.get("details", {}).get("shapes", {})):
            return release
    return None


def _history(bank_dir: Path, name: str) -> list[str]:
    path = bank_dir / "adapters" / name / MERGED_JSON
    return json.loads(path.read_text())["releases"] if path.is_file() else []


# --- small helpers ------------------------------------------------------------------------------


def _load_bank(bank_dir: Path) -> Bank:
    if (bank_dir.parent / MANIFEST_NAME).is_file():
        raise RuvdllmError(
            f"{bank_dir}: a model's own bank (its manifest covers it); copy it and set federation.bank to the copy"
        )
    if not (bank_dir / "bank.json").is_file():
        raise RuvdllmError(f"{bank_dir}: no adapter bank to share or merge into (set federation.bank)")
    return Bank.load(bank_dir)


def _read_secret(path: str, key: str, what: str) -> str:
    if not path:
        raise RuvdllmError(f"learning config: federation.{key} is not set ({what})")
    try:
        value = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise RuvdllmError(f"{path}: cannot read federation.{key} ({exc.strerror or exc})") from None
    if not value:
        raise RuvdllmError(f"{path}: federation.{key} is empty")
    return value


def _due(state: RetryState, task: str, now: float, force: bool, report: StepReport) -> bool:
    wait = state.due_in(task, now)
    if wait > 0 and not force:
        report.say(f"{task}: next try in {wait:.0f}s (last time: {state.reason(task)})")
        return False
    return True


def _failed(
    state: RetryState, task: str, exc: Exception, now: float, config: FederationConfig, report
) -> None:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    wait = state.failed(task, reason, now, config.retry_min_s, config.retry_max_s)
    report.failed.append(task)
    report.say(f"{task}: {reason}; next try in {wait:.0f}s")
