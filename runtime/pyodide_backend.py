"""The runtime inside Pyodide: the model facade (runtime/model.py) built from bridges to the page's
JavaScript — a Backend whose every forward is one call into onnxruntime-web, the page's tokenizer
and its pattern index — and `WebSession`, the worker's handle on it (web/js/worker.js).

The JavaScript side is `ModelRunner` (web/js/ort_engine.js). It owns everything of size O(d):
the key/value cache, the adapter banks (bound once) and the DGR query rows of the last forward.
Per step Python hands over the chunk — ids, positions, block ids, output offset and the adapter
weights, O(S·slots) numbers — and gets back the top-k candidates, logsumexp and entropy,
O(S'·top_k) numbers. A query row crosses only for a position that retrieves, and the pattern
search runs in JavaScript (`JsPatternIndex`), not in pure Python.

The sampler is synchronous Python; it waits for onnxruntime-web's promises with
`pyodide.ffi.run_sync`, which needs JavaScript Promise Integration and a call that entered Python
through `callPromising` (web/js/worker.js does).

Standard library plus Pyodide's `pyodide.ffi`, imported lazily so that this module also imports
(for reading) on CPython.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from runtime.answer_store import model_answer_store
from runtime.artifact import ArtifactConfig, adapter_a, adapter_b, load_config
from runtime.backend import Chunk, StepOutput
from runtime.control import AdapterControl
from runtime.generate import GenerationResult
from runtime.memory_plan import DeviceLimits, check_fits, forward_in_pieces, piece_rows
from runtime.model import DiffusionModel, read_bank
from runtime.settings import acceptance_that_runs, check_acceptance, settings_from
from runtime.talora import group_names, talora_weights


def _ffi():
    from pyodide import ffi  # only inside Pyodide

    return ffi


def _rows(flat: Sequence, width: int) -> list:
    return [flat[r * width : (r + 1) * width] for r in range(len(flat) // width)] if width else []


def _flat_list(js_typed_array) -> list:
    """A JavaScript typed array as a Python list, in one copy (buffer protocol, no per-element calls)."""
    return js_typed_array.to_py().tolist()


class PyodideBackend:
    """runtime.backend.Backend over a JavaScript ModelRunner. A chunk longer than `rows` (a long
    prompt) is read in pieces where that is exact (runtime/memory_plan.py), each a forward the
    page can stop, with `runner.prefilled(rows done, rows in all)` after each."""

    def __init__(self, config: ArtifactConfig, runner, rows: int):
        self.config = config
        self._runner = runner
        self.rows = rows
        self.forward_ms = 0.0  # Python-side time per forward, crossings included
        self.forwards = 0

    def forward(self, chunk: Chunk) -> StepOutput:
        if len(chunk) <= self.rows:
            return self._forward(chunk)
        return forward_in_pieces(self._forward, self.commit, self.cached(), chunk, self.rows, self._prefilled)

    def _prefilled(self, done: int, total: int) -> None:
        self._runner.prefilled(done, total)

    def _forward(self, chunk: Chunk) -> StepOutput:
        ffi = _ffi()
        started = time.perf_counter()
        weights = [w for row in chunk.adapter_weights for w in row]  # [S * slots], row-major
        out = ffi.run_sync(
            self._runner.forward(
                ffi.to_js(chunk.input_ids),
                ffi.to_js(chunk.position_ids),
                ffi.to_js(chunk.block_ids),
                chunk.output_offset,
                ffi.to_js(weights),
                None if chunk.adapter_gate is None else ffi.to_js(chunk.adapter_gate),
            )
        )
        k = out.topK
        result = StepOutput(
            topk_ids=_rows(_flat_list(out.topkIds), k),
            topk_logits=_rows(_flat_list(out.topkLogits), k),
            logsumexp=_flat_list(out.logsumexp),
            entropy=_flat_list(out.entropy),
            query=self._query,
        )
        self.forward_ms += (time.perf_counter() - started) * 1e3
        self.forwards += 1
        return result

    def _query(self, row: int) -> list[float]:
        return _flat_list(self._runner.query(row))

    def commit(self, keep: int) -> None:
        self._runner.commit(keep)

    def reset(self) -> None:
        self._runner.reset()

    def cached(self) -> int:
        return int(self._runner.cached())


class JsPatternIndex:
    """runtime.index.PatternIndex over a JavaScript exact cosine index (web/js/pattern_index.js):
    O(N·d) per search at native speed instead of in pure Python; the same results as
    runtime.index.ExactIndex (float64 sums, ties to the earlier pattern)."""

    def __init__(self, js_index, dim: int):
        self._js = js_index
        self.dim = dim
        self._count = 0

    def add(self, vectors: Sequence[Sequence[float]], slots: Sequence[int]) -> None:
        ffi = _ffi()
        flat = [float(x) for vector in vectors for x in vector]
        if len(flat) != self.dim * len(slots):
            raise ValueError(f"{len(flat)} values for {len(slots)} patterns of dimension {self.dim}")
        self._js.add(ffi.to_js(flat), ffi.to_js([int(s) for s in slots]))
        self._count += len(slots)

    def search(self, vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        found = self._js.search(_ffi().to_js(list(vector)), k).to_py()
        return [(int(slot), float(sim)) for slot, sim in found]

    def __len__(self) -> int:
        return self._count


class JsTokenizer:
    """runtime.model.Tokenizer over the page's JavaScript tokenizer (web/js/tokenizer.js): one
    crossing per call."""

    def __init__(self, js_tokenizer):
        self._js = js_tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        return SimpleNamespace(ids=list(self._js.encodeIds(text, add_special_tokens).to_py()))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._js.decodeIds(_ffi().to_js(list(ids)), skip_special_tokens))

    def id_to_token(self, token: int) -> str:
        return str(self._js.idToToken(token))


def open_web_model(directory: str, js_tokenizer, js_index=None) -> DiffusionModel:
    """The runtime's model facade over the page's JavaScript: its tokenizer and pattern index
    here, the onnxruntime-web backend attached later (`WebSession.attach`). The config and the bank
    are read from Pyodide's file system, and the answer store when the model has one."""
    directory = Path(directory)
    config = load_config(directory)
    bank, bank_dir = read_bank(directory)
    if bank is not None:
        bank.check_model(config, str(bank_dir))
    index = None
    if bank is not None and bank.pattern_slots and js_index is not None:
        index = JsPatternIndex(js_index, bank.hidden_size)
        index.add([bank.pattern(i) for i in range(len(bank.pattern_slots))], bank.pattern_slots)
    answers = model_answer_store(directory, config.vocab_size)
    return DiffusionModel(directory, config, JsTokenizer(js_tokenizer), None, bank, index, answers=answers)


