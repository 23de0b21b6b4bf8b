"""A model directory opened on CPython: the manifest verified, the config, a `tokenizers`
tokenizer, the adapter bank with its hnswlib pattern index, and an onnxruntime backend, put
together as the runtime's one model facade (runtime/model.py).

    model = open_model("path/to/model")                  # or bank="my-bank/", options=OrtOptions(...)
    done = model.generate("Hello", GenerationSettings(length=32), seed=0)

Given the settings it will generate with, a model that will only run the `ar` sampler is opened
on its AR graph (config `ar_graph`): the same rows without the adapters' branches, faster.
"""

from __future__ import annotations

from pathlib import Path

from runtime import artifact
from runtime.answer_store import model_answer_store
from runtime.artifact import ArtifactConfig
from runtime.model import DiffusionModel, read_bank
from runtime.ort_backend import OrtBackend, OrtOptions, choose_device, recorded_row_cost
from runtime.settings import GenerationSettings, asks_row_cost, sampler_for
from runtime.verify import verify_artifact
from ruvdllm.errors import RuvdllmError


def open_model(
    directory: Path | str,
    bank: Path | str | None = None,
    options: OrtOptions | None = None,
    verify: str = "cached",
    settings: GenerationSettings | None = None,
    acceptance: str | None = None,
) -> DiffusionModel:
    """Verify and load a model directory. `bank`: an adapter bank directory (default: the
    model's banks/ when it holds one). `verify`: the manifest check (runtime/verify.py). The
    model's answer store (answers.ngrams) is read when it has one. `settings` (and the user's
    `acceptance`): what the generations of this process will ask for by default, when known;
    where that is the `ar` sampler alone (`runs_ar_only`), the model is opened on its AR graph,
    and the first generation that asks for another sampler switches it to the full graph and
    reads the answer store then (only the verified sampler drafts from it: reading and checking
    the default model's 0.7M n-grams is 0.15-0.4 s of a short `ruvdllm generate`)."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "a file, not a model directory" if directory.exists() else "no such model directory"
        raise RuvdllmError(f"{directory}: {what} (a directory written by ruvdllm export)")
    verify_artifact(directory, verify)
    config = artifact.load_config(directory)
    tokenizer = load_tokenizer(directory / artifact.TOKENIZER_NAME, config)
    loaded, bank_dir = read_bank(directory, bank)
    options = options or OrtOptions()
    full_graph = directory / artifact.GRAPH_NAME
    ar_only = runs_ar_only(directory, config, settings, acceptance, options)
    if ar_only:
        backend = OrtBackend(directory / artifact.AR_GRAPH_NAME, config, options, ar_only=True)
    else:
        backend = OrtBackend(full_graph, config, options)
    if loaded is not None:
        loaded.check_model(config, f"{bank_dir}", backend.adapter_shapes)
        backend.set_bank(loaded)
    index = loaded.build_index(bank_dir) if loaded is not None and loaded.pattern_slots else None

    def answers():
        return model_answer_store(directory, config.vocab_size)

    def full_graph_parts():  # what a request for another sampler opens (DiffusionModel.concrete)
        return OrtBackend(full_graph, config, options), answers()

    return DiffusionModel(
        directory,
        config,
        tokenizer,
        backend,
        loaded,
        index,
        bank_dir if loaded else None,
        None if ar_only else answers(),
        full_backend=full_graph_parts if ar_only else None,
    )


def runs_ar_only(
    directory: Path,
    config: artifact.ArtifactConfig,
    settings: GenerationSettings | None,
    acceptance: str | None,
    options: OrtOptions,
) -> bool:
    """Will generating with `settings` run the `ar` sampler alone, on a model that ships an AR
    graph? The `ar` sampler asked for, or sampler auto where this machine's recorded row cost
    resolves it to `ar` (runtime/row_cost.py). Nothing is measured here: without a record the
    full graph is opened, measures, and records for the next run."""
    if settings is None or not config.ar_graph:
        return False
    if settings.sampler == "ar":
        return True
    if not asks_row_cost(settings, config, acceptance):
        return False
    cost = recorded_row_cost(
        directory / artifact.GRAPH_NAME, choose_device(options.device), options.intra_op_threads
    )
    return cost is not None and sampler_for(settings, config, cost.extra_row) == "ar"


def load_tokenizer(path: Path, config: ArtifactConfig):
    """tokenizer.json as a `tokenizers.Tokenizer`, checked against the model's vocabulary."""
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
