"""Closing a round from running sums gives what `run_strategy` gives over the same contributions —
for every strategy, with contributions folded by several processes, some not folded at all, and
clusters that leave some out — and counts each contribution exactly once when processes race to
fold the same ones. Real stores: SQLite, and PostgreSQL where asked for."""

import dataclasses
import hashlib

import numpy as np
import pytest
import sqlalchemy as sa

from federation_hub import codec
from federation_hub.aggregate.running import RunningSum
from federation_hub.auth import Caller
from federation_hub.client import shapes_spec
from federation_hub.errors import Invalid
from federation_hub.incoming import Incoming, PlainPart
from federation_hub.observability import HubMetrics
from federation_hub.schemas import Consent, RoundSpec, ValidationMetrics
from federation_hub.services import aggregation, rounds, submission
from federation_hub.services.folding import Folder
from federation_hub.services.state import HubState
from federation_hub.settings import HubSettings
from federation_hub.storage import open_store
from federation_hub.storage import tables as t
from federation_hub.storage.base import ContributionRow, Viewer
from federation_hub.strategies import ContributionMeta
from federation_hub.strategies.run import run_strategy
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import random_update

ADMIN = Viewer(admin=True)
SHAPES = shapes_spec(2, {"q_proj": (12, 12), "v_proj": (12, 6)}, rank=2)
DIMS = {n: (s["out_features"], s["in_features"]) for n, s in SHAPES.items()}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def hubs(url):
    """Two hub processes' states over one database (replicas), folding at once when asked."""
    settings = HubSettings(
        database_url=url,
        admin_token_hash="-",
        k_anonymity=1,
        fold_idle_s=0.0,
        fold_idle_min=1,
        fold_checkpoint_every=4,
    )
    states = []
    for _ in range(2):
        store = open_store(url)
        state = HubState(settings, store, store.hub_id("test"), HubMetrics(), np.random.default_rng(0))
        state.folder = Folder(state)
        states.append(state)
    states[0].store.create_tenant("t")
    yield states
    for state in states:
        state.store.close()


def camp_update(rng, direction, spread=0.05):
    """An update near one of a few directions (so clusters form), as LoRA factors."""
    pairs = random_update(np.random.default_rng(direction), SHAPES, scale=0.3)
    noise = random_update(rng, SHAPES, scale=spread)
    return {n: type(p)(p.a + noise[n].a, p.b) for n, p in pairs.items()}


def submit(state, round_, client, pairs, samples, before, after):
    metrics = ValidationMetrics(perplexity_before=before, perplexity_after=after, samples=samples)
    payload = codec.encode_contribution(round_.timestep_group, pairs, metrics.model_dump())
    update = Incoming(
        update_id=f"{client}-{round_.id}",
        tier=Tier(round_.tier),
        consent=Consent(granted=True, policy="v1"),
        plain={round_.timestep_group: PlainPart(pairs, metrics, payload, False)},
    )
    caller = Caller("client", tenant="t", client_id=client)
    submission.submit(state, caller, update, hashlib.sha256(payload).hexdigest())


def populate(hubs, spec: dict, count=14, seed=1, group="coarse"):
    """`count` contributions through both processes, folded in three phases: some by each process
    and saved, some folded by one and never saved, the rest never folded."""
    a, b = hubs
    round_ = rounds.open_round(a, RoundSpec(timestep_group=group, shapes=SHAPES, release_rank=0, **spec))
    rng = np.random.default_rng(seed)
    sent = []
    for i in range(count):
        pairs = camp_update(rng, direction=0 if i % 5 else 1)  # a majority camp and a minority
        samples, before, after = int(rng.integers(1, 50)), 20.0, float(rng.uniform(15, 22))
        submit((a, b)[i % 2], round_, f"c{i:02d}", pairs, samples, before, after)
        sent.append((pairs, samples, before, after))
        if i == count // 2:
            a.folder.step(), b.folder.step()  # folded and saved (idle 0): partials of both
    b.folder._fold_waiting(None)  # folded in memory, never saved: lost with the process
    return round_, sent


