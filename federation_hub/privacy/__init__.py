"""Privacy tiers: differential privacy for public contributions, k-anonymity of releases, and
end-to-end sealing of group payloads. See docs/hub.md "Privacy tiers"."""
