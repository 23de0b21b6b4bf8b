"""The data sources beside plain files: the package-text corpus builder, self-distillation with
the AR model (KV-cache decoding equals full causal forwards), and the adapter file format."""

from __future__ import annotations

import functools
import gzip
import json
import random

import numpy as np
import pytest
import torch

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.convert import corpus
from ruvdllm_export.convert.adapter_file import read_adapter, read_static_lora, write_adapter
from ruvdllm_export.convert.distill import distill, generate_ar, read_prompts
from ruvdllm_export.reference import DiffusionLM, LoraConfig, apply_lora, lora_factors, lora_state_dict
from tests.export.reference_models import tiny_checkpoint
from tests.fixtures.tiny_models import TINY
from tests.fixtures.tiny_tokenizer import make_tokenizer

torch.set_num_threads(1)


@functools.cache
def tiny_model() -> DiffusionLM:
    _, spec, weights = tiny_checkpoint("llama", tied=False, seed=5)
    return DiffusionLM(spec, weights, mask_token_id=5).eval()


def test_generate_ar_with_a_cache_equals_greedy_full_forwards():
    model = tiny_model()
    prompt = [1, 40, 41, 42]
    fast = generate_ar(model, prompt, 10, eos=(), rng=random.Random(0), temperature=0.0)
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            n = len(tokens)
            out = model(torch.tensor([tokens]), torch.arange(n)[None], torch.arange(n)[None])
            tokens.append(int(out["logits"][0, -1].argmax()))
    assert fast == tokens[len(prompt) :]


