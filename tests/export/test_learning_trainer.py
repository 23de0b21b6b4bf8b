"""Loop B's first-order trainer (ruvdllm_export/learning): on a tiny LLaMA exported with a random
conversion adapter at accuracy level 0, the torch reference built from the model directory gives
loop B's masked NLL through the ONNX graph (golden), Adam lowers it, stops and threads as loop B
asks, and loop B with it installs a MicroLoRA that lowers the held-out NLL; the command layer's
choice between it and SPSA."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from runtime.artifact import GRAPH_NAME, load_config  # noqa: E402
from runtime.banks import Bank  # noqa: E402
from runtime.cpython_model import open_model  # noqa: E402
from runtime.learning.config import LoopBConfig  # noqa: E402
from runtime.learning.logits_session import LogitsSession  # noqa: E402
from runtime.learning.loop_b import Example, training_pairs  # noqa: E402
from runtime.learning.loop_b_service import for_model  # noqa: E402
from runtime.learning.masked_nll import masked_nll, noisy_block  # noqa: E402
from runtime.learning.microlora import new_micro, trained_layers  # noqa: E402
from runtime.learning.sqlite_store import SqliteStore  # noqa: E402
from runtime.learning.trainer import TrainJob  # noqa: E402
from runtime.learning.trajectory import make_feedback  # noqa: E402
from ruvdllm.errors import RuvdllmError  # noqa: E402
from ruvdllm.loop_b_trainer import trainer_for  # noqa: E402
from ruvdllm_export.checkpoints import load_checkpoint  # noqa: E402
from ruvdllm_export.export import export_model  # noqa: E402
from ruvdllm_export.learning.microlora_trainer import AdamMicroTrainer, BankedLoss  # noqa: E402
from ruvdllm_export.learning.reference_model import reference_for_artifact  # noqa: E402
from tests.fixtures.tiny_models import make_hf_checkpoint, write_conversion_adapter  # noqa: E402
from tests.runtime.learning.test_loop_b import TRAIN, held_out_nll, trajectory  # noqa: E402
from tests.runtime.tiny_artifact import make_tiny_artifact, random_bank  # noqa: E402

GROUP_T = (1 / 3, 2 / 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model directory, its torch reference): a tiny LLaMA + conversion adapter, exported with
    float activations so that graph and reference agree to float rounding."""
    directory = tmp_path_factory.mktemp("learning-trainer")
    loaded = load_checkpoint(make_hf_checkpoint(directory / "hf", "llama", seed=13))
    adapter = write_conversion_adapter(directory / "adapter.safetensors", loaded)
    out = export_model(
        loaded,
        directory / "model",
        "cpu",
        adapter=adapter,
        block_size=4,
        log=None,
        accuracy_level=0,
        top_k=16,
        adapter_slots=5,
        adapter_rank=2,
    )
    return out, reference_for_artifact(out)


def a_job(model_dir, seed: int, examples: int = 3, scale: float = 0.3) -> tuple[TrainJob, LogitsSession]:
    """A job over a bank with adapters in every slot, a MicroLoRA with nonzero factors in a DGR slot,
    random examples; and a LogitsSession on the graph with that bank."""
    config = load_config(model_dir)
    rng = np.random.default_rng(seed)
    bank = random_bank(config, seed=seed, patterns=0)
    slot = int(rng.integers(bank.groups, bank.slots))
    micro = new_micro(1, slot, bank.targets, trained_layers(bank.layers, 1 + seed % 2), 2, rng)
    for t in micro.b:
        micro.b[t] = (rng.standard_normal(micro.b[t].shape) * scale).astype(np.float32)
    pairs = [
        (list(rng.integers(10, 200, rng.integers(5, 14))), list(rng.integers(10, 200, rng.integers(1, 14))))
        for _ in range(examples)
    ]
    job = TrainJob(micro, pairs, bank, GROUP_T, config.block_size, config.mask_token_id, rng)
    session = LogitsSession(model_dir / GRAPH_NAME, config)
    session.set_bank(bank)
    return job, session


