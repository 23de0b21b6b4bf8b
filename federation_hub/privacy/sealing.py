"""Group tier: payloads sealed end to end with a key only the group's members hold.

ChaCha20-Poly1305 (`cryptography`) with associated data that binds a ciphertext to where it
belongs — group, round, timestep group and update id — so a hub that relays it elsewhere (another
round, another group) produces something no member will open. The hub stores and relays
ciphertext it cannot read; members decrypt and aggregate locally with DAF.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ruvdllm.errors import RuvdllmError

KEY_BYTES = 32
NONCE_BYTES = 12  # random 96-bit nonces: collision-safe for far more messages than a group sends per key


def generate_group_key() -> str:
    """A fresh group key, URL-safe base64, to share among members out of band (never with the hub)."""
    return base64.urlsafe_b64encode(ChaCha20Poly1305.generate_key()).decode()


def _key(group_key: str) -> ChaCha20Poly1305:
    try:
        raw = base64.urlsafe_b64decode(group_key.encode())
    except ValueError:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise RuvdllmError("group key: must be 32 bytes in URL-safe base64 (see generate_group_key)")
    return ChaCha20Poly1305(raw)


def associated_data(group: str, round_id: int, timestep_group: str, update_id: str) -> bytes:
    return f"ruvdllm-group/v1|{group}|{round_id}|{timestep_group}|{update_id}".encode()


def seal(group_key: str, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext with tag)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, _key(group_key).encrypt(nonce, plaintext, aad)


def open_sealed(group_key: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return _key(group_key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise RuvdllmError(
            "sealed payload: does not open with this group key for this group/round/update (wrong key or relayed elsewhere)"
        ) from None
