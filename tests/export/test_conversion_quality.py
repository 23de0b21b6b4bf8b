"""benchmarks/conversion_quality.py on the tiny model: with no adapter and with one `ruvdllm convert`
wrote, it prints both tables with every configuration and finite numbers."""

from __future__ import annotations

import json
import math

import pytest

from ruvdllm.cli import main as cli
from tests.fixtures.scripts import BENCHMARKS, load_script
from tests.fixtures.tiny_models import make_gguf_checkpoint

QUALITY = BENCHMARKS / "conversion_quality.py"


def _quality():
    return load_script(QUALITY)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    gguf = root / "tiny.gguf"
    make_gguf_checkpoint(gguf, "llama", "Q4_1", tied=True, seed=2)
    data = root / "data"
    data.mkdir()
    for i in range(20):
        (data / f"{i}.txt").write_text(f"Sentence {i} about compilers and licences. " * 8)
    return root, gguf, data


@pytest.mark.parametrize("with_adapter", [False, True])
def test_quality_prints_the_comparison_table(tiny, capsys, with_adapter):
    root, gguf, data = tiny
    common = ["--model", str(gguf), "--data", str(data), "--seq-len", "32"]
    extra = []
    if with_adapter:
        adapter = root / "adapter.safetensors"
        if not adapter.exists():
            run_args = [
                "--run-dir",
                str(root / "run"),
                "--max-steps",
                "2",
                "--grad-accum",
                "1",
                "--rank",
                "2",
            ]
            assert cli(["convert", *common, *run_args, "--quiet", "--output", str(adapter)]) == 0
        extra = ["--adapter", str(adapter)]
    out_json = root / f"quality-{with_adapter}.json"
    capsys.readouterr()
    args = [*common, *extra, "--rows", "2", "--length", "8", "--num-prompts", "2", "--json", str(out_json)]
    assert _quality().main(args) == 0
    printed = capsys.readouterr().out
    assert "## Held-out denoising" in printed and "## Samples" in printed
    results = json.loads(out_json.read_text())
    assert [d["objective"] for d in results["denoising"]] == ["bd3lm", "bd3lm", "bd3lm", "mdlm"]
    samplers = [(s["sampler"], s["steps"]) for s in results["samples"]]
    assert samplers[0] == ("AR", "-") and ("BD3LM", "L/2") in samplers and ("MDLM", "L/4") in samplers
    assert len(samplers) == 9
    for row in results["samples"]:
        assert math.isfinite(row["gen_ppl"]) and 0 <= row["distinct2"] <= 1
    for row in results["denoising"]:
        assert math.isfinite(row["converted"]["masked_nll"])
        if not with_adapter:
            assert row["converted"] == row["base"]
    assert ("adapter" in results["label"]) == with_adapter


def test_quality_compares_talora_banks_with_the_same_size_static_lora(tiny, capsys):
    root, gguf, data = tiny
    other = root / "other"
    other.mkdir(exist_ok=True)
    for i in range(20):
        (other / f"{i}.txt").write_text(f"{i} plus {i} is {2 * i}. " * 12)
    out_json = root / "talora.json"
    args = ["--model", str(gguf), "--data", str(data), "--seq-len", "32", "--rows", "2", "--skip-samples"]
    args += [
        "--skip-denoising",
        "--talora",
        str(data),
        str(other),
        "--talora-steps",
        "3",
        "--json",
        str(out_json),
    ]
    assert _quality().main(args) == 0
    assert "## TALoRA banks vs static LoRA" in capsys.readouterr().out
    talora = json.loads(out_json.read_text())["talora"]
    assert set(talora) == {"data", "other"}
    for row in talora.values():
        assert all(math.isfinite(row[k]) for k in ("unconverted", "static", "banks"))