def graph_nll(session, job: TrainJob, blocks, micro) -> float:
    """Loop B's own loss: masked_nll through the ONNX forward, the MicroLoRA in its slot."""
    bank, factors = job.bank, micro.to_bank(job.bank.layers, job.bank.rank)
    return masked_nll(
        lambda chunk: session.forward(chunk, micro.slot, factors),
        blocks,
        job.mask_id,
        bank.slots,
        bank.groups,
        bank.talora_config(),
        micro.slot,
    )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_the_reference_loss_is_loop_b_masked_nll_through_the_graph(exported, seed):
    model_dir, reference = exported
    job, session = a_job(model_dir, seed)
    # the answers and the prompt windows loop B trains on (training_pairs): the same layout either way
    examples = [Example(i, tuple(p), tuple(a), np.ones(1), 1) for i, (p, a) in enumerate(job.examples)]
    pairs = training_pairs(examples, job.block_size, prompts=True)
    assert len(pairs) > len(examples)  # prompt windows among them
    blocks = [noisy_block(p, a, job.block_size, job.t_range, job.rng) for p, a in pairs for _ in range(2)]
    want = graph_nll(session, job, blocks, job.micro)
    got = BankedLoss(reference, job).mean_nll(blocks, job.micro)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_adam_lowers_the_training_loss_and_trains_both_factors(exported):
    model_dir, reference = exported
    job, session = a_job(model_dir, seed=1, scale=0.0)  # a fresh MicroLoRA: b = 0
    fixed = [
        noisy_block(p, a, job.block_size, job.t_range, np.random.default_rng(9)) for p, a in job.examples
    ]
    before = graph_nll(session, job, fixed, job.micro)

    result = AdamMicroTrainer(reference, steps=60, lr=1e-2, batch=4).train(job)

    assert result.steps == 60 and result.loss_last < result.loss_first
    assert graph_nll(session, job, fixed, result.micro) < before  # on the real forward too
    for t in job.micro.targets:
        assert not np.array_equal(result.micro.a[t], job.micro.a[t])
        assert not np.array_equal(result.micro.b[t], job.micro.b[t])
        assert result.micro.a[t].dtype == np.float32 and result.micro.a[t].shape == job.micro.a[t].shape


def test_it_stops_between_steps_on_loop_b_flag_and_uses_its_threads(exported):
    model_dir, reference = exported
    job, _ = a_job(model_dir, seed=2)
    threads_seen = []

    def should_stop() -> bool:
        threads_seen.append(torch.get_num_threads())
        return len(threads_seen) > 3

    before = torch.get_num_threads()
    stopping = replace(job, should_stop=should_stop)
    result = AdamMicroTrainer(reference, steps=50, lr=1e-2, batch=1, threads=1).train(stopping)
    assert result.steps == 3 and set(threads_seen) == {1}
    assert torch.get_num_threads() == before  # given back


@pytest.fixture
def store_with_feedback(exported, tmp_path):
    """Six liked licence answers (one corrected) in a real store, for the exported tiny model."""
    model = open_model(exported[0], verify="sizes")
    rng = np.random.default_rng(0)
    key = rng.standard_normal(model.config.hidden_size)
    store = SqliteStore(tmp_path / "trajectories.db")
    for i, text in enumerate(TRAIN):
        store.add_trajectory(trajectory(model, i, "something else" if i == 0 else text, key, rng))
        store.add_feedback(
            make_feedback(f"cmpl-{i}", correction=text) if i == 0 else make_feedback(f"cmpl-{i}", up=True)
        )
    yield model, store
    store.close()


def test_loop_b_with_the_adam_trainer_installs_a_microlora_that_lowers_held_out_nll(
    store_with_feedback, tmp_path, monkeypatch
):
    monkeypatch.setattr("runtime.learning.loop_b.VALIDATION_MIN", 100)  # as the SPSA test: all six check
    model, store = store_with_feedback
    config = LoopBConfig(bank=str(tmp_path / "learnt"), adam_steps=60, adam_lr=1e-2, batch=4, trainer="adam")
    said = []
    loop = for_model(
        model, config, store.good_feedback, trainer_for=lambda d, c: trainer_for(d, c, said.append)
    )
    assert said and said[0].startswith("loop B trains MicroLoRAs by Adam")
    assert not loop.trainer.built  # built when a cluster first trains, not when loop B starts
    start = Bank.load(tmp_path / "learnt")
    before = held_out_nll(loop.session, model, start, None)

    report = loop.run_once()
    assert loop.trainer.built

    (trained,) = report.trained
    assert trained.trainer == "adam (torch)" and trained.steps == 60
    assert trained.loss_last < trained.loss_first
    assert trained.kept and trained.nll_after < trained.nll_before
    bank = Bank.load(tmp_path / "learnt")
    assert list(bank.adapters) == [trained.name] and bank.pattern_slots == [trained.slot]
    after = held_out_nll(loop.session, model, bank, trained.slot)
    assert after < before, (before, after)  # on test_loop_b.py's HELD_OUT sentences, never trained


def test_the_choice_of_trainer_is_said_in_one_line(exported, tmp_path):
    model_dir, _ = exported
    said = []
    assert trainer_for(model_dir, LoopBConfig(trainer="spsa"), said.append) is None
    chosen = trainer_for(model_dir, LoopBConfig(threads=1), said.append)
    assert isinstance(chosen, AdamMicroTrainer) and not chosen.built  # built when first needed
    # a model directory whose config names no checkpoint (the suite's tiny artifact): SPSA, and why
    bare = make_tiny_artifact(tmp_path / "bare")
    assert trainer_for(bare, LoopBConfig(), said.append) is None
    assert [line.split(":")[0].split(" (")[0] for line in said] == [
        "loop B trains MicroLoRAs by SPSA",
        "loop B trains MicroLoRAs by Adam through the model's torch reference",
        "loop B trains MicroLoRAs by SPSA",
    ]
    assert "no torch reference" in said[2] and all("\n" not in line for line in said)
    with pytest.raises(RuvdllmError, match="loop_b.trainer = adam"):
        trainer_for(bare, LoopBConfig(trainer="adam"), said.append)


