"""Loop A on the tiny exported model with a bank of DGR patterns: what a generation records, that
retrieval is unchanged until feedback exists, and how feedback moves it."""

import json
import subprocess
import sys
import threading

import pytest

from runtime.cpython_model import open_model
from runtime.dgr import DgrConfig
from runtime.index import ExactIndex
from runtime.learning.config import LoopAConfig
from runtime.learning.loop_a import LoopA, UnknownCompletion
from runtime.learning.scores import SCORES_NAME
from runtime.learning.sqlite_store import SqliteStore
from runtime.learning.trajectory import make_feedback
from runtime.ort_backend import OrtOptions
from runtime.settings import GenerationSettings

ONE_THREAD = OrtOptions(intra_op_threads=1)
EAGER = GenerationSettings(  # retrieve at every step, so that patterns are used
    length=8, stop_at_eos=False, dgr_config=DgrConfig(strategy="entropy", threshold=0.0)
)


def generate_recorded(loop, model, prompt="Hello there"):
    ids = model.encode(prompt)
    control = model.control(EAGER)
    done = model.generate(ids, EAGER, control=control)
    return done, loop.record_completion(model, ids, EAGER, done, control, prompt=prompt)


def used_patterns(done) -> list[list[int]]:
    return [[p for p, _ in e.patterns] for e in done.trace]


def test_a_generation_is_recorded_with_its_steps_patterns_and_embedding(banked_model_dir, tmp_path):
    model = open_model(banked_model_dir, options=ONE_THREAD)
    with LoopA(LoopAConfig(store=str(tmp_path / "t.db"))) as loop:
        loop.attach(model)
        done, completion_id = generate_recorded(loop, model)
    stored = SqliteStore(tmp_path / "t.db").trajectory(completion_id)
    assert stored.answer == done.text and stored.answer_tokens == done.tokens
    assert stored.prompt == "Hello there" and stored.prompt_tokens == model.encode("Hello there")
    assert stored.bank == str(banked_model_dir / "banks") and stored.model == banked_model_dir.name
    assert len(stored.embedding) == model.config.hidden_size
    assert abs(sum(x * x for x in stored.embedding) - 1.0) < 1e-3  # the L2-normalised query row
    assert len(stored.steps) == len(done.trace) == stored.timings["steps"]
    for step, event in zip(stored.steps, done.trace, strict=True):
        assert step["t"] == event.t and step["committed"] == len(event.committed)
        assert abs(sum(step["talora"]) - 1.0) < 1e-6 and step["entropy"] > 0.0
        assert 0.0 < step["confidence"] <= 1.0
    assert stored.patterns and stored.patterns == sorted({p for ps in used_patterns(done) for p in ps})
    assert stored.settings["dgr_config"]["strategy"] == "entropy"


def test_retrieval_is_unchanged_until_feedback_then_moves(banked_model_dir, tmp_path):
    plain = open_model(banked_model_dir, options=ONE_THREAD)
    reference = plain.generate("Hello there", EAGER)
    model = open_model(banked_model_dir, options=ONE_THREAD)
    config = LoopAConfig(store=str(tmp_path / "t.db"), score_rate=1.0, score_floor=-0.5)
    with LoopA(config) as loop:
        loop.attach(model)
        done, completion_id = generate_recorded(loop, model)
        # No feedback yet: same tokens, same patterns as a model without loop A.
        assert done.tokens == reference.tokens and used_patterns(done) == used_patterns(reference)
        result = loop.feedback(make_feedback(completion_id, down=True))
        assert result.value == -1.0 and result.patterns == sorted(
            {p for ps in used_patterns(done) for p in ps}
        )
        saved = json.loads((banked_model_dir / "banks" / SCORES_NAME).read_text())
        assert {int(p) for p in saved["scores"]} == set(result.patterns)
        again, _ = generate_recorded(loop, model)
    # rated -1 with rate 1: below the floor, so no step retrieves those patterns any more
    assert not set(result.patterns) & {p for ps in used_patterns(again) for p in ps}
    with pytest.raises(UnknownCompletion, match="no such completion"):
        LoopA(config).feedback(make_feedback("cmpl-unknown", up=True))


def test_scores_persist_beside_the_bank_across_restarts(banked_model_dir, tmp_path):
    config = LoopAConfig(store=str(tmp_path / "t.db"))
    with LoopA(config) as loop:
        model = open_model(banked_model_dir, options=ONE_THREAD)
        loop.attach(model)
        _, completion_id = generate_recorded(loop, model)
    with LoopA(config, threaded=False) as loop:  # a later process, as `ruvdllm feedback` is
        result = loop.feedback(make_feedback(completion_id, rating=5))
    with LoopA(config) as loop:
        model = open_model(banked_model_dir, options=ONE_THREAD)
        loop.attach(model)
        assert model.scores.active()
        assert all(model.scores.usefulness[p] == pytest.approx(0.2) for p in result.patterns)


def test_an_index_that_cannot_name_patterns_retrieves_the_same(banked_model_dir):
    """The browser's JavaScript index returns slots only: DGR's weights must not depend on it."""
    model = open_model(banked_model_dir, options=ONE_THREAD)
    exact = ExactIndex(model.bank.hidden_size)
    exact.add([model.bank.pattern(i) for i in range(len(model.bank.pattern_slots))], model.bank.pattern_slots)

    class SlotsOnly:
        dim = exact.dim
        search = exact.search
        __len__ = exact.__len__

    model.index = exact
    named = model.generate("Hello there", EAGER)
    model.index = SlotsOnly()
    unnamed = model.generate("Hello there", EAGER)
    assert named.tokens == unnamed.tokens
    assert [e.retrieved for e in named.trace] == [e.retrieved for e in unnamed.trace]
    assert any(e.patterns for e in named.trace) and not any(e.patterns for e in unnamed.trace)


