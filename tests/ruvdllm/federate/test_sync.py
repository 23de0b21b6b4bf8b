"""`ruvdllm federate` against a real hub process: a device's bank goes up once per consented tier,
a released aggregate comes down and is merged once; private never leaves; a hub that is down,
slow or refusing costs a one-line reason and a retry with backoff, and loses nothing."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from federation_hub.privacy.sealing import generate_group_key
from runtime.banks import Bank, bank_lock
from runtime.learning.config import load_learning_config
from ruvdllm.cli import main
from ruvdllm.federate import bank_write
from ruvdllm.federate.bank_pairs import adapter_in_slot, adapter_pairs
from ruvdllm.federate.bank_write import merged_releases
from ruvdllm.federate.sync import STATE_NAME, StepReport, federate_once, merge_releases
from tests.federation_hub.hubs import SMALL_SHAPES, HubProcess, free_port
from tests.ruvdllm.federate.banks import random_factors, small_bank

SLOTS = {"fine": 0, "domain": 1, "coarse": 2}  # the TALoRA groups' slots
COARSE = SLOTS["coarse"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    # a tiny ε budget: every public contribution is refused (the hub's own tests cover DP releases)
    process = HubProcess(
        tmp_path_factory.mktemp("hub"), extra_args=["--dp-seed", "7", "--epsilon-budget", "0.01"]
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    admin = hub.admin()
    admin.create_tenant("acme")
    return {name: admin.create_token("acme", name, ["lab"])["token"] for name in ("d1", "d2", "d3", "d4")}


class Device:
    """A device's data directory: its bank, its client token, its learning config."""

    def __init__(self, root: Path, hub_url: str, token: str, bank: Bank, **federation):
        self.root = root
        root.mkdir(parents=True)
        bank.save(root / "bank")
        (root / "token").write_text(token)
        settings = {
            "enabled": True,
            "hub": hub_url,
            "token_file": str(root / "token"),
            "bank": str(root / "bank"),
            **federation,
        }
        lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
        self.config_path = root / "learning.toml"
        self.config_path.write_text(f"[federation]\n{lines}\n")
        self.config = load_learning_config(self.config_path).federation

    def step(self, now: float = 1000.0, **changes):
        return federate_once(replace(self.config, **changes), self.root, clock=lambda: now)

    def bank(self) -> Bank:
        return Bank.load(self.root / "bank")

    def pairs(self, group: str = "coarse") -> dict:
        bank = self.bank()
        return adapter_pairs(bank, adapter_in_slot(bank, SLOTS[group]))


def banks_sharing_a(seed: int, count: int, group: str = "coarse") -> list[Bank]:
    """Banks whose `group` adapters share their A factors: their average, and a device's blend with
    it, stay rank r, so the release and the merge are exact and can be checked to float precision."""
    rng = np.random.default_rng(seed)
    banks = [small_bank(rng) for _ in range(count)]
    shared = {t: f[0] for t, f in random_factors(banks[0], rng).items()}
    for bank in banks:
        bank.add_adapter(group, SLOTS[group], random_factors(bank, rng, a_shared=shared))
    return banks


def test_a_bank_goes_up_and_the_release_comes_down_merged_once(hub, tokens, tmp_path):
    admin = hub.admin()
    round_ = admin.open_round(tier="tenant", tenant="acme", timestep_group="coarse", shapes=SMALL_SHAPES)
    banks = banks_sharing_a(0, 3)
    devices = [
        Device(tmp_path / name, hub.url, tokens[name], bank, consent_tenant=True)
        for name, bank in zip(("d1", "d2", "d3"), banks, strict=True)
    ]
    before = [d.pairs() for d in devices]
    for device in devices:
        report = device.step()
        assert report.failed == []
        assert any(line.startswith("tenant: sent coarse as tenant-") for line in report.lines), report.lines
    assert "tenant: nothing to send" in devices[0].step().lines[1]  # one contribution per round
    receipts = admin.receipts("acme")
    assert sorted(r["client_id"] for r in receipts) == ["d1", "d2", "d3"]

    release_id = admin.close_round(round_["id"])["release_id"]
    assert release_id
    report = devices[0].step()
    assert f"coarse: merged release {release_id} (tenant, 3 devices) at weight 0.5" in report.lines
    bank = devices[0].bank()
    assert bank.adapters[next(a for a in bank.adapters if a.startswith("coarse"))].name == "coarse.fed1"
    assert merged_releases(devices[0].root / "bank", bank) == {release_id}
    with hub.client(tokens["d1"]) as client:
        released = client.release_pairs(release_id)
    merged = devices[0].pairs()
    for name, pair in merged.items():
        mean = sum(b[name].product() for b in before) / 3  # weighted by samples: equal (none measured)
        np.testing.assert_allclose(released[name].product(), mean, atol=1e-5)
        expected = 0.5 * before[0][name].product() + 0.5 * released[name].product()
        np.testing.assert_allclose(pair.product(), expected, atol=1e-5)
    for other in ("fine", "domain"):  # groups without a release are untouched
        assert other in bank.adapters

    again = devices[0].step()
    assert "merge: no new release for this bank" in again.lines
    assert devices[0].pairs()["layers.0.q_proj"].a.tobytes() == merged["layers.0.q_proj"].a.tobytes()


