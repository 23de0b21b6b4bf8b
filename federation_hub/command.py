"""`ruvdllm hub`: run the federation hub under uvicorn.

    ruvdllm hub                                   # SQLite in the user data dir, port 8700, loopback
    ruvdllm hub --db postgresql://hub@db/hub      # replicas sharing PostgreSQL
    ruvdllm hub --peers https://hub-b:8700 --gossip-secret-file secret

The admin token is read from --admin-token-file (created with a fresh token, mode 0600, if it
does not exist) or RUVDLLM_HUB_ADMIN_TOKEN; the hub keeps only its hash.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from federation_hub.auth import new_token, token_hash
from federation_hub.schemas import HUB_ID_PATTERN
from federation_hub.settings import HubSettings
from federation_hub.tiers import RELEASED, Tier
from ruvdllm.errors import RuvdllmError

DEFAULT_PORT = 8700
MIN_TOKEN_CHARS = 16  # the admin token guards everything: no short, guessable ones
# A shorter period only spins: each exchange is two signed requests per peer, and releases are rare.
MIN_GOSSIP_INTERVAL_S, MAX_GOSSIP_INTERVAL_S = 0.1, 86400.0
# Every POST must fit an update of at least a small round (gossip also carries half the limit per
# exchange); past 16 GiB, a body held whole in memory is more than the machine has.
MIN_REQUEST_MB, MAX_REQUEST_MB = 1.0, 16384.0
# ε is accounted per client and period (whole seconds, services/submission.py `budget_period`), and
# every new period renews it. Shorter than a day, a client would get a fresh budget between one
# round's close and the next, and ε per period would say little about any horizon that matters;
# 100 years stands for "never renews".
MIN_PERIOD_DAYS, MAX_PERIOD_DAYS = 1.0, 36500.0


def _default_db() -> str:
    from platformdirs import user_data_dir

    directory = Path(user_data_dir("ruvdllm"))
    return f"sqlite:///{directory / 'hub.db'}"


def _default_token_file() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("ruvdllm")) / "hub-admin-token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help="database URL: sqlite:///PATH (default: hub.db in the user data dir) or postgresql://…"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default: %(default)s, loopback)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="1 to 65535 (default: %(default)s)")
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the admin token, at least 16 characters (created if missing; default: "
        "hub-admin-token in the user config dir, or RUVDLLM_HUB_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--hub-id",
        help="this hub's id in the federation: 1 to 64 of A-Z a-z 0-9 _ . - "
        "(default: generated once, kept in the database)",
    )
    parser.add_argument(
        "--peers", default="", help="comma-separated base URLs of peer hubs to gossip with (default: none)"
    )
    parser.add_argument(
        "--gossip-secret-file", type=Path, help="file with the federation's shared HMAC secret (≥ 32 bytes)"
    )
    parser.add_argument(
        "--gossip-interval",
        type=float,
        default=10.0,
        help=f"seconds between anti-entropy exchanges, {MIN_GOSSIP_INTERVAL_S:g} to "
        f"{MAX_GOSSIP_INTERVAL_S:g} (default: %(default)s)",
    )
    parser.add_argument(
        "--gossip-tiers",
        default="public",
        help="tiers whose releases are gossiped: public[,tenant] (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=64.0,
        help=f"larger request bodies get 413; {MIN_REQUEST_MB:g} to {MAX_REQUEST_MB:g} (default: %(default)s)",
    )
    parser.add_argument(
        "--epsilon-budget",
        type=float,
        default=1.0,
        help="ε per client per period (public tier), finite and > 0 (default: %(default)s)",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=1e-5,
        help="δ of the (ε, δ) guarantee, in (0, 1) (default: %(default)s)",
    )
    parser.add_argument(
        "--budget-period-days",
        type=float,
        default=30.0,
        help=f"how often the ε budget renews, {MIN_PERIOD_DAYS:g} to {MAX_PERIOD_DAYS:g} days "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--k-anonymity",
        type=int,
        default=5,
        help="fewest distinct contributors a public release may have, ≥ 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--dp-seed",
        type=int,
        help="seed the noise, ≥ 0 (reproducible releases; for tests only; default: OS entropy)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--migrate-only", action="store_true", help="bring the database schema up to date and exit"
    )


def _admin_token_hash(path: Path | None) -> str:
    from_env = os.environ.get("RUVDLLM_HUB_ADMIN_TOKEN")
    if from_env and path is None:
        if len(from_env.strip()) < MIN_TOKEN_CHARS:
            raise RuvdllmError(
                f"RUVDLLM_HUB_ADMIN_TOKEN: the admin token must be at least {MIN_TOKEN_CHARS} characters"
            )
        return token_hash(from_env.strip())
    path = path or _default_token_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new_token() + "\n")
        print(f"hub: wrote a new admin token to {path}")
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise RuvdllmError(f"{path}: the admin token must be at least {MIN_TOKEN_CHARS} characters")
    return token_hash(token)


def _require(flag: str, value, ok: bool, allowed: str) -> None:
    """A flag out of its range stops the hub before it starts, in one line naming what is allowed.
    (Range checks with finite bounds are False for NaN and ±inf too.)"""
    if not ok:
        raise RuvdllmError(f"{flag} {value}: must be {allowed}")


def check_flags(args: argparse.Namespace) -> None:
    """The numeric flags and the hub id, each against what the hub can work with."""
    _require("--port", args.port, 1 <= args.port <= 65535, "a TCP port from 1 to 65535")
    interval = args.gossip_interval
    _require(
        "--gossip-interval",
        interval,
        MIN_GOSSIP_INTERVAL_S <= interval <= MAX_GOSSIP_INTERVAL_S,
        f"a number of seconds from {MIN_GOSSIP_INTERVAL_S:g} to {MAX_GOSSIP_INTERVAL_S:g}",
    )
    _require(
        "--max-request-mb",
        args.max_request_mb,
        MIN_REQUEST_MB <= args.max_request_mb <= MAX_REQUEST_MB,
        f"a number of MiB from {MIN_REQUEST_MB:g} to {MAX_REQUEST_MB:g}",
    )
    budget = args.epsilon_budget
    _require("--epsilon-budget", budget, 0 < budget < math.inf, "a finite number above 0")
    _require("--delta", args.delta, 0 < args.delta < 1, "a number in (0, 1)")
    days = args.budget_period_days
    _require(
        "--budget-period-days",
        days,
        MIN_PERIOD_DAYS <= days <= MAX_PERIOD_DAYS,
        f"a number of days from {MIN_PERIOD_DAYS:g} to {MAX_PERIOD_DAYS:g}",
    )
    _require("--k-anonymity", args.k_anonymity, args.k_anonymity >= 1, "at least 1")
    if args.dp_seed is not None:
        _require("--dp-seed", args.dp_seed, args.dp_seed >= 0, "a non-negative integer (numpy seeds)")
    if args.hub_id is not None:
        _require(
            "--hub-id",
            repr(args.hub_id),
            re.fullmatch(HUB_ID_PATTERN, args.hub_id) is not None,
            "1 to 64 of A-Z a-z 0-9 _ . - (release ids are 'hub id:seq', in URL paths)",
        )


def settings_from(args: argparse.Namespace) -> HubSettings:
    check_flags(args)
    database_url = args.db or _default_db()
    if database_url.startswith("sqlite:///") and database_url != "sqlite:///:memory:":
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    secret = None
    if args.gossip_secret_file:
        if not args.gossip_secret_file.is_file():
            raise RuvdllmError(f"{args.gossip_secret_file}: gossip secret file not found")
        secret = args.gossip_secret_file.read_bytes().strip()
        if len(secret) < 32:
            raise RuvdllmError(f"{args.gossip_secret_file}: the gossip secret must be at least 32 bytes")
    if peers and secret is None:
        raise RuvdllmError("--peers: gossip needs --gossip-secret-file (hub-to-hub requests are HMAC-signed)")
    names = [name.strip() for name in args.gossip_tiers.split(",") if name.strip()]
    if not set(names) <= {tier.value for tier in RELEASED}:
        raise RuvdllmError(f"--gossip-tiers {args.gossip_tiers!r}: only public and tenant releases exist")
    tiers = tuple(Tier(name) for name in names)
    return HubSettings(
        database_url=database_url,
        admin_token_hash=_admin_token_hash(args.admin_token_file),
        hub_id=args.hub_id,
        peers=peers,
        gossip_secret=secret,
        gossip_interval_s=args.gossip_interval,
        gossip_tiers=tiers,
        max_request_bytes=int(args.max_request_mb * 2**20),
        epsilon_budget=args.epsilon_budget,
        delta=args.delta,
        budget_period_s=int(args.budget_period_days * 86400),
        k_anonymity=args.k_anonymity,
        dp_seed=args.dp_seed,
        log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from federation_hub.main import create_app, hub_id_of
    from federation_hub.storage import open_store

    store = open_store(settings.database_url)  # brings the schema up to date
    try:
        if not args.migrate_only:
            # before serving: a database of another hub, or with an id no release could carry,
            # stops the command in one line (in the app's start-up, a failed start's traceback)
            hub_id_of(store, settings.hub_id)
    finally:
        store.close()
    if args.migrate_only:
        print(f"hub: {settings.database_url.split('@')[-1]} is at the newest schema")
        return 0
    import uvicorn

    from federation_hub.observability import log_config

    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=log_config(settings.log_level),
        timeout_graceful_shutdown=10,
    )
    return 0
