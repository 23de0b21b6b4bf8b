"""export_model end to end on tiny checkpoints: the directory, its config and manifest, validation,
and what happens when something is wrong (nothing half-written is ever left behind)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from runtime import artifact
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.export import export_model
from ruvdllm_export.onnx_graph.graph import forward_nodes
from tests.fixtures.tiny_models import make_gguf_checkpoint, make_hf_checkpoint

pytest.importorskip("torch")  # the tiny HF checkpoints are saved by transformers


def leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3", "qwen3", tied=False, seed=1)


def test_exported_directory_holds_a_validated_graph(qwen3_dir, tmp_path):
    out = export_model(qwen3_dir, tmp_path / "model", log=None)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "manifest.json", "model.onnx", "model.onnx.data", "tokenizer.json"]
    artifact.verify_manifest(out)
    config = artifact.load_config(out)
    assert (config.architecture, config.num_layers, config.targets) == ("qwen3", 2, ("cpu",))
    assert (config.attention, config.quantization, config.accuracy_level) == ("gqa", "q4", 4)
    validation = config.source["validation"]
    assert validation["onnx_checker"] == "passed"
    # the cpu default, accuracy level 4 (int8 activations): within its tolerance, not float-exact
    tolerance = validation["tolerance"]
    assert tolerance["top1"] <= validation["top1_agreement"] <= 1.0
    assert validation["parity"]["block_chunk"]["logits"] <= tolerance["logits"]
    # a float checkpoint is quantized: the agreement with the checkpoint itself is measured too
    assert 0.5 < validation["top1_agreement_vs_checkpoint"] <= 1.0
    assert config.source["validated_on"] == ["cpu"]
    assert "validate" in config.source["memory"]["phases"]
    model = onnx.load(str(out / artifact.GRAPH_NAME))  # loads the external data beside it
    nbits = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    assert nbits == 4 * 2 + 1  # qkv, o, gate/up, down per layer; the head
    assert config.source["graph"]["nodes"] == len(forward_nodes(model))  # the export report's count
    assert not leftovers(tmp_path, "model")


def test_the_report_records_peak_memory_per_phase(qwen3_dir, tmp_path):
    """config.json carries the export's peak resident memory and each phase's own peak (the
    bound docs/checkpoints.md states is checked by benchmarks/export_memory.py, not here)."""
    lines = []
    out = export_model(qwen3_dir, tmp_path / "model", validate=False, log=lines.append)
    memory = artifact.load_config(out).source["memory"]
    assert set(memory["phases"]) == {"load", "prepare", "graph", "save"}  # no validate phase: skipped
    peaks = [memory["phases"][phase]["peak_rss_mib"] for phase in ("load", "prepare", "graph", "save")]
    assert min(peaks) > 0 and max(peaks) <= memory["peak_rss_mib"]
    assert f"peak memory {memory['peak_rss_mib']:.0f} MiB" in lines[-1]


def test_validation_reports_the_peak_of_each_of_its_steps(qwen3_dir, tmp_path, monkeypatch):
    """Windowed validation closes a memory phase per step (each window's graph, the reference's
    forwards, onnxruntime's session and its runs); "validate" is the largest of them. The paragraph runs in
    row parts here (as a 128k vocabulary's does) and passes the same checks."""
    from ruvdllm_export import validate

    monkeypatch.setattr(validate, "HEAD_LOGITS_PER_RUN", 100 * 384)  # rows of 100 of the tiny vocabulary
    out = export_model(qwen3_dir, tmp_path / "model", validate_window=1, log=None)
    report = artifact.load_config(out).source["validation"]
    assert report["paragraph_tokens"] > 100 and report["top1_agreement"] >= report["tolerance"]["top1"]
    phases = artifact.load_config(out).source["memory"]["phases"]
    steps = ("checker", "window_graph", "reference", "session", "onnxruntime")
    assert {f"validate.{step}" for step in steps} <= set(phases)
    assert phases["validate"]["peak_rss_mib"] == max(
        phases[f"validate.{step}"]["peak_rss_mib"] for step in steps
    )


def test_gguf_q4_1_exports_exactly(tmp_path):
    """The default model's layout (Q4_1 linears, Q8_0 tied table): the graph holds the file's numbers."""
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1", tied=True, embed_qtype="Q8_0")
    out = export_model(path, tmp_path / "model", target="webgpu", log=None)
    config = artifact.load_config(out)
    assert config.attention == "matmul" and config.targets == ("webgpu",)
    assert "webgpu" in config.source["not_validated_here"]
    assert config.source["graph_weights"]["q4 with block mins"] == 14
    assert config.source["validation"]["top1_agreement_vs_checkpoint"] == 1.0
    assert config.source["validation"]["parity"]["paragraph"]["logits"] < 1e-4


def test_existing_output_is_refused_and_left_alone(qwen3_dir, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RuvdllmError, match="already exists"):
        export_model(qwen3_dir, out, log=None)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_model(qwen3_dir, out, force=True, validate=False, log=None)
    assert not (out / "keep.txt").exists()
    assert artifact.load_config(out).source["validation"] == {"skipped": "--no-validate"}
    assert not leftovers(tmp_path, "model")


def test_options_reach_the_graph_and_the_config(qwen3_dir, tmp_path):
    out = export_model(
        qwen3_dir,
        tmp_path / "model",
        top_k=5,
        adapter_slots=3,
        adapter_rank=2,
        block_size=4,
        attention="mha",
        log=None,
    )
    config = artifact.load_config(out)
    assert (config.top_k, config.adapter_slots, config.adapter_rank, config.block_size) == (5, 3, 2, 4)
    assert config.attention == "mha"
    model = onnx.load(str(out / artifact.GRAPH_NAME), load_external_data=False)
    inputs = {
        i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input
    }
    assert inputs[artifact.adapter_a("q_proj")] == [2, 64, artifact.BANK_WIDTH]  # 3·2 bound, or 0
    assert inputs[artifact.ADAPTER_WEIGHTS] == [1, "sequence", 3]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": "tpu"}, "target must be one of"),
        ({"block_size": 0}, "block size"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_bad_options_are_one_line_errors(qwen3_dir, tmp_path, options, message):
    with pytest.raises(RuvdllmError, match=message):
        export_model(qwen3_dir, tmp_path / "model", log=None, **options)
    assert not (tmp_path / "model").exists()


def test_a_graph_that_disagrees_with_its_reference_fails_validation(qwen3_dir, tmp_path):
    """validate_export on a real graph with the wrong reference weights: the export must stop."""
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.onnx_graph import GraphOptions, build_graph, graph_weights_as_float, prepare_weights
    from ruvdllm_export.validate import PARAGRAPH, validate_export

    loaded = load_checkpoint(qwen3_dir)
    options = GraphOptions()
    prepared = prepare_weights(loaded.spec, loaded.weights, options)
    path = tmp_path / "model.onnx"
    onnx.save_model(build_graph(loaded.spec, prepared, options), str(path))
    wrong = graph_weights_as_float(prepared)
    name = "model.layers.1.mlp.down_proj.weight"
    wrong[name] = wrong[name] * 1.5
    ids = loaded.tokenizer.encode(PARAGRAPH, add_special_tokens=False).ids[:64]
    with pytest.raises(RuvdllmError, match="parity failed"):
        validate_export(path, loaded.spec, options, wrong, loaded.mask_token_id, ids)


def test_validation_without_torch_uses_the_fp32_onnx_reference(qwen3_dir, tmp_path, monkeypatch):
    """The user's export path has no torch: the reference is then the plain fp32 graph."""
    from ruvdllm_export import validate

    monkeypatch.setattr(validate, "torch_available", lambda: False)
    out = export_model(qwen3_dir, tmp_path / "model", accuracy_level=0, log=None)  # float: exact
    report = json.loads((out / artifact.CONFIG_NAME).read_text())["source"]["validation"]
    assert report["reference"].startswith("onnxruntime fp32")
    assert report["top1_agreement"] == 1.0
    assert np.isfinite(report["parity"]["paragraph"]["entropy"])


def test_cuda_target_without_a_gpu_says_so(qwen3_dir, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a CUDA EP is available: see the gpu test")
    config = artifact.load_config(export_model(qwen3_dir, tmp_path / "model", target="cuda", log=None))
    assert config.attention == "mha" and config.targets == ("cuda",)
    assert config.source["validated_on"] == ["cpu"]
    assert config.source["validation"]["cuda"].startswith("skipped")
    assert "cuda" in config.source["not_validated_here"]


@pytest.mark.gpu
def test_cuda_target_is_validated_on_the_cuda_ep(qwen3_dir, tmp_path):
    config = artifact.load_config(export_model(qwen3_dir, tmp_path / "model", target="cuda", log=None))
    assert config.source["validated_on"] == ["cpu", "cuda"]
    assert config.source["validation"]["cuda"]["top1_agreement"] >= 0.99