def test_private_never_leaves_and_nothing_is_sent_without_consent(hub, tokens, tmp_path):
    admin = hub.admin()
    seen = {r["update_id"] for r in admin.receipts("acme", client_id="d4")}
    admin.open_round(tier="tenant", tenant="acme", timestep_group="domain", shapes=SMALL_SHAPES)
    device = Device(tmp_path / "d4", hub.url, tokens["d4"], small_bank(np.random.default_rng(1)))
    report = device.step()
    assert report.lines[0] == "private: kept on this device (everything not consented to)"
    assert not any(": sent " in line for line in report.lines)
    assert {r["update_id"] for r in admin.receipts("acme", client_id="d4")} == seen

    off = Device(tmp_path / "off", hub.url, tokens["d4"], small_bank(np.random.default_rng(2)), enabled=False)
    assert off.step().lines == [
        "federation is off ([federation] enabled = false): nothing sent, nothing merged"
    ]


def test_a_hub_that_is_down_is_retried_with_backoff_and_nothing_is_lost(hub, tokens, tmp_path):
    admin = hub.admin()
    admin.open_round(tier="tenant", tenant="acme", timestep_group="fine", shapes=SMALL_SHAPES)
    down = f"http://127.0.0.1:{free_port()}"
    device = Device(
        tmp_path / "d2", down, tokens["d2"], small_bank(np.random.default_rng(3)), consent_tenant=True
    )
    bank_before = (tmp_path / "d2" / "bank" / "bank.json").read_bytes()

    report = device.step(now=1000.0)
    assert report.failed == ["send:tenant", "merge"]
    failure = next(line for line in report.lines if line.startswith("send:tenant: "))
    assert "ConnectError" in failure and failure.endswith("next try in 60s") and "\n" not in failure
    assert (tmp_path / "d2" / "bank" / "bank.json").read_bytes() == bank_before

    waiting = device.step(now=1030.0)  # within the backoff: not tried
    assert waiting.failed == []
    assert any(line.startswith("send:tenant: next try in 30s (last time: hub ") for line in waiting.lines)
    again = device.step(now=1061.0)  # tried again, failed again: the wait doubles
    assert again.lines[-1].endswith("next try in 120s")

    state = json.loads((tmp_path / "d2" / STATE_NAME).read_text())
    assert state["tasks"]["send:tenant"]["failures"] == 2
    back = device.step(now=1061.0 + 121.0, hub=hub.url)  # the hub is back: the update goes up
    (sent,) = [line for line in back.lines if line.startswith("tenant: sent ")]
    assert back.failed == [] and "fine" in sent  # (with the domain round another test left open)
    assert json.loads((tmp_path / "d2" / STATE_NAME).read_text())["tasks"] == {}