class WebSession:
    """The worker's handle on the model (web/js/worker.js): the facade from `open_web_model`, and
    what the page exchanges with it as plain dicts — the bank's tensors (bound once into the
    onnxruntime-web session, which is why the runner is attached after), the bank's description,
    and generations whose step events carry the adapters they retrieved."""

    def __init__(self, directory: str, js_tokenizer, js_index=None):
        self.model = open_web_model(directory, js_tokenizer, js_index)
        self.limits: DeviceLimits | None = None

    @property
    def config(self) -> ArtifactConfig:
        return self.model.config

    def attach(self, runner, limits=None) -> dict:
        """Run forwards on `runner` within `limits` (DeviceLimits' fields, from the page; None: no
        limit); returns the limits in effect, the prompt's rows per forward resolved."""
        limits = limits.to_py() if hasattr(limits, "to_py") else limits
        self.limits = DeviceLimits(**limits) if limits else None
        rows = piece_rows(self.config, self.limits) if self.limits else self.config.max_position
        self.model.backend = PyodideBackend(self.model.config, runner, rows)
        return {**(limits or {}), "piece_rows": rows}

    def warm_up(self) -> float:
        """The facade's warm-up before the page says "ready": compiles kernels and allocates
        buffers (the first WebGPU run is many times slower than the next), and proves the graph
        runs."""
        return self.model.warm_up()

    def bank_tensors(self) -> dict:
        """adapter.{target}.a/.b as flat float32 arrays (bound once in JavaScript); empty without a bank."""
        bank = self.model.bank
        if bank is None:
            return {}
        tensors = {}
        for target in bank.targets:
            tensors[adapter_a(target)], tensors[adapter_b(target)] = bank.assemble(target)
        return tensors

    def bank_info(self) -> dict:
        """Slot names (None for an empty slot), group names and pattern count, for the page."""
        bank = self.model.bank
        names: list[str | None] = [None] * self.config.adapter_slots
        groups = bank.groups if bank is not None else len(self.config.timestep_groups) - 1
        for adapter in bank.adapters.values() if bank is not None else ():
            names[adapter.slot] = adapter.name
        return {
            "adapters": names,
            "groups": list(group_names(groups)),
            "patterns": 0 if self.model.index is None else len(self.model.index),
            "present": bank is not None,
        }

    def generate(self, prompt: str, options: dict, seed: int, on_step: Callable | None = None) -> dict:
        """The facade's generate for the page: settings from its form (runtime.settings.INPUTS),
        each step as a `step_event` dict, and the bridge's timings in the summary."""
        model, backend = self.model, self.model.backend
        settings = settings_from(options)
        ids = model.prompt_ids(prompt)
        plan = model.check(len(ids), settings)
        check_acceptance(options.get("acceptance"), plan.sampler)
        if self.limits is not None:  # refused now, in one line, rather than by the engine minutes later
            check_fits(self.config, self.limits, plan.sampler, len(ids), settings.length, plan.span)
        control = model.control(settings)  # kept, so that each step can name what DGR retrieved
        ms_before, n_before = backend.forward_ms, backend.forwards

        def to_page(event):
            on_step(step_event(event, control))

        done = model.generate(
            ids, settings, seed, on_step=to_page if on_step is not None else None, control=control
        )
        summary = result_summary(done.result, backend.forward_ms - ms_before, backend.forwards - n_before)
        # said beside the sampler; the plan already holds the sampler that ran (auto resolved)
        acceptance = acceptance_that_runs(replace(settings, sampler=plan.sampler))
        return {**summary, "acceptance": acceptance, "prompt_ids": ids, "text": done.text}

    def generate_js(self, prompt: str, options, seed: int, on_step):
        """`generate` for a JavaScript caller: converts the arguments in and the dicts out."""
        import js

        ffi = _ffi()

        def to_js(value):
            return ffi.to_js(value, dict_converter=js.Object.fromEntries)

        options = options.to_py() if hasattr(options, "to_py") else options
        return to_js(
            self.generate(str(prompt), dict(options), int(seed), lambda event: on_step(to_js(event)))
        )


