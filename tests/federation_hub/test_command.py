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


def test_the_hub_never_imports_torch():
    code = "import sys, federation_hub.main, federation_hub.client, federation_hub.command; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