def test_distill_appends_answers_and_resumes(tmp_path):
    model = tiny_model()
    tokenizer = make_tokenizer(TINY.vocab_size)
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["one", "two", "three"]))
    prompts = read_prompts(prompts_file)
    output = tmp_path / "answers.jsonl"
    seen = []
    distill(model, tokenizer, None, prompts[:2], output, 6, seed=0, on_answer=lambda i, p, t: seen.append(p))
    distill(model, tokenizer, None, prompts, output, 6, seed=0, on_answer=lambda i, p, t: seen.append(p))
    assert seen == ["one", "two", "three"]  # the second run only answered what was missing
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["prompt"] for r in records] == prompts and all(isinstance(r["response"], str) for r in records)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(RuvdllmError, match="empty"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"question": "x"}\n')
    with pytest.raises(RuvdllmError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_adapter_file_gives_the_graph_builder_factors(tmp_path, dtype):
    _, spec, weights = tiny_checkpoint("llama", tied=False, seed=5)
    model = DiffusionLM(spec, weights, mask_token_id=5)
    apply_lora(model, LoraConfig(rank=2, alpha=6.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    factors = {k: v.numpy() for k, v in lora_state_dict(model).items()}
    base = {
        "architecture": "llama",
        "hidden_size": spec.hidden_size,
        "num_layers": 2,
        "vocab_size": spec.vocab_size,
    }
    path = tmp_path / "adapter.safetensors"
    write_adapter(path, factors, LoraConfig(rank=2, alpha=6.0).to_dict(), {"steps": 3}, base, dtype=dtype)
    got = read_static_lora(path)
    tolerance = 0 if dtype == "float32" else 2e-3
    for name, (a, b) in lora_factors(model).items():
        np.testing.assert_allclose(got[name][0], a, atol=tolerance * 10, rtol=tolerance)
        np.testing.assert_allclose(got[name][1], b, atol=tolerance * 10, rtol=tolerance)
    assert read_adapter(path).training == {"steps": 3}


def test_adapter_file_refuses_other_bases_and_foreign_files(tmp_path):
    path = tmp_path / "adapter.safetensors"
    write_adapter(
        path,
        {"x.lora_A.weight": np.zeros((1, 4)), "x.lora_B.weight": np.zeros((4, 1))},
        LoraConfig(rank=1).to_dict(),
        {},
        {"architecture": "llama", "hidden_size": 999},
    )

    class Other:
        source = {"sha256": "0"}
        mask_token_id = 5
        spec = tiny_checkpoint("llama", tied=False, seed=5)[1]

    with pytest.raises(RuvdllmError, match="trained for hidden_size 999"):
        read_static_lora(path, Other())
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(RuvdllmError, match="junk.safetensors: not a safetensors adapter"):
        read_adapter(tmp_path / "junk.safetensors")
    with pytest.raises(RuvdllmError, match="no such adapter"):
        read_adapter(tmp_path / "missing.safetensors")


def test_corpus_keeps_texts_once_with_their_origin_and_split(tmp_path, monkeypatch):
    docs, licences = tmp_path / "doc", tmp_path / "licenses"
    (docs / "pkg").mkdir(parents=True)
    licences.mkdir()
    long_text = "This package parses things. " * 30
    (docs / "pkg" / "README.md").write_text(long_text)
    (docs / "pkg" / "NEWS.md.gz").write_bytes(gzip.compress(("Version 2 fixes bugs. " * 30).encode()))
    (docs / "pkg" / "copy.txt").write_text(long_text)  # a duplicate: kept once
    (docs / "pkg" / "short.txt").write_text("tiny")  # too short to be prose
    (docs / "pkg" / "logo.png").write_bytes(b"\x89PNG")
    (licences / "MIT").write_text("Permission is hereby granted, free of charge. " * 20)
    monkeypatch.setattr(corpus, "site_packages_texts", lambda: [])
    monkeypatch.setattr(corpus, "debian_texts", functools.partial(corpus.debian_texts, docs, licences))
    manifest = corpus.build(tmp_path / "out", max_mb=1, held_out=0.5, seed=0)
    origins = sorted(e["origin"].split("/")[-1] for e in manifest["files"])
    assert origins == ["MIT", "NEWS.md.gz", "README.md"]
    lines = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {e["split"] for e in lines} <= {"train", "held-out"} and len(lines) == 3
    for entry in lines:
        assert (tmp_path / "out" / entry["file"]).read_text().strip()


def test_the_shipped_default_adapter_fits_the_default_model():
    """The committed adapter was trained on SmolLM2-135M-Instruct's Q4_1 GGUF (the pinned sha256),
    holds every projection of all 30 layers, and stays small."""
    from ruvdllm_export.adapters import DEFAULT_ADAPTER
    from ruvdllm_export.default_model import GGUF_SHA256

    assert DEFAULT_ADAPTER.stat().st_size < 8 * 2**20
    adapter = read_adapter(DEFAULT_ADAPTER)
    assert adapter.base["source_sha256"] == GGUF_SHA256 and adapter.base["num_layers"] == 30
    assert adapter.training["objective"] == "bd3lm" and adapter.training["block_size"] == 8
    factors = read_static_lora(DEFAULT_ADAPTER)
    assert len(factors) == 7 * 30
    a, b = factors["model.layers.0.mlp.down_proj.weight"]
    assert a.shape == (adapter.lora["rank"], 1536) and b.shape == (576, adapter.lora["rank"])
    assert all(np.isfinite(a).all() and np.isfinite(b).all() for a, b in factors.values())


def test_the_shipped_banks_sit_on_the_shipped_adapter_and_fit_the_graph():
    """The committed TALoRA banks load in the runtime's format, fill the graph's default slots
    (three groups of rank 4 on q_proj/v_proj of all 30 layers) and were trained over exactly the
    committed conversion adapter."""
    import json

    from runtime.artifact import sha256_file
    from runtime.banks import Bank
    from ruvdllm_export.adapters import DEFAULT_ADAPTER, DEFAULT_BANKS
    from ruvdllm_export.banks_command import TRAINING_JSON
    from ruvdllm_export.onnx_graph.options import GraphOptions

    bank = Bank.load(DEFAULT_BANKS)
    options = GraphOptions()
    assert (bank.layers, bank.hidden_size, bank.rank, bank.slots) == (
        30,
        576,
        options.adapter_rank,
        options.adapter_slots,
    )
    assert set(bank.targets) == set(options.adapter_targets) and bank.groups == 3
    assert sorted(a.slot for a in bank.adapters.values()) == [0, 1, 2]
    report = json.loads((DEFAULT_BANKS / TRAINING_JSON).read_text())
    assert report["adapter_sha256"] == sha256_file(DEFAULT_ADAPTER)
    assert sum(p.stat().st_size for p in DEFAULT_BANKS.rglob("*")) < 4 * 2**20