def expected(state, round_, sent, seed):
    strategy = aggregation.strategy_for(round_)
    metas = [
        ContributionMeta(f"c{i:02d}-{round_.id}", f"t/c{i:02d}", s, b, a)
        for i, (_, s, b, a) in enumerate(sent)
    ]
    ranks = {n: None for n in SHAPES}
    rng = np.random.default_rng(seed).spawn(1)[0]
    return run_strategy(
        strategy, metas, lambda idx: (sent[i][0] for i in idx), DIMS, ranks, rng, round_.sketch_seed
    )


SPECS = {
    "weighted": {"tier": "tenant", "tenant": "t", "strategy": "weighted"},
    "quality": {
        "tier": "tenant",
        "tenant": "t",
        "strategy": "quality",
        "strategy_params": {"temperature": 0.01},
    },
    "fedprox": {"tier": "tenant", "tenant": "t", "strategy": "fedprox"},
    "conservative": {"tier": "tenant", "tenant": "t", "strategy": "conservative"},
    "selective": {
        "tier": "tenant",
        "tenant": "t",
        "strategy": "selective",
        "strategy_params": {"method": "kmeans"},
    },
    "hybrid": {
        "tier": "tenant",
        "tenant": "t",
        "strategy": "hybrid",
        "strategy_params": {"temperature": 0.5},
    },
    "dp-quality": {
        "tier": "public",
        "strategy": "quality",
        "dp": {"clip_norm": 1.0, "noise_multiplier": 5.0},
    },
}


