"""The trainer under torchrun's contract (WORLD_SIZE / RANK / MASTER_ADDR, gloo on CPU): two
processes take different micro-batches, average their gradients and end with the same adapter;
only rank 0 writes the run directory. Opt-in (slow): it spawns two torch processes."""

from __future__ import annotations

import os
import socket
import time
import types

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ruvdllm_export.convert.trainer as trainer_module
from ruvdllm_export.convert.objectives import ObjectiveConfig
from ruvdllm_export.convert.trainer import TrainConfig, Trainer
from ruvdllm_export.reference import DiffusionLM, LoraConfig, apply_lora, lora_state_dict
from tests.export.reference_models import tiny_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, out_dir: str, max_minutes: float = 0.0) -> None:
    os.environ.update(
        {"WORLD_SIZE": str(world), "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    _, spec, weights = tiny_checkpoint("llama", tied=False, seed=6)
    model = DiffusionLM(spec, weights, mask_token_id=5)
    lora = LoraConfig(rank=2)
    apply_lora(model, lora)
    data = torch.randint(10, 300, (16, 24), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        seq_len=24, grad_accum=1, max_steps=3, eval_every=0, checkpoint_minutes=1e9, max_minutes=max_minutes
    )
    trainer = Trainer(
        model, lora, ObjectiveConfig("bd3lm", 4), config, data, None, run_dir, {}, progress=False
    )
    if max_minutes and rank == 1:
        # rank 1's clock stands still: only rank 0's decision can stop it at the same step
        trainer_module.time = types.SimpleNamespace(monotonic=lambda: 0.0, time=time.time)
    trainer.fit()
    torch.save(lora_state_dict(model), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned torch processes: ~30 s idle, minutes on a loaded machine
def test_two_ranks_end_with_the_same_adapter(tmp_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(run_dir), str(out_dir)), nprocs=2, join=True)
    first, second = (torch.load(out_dir / f"rank{r}.pt") for r in range(2))
    assert first.keys() == second.keys()
    moved = False
    for name in first:
        np.testing.assert_array_equal(first[name].numpy(), second[name].numpy())
        moved |= name.endswith("lora_B.weight") and bool(first[name].abs().sum() > 0)
    assert moved
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "adapter.safetensors").is_file()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["state"]
    assert state["step"] == 3 and state["tokens"] == 3 * 2 * 24  # both ranks' rows counted


@pytest.mark.slow  # two spawned torch processes
def test_a_time_limit_stops_every_rank_at_the_same_step(tmp_path):
    """--max-minutes under torchrun: rank 0's clock decides for all, so no rank waits for
    gradients another has stopped sending (a hang, not an error, if they disagreed)."""
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(run_dir), str(out_dir), 1e-9), nprocs=2, join=True)
    first, second = (torch.load(out_dir / f"rank{r}.pt") for r in range(2))
    for name in first:
        np.testing.assert_array_equal(first[name].numpy(), second[name].numpy())
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["state"]["step"] == 1
