from federation_hub.privacy.kanon import release_allowed


def test_distinct_contributors_count_not_updates():
    assert release_allowed(["a", "b", "c", "d", "e"], 5)[0]
    ok, reason = release_allowed(["a", "a", "b", "c", "d"], 5)
    assert not ok and "4 distinct" in reason
