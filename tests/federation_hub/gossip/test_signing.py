from federation_hub.gossip.signing import sign_headers, verify

SECRET = b"s" * 32


def test_signature_binds_method_path_body_and_time():
    headers = sign_headers(SECRET, "POST", "/v1/gossip/sync", "hub-a", b"{}", now=1000)
    assert verify(SECRET, "POST", "/v1/gossip/sync", headers, b"{}", now=1010) == "hub-a"
    assert verify(b"t" * 32, "POST", "/v1/gossip/sync", headers, b"{}", now=1010) is None
    assert verify(SECRET, "POST", "/v1/gossip/sync", headers, b'{"x":1}', now=1010) is None
    assert verify(SECRET, "POST", "/v1/other", headers, b"{}", now=1010) is None
    assert verify(SECRET, "POST", "/v1/gossip/sync", headers, b"{}", now=2000) is None  # stale
    assert (
        verify(SECRET, "POST", "/v1/gossip/sync", {**headers, "x-hub-id": "hub-b"}, b"{}", now=1010) is None
    )
    assert verify(SECRET, "POST", "/v1/gossip/sync", {}, b"{}", now=1010) is None
