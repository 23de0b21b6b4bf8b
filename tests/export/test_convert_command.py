"""`ruvdllm convert` end to end on a tiny GGUF checkpoint: train, write an adapter the exporter
reads, resume after an interruption, and name bad input in one line."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from ruvdllm.cli import main
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.convert.adapter_file import read_adapter, read_static_lora, write_adapter
from ruvdllm_export.convert.memory import estimate_memory
from ruvdllm_export.convert.objectives import ObjectiveConfig
from ruvdllm_export.convert.trainer import TrainConfig, Trainer
from ruvdllm_export.convert_command import load_model
from ruvdllm_export.reference import LoraConfig, apply_lora, lora_factors
from ruvdllm_export.spec import LINEARS, ModelSpec
from tests.fixtures.tiny_models import make_gguf_checkpoint

torch.set_num_threads(1)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog. ",
    "Permission is hereby granted, free of charge, to any person obtaining a copy. ",
    "A compiler translates source code into machine code. ",
]


@functools.cache
def _gguf(directory) -> str:
    path = directory / "tiny.gguf"
    make_gguf_checkpoint(path, "llama", "Q4_1", tied=True, seed=1)
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    data = root / "data"
    data.mkdir()
    for i in range(24):
        (data / f"{i}.txt").write_text((SENTENCES[i % 3] + f"Item {i}. ") * 6)
    return root, _gguf(root), data


def _args(workspace, run_dir, *extra):
    root, gguf, data = workspace
    return [
        "convert",
        "--model",
        gguf,
        "--data",
        str(data),
        "--run-dir",
        str(run_dir),
        "--seq-len",
        "32",
        "--grad-accum",
        "2",
        "--rank",
        "2",
        "--eval-every",
        "2",
        "--eval-rows",
        "2",
        "--checkpoint-steps",
        "2",
        "--quiet",
        "--threads",
        "1",
        *extra,
    ]


def test_convert_trains_and_writes_an_adapter_the_exporter_reads(workspace, tmp_path):
    root, gguf, _ = workspace
    output = tmp_path / "adapter.safetensors"
    assert main(_args(workspace, tmp_path / "run", "--max-steps", "4", "--output", str(output))) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in log if "eval" in r] == [0, 2, 4]
    adapter = read_adapter(output)
    assert adapter.lora["rank"] == 2 and adapter.training["objective"] == "bd3lm"
    checkpoint = load_checkpoint(gguf)
    factors = read_static_lora(output, checkpoint)
    assert len(factors) == 7 * checkpoint.spec.num_layers  # every projection of every layer
    a, b = factors["model.layers.0.self_attn.q_proj.weight"]
    assert a.shape == (2, checkpoint.spec.hidden_size) and np.abs(b).max() > 0  # trained: B moved off zero


def test_resume_after_a_crash_gives_the_uninterrupted_adapter(workspace, tmp_path):
    """Crash after step 5 with the last checkpoint at step 4: resuming repeats step 5 and ends
    bit for bit where an uninterrupted run ends (seeded data order and masks)."""
    root, gguf, data = workspace
    from ruvdllm_export.convert.data import build_sequences

    checkpoint = load_checkpoint(gguf)
    train, held = build_sequences([data], checkpoint.tokenizer, 32, 2, 0.1, 0)
    config = TrainConfig(
        seq_len=32,
        grad_accum=2,
        max_steps=6,
        eval_every=3,
        eval_rows=2,
        checkpoint_minutes=1e9,
        checkpoint_steps=2,
        anneal_steps=4,
        warmup_steps=2,
    )
    lora = LoraConfig(rank=2)

    def trainer(run_dir):
        _, model = load_model(gguf)
        apply_lora(model, lora)
        return Trainer(
            model, lora, ObjectiveConfig(), config, train, held, run_dir, {"test": 1}, progress=False
        )

    whole = trainer(tmp_path / "whole")
    whole.fit()

    class Crash(Exception):
        pass

    def crash_after_5(step):
        if step == 5:
            raise Crash

    crashed = trainer(tmp_path / "crashed")
    with pytest.raises(Crash):
        crashed.fit(on_step=crash_after_5)
    logged = [json.loads(line)["step"] for line in (tmp_path / "crashed" / "log.jsonl").open()]
    assert logged.count(5) == 1  # step 5 was logged, then lost with the crash
    resumed = trainer(tmp_path / "crashed")
    resumed.resume()
    assert resumed.state.step == 4  # lost at most one interval
    resumed.fit()
    for name, (a, b) in lora_factors(whole.model).items():
        a2, b2 = lora_factors(resumed.model)[name]
        np.testing.assert_array_equal(a, a2)
        np.testing.assert_array_equal(b, b2)

    def curve(run: str) -> list[dict]:
        """The log without its clock readings: the same for a crashed-and-resumed run."""
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if k not in ("time", "tokens_per_s")} for line in lines
        ]

    assert curve("crashed") == curve("whole")  # step 5 once, not twice


def test_sigterm_saves_a_checkpoint_as_ctrl_c_does(workspace, tmp_path):
    """A background job ignores SIGINT; `kill` (SIGTERM) must not lose the steps since the last
    checkpoint: it saves where it stopped, and the handler it set is gone after training."""
    _, gguf, data = workspace
    from ruvdllm_export.convert.data import build_sequences

    checkpoint = load_checkpoint(gguf)
    train, held = build_sequences([data], checkpoint.tokenizer, 32, 2, 0.1, 0)
    config = TrainConfig(seq_len=32, grad_accum=1, max_steps=8, checkpoint_minutes=1e9, checkpoint_steps=2)
    lora = LoraConfig(rank=2)
    _, model = load_model(gguf)
    apply_lora(model, lora)
    trainer = Trainer(
        model, lora, ObjectiveConfig(), config, train, held, tmp_path / "run", {}, progress=False
    )

    def terminate_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(on_step=terminate_at_3)
    assert signal.getsignal(signal.SIGTERM) == before
    resumed = Trainer(
        model, lora, ObjectiveConfig(), config, train, held, tmp_path / "run", {}, progress=False
    )
    resumed.resume()
    assert resumed.state.step == 3  # saved at the signal, not at the step-2 checkpoint


def test_cli_resume_continues_the_saved_run(workspace, tmp_path):
    run_dir = tmp_path / "run"
    assert main(_args(workspace, run_dir, "--max-steps", "2")) == 0
    with pytest.raises(RuvdllmError, match="holds a run already"):
        from ruvdllm.cli import build_parser
        from ruvdllm_export.convert_command import run

        argv = _args(workspace, run_dir, "--max-steps", "2")
        run(build_parser(argv).parse_args(argv))
    assert main(["convert", "--resume", "--run-dir", str(run_dir), "--max-steps", "3", "--quiet"]) == 0
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["rank"] == 2  # the run's own arguments were used, not the defaults
    # A run saved before the warm-start and certainty-forcing flags existed still resumes.
    for key in ("init_adapter", "certainty_weight", "max_minutes"):
        del saved[key]
    (run_dir / "args.json").write_text(json.dumps(saved))
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    before = (run_dir / "log.jsonl").read_text()
    assert main(["convert", "--resume", "--run-dir", str(moved), "--max-steps", "4", "--quiet"]) == 0
    assert (run_dir / "log.jsonl").read_text() == before  # a moved run resumes where it now lies
    assert '"step": 4' in (moved / "log.jsonl").read_text()


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err.strip()


def test_bad_input_is_one_line_naming_the_thing(workspace, tmp_path, capsys):
    root, gguf, data = workspace
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "model.bin").write_bytes(b"not a model at all")
    base = ["convert", "--model", gguf, "--run-dir", str(tmp_path / "r"), "--quiet"]
    cases = {
        "missing.txt: no such data file": [
            *base[:-3],
            "--run-dir",
            str(tmp_path / "r1"),
            "--data",
            str(tmp_path / "missing.txt"),
        ],
        "empty.txt: the data file is empty": [
            *base[:-3],
            "--run-dir",
            str(tmp_path / "r2"),
            "--data",
            str(tmp_path / "empty.txt"),
        ],
        "model.bin: neither a GGUF": [
            "convert",
            "--model",
            str(tmp_path / "model.bin"),
            "--data",
            str(data),
            "--run-dir",
            str(tmp_path / "r3"),
        ],
        "no training data": ["convert", "--model", gguf, "--run-dir", str(tmp_path / "r4")],
        "needs about": [
            *base[:-3],
            "--run-dir",
            str(tmp_path / "r5"),
            "--data",
            str(data),
            "--batch-size",
            "256",
            "--seq-len",
            "8192",
            "--memory-gb",
            "24",
        ],
        "no args.json": ["convert", "--resume", "--run-dir", str(tmp_path / "nothing")],
        "LoRA targets": [
            *base[:-3],
            "--run-dir",
            str(tmp_path / "r6"),
            "--data",
            str(data),
            "--targets",
            "q_proj,wq",
        ],
    }
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    cases |= {
        "bad.jsonl:2: not valid JSON": [
            *base[:-3],
            "--run-dir",
            str(tmp_path / "r7"),
            "--data",
            str(tmp_path / "bad.jsonl"),
        ],
        "prompts.jsonl: no such prompt file": [
            *base[:-3],
            "--run-dir",
            str(tmp_path / "r8"),
            "--distill",
            str(tmp_path / "prompts.jsonl"),
        ],
        "warm.safetensors: no such adapter file": [
            *base[:-3],
            "--run-dir",
            str(tmp_path / "r9"),
            "--data",
            str(data),
            "--init-adapter",
            str(tmp_path / "warm.safetensors"),
        ],
    }
    for expected, argv in cases.items():
        message = _error(capsys, argv)
        assert expected in message and "\n" not in message, (expected, message)
    # Refused before the model loads (a bad checkpoint, a run over the budget, missing or malformed
    # inputs): no run directory is left behind.
    for refused in ("r1", "r2", "r3", "r5", "r7", "r8", "r9"):
        assert not (tmp_path / refused).exists(), refused


SMOLLM2 = ModelSpec(
    architecture="llama",
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    max_position=8192,
    tie_word_embeddings=True,
)


def _estimate(spec, batch, positions, checkpointing, rank=16, targets=LINEARS, precision="fp32"):
    return estimate_memory(
        spec,
        batch=batch,
        positions=positions,
        targets=2 * positions // 3,
        checkpointing=checkpointing,
        rank=rank,
        lora_targets=targets,
        precision=precision,
    )


def test_default_batch_fits_24_gb_and_a_huge_one_does_not():
    """The defaults (batch 1 x 128, BD3LM with complementary copies: 3 x 128 positions) are far
    inside 24 GB for SmolLM2-135M; batch 16 x 2048 without checkpointing is refused."""
    budget = 24 * 2**30
    small = _estimate(SMOLLM2, 1, 3 * 128, False).total
    huge = _estimate(SMOLLM2, 16, 3 * 2048, False).total
    assert small < budget / 8 < budget < huge
    assert _estimate(SMOLLM2, 16, 3 * 2048, True).total < huge / 3


def test_estimate_parts_count_what_they_name():
    """LoRA and AdamW: 4 float32 copies of r x (in + out) per targeted linear and layer; bf16
    adds the cached base (whose weights are then what backward keeps); checkpointing only
    shrinks activations."""
    one = _estimate(SMOLLM2, 1, 192, False, rank=8, targets=("q_proj",))
    features = SMOLLM2.linear_features()["q_proj"]
    assert one.lora == 4 * 4 * SMOLLM2.num_layers * 8 * (features.in_features + features.out_features)
    assert _estimate(SMOLLM2, 1, 192, False, rank=16, targets=("q_proj",)).lora == 2 * one.lora
    bf16 = _estimate(SMOLLM2, 1, 192, False, rank=8, targets=("q_proj",), precision="bf16")
    assert bf16.base > one.base and bf16.activations < one.activations
    checkpointed = _estimate(SMOLLM2, 1, 192, True, rank=8, targets=("q_proj",))
    assert checkpointed.activations < one.activations and checkpointed.base == one.base
    assert one.lean_total == one.runtime + one.base + one.lora + one.activations
    assert one.total == one.lean_total + one.heap
    assert one.heap == int(0.05 * (one.base + one.lora + one.activations))
    assert "memory estimate" in one.describe() and "\n" not in one.describe()
    # trained certainty forcing keeps two more vocabulary-wide rows per target (memory.head_copies)
    forced = estimate_memory(
        SMOLLM2,
        batch=1,
        positions=192,
        targets=128,
        checkpointing=False,
        rank=8,
        lora_targets=("q_proj",),
        certainty=True,
    )
    plain = _estimate(SMOLLM2, 1, 192, False, rank=8, targets=("q_proj",))
    assert forced.activations - plain.activations == 2 * 128 * SMOLLM2.vocab_size * 4


def test_memory_plan_goes_lean_only_when_it_must():
    """Within --memory-gb the default allocator; between the lean bound and the estimate the lean
    one; below the lean bound a one-line refusal naming the estimate; --lean-memory forces it."""
    from ruvdllm_export.convert.trainer import TrainConfig, memory_plan

    estimate = _estimate(SMOLLM2, 1, 3 * 128, False)
    cpu = torch.device("cpu")

    def plan(gb: float, lean: bool = False) -> bool:
        return memory_plan(estimate, TrainConfig(memory_gb=gb, lean_memory=lean), cpu)

    gb = 2**30
    assert plan(estimate.total / gb + 0.01) is False
    assert plan(estimate.total / gb + 0.01, lean=True) is True
    assert plan((estimate.lean_total + estimate.total) / 2 / gb) is True
    with pytest.raises(
        RuvdllmError, match=r"needs about .* GB \(memory estimate .*\), more than .*--memory-gb"
    ):
        plan(estimate.lean_total / gb - 0.01)


def test_estimate_counts_the_dequantized_weights_autograd_keeps():
    """A 4-bit linear's forward dequantizes its weight and autograd keeps that float32 tensor for
    the backward (the input needs a gradient): without checkpointing every layer's, which the
    estimate counts beyond the one layer in the base (not when bf16 caches the base)."""
    from ruvdllm_export.quant.q4 import quantize_q4
    from ruvdllm_export.reference.linear import FrozenLinear

    linear = FrozenLinear(quantize_q4(np.random.default_rng(0).standard_normal((48, 64), np.float32)))
    x = torch.randn(2, 64, requires_grad=True)
    kept, fn = [], linear(x).grad_fn
    while fn is not None:  # the saved tensors along the output's graph
        kept += [
            getattr(fn, a) for a in dir(fn) if a.startswith("_saved") and torch.is_tensor(getattr(fn, a))
        ]
        fn = fn.next_functions[0][0] if fn.next_functions else None
    assert any(t.shape in ((48, 64), (64, 48)) for t in kept)  # the dequantized weight itself
    layer = sum(f.in_features * f.out_features for f in SMOLLM2.linear_features().values()) * 4
    fp32, bf16 = (_estimate(SMOLLM2, 1, 192, False, precision=p) for p in ("fp32", "bf16"))
    assert fp32.activations - bf16.activations == (SMOLLM2.num_layers - 1) * layer
    checkpointed = (_estimate(SMOLLM2, 1, 192, True, precision=p) for p in ("fp32", "bf16"))
    assert len({e.activations for e in checkpointed}) == 1  # the recomputed layer: in the base


def test_convert_with_self_distillation(workspace, tmp_path):
    """--distill: the AR model answers the prompts first (kept in the run directory), and the
    answers are trained on with the other data."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(4)))
    run_dir = tmp_path / "run"
    argv = _args(workspace, run_dir, "--max-steps", "1", "--distill", str(prompts), "--distill-tokens", "6")
    assert main(argv) == 0
    answers = [json.loads(line) for line in (run_dir / "distill.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answers] == [f"Question {i}?" for i in range(4)]


def test_bf16_with_the_teacher_trains_like_fp32(workspace, tmp_path):
    """--precision bf16 (the base in bfloat16 under autocast) and --teacher-weight: the first
    step's loss matches float32's to bfloat16's precision, and the adapter trains."""

    def first_loss(run: str, *extra: str) -> float:
        assert main(_args(workspace, tmp_path / run, "--max-steps", "2", *extra)) == 0
        log = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return next(r["loss"] for r in log if "loss" in r)

    fp32 = first_loss("fp32", "--teacher-weight", "0.5")
    bf16 = first_loss("bf16", "--teacher-weight", "0.5", "--precision", "bf16")
    assert bf16 == pytest.approx(fp32, rel=0.03)
    adapter = read_adapter(tmp_path / "bf16" / "adapter.safetensors")
    assert adapter.training["steps"] == 2
    with pytest.raises(SystemExit):  # out of range: refused as the flags parse
        main(_args(workspace, tmp_path / "bad", "--teacher-weight", "2"))


def test_warm_start_begins_from_the_adapter_and_counts_its_tokens(workspace, tmp_path):
    """--init-adapter: a new run starts from the file's factors (lr 0 keeps them exactly), its
    adapter records the warm start and every token the factors saw; a file of another rank or
    another base is refused in one line."""
    first = tmp_path / "first.safetensors"
    assert main(_args(workspace, tmp_path / "a", "--max-steps", "2", "--output", str(first))) == 0
    seen = read_adapter(first).training["tokens"]
    argv = _args(workspace, tmp_path / "b", "--max-steps", "1", "--lr", "0", "--init-adapter", str(first))
    assert main(argv) == 0
    warm = read_adapter(tmp_path / "b" / "adapter.safetensors")
    for name, factor in read_adapter(first).factors.items():
        np.testing.assert_array_equal(warm.factors[name], factor)
    assert warm.training["warm_start"]["tokens"] == seen
    assert warm.training["tokens"] == seen + warm.training["run_tokens"] > seen
    from ruvdllm.cli import build_parser
    from ruvdllm_export.convert_command import run

    with pytest.raises(RuvdllmError, match="rank 2, alpha 32, .*this run has rank 1.*rank of at least 2"):
        argv = _args(workspace, tmp_path / "c", "--rank", "1", "--init-adapter", str(first))
        run(build_parser(argv).parse_args(argv))
    with pytest.raises(RuvdllmError, match="targets q_proj.*the same targets"):
        argv = _args(workspace, tmp_path / "c2", "--targets", "q_proj", "--init-adapter", str(first))
        run(build_parser(argv).parse_args(argv))
    adapter = read_adapter(first)
    other = tmp_path / "other.safetensors"
    write_adapter(
        other, adapter.factors, adapter.lora, adapter.training, {**adapter.base, "hidden_size": 999}
    )
    with pytest.raises(RuvdllmError, match="other.safetensors: trained for hidden_size 999"):
        argv = _args(workspace, tmp_path / "d", "--init-adapter", str(other))
        run(build_parser(argv).parse_args(argv))


def test_warm_start_widens_a_lower_rank_to_the_same_update(workspace, tmp_path):
    """--init-adapter of rank 2 into a rank-4 run with another alpha: every merged update
    (alpha/rank)·B A is the file's, the new directions are A's fresh rows beside zero columns of
    B, and training then moves them (lr 0 keeps the start as it is)."""
    first = tmp_path / "first.safetensors"
    assert main(_args(workspace, tmp_path / "a", "--max-steps", "2", "--output", str(first))) == 0
    narrow = read_adapter(first)
    assert narrow.lora["rank"] == 2

    def merged(path) -> dict[str, np.ndarray]:  # (alpha/rank)·B A per weight, as the exporter reads it
        return {name: b.astype(np.float64) @ a for name, (a, b) in read_static_lora(path).items()}

    wide_args = ("--rank", "4", "--alpha", "16", "--init-adapter", str(first))
    assert main(_args(workspace, tmp_path / "b", "--max-steps", "1", "--lr", "0", *wide_args)) == 0
    wide = read_adapter(tmp_path / "b" / "adapter.safetensors")
    assert wide.lora["rank"] == 4 and wide.training["warm_start"]["rank"] == 2
    before, after = merged(first), merged(tmp_path / "b" / "adapter.safetensors")
    assert set(before) == set(after)
    for name, delta in before.items():
        np.testing.assert_allclose(after[name], delta, rtol=1e-5, atol=1e-7 * np.abs(delta).max())
        stem = name.removesuffix(".weight")
        a, b = wide.factors[stem + ".lora_A.weight"], wide.factors[stem + ".lora_B.weight"]
        np.testing.assert_array_equal(a[:2], narrow.factors[stem + ".lora_A.weight"])
        assert np.abs(a[2:]).max() > 0 and not b[:, 2:].any()  # fresh directions: A random, B zero

    assert main(_args(workspace, tmp_path / "c", "--max-steps", "2", *wide_args)) == 0
    trained = read_adapter(tmp_path / "c" / "adapter.safetensors")
    assert any(trained.factors[n][:, 2:].any() for n in trained.factors if n.endswith(".lora_B.weight"))


def test_max_minutes_stops_early_and_saves(workspace, tmp_path):
    """--max-minutes: the run stops after the step that crosses the limit, evaluates and saves."""
    run_dir = tmp_path / "run"
    assert main(_args(workspace, run_dir, "--max-steps", "50", "--max-minutes", "1e-9")) == 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["state"]
    assert state["step"] == 1
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval" in r] == [0, 1]
    assert {"accuracy", "correct_entropy", "confident"} <= set(log[-1]["eval"])


def test_estimate_is_printed_and_an_over_budget_run_refused_before_the_weights_load(
    workspace, tmp_path, capsys
):
    """A budget below the estimate is a one-line refusal carrying the estimate's parts, and the run
    directory holds no checkpoint; a run that fits prints the estimate before training starts."""
    _, gguf, data = workspace
    argv = ["convert", "--model", gguf, "--data", str(data), "--rank", "2", "--seq-len", "32"]
    assert main([*argv, "--run-dir", str(tmp_path / "refused"), "--memory-gb", "0.05"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs about" in err[0] and "--memory-gb 0.05" in err[0]
    assert "runtime" in err[0] and "LoRA and AdamW" in err[0] and "activations" in err[0]
    assert not (tmp_path / "refused" / "checkpoint.pt").exists()
    assert main([*argv, "--run-dir", str(tmp_path / "run"), "--max-steps", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.index("memory estimate") < err.index("training rows")
