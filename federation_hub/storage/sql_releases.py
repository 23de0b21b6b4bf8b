"""Releases and gossip on SQLAlchemy Core: reading what a viewer may see, the version vector's
inputs, and merging what peers send (a mixin of `SqlStore`, which provides the transaction,
upsert and audit helpers)."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from federation_hub.storage import tables as t
from federation_hub.storage.base import ReleaseRecord, Viewer, utcnow
from federation_hub.tiers import Tier


class ReleaseQueries:
    @staticmethod
    def _visible_releases(viewer: Viewer):
        if viewer.admin:
            return sa.true()
        r = t.releases.c
        return sa.or_(r.tier == Tier.PUBLIC, sa.and_(r.tier == Tier.TENANT, r.tenant == viewer.tenant))

    @staticmethod
    def _release(row, with_payload: bool) -> ReleaseRecord:
        return ReleaseRecord(
            origin=row.origin,
            seq=row.seq,
            tier=row.tier,
            tenant=row.tenant,
            timestep_group=row.timestep_group,
            meta=row.meta,
            digest=row.digest,
            payload=bytes(row.payload) if with_payload else None,
        )

    def get_release(self, release_id: str, viewer: Viewer) -> ReleaseRecord | None:
        origin, _, seq = release_id.rpartition(":")
        if not origin or not seq.isdigit():
            return None
        r = t.releases.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.releases).where(
                    r.origin == origin, r.seq == int(seq), self._visible_releases(viewer)
                )
            ).first()
        return self._release(row, True) if row else None

    def held_release(self, origin: str, seq: int) -> ReleaseRecord | None:
        r = t.releases.c
        query = sa.select(r.origin, r.seq, r.tier, r.tenant, r.timestep_group, r.meta, r.digest).where(
            r.origin == origin, r.seq == seq
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return self._release(row, False) if row else None

    def list_releases(
        self, viewer: Viewer, timestep_group: str | None = None, limit: int = 100
    ) -> list[ReleaseRecord]:
        r = t.releases.c
        query = (
            sa.select(r.origin, r.seq, r.tier, r.tenant, r.timestep_group, r.meta, r.digest)
            .where(self._visible_releases(viewer))
            .order_by(r.id.desc())
            .limit(limit)
        )
        if timestep_group:
            query = query.where(r.timestep_group == timestep_group)
        with self.engine.connect() as conn:
            return [self._release(row, False) for row in conn.execute(query)]

    def release_seqs(self) -> dict[str, list[int]]:
        seqs: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for origin, seq in conn.execute(sa.select(t.releases.c.origin, t.releases.c.seq)):
                seqs.setdefault(origin, []).append(seq)
        return seqs

    def releases_after(self, vv: dict[str, int], tiers: Sequence[str], limit: int) -> list[ReleaseRecord]:
        r = t.releases.c
        newer = [r.origin.notin_(list(vv) or [""])] + [
            sa.and_(r.origin == o, r.seq > s) for o, s in vv.items()
        ]
        query = (
            sa.select(t.releases)
            .where(r.tier.in_(list(tiers)), sa.or_(*newer))
            .order_by(r.origin, r.seq)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [self._release(row, True) for row in conn.execute(query)]

    def merge_releases(self, releases: Sequence[ReleaseRecord]) -> int:
        merged = 0
        with self._write() as conn:
            for rel in releases:
                values = dict(
                    origin=rel.origin,
                    seq=rel.seq,
                    tier=rel.tier,
                    tenant=rel.tenant,
                    timestep_group=rel.timestep_group,
                    meta=rel.meta,
                    digest=rel.digest,
                    payload=rel.payload,
                    received_at=utcnow(),
                )
                if self._insert_ignore(conn, t.releases, values):
                    merged += 1
                    self._append_audit(
                        conn, "release-received", rel.id, {"digest": rel.digest, "tier": rel.tier}
                    )
                    continue
                r = t.releases.c
                # the same readers only: a copy never changes who may read a release (the gossip
                # service skips such entries first; this holds against a concurrent merge too)
                same = sa.and_(
                    r.origin == rel.origin,
                    r.seq == rel.seq,
                    r.tier == rel.tier,
                    r.tenant.is_not_distinct_from(rel.tenant),
                )
                held = conn.execute(sa.select(r.digest).where(same)).scalar_one_or_none()
                if held is not None and rel.digest < held:
                    # Two contents under one (origin, seq): only an origin that lost its database and
                    # reused its id does that. The smaller digest wins everywhere, so merges stay
                    # order-independent (gossip/vv.py `union`), and the audit log records it.
                    conn.execute(t.releases.update().where(same).values(**values))
                    self._append_audit(
                        conn, "release-conflict", rel.id, {"kept": rel.digest, "dropped": held}
                    )
        return merged
