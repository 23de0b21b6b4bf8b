"""Tiny exported models for the browser tests: a random LLaMA checkpoint built locally, exported by
the project's exporter for the WebGPU target (the graph the browser runs on both EPs), plus an
adapter bank with TALoRA group adapters, DGR adapters and DGR patterns so that every adapter path
of the graph and of the sampler is exercised."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

from runtime.artifact import CONFIG_NAME, load_config, write_manifest
from runtime.banks import Bank
from runtime.model import BANKS_DIR

BANK_ADAPTERS = ("fine", "domain", "coarse", "dgr-a", "dgr-b")  # slots 0..2 TALoRA, 3..4 DGR


def add_bank(model_dir: Path, seed: int = 0, patterns: int = 8) -> None:
    """Random small adapters in five slots and `patterns` DGR keys; rewrites the manifest."""
    config = load_config(model_dir)
    bank = Bank.for_model(config)
    rng = random.Random(seed)
    for slot, name in enumerate(BANK_ADAPTERS):
        factors = {}
        for target, (fan_in, fan_out) in bank.targets.items():
            a = [rng.gauss(0.0, 0.05) for _ in range(config.num_layers * fan_in * config.adapter_rank)]
            b = [rng.gauss(0.0, 0.05) for _ in range(config.num_layers * config.adapter_rank * fan_out)]
            factors[target] = (a, b)
        bank.add_adapter(name, slot, factors)
    dgr_slots = [bank.groups + i % (len(BANK_ADAPTERS) - bank.groups) for i in range(patterns)]
    bank.add_patterns(
        [[rng.gauss(0.0, 1.0) for _ in range(config.hidden_size)] for _ in dgr_slots], dgr_slots
    )
    bank.save(model_dir / BANKS_DIR)
    write_manifest(model_dir)


def tiny_web_model(
    directory: Path, arch: str = "llama", conversion_adapter: bool = False, target: str = "webgpu"
) -> Path:
    """checkpoint -> `export_model(target)` -> + bank. Returns the model directory.
    `conversion_adapter`: bake in a random one, with its per-row switch (adapter_gate); `target`
    "wasm": the graph the page loads on WebAssembly when the server offers it."""
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.export import export_model
    from tests.fixtures.tiny_models import make_hf_checkpoint, write_conversion_adapter

    checkpoint = load_checkpoint(make_hf_checkpoint(directory / f"{arch}-checkpoint", arch, seed=0))
    adapter = None
    if conversion_adapter:
        adapter = write_conversion_adapter(directory / f"{arch}-adapter.safetensors", checkpoint)
    name = f"{arch}-{target}" + ("-adapter" if conversion_adapter else "")
    model = export_model(checkpoint, directory / name, target=target, adapter=adapter, log=None)
    add_bank(model)
    return model


def copy_model(model_dir: Path, to: Path) -> Path:
    shutil.copytree(model_dir, to)
    return to


def variant(model_dir: Path, to: Path, bank: bool = True, **config_changes) -> Path:
    """A copy of `model_dir` with config.json fields changed (and the bank dropped unless `bank`),
    its manifest rewritten: a model as an exporter would have written it."""
    copy_model(model_dir, to)
    if not bank:
        shutil.rmtree(to / BANKS_DIR)
    config = replace(load_config(to), **config_changes)
    (to / CONFIG_NAME).write_text(config.to_json())
    for stale in to.rglob("*.gz"):  # gzip copies of the old files would be sent instead
        stale.unlink()
    write_manifest(to)
    return to
