"""benchmarks/quality.py on a tiny exported model judged by its own GGUF: every decoding
configuration gets a row with finite numbers at each temperature, fixed steps commit exactly their
tokens per forward, the judge's batched scoring equals scoring one sample at a time, and bad input
is one line naming the file."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.export import export_model
from tests.fixtures.scripts import BENCHMARKS, load_script
from tests.fixtures.tiny_models import make_gguf_checkpoint

QUALITY = BENCHMARKS / "quality.py"


@pytest.fixture(scope="module")
def quality():
    return load_script(QUALITY)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding-quality")
    gguf = make_gguf_checkpoint(root / "tiny.gguf", "llama", seed=3)
    model = export_model(gguf, root / "model", validate=False, log=None)
    prompts = root / "prompts.jsonl"
    records = [
        {"prompt": f"Describe thing {i}.", "split": "held-out" if i % 2 else "train"} for i in range(8)
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root, gguf, model, prompts


def test_every_configuration_gets_a_row_and_a_rerun_resumes(quality, tiny, capsys, monkeypatch):
    root, gguf, model, prompts = tiny
    out = root / "quality.json"
    args = ["--model", str(model), "--gguf", str(gguf), "--prompts", str(prompts), "--num-prompts", "3"]
    args += [
        "--length",
        "8",
        "--temperatures",
        "0.7",
        "0",
        "--rounds",
        "1",
        "--no-baselines",
        "--threads",
        "1",
    ]
    assert quality.main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "## Temperature 0.7, top-p 0.9 (3 prompts)" in printed and "## Temperature 0 (3 prompts)" in printed
    )
    assert "default by this table:" in printed
    results = json.loads(out.read_text())
    names = list(quality.configurations(8))
    assert set(results["speeds"]) == set(names) and all(v > 0 for v in results["speeds"].values())
    assert set(results["tables"]) == {"0.7", "0"}
    for table in results["tables"].values():
        assert list(table["rows"]) == names
        for row in [table["ar"], *table["rows"].values()]:
            assert math.isfinite(row["gen_ppl"]) and 0 <= row["distinct2"] <= 1
        per_forward = {name: row["tokens_per_forward"] for name, row in table["rows"].items()}
        assert per_forward["fixed-1"] == per_forward["ltr-1"] == 1.0  # block 8, length 8: 8 steps
        assert per_forward["fixed-2"] == per_forward["ltr-2"] == 2.0 and per_forward["fixed-4"] == 4.0
        assert all(1.0 <= v <= 8.0 for v in per_forward.values())

    def measure_again(*_):
        raise AssertionError("a finished row was measured again")

    monkeypatch.setattr(quality, "run_config", measure_again)
    monkeypatch.setattr(quality, "speed_pass", measure_again)
    assert quality.main([*args, "--json", str(out)]) == 0  # everything comes from the file
    assert capsys.readouterr().out == printed
    with pytest.raises(RuvdllmError, match="holds a run with other length"):
        quality.main([*("4" if a == "8" else a for a in args), "--json", str(out)])  # --length 4


def test_a_decoding_the_runtime_gains_gets_a_row(quality):
    configs = quality.configurations(8, ("low-confidence", "threshold", "entropy-bounded", "new-rule"))
    assert configs["new-rule"] == {"decoding": "new-rule"}
    assert "low-confidence" not in configs  # the named rows cover it already


def test_configurations_as_settings(quality):
    spec = quality.parse_spec(
        "decoding=entropy-bounded,entropy_bound=1.5,steps=4,order=left-to-right,dgr=false"
    )
    assert spec == {
        "decoding": "entropy-bounded",
        "entropy_bound": 1.5,
        "steps": 4,
        "order": "left-to-right",
        "dgr": False,
    }
    for bad in ("colour=blue", "steps", "steps=many"):
        with pytest.raises(RuvdllmError, match="configuration"):
            quality.parse_spec(bad)


def test_batched_judging_equals_one_by_one(quality, tiny):
    _, gguf, _, _ = tiny
    torch.set_num_threads(1)
    ar = quality.ArModel(gguf, batch_size=3)
    prompts = [[1, 5, 9], [1, 7], [1, 4, 4, 4, 2], [1, 3]]
    samples = [[10, 11, 12, 13], [20], [30, 31], []]  # ragged, one empty: padding must not count
    together = ar.nll(prompts, samples)
    alone = [ar.nll([p], [s]) for p, s in zip(prompts, samples, strict=True)]
    assert together[1] == sum(n for _, n in alone) == 7
    assert together[0] == pytest.approx(sum(x for x, _ in alone), rel=1e-5)


def test_bad_prompt_files_are_one_line_errors(quality, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(RuvdllmError, match=f"{empty}: no prompts in split 'held-out'"):
        quality.read_prompts(empty, "held-out", 4)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\nnot json\n')
    with pytest.raises(RuvdllmError, match=f"{broken}: line 2 is not"):
        quality.read_prompts(broken, "held-out", 4)
    with pytest.raises(RuvdllmError, match="cannot read"):
        quality.read_prompts(tmp_path / "absent.jsonl", "held-out", 4)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        '{"prompt": "a", "split": "train"}\n{"prompt": "b"}\n{"prompt": "c", "split": "held-out"}\n'
    )
    assert quality.read_prompts(mixed, "held-out", 4) == ["b", "c"]
