"""`ruvdllm hub`: run the federation hub under uvicorn.

    ruvdllm hub                                   # SQLite in the user data dir, port 8700, loopback
    ruvdllm hub --db postgresql://hub@db/hub      # replicas sharing PostgreSQL
    ruvdllm hub --peers https://hub-b:8700 --gossip-secret-file secret

The admin token is read from --admin-token-file (created with a fresh token, mode 0600, if it
does not exist) or RUVDLLM_HUB_ADMIN_TOKEN; the hub keeps only its hash.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from federation_hub.auth import new_token, token_hash
from federation_hub.settings import HubSettings
from federation_hub.tiers import RELEASED, Tier
from ruvdllm.errors import RuvdllmError

DEFAULT_PORT = 8700


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
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--admin-token-file", type=Path, help="file holding the admin token (created if missing)"
    )
    parser.add_argument(
        "--hub-id", help="this hub's id in the federation (default: generated once, kept in the database)"
    )
    parser.add_argument("--peers", default="", help="comma-separated base URLs of peer hubs to gossip with")
    parser.add_argument(
        "--gossip-secret-file", type=Path, help="file with the federation's shared HMAC secret"
    )
    parser.add_argument(
        "--gossip-interval", type=float, default=10.0, help="seconds between anti-entropy exchanges"
    )
    parser.add_argument(
        "--gossip-tiers", default="public", help="tiers whose releases are gossiped: public[,tenant]"
    )
    parser.add_argument("--max-request-mb", type=float, default=64.0, help="larger request bodies get 413")
    parser.add_argument(
        "--epsilon-budget", type=float, default=1.0, help="ε per client per period (public tier)"
    )
    parser.add_argument("--delta", type=float, default=1e-5, help="δ of the (ε, δ) guarantee")
    parser.add_argument("--budget-period-days", type=float, default=30.0)
    parser.add_argument(
        "--k-anonymity", type=int, default=5, help="fewest distinct contributors a public release may have"
    )
    parser.add_argument("--dp-seed", type=int, help="seed the noise (reproducible releases; for tests only)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--migrate-only", action="store_true", help="bring the database schema up to date and exit"
    )


def _admin_token_hash(path: Path | None) -> str:
    from_env = os.environ.get("RUVDLLM_HUB_ADMIN_TOKEN")
    if from_env and path is None:
        return token_hash(from_env)
    path = path or _default_token_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new_token() + "\n")
        print(f"hub: wrote a new admin token to {path}")
    token = path.read_text().strip()
    if len(token) < 16:
        raise RuvdllmError(f"{path}: the admin token must be at least 16 characters")
    return token_hash(token)


def settings_from(args: argparse.Namespace) -> HubSettings:
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
    if args.k_anonymity < 1:
        raise RuvdllmError("--k-anonymity: must be at least 1")
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
    if args.migrate_only:
        from federation_hub.storage import open_store

        open_store(settings.database_url).close()
        print(f"hub: {settings.database_url.split('@')[-1]} is at the newest schema")
        return 0
    import uvicorn

    from federation_hub.main import create_app
    from federation_hub.observability import log_config

    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=log_config(settings.log_level),
        timeout_graceful_shutdown=10,
    )
    return 0
