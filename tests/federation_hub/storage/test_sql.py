"""The Store against real SQLite and a real PostgreSQL server (the latter marked `postgres`), with
the services' rules that run inside its transactions (accepting an update, finishing a round)."""

import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from federation_hub.privacy.accountant import BudgetExhausted
from federation_hub.schemas import UpdateReceipt
from federation_hub.services.rounds import finish
from federation_hub.services.submission import EpsilonCharge, accept
from federation_hub.storage import Conflict, open_store
from federation_hub.storage.base import (
    ConcurrentWrite,
    NewContribution,
    NewRelease,
    NewUpdate,
    ReleaseRecord,
    Viewer,
)
from federation_hub.storage.tables import metadata

ADMIN = Viewer(admin=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    opened = open_store(url)
    opened.hub_id("test-hub")
    opened.create_tenant("acme")
    yield opened
    opened.close()


def new_round(store, scope="public", tg="coarse", tier="public"):
    fields = dict(
        scope=scope,
        tier=tier,
        tenant=None,
        grp=None,
        timestep_group=tg,
        strategy="daf",
        strategy_params={},
        shapes={"l": {"rank": 1, "in_features": 2, "out_features": 2}},
        max_norm=10.0,
        min_contributors=1,
        release_rank=None,
        dp={"clip_norm": 1.0, "noise_multiplier": 8.0},
        sketch_seed=1,
    )
    return store.create_round(fields)


def update(round_id, client="c1", uid="u1", body="h1"):
    return NewUpdate(
        "acme",
        client,
        uid,
        body,
        "public",
        (NewContribution(round_id, b"payload", samples=1, perplexity_before=2, perplexity_after=1, norm=1),),
    )


def budget(round_id, sigma=8.0):
    return EpsilonCharge(period=0, rounds=((round_id, sigma),), delta=1e-5, budget=1.0)


def receipt_for(new):
    return UpdateReceipt(update_id=new.update_id, duplicate=False, accepted=[])


def submit_update(store, new, charge):
    """Accept `new` the way the hub does: (the stored receipt as a dict, duplicate)."""
    receipt, duplicate = accept(store, new, receipt_for(new), charge)
    return receipt.model_dump(exclude={"duplicate"}), duplicate


def test_migrated_schema_matches_the_tables(store):
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        if store.dialect == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_audit_log_is_append_only_in_the_database(store):
    store.append_audit("test", "x", {"n": 1})
    for statement in ("UPDATE audit SET kind = 'forged'", "DELETE FROM audit"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.engine.begin() as conn:
                conn.execute(sa.text(statement))
    assert [e.kind for e in store.audit_entries()][-1] == "test"


def test_one_open_round_per_scope_and_group(store):
    new_round(store)
    with pytest.raises(Conflict):
        new_round(store)
    new_round(store, tg="fine")


def test_accept_is_atomic_idempotent_and_one_per_client(store):
    r = new_round(store)
    receipt, duplicate = submit_update(store, update(r.id), budget(r.id))
    assert not duplicate and 0 < receipt["epsilon_spent"] < 1
    assert submit_update(store, update(r.id), budget(r.id, sigma=4.0)) == (receipt, True)
    with pytest.raises(Conflict, match="different content"):
        submit_update(store, update(r.id, body="h2"), budget(r.id))
    with pytest.raises(Conflict, match="one per round"):
        submit_update(store, update(r.id, uid="u2"), budget(r.id))
    # over budget: nothing of the update is stored
    r2 = new_round(store, tg="fine")
    with pytest.raises(BudgetExhausted):
        submit_update(store, update(r2.id, uid="u3"), budget(r2.id, sigma=1.0))
    assert store.find_update("acme", "c1", "u3") is None
    assert store.contribution_rows(r2.id) == []
    assert store.budget_spent("acme/c1", 0) == [8.0]
    store.begin_closing(r.id)
    with pytest.raises(Conflict, match="closing"):
        submit_update(store, update(r.id, client="c2"), None)


def test_concurrent_submissions_cannot_overspend(store):
    rounds = [new_round(store, tg=f"g{i}") for i in range(6)]
    outcomes = []

    def submit(i):
        try:
            submit_update(store, update(rounds[i].id, uid=f"u{i}"), budget(rounds[i].id))
            outcomes.append("ok")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 3  # σ = 8: three fit in ε = 1
    assert len(store.budget_spent("acme/c1", 0)) == 3


def test_concurrent_replays_are_accepted_exactly_once(store):
    """A client's retries racing each other (and, on PostgreSQL, the unique key that settles the
    race): one acceptance, the others get its receipt as duplicates, one ε charge."""
    r = new_round(store)
    outcomes = []
    start = threading.Barrier(6)

    def retry():
        start.wait()
        outcomes.append(submit_update(store, update(r.id), budget(r.id)))

    threads = [threading.Thread(target=retry) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(duplicate for _, duplicate in outcomes) == [False] + [True] * 5
    assert len({str(receipt) for receipt, _ in outcomes}) == 1
    assert len(store.contribution_rows(r.id)) == 1 and store.budget_spent("acme/c1", 0) == [8.0]


@pytest.mark.postgres
def test_a_key_stored_concurrently_is_reported_and_decided_again(request, tmp_path):
    """Two transactions that both found the update id new: the later insert fails on the unique
    key, storage reports ConcurrentWrite (nothing of it stored), and `accept` decides again."""
    store = open_store(request.getfixturevalue("postgres_server").create_database())
    try:
        store.hub_id("test-hub")
        r = new_round(store)
        first_read, second_done = threading.Event(), threading.Event()
        outcome = {}

        def second():
            try:
                with store.transaction() as tx:
                    assert tx.find_update("acme", "c1", "u1") is None
                    first_read.wait()
                    tx.add_update(update(r.id), {"update_id": "u1"})  # waits for the first to commit
            except ConcurrentWrite as exc:
                outcome["error"] = exc
            second_done.set()

        thread = threading.Thread(target=second)
        with store.transaction() as tx:
            assert tx.find_update("acme", "c1", "u1") is None
            tx.add_update(update(r.id), {"update_id": "u1", "duplicate": False, "accepted": []})
            thread.start()
            first_read.set()
            assert not second_done.wait(0.5)  # blocked on the key the first holds
        thread.join()
        assert isinstance(outcome.get("error"), ConcurrentWrite)
        assert len(store.contribution_rows(r.id)) == 1
        assert accept(store, update(r.id), receipt_for(update(r.id)), None)[1] is True
    finally:
        store.close()


@pytest.mark.postgres
def test_a_retry_committed_between_the_id_lookup_and_the_round_check_is_a_replay(request, monkeypatch):
    """Read committed: a retry of the same update commits after this transaction looked its id up
    and before it checks the round's contributors. It sees its own update there, which is not a
    second contribution: decided again, it is a replay (one acceptance, one ε charge)."""
    from federation_hub.storage.sql import SqlTransaction

    store = open_store(request.getfixturevalue("postgres_server").create_database())
    try:
        store.hub_id("test-hub")
        store.create_tenant("acme")
        r = new_round(store)
        lookup = SqlTransaction.find_update
        raced = []

        def find_then_let_a_retry_commit(tx, *key):
            found = lookup(tx, *key)
            if not raced:
                raced.append(True)
                racer = threading.Thread(
                    target=lambda: raced.append(submit_update(store, update(r.id), budget(r.id)))
                )
                racer.start()
                racer.join()
            return found

        monkeypatch.setattr(SqlTransaction, "find_update", find_then_let_a_retry_commit)
        receipt, duplicate = submit_update(store, update(r.id), budget(r.id))
        assert raced[1] == (receipt, False) and duplicate is True
        assert len(store.contribution_rows(r.id)) == 1 and store.budget_spent("acme/c1", 0) == [8.0]
    finally:
        store.close()


def test_finish_round_is_idempotent_and_numbers_releases(store):
    r = new_round(store)
    store.begin_closing(r.id)
    release = NewRelease("public", None, "coarse", {"round_id": r.id}, "a" * 64, b"RVH1")
    first = finish(store, r.id, "released", "released", release, ("release", str(r.id), {}))
    assert first == "test-hub:1"
    assert finish(store, r.id, "released", "released", release, ("release", str(r.id), {})) == first
    assert store.release_seqs() == {"test-hub": [1]}
    assert store.get_release(first, Viewer(admin=False, tenant="other")).meta["seq"] == 1


def test_merges_are_idempotent_and_order_independent(store):
    def rel(seq, digest):
        return ReleaseRecord(
            "peer", seq, "public", None, "coarse", {"origin": "peer", "seq": seq}, digest, b"x"
        )

    assert store.merge_releases([rel(1, "b" * 64), rel(2, "c" * 64)]) == 2
    assert store.merge_releases([rel(1, "b" * 64)]) == 0
    store.merge_releases([rel(1, "a" * 64)])  # a conflicting copy: the smaller digest wins
    store.merge_releases([rel(1, "f" * 64)])
    assert store.get_release("peer:1", ADMIN).digest == "a" * 64
    relabelled = ReleaseRecord("peer", 1, "tenant", "acme", "coarse", {"seq": 1}, "0" * 64, b"y")
    store.merge_releases([relabelled])  # smaller, but for other readers: never replaces
    held = store.get_release("peer:1", ADMIN)
    assert (held.tier, held.tenant, held.digest) == ("public", None, "a" * 64)
    assert store.held_release("peer", 1) == ReleaseRecord(
        "peer", 1, "public", None, "coarse", held.meta, "a" * 64, None
    )
    assert store.releases_after({"peer": 1}, ["public"], 10)[0].seq == 2
    assert store.releases_after({"peer": 2}, ["public"], 10) == []
    assert store.releases_after({}, ["tenant"], 10) == []


def test_a_database_belongs_to_one_hub(store):
    assert store.hub_id() == "test-hub"
    with pytest.raises(Exception, match="belongs to hub"):
        store.hub_id("another")