def test_a_changed_conversion_adapter_is_refused(exported, tmp_path):
    import json
    import shutil

    from runtime.artifact import CONFIG_NAME

    model_dir, _ = exported
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / CONFIG_NAME).read_text())
    config["source"]["static_adapter"]["sha256"] = "0" * 64
    (copy / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(RuvdllmError, match="conversion adapter .* gone or changed"):
        reference_for_artifact(copy)


def test_early_stopping_keeps_the_best_state_on_the_held_back_blocks(exported):
    """A learning rate far too high for random text: the held-back blocks' NLL rises, training
    stops before its planned steps, and what comes back is the best state seen, not the last."""
    model_dir, reference = exported
    job, _ = a_job(model_dir, seed=3, examples=4, scale=0.0)
    held_back = np.random.default_rng(30)
    pairs = [(list(held_back.integers(10, 200, 8)), list(held_back.integers(10, 200, 8))) for _ in range(3)]
    validation = [
        noisy_block(p, a, job.block_size, job.t_range, held_back) for p, a in pairs for _ in range(2)
    ]
    job = replace(job, validation=validation)
    trainer = AdamMicroTrainer(reference, steps=200, lr=0.3, batch=2, eval_every=2, patience=2)

    result = trainer.train(job)

    assert result.steps < 200  # stopped early
    (stopped,) = [n for n in result.notes if n.startswith("early stopping")]
    start, best = (float(x) for x in stopped.split("check NLL ")[1].split(" at step")[0].split(" -> best "))
    loss = BankedLoss(reference, job)
    assert loss.mean_nll(validation, result.micro) == pytest.approx(best, rel=1e-5)  # the best state
    assert best <= start and loss.mean_nll(validation, job.micro) == pytest.approx(start, rel=1e-5)


def test_without_held_back_blocks_the_steps_follow_the_data(exported):
    model_dir, reference = exported
    job, _ = a_job(model_dir, seed=4, examples=3)
    blocks = sum(-(-len(target) // job.block_size) for _, target in job.examples)
    result = AdamMicroTrainer(reference, steps=1000, lr=1e-3, batch=2, epochs=2.0).train(job)
    assert result.steps == -(-2 * blocks // 2)  # two passes over the blocks, two blocks a step
    assert not any(n.startswith("early stopping") for n in result.notes)


def test_loop_b_that_trains_nothing_never_builds_the_reference(exported, tmp_path):
    model = open_model(exported[0], verify="sizes")
    store = SqliteStore(tmp_path / "trajectories.db")  # no feedback yet
    config = LoopBConfig(bank=str(tmp_path / "learnt"), trainer="adam")
    loop = for_model(model, config, store.good_feedback, trainer_for=lambda d, c: trainer_for(d, c, print))
    report = loop.run_once()
    assert report.read == 0 and not loop.trainer.built
    store.close()


@pytest.mark.parametrize("asked", ["auto", "adam"])
def test_a_reference_that_fails_to_build_when_first_needed(store_with_feedback, exported, tmp_path, asked):
    """The adapter changed after loop B started: "auto" trains by SPSA from then on and says why;
    "adam" fails the run with a one-line reason (serve's loop B warns and retries later)."""
    import json
    import shutil

    from runtime.artifact import CONFIG_NAME

    model, store = store_with_feedback
    copy = tmp_path / "model"
    shutil.copytree(exported[0], copy)
    config = LoopBConfig(bank=str(tmp_path / "learnt"), trainer=asked, steps=4, adam_steps=4)
    warnings = []
    loop = for_model(
        model,
        config,
        store.good_feedback,
        warnings.append,
        trainer_for=lambda d, c: trainer_for(copy, c, print),
    )
    assert isinstance(loop.trainer, AdamMicroTrainer)
    values = json.loads((copy / CONFIG_NAME).read_text())
    values["source"]["static_adapter"]["sha256"] = "0" * 64
    (copy / CONFIG_NAME).write_text(json.dumps(values))

    if asked == "adam":
        with pytest.raises(
            RuvdllmError, match="loop_b.trainer = adam: no torch reference .* gone or changed"
        ):
            loop.run_once()
        return
    (trained,) = loop.run_once().trained
    assert trained.trainer == "spsa" and trained.steps == 4
    (warning,) = warnings
    assert warning.startswith("loop B trains MicroLoRAs by SPSA from now on: no torch reference")
    assert "\n" not in warning
