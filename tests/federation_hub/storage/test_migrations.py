"""Migration 0002 rewrites RVH1 payloads (the hub's former binary form) as safetensors: a database
written by the old hub opens in the new one with its contributions and releases readable."""

import hashlib
import json
import struct
from datetime import datetime, timezone

import numpy as np
import pytest
import sqlalchemy as sa

from federation_hub import codec
from federation_hub.storage import migrate, open_store
from federation_hub.storage.base import Viewer


def rvh1(pairs: dict[str, tuple[np.ndarray, np.ndarray]], metrics: dict) -> bytes:
    """What the former codec wrote: b"RVH1" | uint32 header length | JSON header | float32 data."""
    tensors, chunks = [], []
    for name in sorted(pairs):
        for part, array in zip("ab", pairs[name], strict=True):
            tensors.append([name, part, list(array.shape)])
            chunks.append(np.ascontiguousarray(array, "<f4").tobytes())
    header = json.dumps({"metrics": metrics, "tensors": tensors}, sort_keys=True).encode()
    return b"".join([b"RVH1", struct.pack("<I", len(header)), header, *chunks])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return request.getfixturevalue("postgres_server").create_database()


def test_rvh1_payloads_become_safetensors(url):
    rng = np.random.default_rng(0)
    pairs = {
        "l": (rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32))
    }
    now = datetime.now(timezone.utc)
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('hub_id', 'old')"))
        conn.execute(
            sa.text(
                "INSERT INTO rounds (id, scope, tier, timestep_group, strategy, strategy_params, shapes, max_norm,"
                " min_contributors, sketch_seed, status, created_at) VALUES (1, 'public', 'public', 'domain',"
                " 'daf', '{}', '{}', 1.0, 1, 1, 'open', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO updates (id, tenant, client_id, update_id, body_hash, tier, receipt, created_at)"
                " VALUES (1, 't', 'c', 'u', 'h', 'public', '{}', :now)"
            ),
            {"now": now},
        )
        for i, (nonce, payload) in enumerate(
            [(None, rvh1(pairs, {"samples": 3})), (b"n" * 12, b"RVH1sealed")]
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO contributions (id, round_id, update_pk, client_key, update_id, nonce, payload,"
                    " created_at) VALUES (:id, 1, 1, :ck, 'u', :nonce, :payload, :now)"
                ),
                {"id": i + 1, "ck": f"t/c{i}", "nonce": nonce, "payload": payload, "now": now},
            )
        old_release = rvh1(pairs, {"residuals": {"l": 0.0}})
        conn.execute(
            sa.text(
                "INSERT INTO releases (origin, seq, tier, timestep_group, meta, digest, payload, received_at)"
                " VALUES ('old', 1, 'public', 'domain', '{}', :digest, :payload, :now)"
            ),
            {"digest": hashlib.sha256(old_release).hexdigest(), "payload": old_release, "now": now},
        )
    engine.dispose()

    store = open_store(url)  # migrates to the newest revision
    try:
        (plain, sealed) = list(store.payloads([1, 2]))
        tg, back, metrics = codec.decode_contribution(plain)
        assert tg == "domain" and metrics == {"samples": 3}
        np.testing.assert_array_equal(back["l"].a, pairs["l"][0])
        np.testing.assert_array_equal(back["l"].b, pairs["l"][1])
        assert sealed == b"RVH1sealed"  # ciphertext is left alone
        release = store.get_release("old:1", Viewer(admin=True))
        assert release.digest == hashlib.sha256(release.payload).hexdigest()
        tg, back, residuals = codec.decode_release(release.payload)
        assert tg == "domain" and residuals == {"l": 0.0}
        np.testing.assert_array_equal(back["l"].b, pairs["l"][1])
        assert store.get_round(1, Viewer(admin=True)).accept_float16 is False
    finally:
        store.close()


def test_sqlite_keeps_the_payload_last(tmp_path):
    """Reading a column stored after a megabyte payload would walk its overflow pages (0004)."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    open_store(url).close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        columns = [row[1] for row in conn.exec_driver_sql("PRAGMA table_info(contributions)")]
        indexes = {row[1] for row in conn.exec_driver_sql("PRAGMA index_list(contributions)")}
    engine.dispose()
    assert columns[-1] == "payload" and {"sketch", "folded", "created_at"} <= set(columns)
    assert "unfolded_contributions" in indexes
