"""The worker's session (runtime/pyodide_backend.py) on CPython, its JavaScript replaced by thin
stand-ins over the CPython pieces (onnxruntime, `tokenizers`, the exact index): the same facade, so
the same tokens as runtime.cpython_model.open_model, with step events that name the adapters DGR
retrieved. The browser itself runs it in tests/web/test_app.py."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from runtime import artifact, pyodide_backend
from runtime.backend import Chunk
from runtime.cpython_model import load_tokenizer, open_model
from runtime.index import ExactIndex
from runtime.ort_backend import OrtBackend, OrtOptions
from runtime.settings import settings_from
from ruvdllm.errors import RuvdllmError
from tests.runtime.tiny_artifact import random_bank

ONE_THREAD = OrtOptions(intra_op_threads=1)


class Typed(list):
    """A JavaScript typed array as Pyodide hands it over (`.to_py()`, then a buffer's `.tolist()`)."""

    def to_py(self):
        return self

    def tolist(self):
        return list(self)


class Runner:
    """web/js/ort_engine.js ModelRunner's interface over the CPython onnxruntime backend."""

    def __init__(self, backend: OrtBackend):
        self.backend = backend
        self.last = None
        self.rows = []  # rows of every forward
        self.prefill = []  # (rows done, rows in all) after each piece of a long prompt

    def forward(self, ids, positions, blocks, offset, weights, gate=None):
        slots = self.backend.config.adapter_slots
        rows = [list(weights[i * slots : (i + 1) * slots]) for i in range(len(ids))]
        gate = None if gate is None else list(gate)
        self.rows.append(len(ids))
        self.last = self.backend.forward(Chunk(list(ids), list(positions), list(blocks), offset, rows, gate))
        flat = lambda rows: Typed(x for row in rows for x in row)  # noqa: E731
        return SimpleNamespace(
            topK=len(self.last.topk_ids[0]),
            topkIds=flat(self.last.topk_ids),
            topkLogits=flat(self.last.topk_logits),
            logsumexp=Typed(self.last.logsumexp),
            entropy=Typed(self.last.entropy),
        )

    def query(self, row):
        return Typed(self.last.query(row))

    def commit(self, keep):
        self.backend.commit(keep)

    def reset(self):
        self.backend.reset()

    def cached(self):
        return self.backend.cached()

    def prefilled(self, done, total):
        self.prefill.append((done, total))


class Tokenizer:
    """web/js/tokenizer.js's positional forms over `tokenizers`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encodeIds(self, text, add_special_tokens):
        return Typed(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decodeIds(self, ids, skip_special_tokens):
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def idToToken(self, token):
        return self.tokenizer.id_to_token(token)


class PatternIndex:
    """web/js/pattern_index.js over the exact standard-library index."""

    def __init__(self, dim):
        self.index = ExactIndex(dim)

    def add(self, flat, slots):
        self.index.add(
            [flat[i * self.index.dim : (i + 1) * self.index.dim] for i in range(len(slots))], slots
        )

    def search(self, vector, k):
        return Typed([slot, sim] for slot, sim in self.index.search(list(vector), k))


@pytest.fixture
def session(tiny_model_copy, monkeypatch):
    """A WebSession over the tiny model with a bank of adapters and DGR patterns."""
    ffi = SimpleNamespace(run_sync=lambda value: value, to_js=lambda value, **_: value)
    monkeypatch.setattr(pyodide_backend, "_ffi", lambda: ffi)
    config = artifact.load_config(tiny_model_copy)
    random_bank(config, seed=5).save(tiny_model_copy / "banks")
    artifact.write_manifest(tiny_model_copy)
    tokenizer = load_tokenizer(tiny_model_copy / artifact.TOKENIZER_NAME, config)
    web = pyodide_backend.WebSession(
        str(tiny_model_copy), Tokenizer(tokenizer), PatternIndex(config.hidden_size)
    )
    backend = OrtBackend(tiny_model_copy / artifact.GRAPH_NAME, config, ONE_THREAD)
    backend.set_bank(web.model.bank)  # the page binds bank_tensors() into its session the same way
    web.attach(Runner(backend))
    web.runner = Runner(backend)  # for tests that attach it with limits
    return web


def test_the_session_generates_what_cpython_generates(session, tiny_model_copy):
    page_settings = {"length": 8, "block_size": 4, "stop_at_eos": False, "dgr_strategy": "entropy"}
    assert session.warm_up() > 0
    events = []
    done = session.generate("Hello", page_settings, seed=3, on_step=events.append)

    cpython = open_model(tiny_model_copy, options=ONE_THREAD)
    expected = cpython.generate("Hello", settings_from(page_settings), seed=3)
    assert done["tokens"] == expected.tokens and done["text"] == expected.text
    assert done["prompt_ids"] == cpython.encode("Hello") and done["steps"] == expected.result.steps
    assert done["forwards"] == len(events) == expected.result.steps
    assert [e["tokens"] for e in events] == [
        [-1 if t is None else t for t in e.tokens] for e in expected.trace
    ]
    assert [[p for p, _ in e["retrieved"]] for e in events] == [e.retrieved for e in expected.trace]
    retrieved = [weights for e in events for _, weights in e["retrieved"]]
    dgr_slots = session.config.adapter_slots - 3  # slots [G, K) after the 3 TALoRA groups
    assert retrieved and all(len(w) == dgr_slots and any(w) for w in retrieved)
    assert all(len(e["talora"]) == 3 for e in events)
    assert done["sampler"] == "bd3lm"  # auto, on a model without a conversion adapter


def test_the_page_runs_the_verified_sampler(tiny_switch_model_dir, monkeypatch):
    """The adapter gate crosses to JavaScript: the page's verified tokens are CPython's (and the AR
    model's)."""
    ffi = SimpleNamespace(run_sync=lambda value: value, to_js=lambda value, **_: value)
    monkeypatch.setattr(pyodide_backend, "_ffi", lambda: ffi)
    config = artifact.load_config(tiny_switch_model_dir)
    tokenizer = load_tokenizer(tiny_switch_model_dir / artifact.TOKENIZER_NAME, config)
    web = pyodide_backend.WebSession(
        str(tiny_switch_model_dir), Tokenizer(tokenizer), PatternIndex(config.hidden_size)
    )
    web.attach(Runner(OrtBackend(tiny_switch_model_dir / artifact.GRAPH_NAME, config, ONE_THREAD)))
    page_settings = {"sampler": "verified", "length": 12, "block_size": 4, "stop_at_eos": False}
    done = web.generate("Hello", page_settings, seed=0)
    cpython = open_model(tiny_switch_model_dir, options=ONE_THREAD)
    assert done["tokens"] == cpython.generate("Hello", settings_from(page_settings)).tokens
    ar = cpython.generate("Hello", settings_from({**page_settings, "sampler": "ar"}))
    assert done["tokens"] == ar.tokens


def test_the_pages_auto_verifies_with_dgr_like_cpython(tiny_switch_model_dir, tmp_path, monkeypatch):
    """The page's default sampler resolves as on CPython (runtime/settings.py is shared): verified on
    a model with the switch, its drafter rows retrieving from the bank, each retrieval shown with
    its slot weights; --steps-like settings choose BD3LM."""
    ffi = SimpleNamespace(run_sync=lambda value: value, to_js=lambda value, **_: value)
    monkeypatch.setattr(pyodide_backend, "_ffi", lambda: ffi)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_switch_model_dir, model_dir)
    config = artifact.load_config(model_dir)
    random_bank(config, seed=5).save(model_dir / "banks")
    artifact.write_manifest(model_dir)
    tokenizer = load_tokenizer(model_dir / artifact.TOKENIZER_NAME, config)
    web = pyodide_backend.WebSession(str(model_dir), Tokenizer(tokenizer), PatternIndex(config.hidden_size))
    backend = OrtBackend(model_dir / artifact.GRAPH_NAME, config, ONE_THREAD)
    backend.set_bank(web.model.bank)
    web.attach(Runner(backend))
    page_settings = {"length": 12, "block_size": 4, "stop_at_eos": False, "dgr_strategy": "entropy"}
    events = []
    done = web.generate("Hello", page_settings, seed=0, on_step=events.append)
    cpython = open_model(model_dir, options=ONE_THREAD)
    expected = cpython.generate("Hello", settings_from(page_settings))
    ar = cpython.generate("Hello", settings_from({**page_settings, "sampler": "ar"}))
    assert done["sampler"] == expected.result.sampler == "verified"
    assert done["tokens"] == expected.tokens == ar.tokens
    assert [[p for p, _ in e["retrieved"]] for e in events] == [e.retrieved for e in expected.trace]
    retrieved = [weights for e in events for _, weights in e["retrieved"]]
    assert retrieved and all(len(w) == config.adapter_slots - 3 and any(w) for w in retrieved)
    assert web.generate("Hello", {**page_settings, "steps": 2}, seed=0)["sampler"] == "bd3lm"


def test_bank_info_and_tensors_for_the_page(session):
    info = session.bank_info()
    assert info["present"] and info["patterns"] == 32 and len(info["groups"]) == 3
    assert info["adapters"] == [f"slot{i}" for i in range(session.config.adapter_slots)]
    tensors = session.bank_tensors()
    assert set(tensors) == {
        name
        for target in session.model.bank.targets
        for name in (artifact.adapter_a(target), artifact.adapter_b(target))
    }


def test_the_pages_settings_are_checked(session):
    with pytest.raises(RuvdllmError, match="settings: unknown colour"):
        session.generate("Hello", {"colour": "blue"}, seed=0)
    with pytest.raises(RuvdllmError, match="prompt: empty"):
        session.generate("  ", {}, seed=0)
    with pytest.raises(RuvdllmError, match="DGR strategy 'always'"):
        session.generate("Hello", {"dgr_strategy": "always"}, seed=0)


LONG_PROMPT = "word " * 60


def test_a_long_prompt_is_read_in_pieces_with_the_same_tokens(session, tiny_model_copy):
    limits = session.attach(session.runner, {"budget": 1 << 30, "piece_rows": 16})
    assert limits["piece_rows"] == 16
    page_settings = {"length": 8, "block_size": 4, "stop_at_eos": False}
    done = session.generate(LONG_PROMPT, page_settings, seed=0)
    prompt = len(done["prompt_ids"])
    assert prompt > 48
    cuts = list(range(16, prompt, 16))
    assert session.runner.prefill == [(cut, prompt + 4) for cut in cuts]
    assert session.runner.rows[: len(cuts)] == [16] * len(cuts)

    expected = open_model(tiny_model_copy, options=ONE_THREAD).generate(
        LONG_PROMPT, settings_from(page_settings), seed=0
    )
    assert done["tokens"] == expected.tokens


def test_what_the_device_cannot_hold_is_refused_before_any_forward(session):
    session.attach(session.runner, {"budget": 1_000_000, "piece_rows": 16})
    with pytest.raises(RuvdllmError, match="in one MDLM forward need about .*, more than this device allows"):
        session.generate(LONG_PROMPT, {"sampler": "mdlm", "length": 16}, seed=0)
    assert session.runner.rows == []
    assert session.generate(LONG_PROMPT, {"length": 4, "block_size": 4}, seed=0)["tokens"]
