"""Loop B end to end on the tiny model: liked and corrected answers in a real store, MicroLoRAs
trained through the model's own graph, installed in the bank with their keys, and the held-out NLL
of the same topic falls."""

import time

import numpy as np
import pytest

from runtime import artifact
from runtime.banks import Bank
from runtime.cpython_model import open_model
from runtime.learning.config import LoopBConfig
from runtime.learning.logits_session import LogitsSession
from runtime.learning.loop_b import LoopB, examples_from, uncertain_group, validation_split
from runtime.learning.loop_b_service import for_model
from runtime.learning.masked_nll import masked_nll, noisy_block
from runtime.learning.sqlite_store import SqliteStore
from runtime.learning.trajectory import Trajectory, make_feedback
from runtime.settings import GenerationSettings
from ruvdllm.errors import RuvdllmError

PROMPT = "Tell me about the licence:"
TRAIN = [
    "the licence grants permission to copy and modify the software",
    "the licence permits anyone to copy, modify and share the software",
    "permission is granted to copy and modify the software under the licence",
    "you may copy and modify the software as the licence permits",
    "the software licence allows copying and modification",
    "anyone may copy the software and modify it under this licence",
]
HELD_OUT = [
    "the licence lets you copy and modify the software freely",
    "permission to modify and copy the software comes from the licence",
]
FAST = LoopBConfig(steps=1000, lr=5.0, epsilon=0.05, batch=4, min_cluster=2)


def trajectory(model, i, text, key, rng, entropy_at=0.5):
    embedding = key + 0.1 * rng.standard_normal(key.size)
    return Trajectory(
        id=f"cmpl-{i}",
        created=0.0,
        model="tiny",
        bank=None,
        prompt=PROMPT,
        prompt_tokens=model.encode(PROMPT),
        embedding=list(embedding / np.linalg.norm(embedding)),
        settings={},
        steps=[{"t": t, "entropy": 3.0 if t == entropy_at else 1.0} for t in (0.9, 0.5, 0.1)],
        patterns=[],
        answer=text,
        answer_tokens=model.encode(" " + text),
        finish_reason="stop",
        timings={},
    )


@pytest.fixture
def store_with_feedback(tiny_model_dir, tmp_path):
    """Six liked licence answers (one of them corrected), one disliked, in a real SQLite store."""
    model = open_model(tiny_model_dir, verify="sizes")
    rng = np.random.default_rng(0)
    key = rng.standard_normal(model.config.hidden_size)
    store = SqliteStore(tmp_path / "trajectories.db")
    for i, text in enumerate(TRAIN):
        answer = "something else entirely" if i == 0 else text
        store.add_trajectory(trajectory(model, i, answer, key, rng))
        store.add_feedback(
            make_feedback(f"cmpl-{i}", correction=text) if i == 0 else make_feedback(f"cmpl-{i}", up=True)
        )
    store.add_trajectory(trajectory(model, 99, "a bad answer", key, rng))
    store.add_feedback(make_feedback("cmpl-99", up=True))
    store.add_feedback(make_feedback("cmpl-99", down=True))  # the latest word counts
    yield model, store
    store.close()


def held_out_nll(session, model, bank, slot):
    session.set_bank(bank)
    rng = np.random.default_rng(123)
    prompt = model.encode(PROMPT)
    blocks = [
        noisy_block(prompt, model.encode(" " + text), model.config.block_size, (1 / 3, 2 / 3), rng)
        for text in HELD_OUT
        for _ in range(20)
    ]
    return masked_nll(
        session.forward,
        blocks,
        model.config.mask_token_id,
        bank.slots,
        bank.groups,
        bank.talora_config(),
        slot,
    )


