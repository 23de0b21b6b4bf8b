"""The default model's cache name: a fingerprint of what its export reads, and only that."""

from __future__ import annotations

from ruvdllm.default_artifact import source_fingerprint


def _package(root):
    (root / "onnx_graph").mkdir(parents=True)
    (root / "learning").mkdir()
    (root / "adapters").mkdir()
    (root / "export.py").write_text("EXPORT = 1\n")
    (root / "onnx_graph" / "builder.py").write_text("NODES = 1\n")
    (root / "learning" / "microlora_trainer.py").write_text("STEPS = 1\n")
    (root / "adapters" / "default.safetensors").write_bytes(b"\x00\x01")
    return root


def test_what_the_export_reads_changes_the_fingerprint(tmp_path):
    root = _package(tmp_path / "pkg")
    before = source_fingerprint(root)
    assert len(before) == 12 and source_fingerprint(root) == before
    (root / "onnx_graph" / "builder.py").write_text("NODES = 2\n")
    after_source = source_fingerprint(root)
    (root / "adapters" / "default.safetensors").write_bytes(b"\x00\x02")
    after_adapter = source_fingerprint(root)
    (root / "onnx_graph" / "builder.py").rename(root / "onnx_graph" / "graph.py")
    after_rename = source_fingerprint(root)
    assert len({before, after_source, after_adapter, after_rename}) == 4


def test_loop_b_trainer_and_caches_do_not_re_export(tmp_path):
    root = _package(tmp_path / "pkg")
    before = source_fingerprint(root)
    (root / "learning" / "microlora_trainer.py").write_text("STEPS = 2\n")
    (root / "learning" / "reference_model.py").write_text("\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "export.cpython-313.pyc").write_bytes(b"\x00")
    (root / "notes.txt").write_text("not read by the export\n")
    assert source_fingerprint(root) == before
