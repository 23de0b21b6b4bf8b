import pytest

from federation_hub.privacy.sealing import associated_data, generate_group_key, open_sealed, seal
from ruvdllm.errors import RuvdllmError


def test_sealed_payload_opens_only_with_its_key_and_binding():
    key, other = generate_group_key(), generate_group_key()
    aad = associated_data("radiology", 3, "fine", "u1")
    nonce, ciphertext = seal(key, b"secret adapter", aad)
    assert b"secret adapter" not in ciphertext
    assert open_sealed(key, nonce, ciphertext, aad) == b"secret adapter"
    with pytest.raises(RuvdllmError, match="does not open"):
        open_sealed(other, nonce, ciphertext, aad)
    with pytest.raises(RuvdllmError, match="does not open"):  # relayed into another round
        open_sealed(key, nonce, ciphertext, associated_data("radiology", 4, "fine", "u1"))
    with pytest.raises(RuvdllmError, match="32 bytes"):
        seal("too-short", b"x", aad)