def test_the_store_gives_loop_b_the_good_and_corrected_answers(store_with_feedback):
    model, store = store_with_feedback
    rows = store.good_feedback(0, 0.5, 100)
    assert sorted(t.id for _, t, _ in rows) == [f"cmpl-{i}" for i in range(6)]  # not the disliked one
    corrected = {t.id: c for _, t, c in rows}
    assert corrected["cmpl-0"] == TRAIN[0] and corrected["cmpl-1"] is None
    examples = examples_from(rows, model.encode, (0.0, 1 / 3, 2 / 3, 1.0))
    by_id = {e.feedback_id: e for e in examples}
    first = next(fid for fid, t, _ in rows if t.id == "cmpl-0")
    assert list(by_id[first].target) == model.encode(TRAIN[0])  # the correction is the target
    assert {e.group for e in examples} == {1}  # most uncertain at t = 0.5: the domain group
    # group_by "every": each trajectory once in every group, the same target and key
    everywhere = examples_from(rows, model.encode, (0.0, 0.25, 0.5, 0.75, 1.0), "every")
    assert len(everywhere) == 4 * len(examples)
    for e in examples:
        copies = [x for x in everywhere if x.feedback_id == e.feedback_id]
        assert sorted(x.group for x in copies) == [0, 1, 2, 3]
        assert all(x.target == e.target and np.array_equal(x.embedding, e.embedding) for x in copies)
    assert len(store.good_feedback(max(fid for fid, _, _ in rows), 0.5, 100)) == 0
    assert len(store.good_feedback(0, 0.5, 2)) == 2  # bounded


def test_uncertain_group_normalises_entropy_by_t():
    boundaries = (0.0, 1 / 3, 2 / 3, 1.0)
    # raw entropy is highest early (t = 0.9), but relative to what t = 0.9 allows, t = 0.1 is worse
    steps = [{"t": 0.9, "entropy": 2.0}, {"t": 0.1, "entropy": 1.5}]
    assert uncertain_group(steps, boundaries) == 0
    assert uncertain_group([], boundaries) == 1


def test_loop_b_lowers_the_held_out_nll_of_the_topic(store_with_feedback, tmp_path, monkeypatch):
    # all six sentences train and check (the check on sentences kept out of training is tested on
    # its own, test_loop_b_math.py): with one of six kept out, that one sentence's masks decide
    monkeypatch.setattr("runtime.learning.loop_b.VALIDATION_MIN", 100)
    model, store = store_with_feedback
    config = model.config
    bank_dir = tmp_path / "learnt"
    LoopB.prepare_bank(bank_dir, Bank.for_model(config))
    session = LogitsSession(tiny_model_dir_graph(model), config)
    loop = LoopB(FAST, bank_dir, config, model.encode, store.good_feedback, session)
    before_bank = Bank.load(bank_dir)
    before = held_out_nll(session, model, before_bank, None)

    report = loop.run_once()

    assert report.read == 6 and report.clusters == 1  # one topic, one cluster
    (trained,) = report.trained
    assert trained.kept and trained.nll_after < trained.nll_before and trained.group == 1
    assert trained.trainer == "spsa" and np.isnan(trained.loss_first)  # the default: SPSA, as before
    bank = Bank.load(bank_dir)
    assert list(bank.adapters) == [trained.name] and bank.adapters[trained.name].slot == trained.slot
    assert bank.groups <= trained.slot < bank.slots  # a DGR slot
    assert bank.pattern_slots == [trained.slot]  # the cluster's key points at it
    after = held_out_nll(session, model, bank, trained.slot)
    assert after < before, (before, after)
    # nothing new since: the next run reads nothing and changes nothing
    again = loop.run_once()
    assert again.read == 0 and again.trained == [] and Bank.load(bank_dir)._meta() == bank._meta()
    # the learnt bank is what a model opens and samples with: DGR finds the new key
    learnt = open_model(model.directory, bank=bank_dir, verify="sizes")
    assert learnt.index is not None and len(learnt.index) == 1
    learnt.generate(PROMPT, GenerationSettings(length=8))


def tiny_model_dir_graph(model):
    return model.directory / artifact.GRAPH_NAME


def test_in_the_background_with_a_running_model(store_with_feedback, tmp_path):
    model, store = store_with_feedback
    from dataclasses import replace

    config = replace(FAST, steps=50, interval=0.05, bank=str(tmp_path / "learnt"))
    loop = for_model(model, config, store.good_feedback)
    assert model.bank_dir == tmp_path / "learnt" and model.bank is not None
    assert loop.start()
    deadline = time.monotonic() + 120
    while loop.runs == 0 and time.monotonic() < deadline:
        model.generate(PROMPT, GenerationSettings(length=8))  # generation goes on meanwhile
    loop.stop()
    assert loop.runs >= 1
    if loop.last.trained and loop.last.trained[0].kept:  # installed into the running model
        assert len(model.bank.pattern_slots) == 1 and len(model.index) == 1
    model.generate(PROMPT, GenerationSettings(length=8))


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"rank": 3}, "rank 3: must be 1 or 2"),
        ({"interval": 0.0}, "interval 0.0: must be > 0"),
        ({"max_micro": 0}, "max_micro 0: must be at least 1"),
        ({"threshold": 2.0}, r"threshold 2.0: must be in \[-1, 1\]"),
    ],
)
def test_bad_loop_b_settings_are_one_line_errors(knobs, message):
    with pytest.raises(RuvdllmError, match=message):
        LoopBConfig(**knobs)