class SlowStore:
    """A real store whose writes wait for a gate: the queue fills behind it."""

    def __init__(self, path, gate):
        self.store, self.gate = SqliteStore(path), gate

    def add_trajectory(self, t):
        self.gate.wait()
        self.store.add_trajectory(t)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_full_queue_drops_new_trajectories_without_blocking(banked_model_dir, tmp_path):
    model = open_model(banked_model_dir, options=ONE_THREAD)
    gate = threading.Event()
    warnings = []
    loop = LoopA(
        LoopAConfig(queue_size=2),
        on_warning=warnings.append,
        open_store=lambda: SlowStore(tmp_path / "t.db", gate),
    )
    loop.attach(model)
    ids = model.encode("Hello")
    control = model.control(EAGER)
    done = model.generate(ids, EAGER, control=control)
    recorded = [loop.record_completion(model, ids, EAGER, done, control) for _ in range(8)]
    # at most one is held by the writer at the gate, two wait in the queue, the rest were dropped
    assert loop.recorder.dropped >= 5 and len(warnings) == 1 and "queue full" in warnings[0]
    gate.set()
    loop.close()
    store = SqliteStore(tmp_path / "t.db")
    kept = [i for i in recorded if store.trajectory(i) is not None]
    # the first two always fit; a later one may too when the writer took one off the queue meanwhile
    assert len(kept) == 8 - loop.recorder.dropped and kept[:2] == recorded[:2]
    assert kept == [i for i in recorded if i in kept]  # in the order they were recorded


EXIT_WITHOUT_CLOSE = """
import sys
from runtime.learning.recorder import Recorder
from runtime.learning.sqlite_store import SqliteStore
from runtime.learning.trajectory import Pending
from runtime.settings import GenerationSettings

recorder = Recorder(lambda: SqliteStore(sys.argv[1]))
for i in range(200):
    recorder.record(Pending(f"cmpl-{i}", 0.0, "m", None, [1], GenerationSettings(), [], "a", [2], "stop", 1.0, prompt="p"))
print(recorder.threaded)
"""


def test_what_is_queued_is_written_at_normal_exit(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(tmp_path / "t.db")], capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr
    assert SqliteStore(tmp_path / "t.db").count() == 200


def test_an_unusable_store_warns_once_and_generation_goes_on(banked_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's directory should be")
    warnings = []
    loop = LoopA(LoopAConfig(store=str(blocker / "t.db")), on_warning=warnings.append)
    model = open_model(banked_model_dir, options=ONE_THREAD)
    loop.attach(model)
    for _ in range(3):
        done, _ = generate_recorded(loop, model)
        assert len(done.tokens) == 8
    loop.close()
    assert len(warnings) == 1 and "not recording trajectories" in warnings[0]
    assert loop.recorder.failed == 3


def test_without_threads_recording_is_synchronous(banked_model_dir, tmp_path):
    """Pyodide cannot start threads: the row is written before `record` returns."""
    loop = LoopA(LoopAConfig(store=str(tmp_path / "t.db")), threaded=False)
    assert not loop.recorder.threaded
    model = open_model(banked_model_dir, options=ONE_THREAD)
    _, completion_id = generate_recorded(loop, model)
    assert SqliteStore(tmp_path / "t.db").trajectory(completion_id) is not None
    loop.close()


WITHOUT_SQLITE = """
import importlib.abc
import sys


class NoSqlite(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("sqlite3", "_sqlite3"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: Pyodide has it unvendored)")
        return None


sys.meta_path.insert(0, NoSqlite())
from runtime.learning.config import LoopAConfig
from runtime.learning.loop_a import LoopA
from runtime.learning.trajectory import Pending, make_feedback
from runtime.settings import GenerationSettings


class MemoryStore:  # what an IndexedDB-backed store does, in a dict
    def __init__(self):
        self.rows, self.feedback = {}, []

    def add_trajectory(self, t):
        self.rows[t.id] = t

    def add_feedback(self, f):
        if f.completion_id not in self.rows:
            raise KeyError(f.completion_id)
        self.feedback.append(f)

    def trajectory(self, completion_id):
        return self.rows.get(completion_id)

    def feedback_for(self, completion_id):
        return [f for f in self.feedback if f.completion_id == completion_id]

    def count(self):
        return len(self.rows)

    def close(self):
        pass


loop = LoopA(LoopAConfig(store="unused.db"), threaded=False, open_store=MemoryStore)
loop.recorder.record(Pending("cmpl-1", 0.0, "m", None, [1], GenerationSettings(), [], "a", [2], "stop", 1.0, prompt="p"))
print(loop.feedback(make_feedback("cmpl-1", up=True)).value, "sqlite3" in sys.modules)
"""


def test_loop_a_runs_over_another_store_without_sqlite():
    """The browser will back the store with IndexedDB: nothing else in loop A may need sqlite3."""
    run = subprocess.run([sys.executable, "-c", WITHOUT_SQLITE], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1.0", "False"]
