"""`ruvdllm train-banks` end to end on a tiny GGUF: a conversion adapter trained by `ruvdllm
convert`, banks trained over it on two text domains (with the static comparison), the bank
shipped by `ruvdllm export --banks`, and the runtime opening the model with those banks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runtime.artifact import sha256_file
from runtime.banks import BANK_JSON, BANKS_DIR, Bank
from runtime.settings import GenerationSettings
from runtime.talora import group_names
from ruvdllm.cli import main
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.banks_command import TRAINING_JSON
from ruvdllm_export.convert_command import load_model
from ruvdllm_export.export import export_model
from ruvdllm_export.reference import attach_adapter_file, merge_lora
from tests.fixtures.tiny_models import make_gguf_checkpoint

torch.set_num_threads(1)
DOMAINS = {
    "licences": "Permission is hereby granted, free of charge, to any person obtaining a copy. ",
    "manuals": "Run the command with the option to print the version and exit. ",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("banks")
    gguf = root / "tiny.gguf"
    make_gguf_checkpoint(gguf, "llama", "Q4_1", tied=True, seed=1)
    for name, sentence in DOMAINS.items():
        folder = root / name
        folder.mkdir()
        for i in range(20):
            (folder / f"{i}.txt").write_text((sentence + f"Note {i}. ") * 5)
    adapter = root / "conversion.safetensors"
    common = ["--model", str(gguf), "--quiet", "--threads", "1", "--seq-len", "32"]
    convert = ["convert", *common, "--data", str(root / "licences"), "--run-dir", str(root / "run")]
    assert (
        main([*convert, "--rank", "2", "--max-steps", "2", "--grad-accum", "1", "--output", str(adapter)])
        == 0
    )
    return root, gguf, adapter


def _train(workspace, output, *extra):
    root, gguf, adapter = workspace
    return main(
        [
            "train-banks",
            "--model",
            str(gguf),
            "--adapter",
            str(adapter),
            "--data",
            str(root / "licences"),
            str(root / "manuals"),
            "--output",
            str(output),
            "--steps",
            "6",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--eval-rows",
            "2",
            "--lr",
            "1e-2",
            "--quiet",
            "--threads",
            "1",
            *extra,
        ]
    )


def test_banks_train_over_the_converted_model_and_ship_in_the_export(workspace, tmp_path, capsys):
    root, gguf, adapter = workspace
    bank_dir = tmp_path / "bank"
    assert _train(workspace, bank_dir, "--compare") == 0
    table = capsys.readouterr().out
    assert "| licences |" in table and "| manuals |" in table and "banks vs static" in table
    report = json.loads((bank_dir / TRAINING_JSON).read_text())
    nll = report["heldout_masked_nll"]
    assert set(nll) == {"converted", "banks", "static"} and set(nll["banks"]) == set(DOMAINS)
    assert all(np.isfinite(v) for scores in nll.values() for v in scores.values())
    bank = Bank.load(bank_dir)
    assert [a.name for a in sorted(bank.adapters.values(), key=lambda a: a.slot)] == list(group_names(3))
    assert any(max(abs(x) for x in a.factors["q_proj"][1]) > 0 for a in bank.adapters.values())  # B trained

    model_dir = export_model(gguf, tmp_path / "model", adapter=adapter, banks=bank_dir, log=None)
    assert (model_dir / BANKS_DIR / BANK_JSON).is_file()
    from runtime.cpython_model import open_model

    opened = open_model(model_dir)
    assert opened.bank is not None and opened.bank.groups == 3
    steps = []
    settings = GenerationSettings(sampler="bd3lm", length=8)  # the banks' timestep groups at work
    result = opened.generate("Permission is", settings, on_step=steps.append)
    assert len(result.tokens) == 8 and {round(e.t, 3) for e in steps} >= {1.0, 0.125}  # coarse .. fine groups


def test_banks_sit_on_the_merged_conversion_adapter(workspace):
    """Folding the adapter into the frozen base changes nothing the model computes."""
    root, gguf, adapter = workspace
    _, attached = load_model(gguf, progress=False)
    attach_adapter_file(attached, adapter)
    _, merged = load_model(gguf, progress=False)
    attach_adapter_file(merged, adapter)
    merged.cache_dequantized(True)
    merge_lora(merged)
    ids = torch.randint(10, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(12)[None]
    with torch.no_grad():
        a = attached(ids, pos, pos)["logits"]
        b = merged(ids, pos, pos)["logits"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(m.lora is None for m in merged.modules() if hasattr(m, "lora"))


def test_a_bank_of_another_model_is_refused_at_export(workspace, tmp_path):
    root, gguf, adapter = workspace
    bank_dir = tmp_path / "bank"
    assert _train(workspace, bank_dir) == 0
    with pytest.raises(RuvdllmError, match="does not match"):
        export_model(gguf, tmp_path / "model", adapter=adapter, banks=bank_dir, adapter_rank=2, log=None)


def test_a_bank_trained_over_another_conversion_adapter_is_refused_at_export(workspace, tmp_path):
    """training.json records the adapter the bank sits on; export compares it with the one it
    bakes in, and takes a bank that records none with a warning."""
    root, gguf, adapter = workspace
    bank_dir = tmp_path / "bank"
    assert _train(workspace, bank_dir) == 0
    training = bank_dir / TRAINING_JSON
    report = json.loads(training.read_text())
    assert report["adapter_sha256"] == sha256_file(adapter)
    training.write_text(json.dumps({**report, "adapter_sha256": "0" * 64}))
    with pytest.raises(
        RuvdllmError, match="training.json: the bank was trained over conversion adapter 000000000000"
    ) as refused:
        export_model(gguf, tmp_path / "other", adapter=adapter, banks=bank_dir, log=None)
    assert "\n" not in str(refused.value) and str(training) in str(refused.value)
    assert not (tmp_path / "other").exists()
    with pytest.raises(RuvdllmError, match="this model bakes in none"):
        export_model(gguf, tmp_path / "other", banks=bank_dir, log=None)
    training.write_text(json.dumps({k: v for k, v in report.items() if k != "adapter_sha256"}))
    lines = []
    export_model(gguf, tmp_path / "unchecked", adapter=adapter, banks=bank_dir, log=lines.append)
    assert [line for line in lines if line.startswith("warning:")] == [
        f"warning: {training}: records no adapter_sha256, so the bank cannot be checked against this "
        "model's conversion adapter (retrain it with `ruvdllm train-banks` to record one)"
    ]


def test_one_domain_is_refused(workspace, tmp_path, capsys):
    root, gguf, adapter = workspace
    code = main(
        ["train-banks", "--model", str(gguf), "--data", str(root / "licences"), "--output", str(tmp_path)]
    )
    assert code != 0 and "two or more" in capsys.readouterr().err


def test_bad_bank_options_are_refused_before_any_training(workspace, tmp_path, capsys):
    root, gguf, adapter = workspace
    domains = ["--data", str(root / "licences"), str(root / "manuals")]
    base = ["train-banks", "--model", str(gguf), *domains, "--output", str(tmp_path / "out")]
    assert main([*base, "--curriculum", "0.5", "0.5", "0.5"]) != 0
    assert "sum to at most 1" in capsys.readouterr().err
    assert main([*base, "--adapter", str(tmp_path / "none.safetensors")]) != 0
    assert "no such adapter file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the two choices exclude each other
        main([*base, "--adapter", str(adapter), "--no-adapter"])
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_kept_unless_forced_and_only_a_bank_is_replaced(workspace, tmp_path, capsys):
    """Saving a bank replaces its whole directory: the command refuses anything else, before the
    model loads (the model here does not exist, so a later check would name it instead)."""
    root, gguf, adapter = workspace
    domains = ["--data", str(root / "licences"), str(root / "manuals")]
    base = ["train-banks", "--model", str(tmp_path / "absent.gguf"), *domains, "--quiet"]
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "file").write_text("x")
    assert main([*base, "--output", str(kept)]) == 1
    assert "kept: already exists (choose another --output, or --force" in capsys.readouterr().err
    assert main([*base, "--output", str(kept), "--force"]) == 1
    assert "kept: not an adapter bank (no bank.json); --force replaces only a bank" in capsys.readouterr().err
    assert (kept / "file").read_text() == "x"
    bank_dir = tmp_path / "bank"
    assert _train(workspace, bank_dir) == 0
    assert _train(workspace, bank_dir) == 1  # a bank too is replaced only when asked
    assert _train(workspace, bank_dir, "--force") == 0
    assert Bank.load(bank_dir).groups == 3


def test_out_of_range_numbers_are_refused_as_the_flags_parse(workspace, tmp_path, capsys):
    root, gguf, adapter = workspace
    base = ["train-banks", "--data", str(root / "licences"), str(root / "manuals"), "--output", str(tmp_path)]
    for flag, value in [
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--steps", "0"),
        ("--held-out", "0"),
        ("--held-out", "1"),
        ("--curriculum", "1.5"),
        ("--seq-len", "1"),
        ("--threads", "0"),
    ]:
        with pytest.raises(SystemExit):
            main([*base, flag, value])
        assert f"argument {flag}: {value} is out of range" in capsys.readouterr().err


def test_every_missing_domain_is_named_before_the_model_loads(workspace, tmp_path, capsys):
    root, gguf, adapter = workspace
    (tmp_path / "empty").mkdir()
    argv = ["train-banks", "--model", str(tmp_path / "absent.gguf"), "--output", str(tmp_path / "out")]
    argv += ["--data", str(tmp_path / "a.txt"), str(root / "licences"), str(tmp_path / "empty")]
    assert main(argv) == 1
    message = capsys.readouterr().err.strip()
    assert (
        "a.txt: no such file or directory; " in message and "empty: the directory holds no files" in message
    )
    assert "\n" not in message


def test_a_domain_given_as_one_text_file_is_split_by_paragraph(workspace, tmp_path, capsys):
    root, gguf, adapter = workspace
    for name, sentence in DOMAINS.items():
        (tmp_path / f"{name}.txt").write_text("\n\n".join((sentence + f"Note {i}. ") * 5 for i in range(20)))
    (tmp_path / "one.txt").write_text(DOMAINS["licences"] * 40)  # one paragraph: nothing to hold out
    domains = [str(tmp_path / f"{name}.txt") for name in DOMAINS]
    assert _train_on(workspace, domains, tmp_path / "bank") == 0
    report = json.loads((tmp_path / "bank" / TRAINING_JSON).read_text())
    assert set(report["heldout_masked_nll"]["banks"]) == {"licences.txt", "manuals.txt"}
    assert _train_on(workspace, [domains[0], str(tmp_path / "one.txt")], tmp_path / "other") == 1
    message = capsys.readouterr().err
    assert "one.txt: one document cannot be split" in message and "two or more paragraphs" in message


def _train_on(workspace, domains, output):
    root, gguf, adapter = workspace
    argv = ["train-banks", "--model", str(gguf), "--adapter", str(adapter), "--data", *domains]
    argv += ["--output", str(output), "--steps", "2", "--seq-len", "32", "--eval-rows", "1"]
    return main([*argv, "--quiet", "--threads", "1"])
