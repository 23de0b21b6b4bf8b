"""k-anonymity of releases: nothing is released from fewer than k distinct contributors.

Counted over distinct clients whose contribution actually carries weight in the release, after
the strategy has chosen — a release that a strategy narrowed to three clients is a release from
three clients, however many submitted.
"""

from __future__ import annotations

K_ANONYMITY = 5  # DESIGN.md: public releases need at least five contributors


def release_allowed(contributor_ids: list[str], k: int) -> tuple[bool, str]:
    distinct = len(set(contributor_ids))
    if distinct < k:
        return False, f"k-anonymity: {distinct} distinct contributors, a release needs at least {k}"
    return True, ""
