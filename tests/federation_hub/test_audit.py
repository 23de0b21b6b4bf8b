from datetime import datetime, timezone

from federation_hub.audit import GENESIS, entry_hash, first_broken


def chain(n):
    entries, prev = [], GENESIS
    for seq in range(1, n + 1):
        at = datetime(2025, 1, 1, tzinfo=timezone.utc)
        digest = entry_hash(prev, seq, at, "release", str(seq), {"contributors": seq})
        entries.append(
            {
                "seq": seq,
                "at": at,
                "kind": "release",
                "subject": str(seq),
                "details": {"contributors": seq},
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    return entries


def test_intact_chain_verifies_and_any_edit_is_found():
    entries = chain(5)
    assert first_broken(entries) is None
    edited = [dict(e) for e in entries]
    edited[2]["details"] = {"contributors": 99}
    assert first_broken(edited) == 3
    assert first_broken(entries[:2] + entries[3:]) == 4  # a removed entry
