"""benchmarks/ablations.py: the hub round trip of a bank group is exact, and `--tiny` runs every
ablation end to end with finite numbers and a verdict per seed prediction (the mechanics, not the
numbers: those are measurements, benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ruvdllm_export.convert.talora_training import BankTrainConfig, TaloraBanks
from tests.export.test_convert_talora_training import model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
torch.set_num_threads(1)


def _load(name: str):
    """A benchmark script as a module (benchmarks/ is a folder of scripts, not a package)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _random_banks(seed: int) -> TaloraBanks:
    banks = TaloraBanks(model(), BankTrainConfig(seed=seed))
    with torch.no_grad():
        for b in banks.b.values():
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(seed)))
    return banks


def _products(banks: TaloraBanks, group: int) -> dict[str, torch.Tensor]:
    a, b = banks.bank()[next(iter(banks.config.targets))]
    r = banks.config.rank
    cols = slice(group * r, (group + 1) * r)
    return {layer: (a[layer][:, cols] @ b[layer][cols]).detach() for layer in range(a.shape[0])}


@pytest.mark.parametrize("strategy", ["fedavg", "daf"])
def test_identical_devices_get_their_own_banks_back(strategy):
    """Every device submits the same banks: whatever the policy weighs, the release is that update,
    and merging it leaves each device's adapters (their products B·A) where they were."""
    federation = _load("ablation_federation")
    from federation_hub.strategies import ContributionMeta

    banks = _random_banks(1)
    metas = [ContributionMeta(f"u{i}", f"d{i}", 10, 20.0, 18.0) for i in range(4)]
    merged, withheld = federation.aggregate(strategy, [banks] * 4, banks, metas, seed=0)
    assert withheld == {}
    for g in range(banks.config.groups):
        for layer, product in _products(merged[0], g).items():
            np.testing.assert_allclose(product, _products(banks, g)[layer], rtol=1e-4, atol=1e-5)


def test_devices_split_domains_round_robin_without_overlap():
    federation = _load("ablation_federation")
    train = {"a": torch.arange(40).view(20, 2), "b": torch.arange(40, 72).view(16, 2)}
    devices = federation.make_devices(train, 4)
    assert [d.domain for d in devices] == ["a", "b", "a", "b"]
    seen = torch.cat([torch.cat([d.train, d.validation]) for d in devices]).flatten().tolist()
    assert sorted(seen) == list(range(72))


def test_tiny_runs_every_ablation(tmp_path):
    ablations = _load("ablations")
    out = tmp_path / "ablations.json"
    assert ablations.main(["--tiny", "--threads", "1", "--groups", "1", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["ablation"] for r in results["summary"]] == ["talora", "dgr", "federation"]
    for row in results["summary"]:
        assert math.isfinite(row["measured"]) and isinstance(row["met"], bool)
    domains = set(results["talora"]["nll"]["none"])
    assert len(domains) == 3 and set(results["dgr"]) == domains
    for modes in results["dgr"].values():
        assert modes["off"]["retrieved"] == 0 and modes["oracle"]["retrieved"] == 1
        assert all(math.isfinite(m["masked_nll"]) for m in modes.values())
    for domain, nll in results["dgr"].items():  # retrieval off is the banks' own held-out score
        assert nll["off"]["masked_nll"] == pytest.approx(results["talora"]["nll"]["banks"][domain], rel=1e-4)
    fed = results["federation"]
    assert len(fed["local"]) == 4 and {"fedavg", "fedprox", "daf"} <= set(fed)
    assert set(results["groups"]) == {"1", "3"}


def test_dgr_over_a_given_bank_trains_no_talora_banks(tmp_path):
    """--bank: the DGR ablation retrieves over an existing bank (the shipped one on the default
    model) and the TALoRA comparison, a long torch training run, is not run for it."""
    ablations = _load("ablations")
    from ruvdllm.cli import main as cli

    gguf, adapter, domains = ablations.tiny_workspace(tmp_path)  # the same tiny model --tiny builds
    bank = tmp_path / "bank"
    command = ["train-banks", "--model", str(gguf), "--adapter", str(adapter), "--data", *map(str, domains)]
    command += ["--output", str(bank), "--steps", "2", "--seq-len", "32", "--precision", "fp32", "--quiet"]
    assert cli(command + ["--threads", "1"]) == 0
    out = tmp_path / "dgr.json"
    argv = ["--tiny", "--threads", "1", "--only", "dgr", "--bank", str(bank), "--json", str(out)]
    assert ablations.main(argv) == 0
    results = json.loads(out.read_text())
    assert "talora" not in results
    assert [r["ablation"] for r in results["summary"]] == ["dgr"]
    assert len(results["dgr"]) == 3 and all(
        math.isfinite(m["masked_nll"]) for modes in results["dgr"].values() for m in modes.values()
    )
    with pytest.raises(SystemExit):  # the bank replaces what the talora ablation measures
        ablations.parse_args(["--tiny", "--bank", str(bank)])
