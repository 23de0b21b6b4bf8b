"""A model directory opened for generation on CPython: verified files, config, tokenizer, chat
template, adapter bank, pattern index and an onnxruntime backend behind one `generate` call.

    model = DiffusionModel.open("path/to/model")             # or bank="my-bank/", options=OrtOptions(...)
    done = model.generate("Hello", GenerationSettings(length=32), seed=0, on_step=print)
    done.text, done.tokens, done.finish_reason, done.trace

One sequence runs at a time per model (the backend holds its key/value cache); `generate` takes a
lock, so threads may share a model and are served one after another. Servers wanting parallelism
open one model per worker.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from runtime import artifact
from runtime.artifact import ArtifactConfig
from runtime.banks import BANK_JSON, BANKS_DIR, Bank
from runtime.control import AdapterControl
from runtime.denoise import StepEvent
from runtime.generate import GenerationResult, generate
from runtime.settings import GenerationSettings, resolve
from runtime.verify import verify_artifact
from ruvdllm.errors import RuvdllmError


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
    def __init__(self, directory: Path, config: ArtifactConfig, tokenizer, backend, bank: Bank | None, index):
        self.directory = directory
        self.config = config
        self.tokenizer = tokenizer
        self.backend = backend
        self.bank = bank
        self.index = index
        self.lock = threading.Lock()
        self._token_text: dict[int, str] = {}

    @classmethod
    def open(
        cls, directory: Path | str, bank: Path | str | None = None, options=None, verify: str = "cached"
    ):
        """Verify and load a model directory. `bank`: an adapter bank directory (default: the
        model's banks/ when it holds one). `options`: runtime.ort_backend.OrtOptions."""
        from runtime.ort_backend import OrtBackend, OrtOptions

        directory = Path(directory)
        if not directory.is_dir():
            raise RuvdllmError(f"{directory}: no such model directory")
        verify_artifact(directory, verify)
        config = artifact.load_config(directory)
        tokenizer = load_tokenizer(directory / artifact.TOKENIZER_NAME, config)
        bank_dir = Path(bank) if bank is not None else directory / BANKS_DIR
        loaded = Bank.load(bank_dir) if (bank is not None or (bank_dir / BANK_JSON).is_file()) else None
        backend = OrtBackend(directory / artifact.GRAPH_NAME, config, options or OrtOptions())
        if loaded is not None:
            loaded.check_model(config, f"{bank_dir}", backend.adapter_shapes)
            backend.set_bank(loaded)
        index = loaded.build_index(bank_dir) if loaded is not None and loaded.pattern_slots else None
        return cls(directory, config, tokenizer, backend, loaded, index)

    # --- text ------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """One token's text, for live displays (a multi-byte character split over tokens shows
        as U+FFFD until the final decode)."""
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return text

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the model's chat template (Jinja, as Hugging Face tokenizers do)."""
        if not self.config.chat_template:
            raise RuvdllmError(f"{self.directory}: the model has no chat template")
        specials = {}
        for name, token in (
            ("bos_token", self.config.bos_token_id),
            ("eos_token", (self.config.eos_token_ids or (None,))[0]),
        ):
            if token is not None:
                specials[name] = self.tokenizer.id_to_token(token)
        return render_chat_template(self.config.chat_template, messages, add_generation_prompt, **specials)

    # --- generation ------------------------------------------------------------------------------

    def control(self, settings: GenerationSettings) -> AdapterControl:
        """Adapter weights for one generation: TALoRA from the bank's groups, DGR over its index."""
        groups = len(self.config.timestep_groups) - 1
        talora = dgr = None
        if self.bank is not None:
            groups = self.bank.groups
            talora = self.bank.talora_config() if settings.talora else None
            dgr = settings.dgr_config if settings.dgr else None
        return AdapterControl(
            self.config.adapter_slots, groups, self.config.vocab_size, talora, dgr, self.index
        )

    def check(self, prompt_tokens: int, settings: GenerationSettings) -> None:
        """Raise RuvdllmError for settings or a prompt this model cannot take (no forward)."""
        resolve(settings, self.config, prompt_tokens)

    def generate(
        self,
        prompt: str | list[int],
        settings: GenerationSettings | None = None,
        seed: int = 0,
        on_step: Callable[[StepEvent], None] | None = None,
        rng: random.Random | None = None,
    ) -> Completion:
        """Generate after `prompt` (text, encoded without specials, or token ids). Same seed,
        same tokens. Raises RuvdllmError for bad input before any forward."""
        settings = settings or GenerationSettings()
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if isinstance(prompt, str) and not prompt.strip():
            raise RuvdllmError("prompt: empty (give at least one token)")
        self.check(len(ids), settings)
        with self.lock:
            result = generate(
                self.backend, ids, settings, rng or random.Random(seed), self.control(settings), on_step
            )
        return Completion(self.decode(result.tokens), result.tokens, result.finish_reason, len(ids), result)

    def warm_up(self) -> float:
        """One short forward so the first request does not pay onnxruntime's lazy initialisation;
        returns its milliseconds."""
        started = time.perf_counter()
        self.generate([self.config.bos_token_id or 0], replace(GenerationSettings(), length=1, dgr=False))
        return (time.perf_counter() - started) * 1e3


def load_tokenizer(path: Path, config: ArtifactConfig):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise RuvdllmError(
            "the runtime needs the package 'tokenizers': pip install 'ruvdllm[runtime]'"
        ) from None
    if not path.is_file():
        raise RuvdllmError(f"{path}: missing")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception on malformed files
        raise RuvdllmError(f"{path}: not a tokenizers file ({str(exc).splitlines()[0]})") from None
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise RuvdllmError(
            f"{path}: {tokenizer.get_vocab_size()} tokens, more than the model's vocabulary of {config.vocab_size}"
        )
    return tokenizer


def render_chat_template(
    template: str, messages: list[dict], add_generation_prompt: bool = True, **extra
) -> str:
    """Hugging Face's chat-template rendering: sandboxed Jinja with `raise_exception`."""
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise RuvdllmError(
            "chat templates need the package 'jinja2': pip install 'ruvdllm[runtime]'"
        ) from None

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as exc:
        raise RuvdllmError(f"chat template: {exc}") from None
