"""runtime/row_cost.py: what one more row costs a forward here, measured on a real backend, kept
across runs, and what sampler auto makes of it (runtime/settings.py, DiffusionModel.concrete)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import artifact, ort_backend
from runtime.cpython_model import open_model
from runtime.ort_backend import ROW_COST_FILE, OrtBackend, OrtOptions
from runtime.row_cost import DRAFTING_PAYS_BELOW, REPEATS, ROWS, RowCost, kept, measure
from runtime.verify import cache_root

ONE_THREAD = OrtOptions(intra_op_threads=1)


@given(
    one=st.floats(0.01, 1e3),
    rows=st.integers(2, 32),
    slope=st.floats(0.0, 10.0),
)
def test_extra_row_is_the_cost_of_one_more_row_over_a_one_row_forward(one, rows, slope):
    cost = RowCost(one_row_ms=one, rows=rows, rows_ms=one * (1 + slope * (rows - 1)))
    assert math.isclose(cost.extra_row, slope, rel_tol=1e-9, abs_tol=1e-9)


def test_a_wider_forward_measured_faster_costs_nothing_more():
    assert RowCost(one_row_ms=2.0, rows=5, rows_ms=1.5).extra_row == 0.0


class Counting:
    """A real backend, its forwards counted."""

    def __init__(self, backend):
        self.backend, self.config, self.chunks = backend, backend.config, []

    def forward(self, chunk):
        self.chunks.append(len(chunk))
        return self.backend.forward(chunk)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def test_measure_times_one_and_five_rows_after_a_prompt_and_leaves_the_cache_empty(tiny_switch_model_dir):
    config = artifact.load_config(tiny_switch_model_dir)
    backend = Counting(OrtBackend(tiny_switch_model_dir / artifact.GRAPH_NAME, config, ONE_THREAD))
    cost = measure(backend)
    assert backend.chunks[1:] == [1, ROWS] * REPEATS  # interleaved, after one prompt forward
    assert cost.rows == ROWS and cost.one_row_ms > 0 and cost.rows_ms > 0
    assert backend.cached() == 0
    print(f"tiny model, one thread: {cost} -> extra row {cost.extra_row:.3f}")


def test_kept_measures_once_and_reads_the_record_after(tmp_path):
    path = tmp_path / "cache" / "row_cost.json"
    calls = []

    def measure_now():
        calls.append(1)
        return RowCost(10.0, 5, 30.0)

    assert kept(path, "machine a", measure_now) == RowCost(10.0, 5, 30.0)
    assert kept(path, "machine a", measure_now) == RowCost(10.0, 5, 30.0)
    assert len(calls) == 1
    assert kept(path, "machine b", lambda: RowCost(1.0, 5, 1.2)).extra_row == pytest.approx(0.05)
    assert set(json.loads(path.read_text())) == {"machine a", "machine b"}


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[1, 2]",
        '{"k": 3}',
        '{"k": {"one_row_ms": "x", "rows": 5, "rows_ms": 2}}',
        '{"k": {}}',
    ],
)
def test_a_damaged_record_is_measured_again_and_rewritten(tmp_path, content):
    path = tmp_path / "row_cost.json"
    path.write_text(content)
    assert kept(path, "k", lambda: RowCost(2.0, 5, 4.0)) == RowCost(2.0, 5, 4.0)
    assert json.loads(path.read_text())["k"] == {"one_row_ms": 2.0, "rows": 5, "rows_ms": 4.0}


def test_nothing_measured_is_nothing_recorded_and_an_unwritable_cache_is_no_error(tmp_path):
    path = tmp_path / "row_cost.json"
    assert kept(path, "k", lambda: None) is None and not path.exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert kept(blocked / "row_cost.json", "k", lambda: RowCost(2.0, 5, 4.0)) == RowCost(2.0, 5, 4.0)


def test_the_backend_records_per_graph_and_threads_and_does_not_measure_on_a_busy_machine(
    tiny_switch_model_dir, monkeypatch
):
    config = artifact.load_config(tiny_switch_model_dir)
    graph = tiny_switch_model_dir / artifact.GRAPH_NAME
    monkeypatch.setattr(ort_backend, "machine_is_idle", lambda: False)
    one = OrtBackend(graph, config, ONE_THREAD)
    assert one.row_cost() is None and not (cache_root() / ROW_COST_FILE).exists()
    monkeypatch.setattr(ort_backend, "machine_is_idle", lambda: True)
    measured = one.row_cost()
    records = json.loads((cache_root() / ROW_COST_FILE).read_text())
    assert list(records) == [one.row_cost_key()] and "cpu 1 threads" in one.row_cost_key()
    monkeypatch.setattr(ort_backend, "machine_is_idle", lambda: False)  # a record is read even when busy
    assert one.row_cost() == measured
    two = OrtBackend(graph, config, OrtOptions(intra_op_threads=2))
    assert two.row_cost_key() != one.row_cost_key() and two.row_cost() is None


def record(model_dir, extra_row: float, options: OrtOptions = ONE_THREAD) -> None:
    """Record a row cost for the model's graph on this machine, as a CPU with that slope would
    have measured it."""
    backend = OrtBackend(model_dir / artifact.GRAPH_NAME, artifact.load_config(model_dir), options)
    kept(
        cache_root() / ROW_COST_FILE,
        backend.row_cost_key(),
        lambda: RowCost(10.0, 5, 10 * (1 + 4 * extra_row)),
    )


@pytest.mark.parametrize(
    "extra_row, expected",
    [(DRAFTING_PAYS_BELOW - 0.01, "verified"), (DRAFTING_PAYS_BELOW, "ar"), (0.35, "ar")],
)
def test_auto_runs_ar_where_rows_are_expensive_and_gives_the_ar_models_tokens(
    tiny_switch_model_dir, extra_row, expected
):
    from runtime.settings import GenerationSettings

    record(tiny_switch_model_dir, extra_row)
    model = open_model(tiny_switch_model_dir, options=ONE_THREAD)
    assert model.extra_row_cost() == pytest.approx(extra_row)
    settings = GenerationSettings(length=8, stop_at_eos=False)
    assert model.concrete(settings).sampler == expected
    done = model.generate("Hello", settings)
    assert done.result.sampler == expected
    assert (
        done.tokens
        == model.generate("Hello", GenerationSettings(length=8, stop_at_eos=False, sampler="ar")).tokens
    )
    # an acceptance rule named by the user asks for drafts: verified whatever the rows cost
    assert model.concrete(settings, "exact").sampler == "verified"
    assert model.concrete(settings, "auto").sampler == expected
    # diffusion-only settings and explicit samplers are not the row cost's to decide
    assert model.concrete(GenerationSettings(steps=2)).sampler == "bd3lm"
    assert model.concrete(GenerationSettings(sampler="verified")).sampler == "verified"


def test_the_row_cost_is_asked_once_per_model_and_not_for_a_model_without_the_switch(
    tiny_switch_model_dir, tiny_switchless_model_dir
):
    from runtime.settings import GenerationSettings

    model = open_model(tiny_switch_model_dir, options=ONE_THREAD)
    asked = []
    row_cost = model.backend.row_cost
    model.backend.row_cost = lambda: asked.append(1) or row_cost()
    for _ in range(3):
        model.concrete(GenerationSettings())
    assert len(asked) == 1
    plain = open_model(tiny_switchless_model_dir, options=ONE_THREAD)
    plain.backend.row_cost = lambda: pytest.fail("no verified sampler to weigh")
    assert plain.concrete(GenerationSettings()).sampler == "bd3lm"


def test_writing_drops_the_records_of_models_since_deleted(tiny_switch_model_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(ort_backend, "machine_is_idle", lambda: True)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_switch_model_dir, copy)
    config = artifact.load_config(copy)
    doomed = OrtBackend(copy / artifact.GRAPH_NAME, config, ONE_THREAD)
    doomed.row_cost()
    kept_key = doomed.row_cost_key()
    shutil.rmtree(copy)
    assert list(json.loads((cache_root() / ROW_COST_FILE).read_text())) == [kept_key]
    live = OrtBackend(tiny_switch_model_dir / artifact.GRAPH_NAME, config, ONE_THREAD)
    live.row_cost()
    assert list(json.loads((cache_root() / ROW_COST_FILE).read_text())) == [live.row_cost_key()]