def test_serve_starts_loop_b_only_when_the_config_turns_it_on(tiny_model_dir, tmp_path, monkeypatch):
    from runtime.learning.config import LoopAConfig
    from runtime.learning.loop_a import LoopA
    from runtime.learning.loop_b_service import background

    monkeypatch.setenv("RUVDLLM_DATA", str(tmp_path / "data"))
    models = [open_model(tiny_model_dir, verify="sizes") for _ in range(2)]
    off = tmp_path / "off.toml"
    off.write_text("[loop_b]\nenabled = false\n")
    on = tmp_path / "on.toml"
    on.write_text("[loop_b]\nenabled = true\ninterval = 3600\n")
    with LoopA(LoopAConfig(store=str(tmp_path / "t.db"))) as loop_a:
        assert background(off, models, loop_a) is None
        assert background(on, models, None) is None  # loop B reads loop A's store
        loop = background(on, models, loop_a)
        try:
            assert loop is not None and loop._thread is not None
            learnt = tmp_path / "data" / "banks" / tiny_model_dir.name
            assert all(m.bank_dir == learnt and m.bank is not None for m in models)
            assert loop.read_good(0, 0.5, 10) == []  # through loop A's writer thread
        finally:
            loop.stop()


def test_adapter_names_stay_new_when_the_state_file_is_lost(store_with_feedback, tmp_path):
    """A crash between a bank commit and loop B's state file: the next run must not reuse a name."""
    from dataclasses import replace

    model, store = store_with_feedback
    bank_dir = tmp_path / "learnt"
    LoopB.prepare_bank(bank_dir, Bank.for_model(model.config))
    session = LogitsSession(tiny_model_dir_graph(model), model.config)
    config = replace(FAST, steps=200)
    first = LoopB(config, bank_dir, model.config, model.encode, store.good_feedback, session).run_once()
    (bank_dir / "loop_b.json").unlink()
    second = LoopB(config, bank_dir, model.config, model.encode, store.good_feedback, session).run_once()
    assert second.read == 6  # the mark was lost with the state: everything is read again
    if first.trained[0].kept:
        assert second.trained[0].name != first.trained[0].name
    Bank.load(bank_dir)  # and the bank is whole


@pytest.mark.parametrize("prompts", [True, False])
def test_loop_b_trains_on_the_prompts_too_never_on_the_check_examples(store_with_feedback, tmp_path, prompts):
    """Whatever the trainer, its job holds the training answers and (train_prompts) the prompts
    after their first block; the check example's answer is in neither."""
    from dataclasses import replace

    from runtime.learning.trainer import SpsaTrainer

    model, store = store_with_feedback
    jobs = []

    class Recording(SpsaTrainer):
        def train(self, job):
            jobs.append(job)
            return super().train(job)

    bank_dir = tmp_path / "learnt"
    LoopB.prepare_bank(bank_dir, Bank.for_model(model.config))
    session = LogitsSession(tiny_model_dir_graph(model), model.config)
    config = replace(FAST, steps=2, train_prompts=prompts)
    trainer = Recording(session, config.steps, config.batch, config.lr, config.epsilon)
    LoopB(
        config, bank_dir, model.config, model.encode, store.good_feedback, session, trainer=trainer
    ).run_once()

    (job,) = jobs
    prompt, block = tuple(model.encode(PROMPT)), model.config.block_size
    assert len(prompt) > block  # the tiny tokenizer leaves a window after the first block
    answers = [(c, t) for c, t in job.examples if c == prompt]
    windows = [(c, t) for c, t in job.examples if c != prompt]
    assert len(answers) == 5  # six examples, every 4th kept out for the check
    assert windows == ([(prompt[:block], prompt[block:])] * 5 if prompts else [])
    examples = examples_from(
        store.good_feedback(0, 0.5, 100), model.encode, Bank.load(bank_dir).timestep_groups
    )
    (check,) = validation_split(examples)[1]
    assert check.target not in {tuple(t) for _, t in answers}
