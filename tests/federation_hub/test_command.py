"""`ruvdllm hub` settings: what the command line accepts and refuses."""

import argparse
import os
import stat
import subprocess
import sys

import pytest

from federation_hub.auth import token_hash
from federation_hub.command import add_arguments, run, settings_from
from ruvdllm.errors import RuvdllmError


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_admin_token_file_is_created_private_and_only_its_hash_kept(tmp_path):
    token_file = tmp_path / "conf" / "admin-token"
    settings = settings_from(
        parse("--db", f"sqlite:///{tmp_path}/h.db", "--admin-token-file", str(token_file))
    )
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert settings.admin_token_hash == token_hash(token_file.read_text().strip())
    assert token_file.read_text().strip() not in repr(settings)


def test_gossip_needs_a_long_enough_secret(tmp_path):
    token = tmp_path / "t"
    token.write_text("a" * 32)
    base = ["--db", f"sqlite:///{tmp_path}/h.db", "--admin-token-file", str(token)]
    with pytest.raises(RuvdllmError, match="needs --gossip-secret-file"):
        settings_from(parse(*base, "--peers", "http://127.0.0.1:1"))
    short = tmp_path / "short"
    short.write_bytes(b"x" * 8)
    with pytest.raises(RuvdllmError, match="at least 32 bytes"):
        settings_from(parse(*base, "--gossip-secret-file", str(short)))
    with pytest.raises(RuvdllmError, match="only public and tenant"):
        settings_from(parse(*base, "--gossip-tiers", "group"))
    good = tmp_path / "secret"
    good.write_bytes(b"s" * 40)
    settings = settings_from(
        parse(*base, "--peers", "http://a:1, http://b:2", "--gossip-secret-file", str(good))
    )
    assert settings.peers == ("http://a:1", "http://b:2") and settings.gossip_secret == b"s" * 40


OUT_OF_RANGE = [  # the outside probe's values, and neighbours
    ("--epsilon-budget", "nan"),  # the budget was silently off
    ("--epsilon-budget", "inf"),
    ("--epsilon-budget", "0"),
    ("--delta", "5"),  # never charged
    ("--delta", "0"),
    ("--budget-period-days", "0"),  # ZeroDivisionError on every public submission
    ("--budget-period-days", "0.000001"),
    ("--budget-period-days", "nan"),
    ("--max-request-mb", "-1"),  # every POST was 413
    ("--max-request-mb", "nan"),  # a traceback
    ("--max-request-mb", "inf"),
    ("--port", "99999"),  # the log claimed 99999
    ("--port", "0"),
    ("--gossip-interval", "0"),
    ("--gossip-interval", "nan"),
    ("--k-anonymity", "0"),
    ("--dp-seed", "-1"),
    ("--hub-id", "eu:1"),  # release "eu:1:1", which GET /v1/releases/{id} refuses
    ("--hub-id", "eu/1"),
    ("--hub-id", "x" * 65),
    ("--hub-id", "eu-1\n"),  # `$` in a pattern matches before a final newline
]


@pytest.mark.parametrize("flag, value", OUT_OF_RANGE)
def test_numeric_flags_and_the_hub_id_are_checked(tmp_path, flag, value):
    token = tmp_path / "t"
    token.write_text("a" * 32)
    with pytest.raises(RuvdllmError, match=f"^{flag} .*: must be ") as refused:
        settings_from(
            parse("--db", f"sqlite:///{tmp_path}/h.db", "--admin-token-file", str(token), flag, value)
        )
    assert "\n" not in str(refused.value)


def test_a_bad_flag_stops_the_command_in_one_line(tmp_path):
    token = tmp_path / "t"
    token.write_text("a" * 32)
    base = [sys.executable, "-m", "ruvdllm.cli", "hub", "--db", f"sqlite:///{tmp_path}/h.db"]
    out = subprocess.run(
        [*base, "--admin-token-file", str(token), "--max-request-mb", "nan"], capture_output=True, text=True
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: --max-request-mb nan: must be a number of MiB from 1 to ")
    short = subprocess.run(  # a token file needs 16 characters; the environment's did not
        [*base, "--migrate-only"],
        capture_output=True,
        text=True,
        env={**os.environ, "RUVDLLM_HUB_ADMIN_TOKEN": "a"},
    )
    assert short.returncode == 1 and "at least 16 characters" in short.stderr, short.stderr


def test_a_database_whose_hub_id_names_no_release_is_refused(tmp_path):
    """A database made before hub ids were checked may hold one like "eu:1"."""
    from federation_hub.main import hub_id_of
    from federation_hub.storage import open_store

    store = open_store(f"sqlite:///{tmp_path}/h.db")
    try:
        store.hub_id("eu:1")
        with pytest.raises(RuvdllmError, match="hub id 'eu:1' is not"):
            hub_id_of(store, None)
    finally:
        store.close()


def test_migrate_only_creates_the_schema(tmp_path, capsys):
    token = tmp_path / "t"
    token.write_text("a" * 32)
    assert (
        run(parse("--db", f"sqlite:///{tmp_path}/h.db", "--admin-token-file", str(token), "--migrate-only"))
        == 0
    )
    assert "newest schema" in capsys.readouterr().out
    assert (tmp_path / "h.db").exists()


def test_registered_as_ruvdllm_hub():
    out = subprocess.run(
        [sys.executable, "-m", "ruvdllm.cli", "hub", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--peers" in out.stdout and "--gossip-secret-file" in out.stdout
    for default in ("8700", "1e-05", "30.0", "64.0", "info"):  # the defaults are shown
        assert f"(default: {default})" in " ".join(out.stdout.split()), default


def test_the_hub_never_imports_torch():
    code = "import sys, federation_hub.main, federation_hub.client, federation_hub.command; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
