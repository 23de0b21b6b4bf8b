"""validate_windows.py: validation a few layers at a time over the shipped file reaches the same
verdict as the whole graph's validation: both pass a good export, both fail a file with a wrong
byte in one layer (and the windowed one names that layer)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from runtime import artifact
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.export import DATA_NAME, export_model
from ruvdllm_export.onnx_graph import GraphOptions, options_for_target, prepare_weights
from ruvdllm_export.validate import PARAGRAPH, validate_export
from ruvdllm_export.validate_windows import WindowWeights, layer_windows, validate_by_windows
from tests.fixtures.tiny_models import make_hf_checkpoint, tiny_spec, tiny_weights

pytest.importorskip("torch")  # the tiny HF checkpoints are saved by transformers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama", tied=True, seed=5)


def test_windows_cover_every_layer_once():
    assert [list(w) for w in layer_windows(5, 2)] == [[0, 1], [2, 3], [4]]
    assert [list(w) for w in layer_windows(2, 4)] == [[0, 1]]


def test_window_weights_rename_layers_and_keep_the_rest():
    weights = tiny_weights("llama", True, seed=0)
    window = WindowWeights(weights, range(1, 2))
    assert "model.layers.0.mlp.down_proj.weight" in window
    assert not any(name.startswith("model.layers.1.") for name in window)
    assert window["model.layers.0.mlp.down_proj.weight"] is weights["model.layers.1.mlp.down_proj.weight"]
    assert window["model.embed_tokens.weight"] is weights["model.embed_tokens.weight"]
    assert set(window) == set(
        prepare_weights(
            tiny_spec(
                "llama",
                True,
            ),
            weights,
            GraphOptions(),
        )
    ) - {n for n in weights if n.startswith("model.layers.1.")}


def test_export_by_windows_reports_each_window(checkpoint, tmp_path):
    out = export_model(checkpoint, tmp_path / "model", validate_window=1, log=None)
    validation = artifact.load_config(out).source["validation"]
    assert validation["windows"] == {"layers_per_window": 1, "count": 2}
    assert [w["layers"] for w in validation["parity_per_window"]] == [[0, 0], [1, 1]]
    # the windows ran the shipped bytes: only what the shipped graph does not hold was rebuilt
    assert validation["bytes_from_the_shipped_file"] > 10 * validation["bytes_rebuilt_for_the_windows"]
    assert validation["top1_agreement"] >= 0.99
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no window or scratch left


def test_a_negative_window_is_refused_before_any_work(checkpoint, tmp_path):
    with pytest.raises(RuvdllmError, match="validation window must be >= 0"):
        export_model(checkpoint, tmp_path / "model", validate_window=-1, log=None)
    assert not list(tmp_path.iterdir())


def _corrupt(model_dir, name_part: str) -> None:
    """Overwrite the largest external initializer whose name holds `name_part` with random bytes."""
    model = onnx.load(str(model_dir / artifact.GRAPH_NAME), load_external_data=False)
    entries = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL and name_part in tensor.name:
            info = {e.key: int(e.value) for e in tensor.external_data if e.key in ("offset", "length")}
            entries.append((info["length"], info["offset"], tensor.name))
    length, offset, _ = max(entries)
    with open(model_dir / DATA_NAME, "r+b") as data:
        data.seek(offset)
        data.write(np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes())


def test_windowed_and_whole_validation_reach_the_same_verdict(checkpoint, tmp_path):
    out = export_model(checkpoint, tmp_path / "model", validate=False, log=None)
    loaded = load_checkpoint(checkpoint)
    options = options_for_target("cpu")  # the graph export_model wrote
    held = prepare_weights(loaded.spec, loaded.weights, options)
    ids = loaded.tokenizer.encode(PARAGRAPH, add_special_tokens=False).ids[:64]
    path = out / artifact.GRAPH_NAME

    def verdicts():
        results = []
        for check in (
            lambda: validate_export(path, loaded.spec, options, held, loaded.mask_token_id, ids),
            lambda: validate_by_windows(path, loaded.spec, options, held, loaded.mask_token_id, ids, 1),
        ):
            try:
                check()
                results.append("passed")
            except RuvdllmError as exc:
                results.append(str(exc))
        return results

    assert verdicts() == ["passed", "passed"]
    _corrupt(out, "layers.1.mlp.down_proj")
    whole, windowed = verdicts()
    assert "parity failed" in whole
    assert "layers 1-1" in windowed and "parity failed" in windowed and "layers 0-0" not in windowed
