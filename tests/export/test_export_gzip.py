"""A browser export (--target webgpu) carries gzip copies for HTTP delivery; other targets do not."""

from __future__ import annotations

import gzip

import pytest

from runtime import artifact
from ruvdllm_export.export import export_model
from tests.fixtures.tiny_models import make_gguf_checkpoint

pytest.importorskip("torch")


def test_webgpu_export_writes_gzip_copies_outside_the_manifest(tmp_path):
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1", tied=True, embed_qtype="Q8_0")
    out = export_model(path, tmp_path / "model", target="webgpu", log=None, validate=False)
    copies = sorted(p.name for p in out.glob("*.gz"))
    assert {"model.onnx.gz", "tokenizer.json.gz"} <= set(copies)
    for name in copies:
        assert gzip.decompress((out / name).read_bytes()) == (out / name[: -len(".gz")]).read_bytes()
    manifest = artifact.verify_manifest(out)
    assert not [name for name in manifest["files"] if name.endswith(".gz")]
