"""`ruvdllm export` as a user runs it: a subprocess, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from runtime import artifact
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.convert.adapter_file import base_identity, write_adapter
from tests.fixtures.tiny_models import make_gguf_checkpoint, make_hf_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def ruvdllm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruvdllm.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return make_gguf_checkpoint(tmp_path_factory.mktemp("gguf") / "tiny.gguf", "llama", "Q4_1", tied=True)


def test_export_writes_a_model_directory(gguf_path, tmp_path):
    out = tmp_path / "model"
    result = ruvdllm(
        "export",
        "--checkpoint",
        str(gguf_path),
        "--out",
        str(out),
        "--top-k",
        "4",
        "--block-size",
        "4",
        "--accuracy-level",
        "0",  # float activations: the graph agrees with the checkpoint on every token
    )
    assert result.returncode == 0, result.stderr
    artifact.verify_manifest(out)
    config = artifact.load_config(out)
    assert (config.top_k, config.block_size, config.quantization) == (4, 4, "q4")
    assert config.source["validation"]["top1_agreement"] == 1.0


@pytest.mark.parametrize("problem", ["missing", "truncated", "not-a-model"])
def test_bad_checkpoints_fail_in_one_line_naming_the_file(gguf_path, tmp_path, problem):
    bad = (
        tmp_path
        / {"missing": "missing.gguf", "truncated": "truncated.gguf", "not-a-model": "notes.txt"}[problem]
    )
    if problem == "truncated":
        data = gguf_path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif problem == "not-a-model":
        bad.write_text("not a checkpoint")
    out = tmp_path / "model"
    assert_one_line_error(ruvdllm("export", "--checkpoint", str(bad), "--out", str(out)), bad.name)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]


def test_existing_output_is_refused_unless_forced(gguf_path, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(
        ruvdllm("export", "--checkpoint", str(gguf_path), "--out", str(out)), str(out), "exists"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = ruvdllm("export", "--checkpoint", str(gguf_path), "--out", str(out), "--force", "--no-validate")
    assert result.returncode == 0, result.stderr
    assert (out / artifact.GRAPH_NAME).is_file() and not (out / "keep.txt").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = ruvdllm(
        "--debug", "export", "--checkpoint", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "m")
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_hf_checkpoint_problems_name_the_file(tmp_path):
    pytest.importorskip("torch")
    checkpoint = make_hf_checkpoint(tmp_path / "hf", "qwen2", seed=2)
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    assert_one_line_error(
        ruvdllm("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m")), "model.safetensors"
    )
    config = json.loads((checkpoint / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert_one_line_error(
        ruvdllm("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m")), "config.json"
    )
    assert not (tmp_path / "m").exists()


def test_conversion_adapter_is_baked_in_and_validated(gguf_path, tmp_path):
    """An adapter file as `ruvdllm convert` writes it: float LoRA branches beside the 4-bit base,
    validated against the reference with the merged weights."""
    loaded = load_checkpoint(gguf_path)
    rng = np.random.default_rng(3)
    rank, factors = 4, {}
    for layer in range(loaded.spec.num_layers):
        for proj, (out_f, in_f) in {"q_proj": (64, 64), "down_proj": (64, 128)}.items():
            group = "self_attn" if proj == "q_proj" else "mlp"
            stem = f"model.layers.{layer}.{group}.{proj}"
            factors[f"{stem}.lora_A.weight"] = (rng.standard_normal((rank, in_f)) * 0.1).astype(np.float32)
            factors[f"{stem}.lora_B.weight"] = (rng.standard_normal((out_f, rank)) * 0.1).astype(np.float32)
    lora = {"rank": rank, "alpha": 8.0, "targets": ["q_proj", "down_proj"], "seed": 0}
    adapter = tmp_path / "adapter.safetensors"
    write_adapter(adapter, factors, lora, {"objective": "bd3lm"}, base_identity(loaded))
    out = tmp_path / "model"
    result = ruvdllm(
        "export",
        "--checkpoint",
        str(gguf_path),
        "--out",
        str(out),
        "--adapter",
        str(adapter),
        "--accuracy-level",
        "0",
    )
    assert result.returncode == 0, result.stderr
    config = artifact.load_config(out)
    assert config.source["static_adapter"]["linears"] == 2 * loaded.spec.num_layers
    assert config.source["validation"]["top1_agreement"] == 1.0
    assert config.samplers == ("bd3lm",)  # the adapter's training objective
    graph = onnx.load(str(out / artifact.GRAPH_NAME), load_external_data=False)
    assert any(n.name == "/model/layers.1/mlp/down_proj/side/MatMul_b" for n in graph.graph.node)


@pytest.mark.parametrize(
    "training, samplers", [({"objective": "mdlm"}, ("mdlm",)), ({}, ()), ({"objective": "ar"}, ())]
)
def test_the_config_names_the_samplers_the_adapter_was_trained_for(tmp_path, training, samplers):
    """Unknown or absent objectives give an empty list: every sampler allowed."""
    from ruvdllm_export.export import trained_samplers

    factors = {"model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 64), np.float32)}
    factors["model.layers.0.self_attn.q_proj.lora_B.weight"] = np.zeros((64, 2), np.float32)
    adapter = tmp_path / "adapter.safetensors"
    write_adapter(adapter, factors, {"rank": 2, "alpha": 2.0, "targets": ["q_proj"], "seed": 0}, training, {})
    assert trained_samplers(adapter) == samplers


def test_bad_adapter_files_are_refused(gguf_path, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert_one_line_error(
        ruvdllm(
            "export", "--checkpoint", str(gguf_path), "--out", str(tmp_path / "m"), "--adapter", str(junk)
        ),
        "junk.safetensors",
    )
    wrong = tmp_path / "wrong.safetensors"
    factors = {"model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 7), np.float32)}
    factors["model.layers.0.self_attn.q_proj.lora_B.weight"] = np.zeros((64, 2), np.float32)
    write_adapter(wrong, factors, {"rank": 2, "alpha": 2.0, "targets": ["q_proj"], "seed": 0}, {}, {})
    assert_one_line_error(
        ruvdllm(
            "export", "--checkpoint", str(gguf_path), "--out", str(tmp_path / "m"), "--adapter", str(wrong)
        ),
        "wrong.safetensors",
        "q_proj",
    )
    assert not (tmp_path / "m").exists()


def test_export_needs_no_torch(gguf_path, tmp_path):
    """The user's path: with torch unimportable the export still validates (fp32 ONNX reference)."""
    out = tmp_path / "model"
    code = (
        "import sys; sys.modules['torch'] = None; from ruvdllm.cli import main; "
        f"sys.exit(main(['export', '--checkpoint', {str(gguf_path)!r}, '--out', {str(out)!r}, "
        "'--accuracy-level', '0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert result.returncode == 0, result.stderr
    validation = artifact.load_config(out).source["validation"]
    assert validation["reference"].startswith("onnxruntime fp32") and validation["top1_agreement"] == 1.0


def test_out_of_range_min_agreement_is_refused_as_it_parses(gguf_path, tmp_path):
    result = ruvdllm(
        "export", "--checkpoint", str(gguf_path), "--out", str(tmp_path / "m"), "--min-agreement", "2"
    )
    assert result.returncode == 2 and "argument --min-agreement: 2 is out of range" in result.stderr
    assert not (tmp_path / "m").exists()


def test_a_validation_failure_names_the_output_not_the_staging_directory(gguf_path, tmp_path, monkeypatch):
    from ruvdllm.errors import RuvdllmError
    from ruvdllm_export import export

    def refuse(model_path, *args, **kwargs):
        raise RuvdllmError(f"{model_path}: top-1 agreement 0.5 is below 0.9")

    monkeypatch.setattr(export, "_validate", refuse)
    out = tmp_path / "model"
    with pytest.raises(RuvdllmError) as refused:
        export.export_model(gguf_path, out, log=None)
    assert str(refused.value) == f"{out / artifact.GRAPH_NAME}: top-1 agreement 0.5 is below 0.9"
    assert [p.name for p in tmp_path.iterdir()] == []


def test_an_empty_bank_is_refused_before_the_graph_is_built(gguf_path, tmp_path, monkeypatch):
    from ruvdllm.errors import RuvdllmError
    from ruvdllm_export import export

    def never(*args, **kwargs):
        raise AssertionError("the graph was built before the bank was read")

    monkeypatch.setattr(export, "build_graph", never)
    (tmp_path / "emptybank").mkdir()
    with pytest.raises(RuvdllmError, match="emptybank: not an adapter bank"):
        export.export_model(gguf_path, tmp_path / "model", banks=tmp_path / "emptybank", log=None)