def step_event(event, control: AdapterControl) -> dict:
    """One step for the page: O(L + retrieved·slots) numbers. Masked positions are -1; `retrieved`
    pairs a generated position with its DGR slot weights (slots [G, K))."""
    offset = event.offset  # control.retrieved's keys are relative to it
    groups = control.groups
    talora = (
        talora_weights(event.t, control.talora)[:groups] if control.talora is not None else [0.0] * groups
    )
    return {
        "span": event.span,
        "step": event.step,
        "t": event.t,
        "committed": [[p, t] for p, t in sorted(event.committed.items())],
        "tokens": [-1 if t is None else t for t in event.tokens],
        "retrieved": [[p, control.retrieved.get(p - offset, [])] for p in event.retrieved],
        "talora": talora,
        "forward_ms": event.forward_ms,
        "drafted": event.drafted,  # the verified sampler's drafts checked by this forward
        "first_row": event.first_row,  # what output row 0 predicted (None: the span's first position)
        # for the page's trajectory record (learning loop A, web/js/trajectory_store.js)
        "entropy": event.entropy,
        "confidence": event.confidence,
        "patterns": [[int(p), float(s)] for p, s in event.patterns],
    }


def result_summary(result: GenerationResult, bridge_ms: float, forwards: int) -> dict:
    return {
        "tokens": result.tokens,
        "finish_reason": result.finish_reason,
        "steps": result.steps,
        "prompt_tokens": result.prompt_tokens,
        "wall_ms": result.wall_ms,
        "forward_ms": result.forward_ms,  # sampler's view: Python-side forwards
        "bridge_forward_ms": bridge_ms,
        "forwards": forwards,
        "tokens_per_forward": result.tokens_per_forward,  # the verified sampler's mean accepted length
        "sampler": result.sampler,  # the sampler that ran (the form's "auto" resolved for the model)
    }