def assert_same_sum(got: np.ndarray, want: np.ndarray) -> None:
    """Two sums of the same contributions in another order or grouping: the products are folded
    in float32 (aggregate/lora.py), each sum within ~10⁻⁶ of the float64 one at these sizes."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("held", [False, True], ids=["from-the-database", "own-sum-in-memory"])
@pytest.mark.parametrize("name", SPECS)
def test_the_close_equals_run_strategy(hubs, name, held):
    """Closed by b, which holds unsaved contributions in memory: from the database alone (its
    pending payloads folded again), or with its sum from memory standing for its partial."""
    round_, sent = populate(hubs, SPECS[name])
    b = hubs[1]
    rows = b.store.contribution_rows(round_.id)
    assert any(r.folded for r in rows) and not all(r.folded for r in rows)
    round_ = b.store.get_round(round_.id, ADMIN)
    own = b.folder.take(round_.id) if held else None
    assert not held or own.pending
    b.rng = np.random.default_rng(42)  # the close draws once from it: the same draw as below
    _, result = aggregation.aggregate(b, round_, aggregation.strategy_for(round_), own)
    want = expected(b, round_, sent, 42)
    np.testing.assert_array_equal(result.selection.weights, want.selection.weights)
    assert not result.withheld
    if name in ("conservative", "selective", "hybrid"):
        assert 0 < np.count_nonzero(result.selection.weights) < len(sent)  # someone was left out
    for linear in SHAPES:
        got, ref = result.factors[linear].pair.product(), want.factors[linear].pair.product()
        assert_same_sum(got, ref)


def test_most_left_out_sums_the_chosen_directly(hubs):
    spec = {
        "tier": "tenant",
        "tenant": "t",
        "strategy": "conservative",
        "strategy_params": {"min_contributors": 2},
    }
    a, b = hubs
    round_ = rounds.open_round(a, RoundSpec(timestep_group="coarse", shapes=SHAPES, release_rank=0, **spec))
    rng = np.random.default_rng(3)
    sent = []
    for i in range(9):  # three agree; six point each their own way: the six are left out
        pairs = camp_update(rng, direction=0 if i < 3 else 10 + i)
        submit(a, round_, f"c{i:02d}", pairs, 5, 20.0, 18.0)
        sent.append((pairs, 5, 20.0, 18.0))
    a.folder.step()
    a.rng = np.random.default_rng(1)
    _, result = aggregation.aggregate(a, round_, aggregation.strategy_for(round_))
    want = expected(a, round_, sent, 1)
    assert np.count_nonzero(result.selection.weights) == 3
    for linear in SHAPES:
        assert_same_sum(result.factors[linear].pair.product(), want.factors[linear].pair.product())


def test_processes_racing_to_fold_count_each_contribution_once(hubs):
    """Both processes adopt everything at once (fold_adopt_s 0): each folds all contributions in
    memory; the first to save wins, the other's save rolls back and it reloads. The release is
    still each contribution once."""
    a, b = hubs
    for state in hubs:
        state.settings = dataclasses.replace(state.settings, fold_adopt_s=0.0, fold_checkpoint_every=10**6)
    round_, sent = populate(hubs, SPECS["weighted"], count=8)
    b.folder._fold_waiting(None)
    stale = b.folder.take(round_.id)  # b's sum as a close in b would take it …
    a.folder._fold_waiting(None)
    b.folder._fold_waiting(None)
    assert set(a.folder.rounds[round_.id].pending) & set(b.folder.rounds[round_.id].pending)
    a.folder._checkpoint(round_.id, ("open",))  # … but a saves first
    b.folder._checkpoint(round_.id, ("open",))  # refused: some of its contributions are a's now
    assert round_.id not in b.folder.rounds
    a.rng = np.random.default_rng(0)
    round_ = a.store.get_round(round_.id, ADMIN)
    _, result = aggregation.aggregate(a, round_, aggregation.strategy_for(round_), stale)
    assert result.facts["contributions_summed"] == len(sent)  # the stale sum was not used
    closed = rounds.close_round(b, round_.id)
    assert closed.status == "released"
    release = b.store.get_release(closed.release_id, ADMIN)
    _, pairs, _ = codec.decode_release(release.payload)
    want = expected(b, round_, sent, 0)
    for linear in SHAPES:
        assert_same_sum(pairs[linear].product(), want.factors[linear].pair.product())


def test_a_trickle_is_not_saved_per_update_and_a_burst_is_saved_when_it_ends(hubs):
    """Each save writes the whole dense sum (~100 MB at the benchmark's shapes): a quiet round
    with fewer than `fold_idle_min` waiting is saved only after `fold_forget_s`, and then leaves
    memory; one with `fold_idle_min` waiting is saved once it is quiet and stays in memory."""
    a, _ = hubs
    a.settings = dataclasses.replace(a.settings, fold_idle_s=0.0, fold_idle_min=3, fold_forget_s=1e6)
    round_ = rounds.open_round(a, RoundSpec(timestep_group="coarse", shapes=SHAPES, **SPECS["weighted"]))
    rng = np.random.default_rng(5)

    def folded_rows():
        return sum(r.folded for r in a.store.contribution_rows(round_.id))

    for i in range(2):  # a trickle: folded in memory, not saved
        submit(a, round_, f"c{i:02d}", camp_update(rng, 0), 5, 20.0, 18.0)
        a.folder.step()
    assert folded_rows() == 0 and a.folder.rounds[round_.id].pending
    submit(a, round_, "c02", camp_update(rng, 0), 5, 20.0, 18.0)
    a.folder.step()  # three waiting, quiet: saved, kept in memory
    assert folded_rows() == 3 and round_.id in a.folder.rounds
    submit(a, round_, "c03", camp_update(rng, 0), 5, 20.0, 18.0)
    a.folder.step()
    assert folded_rows() == 3
    a.settings = dataclasses.replace(a.settings, fold_forget_s=0.0)
    a.folder.step()  # quiet long enough: the rest saved, the memory given back
    assert folded_rows() == 4 and round_.id not in a.folder.rounds


def test_a_live_replica_saves_its_own_trickle_before_anyone_adopts_it():
    """Adoption is for a replica that stopped: with the defaults, a live replica's trickle is saved
    by itself (after fold_forget_s, plus a few passes) well before another process may adopt it.
    At equal values the two raced and the live replica's folded sum was discarded."""
    settings = HubSettings(database_url="sqlite://", admin_token_hash="-")
    assert settings.fold_adopt_s >= 2 * settings.fold_forget_s + 10 * settings.fold_interval_s


def test_a_flush_saves_every_sum_whatever_the_schedule(hubs):
    """Processes about to stop (the load benchmark's seeding workers) flush: each folds what it
    accepted and saves it as its partial, though no checkpoint was due. Every contribution is
    then folded exactly once, and a close in a third process reads the two partials alone."""
    for state in hubs:
        state.settings = dataclasses.replace(state.settings, fold_idle_s=1e6, fold_checkpoint_every=10**6)
    round_, sent = populate(hubs, SPECS["weighted"], count=10)
    assert not any(r.folded for r in hubs[0].store.contribution_rows(round_.id))  # nothing was due
    for state in hubs:
        state.folder.flush()
    assert all(r.folded for r in hubs[0].store.contribution_rows(round_.id))
    with hubs[0].store.reading() as snapshot:
        assert sorted(owner for owner, _ in snapshot.partials(round_.id)) == sorted(
            state.instance_id for state in hubs
        )
    store = open_store(hubs[0].settings.database_url)
    closer = HubState(hubs[0].settings, store, store.hub_id(), HubMetrics(), np.random.default_rng(0))
    closer.folder = Folder(closer)
    try:
        closed = rounds.close_round(closer, round_.id)
        release = store.get_release(closed.release_id, ADMIN)
        _, pairs, _ = codec.decode_release(release.payload)
    finally:
        store.close()
    want = expected(closer, round_, sent, 0)
    for linear in SHAPES:
        assert_same_sum(pairs[linear].product(), want.factors[linear].pair.product())


def test_payloads_are_kept_only_while_a_close_can_need_them(hubs):
    a, b = hubs
    clustered, _ = populate(hubs, SPECS["conservative"], count=6, group="fine")
    weighted, _ = populate(hubs, SPECS["weighted"], count=6, group="coarse")
    for state in hubs:
        state.folder.step()  # folded and saved (idle 0)
    for round_, kept in ((clustered, True), (weighted, False)):
        rows = a.store.contribution_rows(round_.id)
        assert all(r.folded for r in rows)
        assert all((p is not None) == kept for p in payloads(a, rows))  # a cluster may leave any out
        assert rounds.close_round(a, round_.id).status in ("released", "withheld")
        assert all(p is None for p in payloads(a, rows))  # finished: nothing reads them again
        with a.store.reading() as snapshot:
            assert list(snapshot.partials(round_.id)) == []


def payloads(state, rows):
    c = t.contributions.c
    with state.store.engine.connect() as conn:
        query = sa.select(c.payload).where(c.id.in_([r.id for r in rows]))
        return [row[0] for row in conn.execute(query)]


def test_folding_on_several_threads_is_the_same_sum(monkeypatch):
    strategy = aggregation.make_strategy("quality", "coarse", {"temperature": 0.01})
    rng = np.random.default_rng(9)
    rows, payloads = [], []
    for i in range(40):
        metrics = {"perplexity_before": 20.0, "perplexity_after": float(rng.uniform(15, 21)), "samples": 3}
        rows.append(ContributionRow(i, f"t/c{i}", f"u{i}", 3, 20.0, metrics["perplexity_after"], 1.0))
        payloads.append(codec.encode_contribution("coarse", random_update(rng, SHAPES), metrics))
    alone, together = RunningSum(DIMS), RunningSum(DIMS)
    aggregation.fold_all(alone, strategy, rows, iter(payloads), "c", workers=1)
    monkeypatch.setattr(aggregation, "THREADED_ENTRIES", 0)  # small linears: thread them anyway
    aggregation.fold_all(together, strategy, rows, iter(payloads), "c", workers=3)
    assert alone.count == together.count == 40 and alone.ref == together.ref
    for name in SHAPES:  # each linear is folded by one thread, in the same order: the same bits
        np.testing.assert_array_equal(together.sums[name].dense(), alone.sums[name].dense())
    with pytest.raises(Invalid):  # a payload that does not decode fails the fold, whichever thread hit it
        aggregation.fold_all(
            RunningSum(DIMS), strategy, rows, iter([*payloads[:-1], b"garbage"]), "c", workers=3
        )
