"""TALoRA bank training on the tiny model with two distinct token domains: the curriculum runs
coarse -> fine, each bank's optimizer steps only when its group is active, the banks round-trip
through the runtime's bank format, and the comparison against the same-size static LoRA runs."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from runtime.banks import Bank
from ruvdllm_export.convert.objectives import ObjectiveConfig, diffusion_loss
from ruvdllm_export.convert.talora_training import (
    BankTrainConfig,
    TaloraBanks,
    stage_of,
    static_equivalent,
    train_banks,
    train_static,
)
from ruvdllm_export.convert.trainer import evaluate
from ruvdllm_export.reference import DiffusionLM, lora_parameters
from tests.export.reference_models import tiny_checkpoint

torch.set_num_threads(1)
MASK = 5


def domain_rows(low: int, high: int, rows: int, length: int, seed: int) -> torch.Tensor:
    """A domain: a sparse random Markov chain over token ids [low, high) — predictable within
    the domain, different from the other domain."""
    rng = np.random.default_rng(low)
    successors = rng.integers(low, high, size=(high - low, 2))
    sample = np.random.default_rng(seed)
    out = np.empty((rows, length), dtype=np.int64)
    for r in range(rows):
        token = int(sample.integers(low, high))
        for i in range(length):
            out[r, i] = token
            token = int(successors[token - low, sample.integers(2)])
    return torch.from_numpy(out)


@functools.cache
def data():
    train = torch.cat([domain_rows(10, 120, 24, 24, 0), domain_rows(200, 330, 24, 24, 0)])
    held = {"a": domain_rows(10, 120, 4, 24, 99), "b": domain_rows(200, 330, 4, 24, 99)}
    return train, held


def model() -> DiffusionLM:
    _, spec, weights = tiny_checkpoint("llama", tied=False, seed=4)
    return DiffusionLM(spec, weights, mask_token_id=MASK)


OBJECTIVE = ObjectiveConfig("bd3lm", 4)
CONFIG = BankTrainConfig(steps=60, batch_size=4, curriculum=(0.1, 0.1, 0.1), lr=1e-2)


def test_curriculum_runs_coarse_then_domain_then_fine_then_all():
    stages = [stage_of(step, CONFIG) for step in range(CONFIG.steps)]  # 10% per group stage
    assert stages[:6] == [2] * 6 and stages[6:12] == [1] * 6 and stages[12:18] == [0] * 6
    assert set(stages[18:]) == {None}
    assert stage_of(59, BankTrainConfig(steps=60, curriculum=(0.3, 0.3, 0.3))) is None


def test_a_bank_steps_only_when_its_group_has_weight():
    """In the coarse stage the block rows use the coarse bank and the clean rows talora_weights(0)
    = the fine bank (docs/sampling.md §7): the domain bank must not move."""
    train, _ = data()
    net = model()
    config = BankTrainConfig(steps=4, batch_size=2, curriculum=(1.0,), lr=1e-2)
    banks, log = train_banks(net, train, OBJECTIVE, config)
    assert all(entry["stage"] == 2 and entry["stepped"] == [0, 2] for entry in log)
    fresh = TaloraBanks(net, config)
    for target in config.targets:
        assert torch.equal(banks.b[f"{target}_1"], fresh.b[f"{target}_1"])  # untouched
        assert torch.equal(banks.a[f"{target}_1"], fresh.a[f"{target}_1"])
        assert banks.b[f"{target}_2"].abs().sum() > 0


def test_banks_round_trip_through_the_runtime_format(tmp_path):
    train, held = data()
    net = model()
    banks, _ = train_banks(net, train, OBJECTIVE, BankTrainConfig(steps=3, batch_size=2))
    banks.save(tmp_path / "banks", net.spec.hidden_size)
    loaded = Bank.load(tmp_path / "banks")
    assert [a.name for a in sorted(loaded.adapters.values(), key=lambda a: a.slot)] == [
        "fine",
        "domain",
        "coarse",
    ]
    for target, (a, b) in banks.bank().items():
        flat_a, flat_b = loaded.assemble(target)
        layers, fan_in, width = a.shape
        np.testing.assert_array_equal(
            np.asarray(flat_a, np.float32).reshape(layers, fan_in, width), a.detach().numpy()
        )
        np.testing.assert_array_equal(np.asarray(flat_b, np.float32).reshape(b.shape), b.detach().numpy())


def test_banks_and_the_same_size_static_lora_both_learn_the_domains():
    """Both adapters lower held-out masked NLL on each domain; they have the same parameter
    count. (Which one is lower is a measurement, benchmarks/conversion_quality.py --talora, not a test.)"""
    train, held = data()
    base = model()
    before = {d: evaluate(base, rows, OBJECTIVE, 4)["masked_nll"] for d, rows in held.items()}

    net = model()
    banks, log = train_banks(net, train, OBJECTIVE, CONFIG)
    after_banks = {
        d: evaluate(net, rows, OBJECTIVE, 4, banks.bank(), banks.slot_weights)["masked_nll"]
        for d, rows in held.items()
    }
    static = model()
    train_static(static, train, OBJECTIVE, CONFIG)
    after_static = {d: evaluate(static, rows, OBJECTIVE, 4)["masked_nll"] for d, rows in held.items()}

    bank_params = sum(p.numel() for p in banks.parameters())
    assert bank_params == sum(p.numel() for p in lora_parameters(static))
    assert static_equivalent(CONFIG).rank == CONFIG.groups * CONFIG.rank
    for d in held:
        assert after_banks[d] < before[d] and after_static[d] < before[d], (
            d,
            before,
            after_banks,
            after_static,
        )


def test_bank_loss_with_zero_banks_is_the_base_loss():
    train, _ = data()
    net = model()
    banks = TaloraBanks(net, CONFIG)
    batch = train[:2]
    plain = diffusion_loss(net, batch, OBJECTIVE, torch.Generator().manual_seed(1))
    with_banks = diffusion_loss(
        net, batch, OBJECTIVE, torch.Generator().manual_seed(1), 1.0, banks.bank(), banks.slot_weights
    )
    torch.testing.assert_close(plain.loss, with_banks.loss)


def test_a_saved_bank_scores_in_the_reference_as_it_trained(tmp_path):
    """Saved with the graph's slot count and read back as the reference sampler's Adapters, the
    banks give the held-out loss they gave in training: same factors, same weights per t."""
    from ruvdllm_export.reference.control import Adapters

    train, held = data()
    net = model()
    banks, _ = train_banks(net, train, OBJECTIVE, BankTrainConfig(steps=6, batch_size=2, lr=1e-2))
    banks.save(tmp_path / "banks", net.spec.hidden_size, slots=5)
    adapters = Adapters.from_bank(Bank.load(tmp_path / "banks"))
    assert adapters.slots == 5 and adapters.groups == 3
    t = torch.tensor([[0.0, 0.3, 0.5, 0.9, 1.0]])
    torch.testing.assert_close(adapters.slot_weights(t)[..., :3], banks.slot_weights(t))
    assert not adapters.slot_weights(t)[..., 3:].any()
    trained = evaluate(net, held["a"], OBJECTIVE, 4, banks.bank(), banks.slot_weights)["masked_nll"]
    loaded = evaluate(net, held["a"], OBJECTIVE, 4, adapters.bank, adapters.slot_weights)["masked_nll"]
    assert loaded == pytest.approx(trained, rel=1e-5)


def test_train_banks_continues_from_given_banks_and_fedprox_keeps_them_closer():
    """A federation round: devices start from the released banks (zero steps leave them as they
    are), and FedProx's term keeps the trained banks nearer that start than plain training."""
    train, _ = data()
    m = model()
    short = BankTrainConfig(steps=8, batch_size=4, curriculum=(), lr=5e-2)
    start, _ = train_banks(m, train, OBJECTIVE, short)
    same, _ = train_banks(m, train, OBJECTIVE, BankTrainConfig(steps=0, curriculum=()), start=start)
    for name, value in start.state_dict().items():
        assert torch.equal(same.state_dict()[name], value)

    def drift(mu: float) -> float:
        config = BankTrainConfig(steps=8, batch_size=4, curriculum=(), lr=5e-2, seed=3, proximal_mu=mu)
        trained, _ = train_banks(m, train, OBJECTIVE, config, start=start)
        return sum(
            float((p - q).detach().pow(2).sum())
            for p, q in zip(trained.parameters(), start.parameters(), strict=True)
        )

    assert drift(50.0) < drift(0.0)


def test_proximal_mu_must_not_be_negative():
    with pytest.raises(ValueError, match="proximal_mu"):
        BankTrainConfig(proximal_mu=-0.1)
