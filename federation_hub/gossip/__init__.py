"""Hub-to-hub anti-entropy: version vectors (`vv`) and HMAC request signing (`signing`). The
exchange itself is `services/gossip.py` (client side) and `routers/gossip.py` (server side)."""
