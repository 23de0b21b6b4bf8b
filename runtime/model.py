"""The model facade: a model's config, tokenizer, inference backend, adapter bank and pattern index
behind one `generate` call. The same class runs on CPython and in Pyodide; only what it is built
from differs:

    CPython  runtime/cpython_model.py    open_model(directory): verified files, `tokenizers`,
                                         onnxruntime (runtime/ort_backend.py), hnswlib
    Pyodide  runtime/pyodide_backend.py  bridges to onnxruntime-web, the page's tokenizer and a
                                         JavaScript pattern index

    model = open_model("path/to/model")      # or bank="my-bank/", options=OrtOptions(...)
    done = model.generate("Hello", GenerationSettings(length=32), seed=0, on_step=print)
    done.text, done.tokens, done.finish_reason, done.trace
    chat_prompt(model, [{"role": "user", "content": "Hello"}])   # runtime/chat_template.py (CPython)

One sequence runs at a time per model (the backend holds its key/value cache); `generate` takes a
lock, so threads may share a model and are served one after another. Servers wanting parallelism
open one model per worker.

Standard library only: the browser loads this module.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from runtime.answer_store import AnswerStore
from runtime.artifact import AR_GRAPH_NAME, ArtifactConfig
from runtime.backend import Backend
from runtime.banks import BANK_JSON, BANKS_DIR, Bank
from runtime.control import AdapterControl
from runtime.denoise import StepEvent
from runtime.generate import GenerationResult, generate
from runtime.index import PatternIndex
from runtime.settings import AUTO, GenerationSettings, Plan, asks_row_cost, concrete, resolve
from ruvdllm.errors import RuvdllmError

_NOT_ASKED = object()  # DiffusionModel's row cost before the first question


class Tokenizer(Protocol):
    """What the facade uses of a tokenizer: `tokenizers.Tokenizer` on CPython, a bridge to the
    page's tokenizer (web/js/tokenizer.js) in Pyodide."""

    def encode(self, text: str, add_special_tokens: bool = True):  # -> an encoding with .ids
        ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def id_to_token(self, token: int) -> str | None: ...


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOS) or "length"
    prompt_tokens: int
    result: GenerationResult = field(repr=False)

    @property
    def trace(self) -> list[StepEvent]:
        return self.result.trace


