"""The conversion scripts in benchmarks/ on a tiny model: the GPU pipeline's --dry-run (answers,
training, adapter, curve, summary; a rerun continues instead of starting over) and the ablation
script (two variants, the same tokens, one table). Slow: each spawns `ruvdllm` processes."""

from __future__ import annotations

import json

import pytest

from ruvdllm_export.convert.adapter_file import read_adapter
from tests.fixtures.scripts import BENCHMARKS, load_script
from tests.fixtures.tiny_models import make_gguf_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("scripts")
    gguf = make_gguf_checkpoint(root / "tiny.gguf", "llama", "Q4_1", tied=True, seed=1)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {"prompt": f"Explain topic number {i} in a few words.", "source": "t", "split": "train"}
            )
            + "\n"
            for i in range(8)
        )
    )
    return root, gguf, prompts


@pytest.mark.slow  # two `ruvdllm` processes, twice: ~45 s on a loaded 2-core machine
def test_gpu_script_dry_run_writes_adapter_and_curve_and_continues(tiny, capsys):
    root, gguf, prompts = tiny
    script = load_script(BENCHMARKS / "gpu" / "distill_and_train.py")
    out = root / "gpu"
    argv = ["--out", str(out), "--dry-run", "--model", str(gguf), "--prompts", str(prompts)]
    assert script.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    plan = script.DRY_RUN
    assert (
        summary["distill"]["answers"] == plan.answers == len((out / "answers.jsonl").read_text().splitlines())
    )
    assert summary["tokens"] == 3 * plan.batch_size * plan.seq_len and summary["reached_target"]
    assert read_adapter(out / "adapter.safetensors").training["objective"] == "bd3lm"
    curve = (out / "curve.md").read_text().splitlines()
    assert curve[0].startswith("| step | tokens seen") and len(curve) >= 3  # step 0 and later evaluations
    log = (out / "run" / "log.jsonl").read_text()
    assert script.main(argv) == 0  # continues: nothing left to answer or train
    assert (out / "run" / "log.jsonl").read_text() == log
    assert json.loads((out / "summary.json").read_text())["distill"]["new_answers"] == 0


@pytest.mark.slow  # two `ruvdllm convert` processes and the scoring: ~40 s on a loaded machine
def test_ablation_trains_each_variant_for_the_same_tokens_and_compares(tiny, capsys):
    root, gguf, _ = tiny
    data = root / "data"
    data.mkdir()
    for i in range(16):
        (data / f"{i}.txt").write_text(f"Sentence {i} about compilers and licences. " * 8)
    script = load_script(BENCHMARKS / "convert_ablation.py")
    out = root / "ablation"
    argv = [
        "--out",
        str(out),
        "--data",
        str(data),
        "--model",
        str(gguf),
        "--steps",
        "2",
        "--common",
        "--seq-len 32 --rank 2 --eval-every 0 --threads 1",
        "--variant",
        "plain=",
        "--variant",
        "certainty=--certainty-weight 0.5",
        "--eval-blocks",
        "4",
        "8",
        "--eval-rows",
        "2",
        "--seq-len",
        "32",
        "--unconverted",
    ]
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "ablation.json").read_text())
    assert list(results) == ["unconverted", "plain", "certainty"]
    assert results["plain"]["tokens"] == results["certainty"]["tokens"] == 2 * 8 * 32
    for name in ("plain", "certainty"):
        assert read_adapter(out / name / "adapter.safetensors").training["certainty_weight"] == (
            0.5 if name == "certainty" else 0.0
        )
        assert f"| {name} | 512 |" in printed
    assert "block 4" in printed and "block 8" in printed
