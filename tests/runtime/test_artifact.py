"""runtime/artifact.py's gzip copies: written beside the files that compress, byte-reproducible,
never part of the manifest; the config's `samplers` (what the model was trained for)."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import replace

import pytest

from runtime import artifact
from ruvdllm.errors import RuvdllmError


def make_model(directory):
    directory.mkdir()
    (directory / "config.json").write_text('{"text": "' + "compressible " * 500 + '"}')
    (directory / "model.onnx.data").write_bytes(os.urandom(64 << 10))  # does not compress
    (directory / "banks").mkdir()
    (directory / "banks" / "bank.json").write_text("[" + "0.0, " * 2000 + "0.0]")
    artifact.write_manifest(directory)
    return directory


def test_copies_only_where_gzip_pays_and_the_manifest_ignores_them(tmp_path):
    model = make_model(tmp_path / "model")
    manifest = artifact.write_manifest(model)
    copies = artifact.write_gzip_copies(model)
    assert [p.relative_to(model).as_posix() for p in copies] == ["banks/bank.json.gz", "config.json.gz"]
    for copy in copies:
        assert gzip.decompress(copy.read_bytes()) == copy.with_suffix("").read_bytes()
        assert artifact.is_gzip_copy(copy)
    assert not (model / "model.onnx.data.gz").exists()
    assert artifact.write_manifest(model) == manifest  # the copies never enter the manifest
    artifact.verify_manifest(model)
    assert not list(model.rglob("*.partial"))


def test_copies_are_reproducible_and_a_stale_copy_is_dropped(tmp_path):
    model = make_model(tmp_path / "model")
    first = artifact.write_gzip_copies(model)[1].read_bytes()
    assert artifact.write_gzip_copies(model)[1].read_bytes() == first  # no name or time in the header
    (model / "config.json").write_bytes(os.urandom(4096))  # no longer compresses
    artifact.write_manifest(model)
    assert [p.name for p in artifact.write_gzip_copies(model)] == ["bank.json.gz"]
    assert not (model / "config.json.gz").exists()


def test_a_gz_file_of_the_models_own_is_listed(tmp_path):
    model = make_model(tmp_path / "model")
    (model / "extra.gz").write_bytes(gzip.compress(b"data"))  # no `extra` beside it: content
    assert "extra.gz" in artifact.write_manifest(model)["files"]


CONFIG = artifact.ArtifactConfig(
    architecture="llama",
    vocab_size=384,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    max_position=256,
    mask_token_id=3,
)


def test_a_config_without_samplers_loads_as_unknown_and_allows_every_sampler():
    raw = json.loads(CONFIG.to_json())
    del raw["samplers"]  # written before the field existed
    old = artifact.ArtifactConfig.from_dict(raw)
    assert old.samplers == ()
    assert artifact.sampler_warning(old, "mdlm") is None and artifact.sampler_warning(old, "bd3lm") is None


def test_a_sampler_the_model_was_not_trained_for_gets_one_line():
    config = artifact.ArtifactConfig.from_dict(json.loads(replace(CONFIG, samplers=("bd3lm",)).to_json()))
    assert config.samplers == ("bd3lm",)
    assert artifact.sampler_warning(config, "bd3lm") is None
    warning = artifact.sampler_warning(config, "mdlm")
    assert "mdlm" in warning and "bd3lm only" in warning and "\n" not in warning


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mask_token_id": 999_999}, r"mask_token_id 999999: outside the vocabulary 0\.\.63"),
        ({"eos_token_ids": [2, -1]}, "eos_token_ids -1: outside"),
        ({"pad_token_id": 64}, "pad_token_id 64: outside"),
        ({"block_size": 0}, "block_size 0: must be a whole number >= 1"),
        ({"num_layers": 2.5}, "num_layers 2.5: must be a whole number"),
        ({"top_k": True}, "top_k True: must be a whole number"),
    ],
)
def test_a_config_the_graph_cannot_run_is_refused_naming_the_field(change, message):
    # a mask id past the vocabulary was met as onnxruntime's index error mid-generation
    raw = {**json.loads(replace(CONFIG, vocab_size=64).to_json()), **change}
    with pytest.raises(RuvdllmError, match=f"config.json: {message}"):
        artifact.ArtifactConfig.from_dict(raw)