class DiffusionModel:
    def __init__(
        self,
        directory: Path,
        config: ArtifactConfig,
        tokenizer: Tokenizer,
        backend: Backend | None,
        bank: Bank | None = None,
        index: PatternIndex | None = None,
        bank_dir: Path | None = None,
        answers: AnswerStore | None = None,
        full_backend: Callable[[], tuple[Backend, AnswerStore | None]] | None = None,
    ):
        """`backend` may be attached later (the browser creates its onnxruntime-web session after
        reading the bank, whose tensors the session binds once). `bank_dir`: where `bank` was read
        from (its learnt pattern scores live beside it). `answers`: the model's answer store, the
        verified sampler's third drafter (runtime/answer_store.py). `full_backend`: for a backend
        on the model's AR graph (`ar_only`), how to open its full graph and read its answer store,
        which the first request for another sampler switches to (`concrete`)."""
        self.directory = directory
        self.config = config
        self.tokenizer = tokenizer
        self.backend = backend
        self.bank = bank
        self.index = index
        self.bank_dir = bank_dir
        self.answers = answers
        self._full_backend = full_backend
        # Set by the learning loop (runtime/learning/loop_a.py): pattern usefulness for retrieval,
        # and whether generations keep their prompt embedding for the trajectory.
        self.scores = None
        self.record_query = False
        self.lock = threading.Lock()
        self._token_text: dict[int, str] = {}
        self.bank_stamp = bank_stamp(bank_dir)  # what bank.json was when `bank` was read
        self._extra_row: float | None | object = _NOT_ASKED

    # --- the bank on disk ------------------------------------------------------------------------

    def use_bank(self, bank: Bank, bank_dir: Path, index: PatternIndex | None = None) -> None:
        """Sample with `bank` from the next generation on: the index is built first (outside the
        lock), then both are swapped in under the model's lock, between generations."""
        index = index if index is not None else bank.build_index(bank_dir)
        stamp = bank_stamp(bank_dir)
        with self.lock:
            if self.backend is not None:
                self.backend.set_bank(bank)
            self.bank, self.index, self.bank_dir = bank, index, Path(bank_dir)
            self.bank_stamp = stamp
            if self.scores is not None:  # loop A's usefulness scores: new keys start at 0
                self.scores.patterns = len(bank.pattern_slots)

    def refresh_bank(self) -> bool:
        """Take the bank from disk if its bank.json changed since it was read (a federation merge,
        loop C or loop B of another process switched it): one stat when nothing changed. A bank
        that cannot be read or does not fit raises RuvdllmError once and the current one stays."""
        if self.bank_dir is None:
            return False
        stamp = bank_stamp(self.bank_dir)
        if stamp == self.bank_stamp or stamp is None:
            return False
        self.bank_stamp = stamp  # also when it fails below: say so once, not on every request
        bank = Bank.load(self.bank_dir)
        bank.check_model(self.config, str(self.bank_dir), getattr(self.backend, "adapter_shapes", None))
        self.use_bank(bank, self.bank_dir)
        return True

    # --- text ------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """One token's text, for live displays (a multi-byte character split over tokens shows
        as U+FFFD until the final decode)."""
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return text

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """Text (encoded without specials) or token ids as ids; empty text is an error."""
        if not isinstance(prompt, str):
            return list(prompt)
        if not prompt.strip():
            raise RuvdllmError("prompt: empty (give at least one token)")
        return self.encode(prompt)

    # --- generation ------------------------------------------------------------------------------

    def control(self, settings: GenerationSettings) -> AdapterControl:
        """Adapter weights for one generation: TALoRA from the bank's groups, DGR over its index
        (the bank on disk, if it changed since the last generation: `refresh_bank`)."""
        try:
            self.refresh_bank()
        except RuvdllmError as exc:  # generation goes on with the bank it had
            print(f"warning: {exc}; still sampling with the bank read before", file=sys.stderr)
        groups = len(self.config.timestep_groups) - 1
        talora = dgr = None
        if self.bank is not None:
            groups = self.bank.groups
            talora = self.bank.talora_config() if settings.talora else None
            dgr = settings.dgr_config if settings.dgr else None
        control = AdapterControl(
            self.config.adapter_slots, groups, self.config.vocab_size, talora, dgr, self.index, self.scores
        )
        control.record_query = self.record_query
        return control

    def extra_row_cost(self) -> float | None:
        """What one more row costs a forward of this model here (runtime/row_cost.py): the
        backend's record, read or measured at most once per process; None where the backend
        cannot say (the browser's, a busy machine)."""
        if self._extra_row is _NOT_ASKED:
            row_cost = getattr(self.backend, "row_cost", None)
            cost = None
            if row_cost is not None:
                with self.lock:  # it runs forwards: not beside a generation
                    cost = row_cost()
            self._extra_row = None if cost is None else cost.extra_row
        return self._extra_row

    def concrete(
        self, settings: GenerationSettings, acceptance: str | None = None, switch: bool = True
    ) -> GenerationSettings:
        """`settings` with sampler auto resolved for this model on this machine. An acceptance
        rule the user named (`acceptance`, not auto) asks for the verified sampler's drafts, so
        the machine's row cost is not consulted; nor is it where auto would not verify anyway.
        A model opened on its AR graph keeps auto at `ar`, and moves to its full graph for any
        other sampler asked for (`_open_full_graph`) — unless not `switch`: a check that must not
        wait for the lock (the server's, while another request generates) only says whether it
        could; `generate` switches the model that runs."""
        asked = asks_row_cost(settings, self.config, acceptance)
        resolved = concrete(settings, self.config, self.extra_row_cost() if asked else None)
        if getattr(self.backend, "ar_only", False) and resolved.sampler != "ar":
            if asked and settings.sampler == AUTO:
                return replace(resolved, sampler="ar")  # the record went missing since it was opened
            if switch:
                self._open_full_graph(resolved.sampler)
            # `_open_full_graph` replaces the backend before it drops `_full_backend`: read in the
            # other order, a switch that lands in between is not mistaken for no way to the full graph
            elif self._full_backend is None and getattr(self.backend, "ar_only", False):
                raise self._no_full_graph(resolved.sampler)
        return resolved

    def _no_full_graph(self, sampler: str) -> RuvdllmError:
        return RuvdllmError(
            f"sampler {sampler}: this model was opened on its AR graph ({AR_GRAPH_NAME}), "
            "which runs the ar sampler only"
        )

    def _open_full_graph(self, sampler: str) -> None:
        """Leave the AR graph for the full one, for good: `sampler` needs rows it cannot compute.
        Under the lock, so never beside a generation; the new backend takes the model's bank."""
        if self._full_backend is None:
            raise self._no_full_graph(sampler)
        with self.lock:
            if not getattr(self.backend, "ar_only", False):  # another request switched it meanwhile
                return
            # both before the AR graph goes: a failure leaves it working
            backend, answers = self._full_backend()
            if self.bank is not None:
                backend.set_bank(self.bank)
            self.backend, self.answers, self._full_backend = backend, answers, None

    def check(self, prompt_tokens: int, settings: GenerationSettings) -> Plan:
        """Raise RuvdllmError for settings or a prompt this model cannot take (no forward);
        return the resolved plan (span length, steps per span)."""
        return resolve(settings, self.config, prompt_tokens)

    def generate(
        self,
        prompt: str | list[int],
        settings: GenerationSettings | None = None,
        seed: int = 0,
        on_step: Callable[[StepEvent], None] | None = None,
        rng: random.Random | None = None,
        control: AdapterControl | None = None,
    ) -> Completion:
        """Generate after `prompt` (text, encoded without specials, or token ids). Same seed,
        same tokens. Raises RuvdllmError for bad input before any forward.

        `control`: the generation's adapter control (default: a fresh `self.control(settings)`);
        pass one to read its per-step state (DGR's retrieved weights) from `on_step`.
        """
        settings = self.concrete(settings or GenerationSettings())
        ids = self.prompt_ids(prompt)
        self.check(len(ids), settings)
        control = control or self.control(settings)
        with self.lock:
            result = generate(
                self.backend, ids, settings, rng or random.Random(seed), control, on_step, self.answers
            )
        return Completion(self.decode(result.tokens), result.tokens, result.finish_reason, len(ids), result)

    def warm_up(self) -> float:
        """One short generation, so that the first request does not pay the engine's lazy
        initialisation (and the first WebGPU run's kernel compilation); returns its milliseconds."""
        started = time.perf_counter()
        self.generate([self.config.bos_token_id or 0], replace(GenerationSettings(), length=1, dgr=False))
        return (time.perf_counter() - started) * 1e3


def bank_stamp(bank_dir: Path | None) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a bank's bank.json: every writer replaces that file last, so a
    new stamp is a new bank. None without one."""
    if bank_dir is None:
        return None
    try:
        found = (Path(bank_dir) / BANK_JSON).stat()
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)


def read_bank(directory: Path, bank: Path | str | None = None) -> tuple[Bank | None, Path]:
    """The adapter bank a model opens with, and its directory: `bank` when given (it must exist),
    else the model's banks/ when it holds one (None otherwise)."""
    bank_dir = Path(bank) if bank is not None else Path(directory) / BANKS_DIR
    if bank is None and not (bank_dir / BANK_JSON).is_file():
        return None, bank_dir
    return Bank.load(bank_dir), bank_dir
