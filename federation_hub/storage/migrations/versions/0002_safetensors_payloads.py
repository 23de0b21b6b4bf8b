"""Payloads as safetensors instead of RVH1; rounds may accept float16 factors.

Stored contributions (plaintext tiers) and releases are rewritten in the layout of
`federation_hub/codec.py`; a release's digest is recomputed over its new bytes. Sealed group
contributions are ciphertext the hub cannot rewrite: close open group rounds before upgrading,
or their members cannot read them with the new client.

This file carries its own RVH1 reader and safetensors writer, so it keeps doing what it did
whatever the application's codec becomes.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01
"""

import hashlib
import json
import struct

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BATCH = 64

contributions = sa.table(
    "contributions",
    sa.column("id", sa.Integer),
    sa.column("round_id", sa.Integer),
    sa.column("nonce", sa.LargeBinary),
    sa.column("payload", sa.LargeBinary),
)
rounds = sa.table("rounds", sa.column("id", sa.Integer), sa.column("timestep_group", sa.String))
releases = sa.table(
    "releases",
    sa.column("id", sa.Integer),
    sa.column("timestep_group", sa.String),
    sa.column("digest", sa.String),
    sa.column("payload", sa.LargeBinary),
)


def _read_rvh1(blob: bytes) -> tuple[list[tuple[str, str, np.ndarray]], dict]:
    (length,) = struct.unpack_from("<I", blob, 4)
    header = json.loads(blob[8 : 8 + length])
    offset, tensors = 8 + length, []
    for name, part, shape in header["tensors"]:
        count = int(np.prod(shape))
        tensors.append((name, part, np.frombuffer(blob, "<f4", count, offset).reshape(shape)))
        offset += 4 * count
    return tensors, header["metrics"]


def _safetensors(timestep_group: str, tensors, key: str, header: dict) -> bytes:
    entries, chunks, offset = {"__metadata__": {key: json.dumps(header, separators=(",", ":"))}}, [], 0
    for name, part, array in sorted(tensors, key=lambda t: (t[0], t[1])):
        data = array.astype("<f4").tobytes()
        entries[f"{timestep_group}/{name}/{part}"] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *chunks])


def upgrade() -> None:
    op.add_column(
        "rounds", sa.Column("accept_float16", sa.Boolean, nullable=False, server_default=sa.false())
    )
    plain = (
        sa.select(contributions.c.id, contributions.c.payload, rounds.c.timestep_group)
        .join(rounds, rounds.c.id == contributions.c.round_id)
        .where(contributions.c.nonce.is_(None))
    )
    for row in _rvh1_rows(plain, contributions.c.id):
        tensors, metrics = _read_rvh1(bytes(row.payload))
        header = {"groups": {row.timestep_group: {"metrics": metrics}}}
        new = _safetensors(row.timestep_group, tensors, "ruvdllm.update", header)
        op.get_bind().execute(contributions.update().where(contributions.c.id == row.id).values(payload=new))
    released = sa.select(releases.c.id, releases.c.payload, releases.c.timestep_group)
    for row in _rvh1_rows(released, releases.c.id):
        tensors, metrics = _read_rvh1(bytes(row.payload))
        header = {"timestep_group": row.timestep_group, "residuals": metrics["residuals"]}
        new = _safetensors(row.timestep_group, tensors, "ruvdllm.release", header)
        op.get_bind().execute(
            releases.update()
            .where(releases.c.id == row.id)
            .values(payload=new, digest=hashlib.sha256(new).hexdigest())
        )


def _rvh1_rows(query, id_column):
    """The rows of `query` whose payload is RVH1, BATCH at a time (payloads can be megabytes)."""
    last = 0
    while rows := op.get_bind().execute(query.where(id_column > last).order_by(id_column).limit(BATCH)).all():
        yield from (row for row in rows if bytes(row.payload[:4]) == b"RVH1")
        last = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("accept_float16")