def test_a_slow_hub_times_out_and_is_retried_later(tokens, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    device = Device(
        tmp_path / "d3", url, tokens["d3"], small_bank(np.random.default_rng(4)), consent_tenant=True
    )
    report = device.step(timeout_s=0.5, pull=False)
    listener.close()
    assert report.failed == ["send:tenant"]
    assert any("Timeout" in line and line.endswith("next try in 60s") for line in report.lines)


def test_a_refusal_is_a_one_line_reason_and_a_retry(hub, tokens, tmp_path):
    admin = hub.admin()
    admin.open_round(tier="public", timestep_group="coarse", shapes=SMALL_SHAPES)
    device = Device(
        tmp_path / "d1p", hub.url, tokens["d1"], small_bank(np.random.default_rng(5)), consent_public=True
    )
    report = device.step(pull=False)
    assert report.failed == ["send:public"]
    (line,) = [line for line in report.lines if line.startswith("send:public: ")]
    assert " 403 " in line and "budget" in line and line.endswith("next try in 60s")
    assert not any(r["tier"] == "public" for r in admin.receipts("acme", client_id="d1"))


def test_the_group_tier_is_sealed_and_its_round_is_aggregated_and_merged_here(hub, tokens, tmp_path):
    admin = hub.admin()
    key = generate_group_key()
    round_ = admin.open_round(
        tier="group",
        tenant="acme",
        group="lab",
        timestep_group="domain",
        shapes=SMALL_SHAPES,
        strategy="weighted",  # (DAF's domain policy weighs by perplexity gains, which these banks lack)
    )
    devices = []
    for name, bank in zip(("d1", "d2", "d3"), banks_sharing_a(6, 3, "domain"), strict=True):
        (tmp_path / f"{name}.key").write_text(key)
        devices.append(
            Device(
                tmp_path / name, hub.url, tokens[name], bank, consent_group=True, group="lab",
                group_key_file=str(tmp_path / f"{name}.key"),
            )
        )  # fmt: skip
    before = [d.pairs("domain") for d in devices]
    for device in devices:
        assert any(line.startswith("group: sent domain") for line in device.step().lines)
    assert admin.close_round(round_["id"])["status"] == "relayed"
    report = devices[1].step()
    assert f"domain: merged group round {round_['id']} (aggregated here) at weight 0.5" in report.lines
    for name, pair in devices[1].pairs("domain").items():
        mean = sum(b[name].product() for b in before) / 3
        np.testing.assert_allclose(pair.product(), 0.5 * before[1][name].product() + 0.5 * mean, atol=1e-5)
    assert "merge: no new release for this bank" in devices[1].step().lines


def test_the_command_prints_one_line_per_task_and_fails_while_the_hub_is_down(tokens, tmp_path, capsys):
    down = f"http://127.0.0.1:{free_port()}"
    device = Device(
        tmp_path / "cli", down, tokens["d1"], small_bank(np.random.default_rng(7)), consent_tenant=True
    )
    assert main(["federate", "--learning-config", str(device.config_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("private: kept on this device")
    assert [line.split(": ")[0] for line in out[1:]] == ["send:tenant", "merge"]
    assert main(["federate", "--learning-config", str(device.config_path)]) == 0  # backing off: nothing tried
    assert "next try in" in capsys.readouterr().out


def test_configuration_mistakes_are_one_line_errors(tokens, tmp_path, capsys):
    device = Device(
        tmp_path / "bad", "http://127.0.0.1:9", tokens["d1"], small_bank(np.random.default_rng(8))
    )
    text = device.config_path.read_text()
    device.config_path.write_text(text + "consent_privte = true\n")
    assert main(["federate", "--learning-config", str(device.config_path)]) == 1
    assert "[federation] has unknown consent_privte" in capsys.readouterr().err
    device.config_path.write_text(text.replace('hub = "http://127.0.0.1:9"', 'hub = ""'))
    assert main(["federate", "--learning-config", str(device.config_path)]) == 1
    assert "federation.hub is not set" in capsys.readouterr().err
    device.config_path.write_text(text)
    (tmp_path / "bad" / "bank" / "bank.json").unlink()
    assert main(["federate", "--learning-config", str(device.config_path)]) == 1
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith("error: ") and "no adapter bank to share or merge into" in err


def test_a_merge_keeps_what_another_writer_added_while_it_downloaded(hub, tokens, tmp_path):
    admin = hub.admin()
    round_ = admin.open_round(tier="tenant", tenant="acme", timestep_group="coarse", shapes=SMALL_SHAPES)
    device = Device(
        tmp_path / "d3m", hub.url, tokens["d3"], small_bank(np.random.default_rng(9)), consent_tenant=True
    )
    assert device.step(pull=False).failed == []
    release_id = admin.close_round(round_["id"])["release_id"]

    stale = device.bank()  # what the step read before downloading
    other = device.bank()  # meanwhile loop B adds a DGR adapter and saves the bank
    other.add_adapter("micro-1", 3, random_factors(other, np.random.default_rng(10)))
    other.save(device.root / "bank")
    report = StepReport()
    with hub.client(tokens["d3"]) as client:
        merge_releases(client, stale, device.root / "bank", device.config, None, report)
    assert any(release_id in line for line in report.lines)
    assert {"micro-1", "coarse.fed1", "fine", "domain"} == set(device.bank().adapters)


def test_writers_of_one_bank_take_turns(tmp_path):
    (tmp_path / "bank").mkdir()
    order = []
    with bank_lock(tmp_path / "bank"):

        def second_writer():
            with bank_lock(tmp_path / "bank"):
                order.append("second")

        waiting = threading.Thread(target=second_writer)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # blocked while the first writer holds the lock
        order.append("first")
    waiting.join(10)
    assert order == ["first", "second"]


def test_a_step_that_crashes_mid_merge_leaves_the_old_bank_and_the_next_merges_once(
    hub, tokens, tmp_path, monkeypatch
):
    admin = hub.admin()
    round_ = admin.open_round(tier="tenant", tenant="acme", timestep_group="coarse", shapes=SMALL_SHAPES)
    device = Device(
        tmp_path / "d4c", hub.url, tokens["d4"], small_bank(np.random.default_rng(11)), consent_tenant=True
    )
    assert device.step(pull=False).failed == []
    release_id = admin.close_round(round_["id"])["release_id"]
    before = device.pairs()

    class Crash(BaseException):  # not an error the step handles: the process dies here
        pass

    def crash(*args):
        raise Crash

    monkeypatch.setattr(bank_write.os, "replace", crash)  # after the new adapter's files, before the switch
    with pytest.raises(Crash):
        device.step(now=2000.0)
    monkeypatch.undo()
    assert "coarse" in device.bank().adapters  # the old bank, whole
    for name, pair in device.pairs().items():
        np.testing.assert_array_equal(pair.product(), before[name].product())

    report = device.step(now=2001.0)
    assert sum(release_id in line for line in report.lines) == 1
    assert merged_releases(device.root / "bank", device.bank()) == {release_id}
    assert sorted(p.name for p in (device.root / "bank" / "adapters").iterdir()) == [
        "coarse.fed1",
        "domain",
        "fine",
    ]
    assert "merge: no new release for this bank" in device.step(now=2002.0).lines
