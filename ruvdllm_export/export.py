"""Checkpoint → validated ONNX model directory (docs/artifact.md).

    export_model(checkpoint, out_dir, target="cpu", **options) -> Path

load → keep exact Q4 blocks, quantize what is float → build the graph → write it into a temporary
sibling directory → validate (onnx.checker, onnxruntime CPU against the reference) → tokenizer.json,
config.json, manifest.json → rename into place. Nothing is left behind on failure, and an existing
output directory is refused unless `force`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from runtime import artifact
from runtime.answer_store import AnswerStore
from runtime.banks import BANKS_DIR, PATTERNS_HNSW, TRAINING_JSON, Bank
from runtime.settings import DIFFUSION_SAMPLERS
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import LoadedCheckpoint, load_checkpoint
from ruvdllm_export.memory import PhaseMemory
from ruvdllm_export.onnx_graph import (
    GraphOptions,
    StaticLora,
    build_graph,
    options_for_target,
)
from ruvdllm_export.onnx_graph.ar_graph import (
    SharedExternalData,
    build_ar_graph,
    external_index,
    wants_ar_graph,
)
from ruvdllm_export.onnx_graph.graph import forward_nodes
from ruvdllm_export.onnx_graph.linear import as_float
from ruvdllm_export.onnx_graph.options import required_onnxruntime
from ruvdllm_export.onnx_graph.q8 import Q8Tensor, SplitQ8Tensor
from ruvdllm_export.onnx_graph.spill import spill_prepared, table_rows
from ruvdllm_export.quant.q4 import QUANTIZE_ELEMENTS, Q4Tensor
from ruvdllm_export.spec import EMBED, LM_HEAD
from ruvdllm_export.validate import PARAGRAPH, check_ar_graph, validate_export
from ruvdllm_export.validate_windows import validate_by_windows

DATA_NAME = artifact.GRAPH_NAME + ".data"
SCRATCH_NAME = ".prepared.scratch"  # the prepared weights while exporting (onnx_graph/spill.py)
FULL_VALIDATION_MAX_BYTES = 512 * 2**20  # larger data files are validated by windows of layers
WINDOW_LAYERS = 4  # per window: about a quarter of a 16-layer 1B model beside the table
PARAGRAPH_TOKENS = 256  # validation length: long enough for real attention patterns, quick on CPU
NOT_VALIDATED_HERE = {  # the CPU parity check runs the graph's ops on the CPU EP, not on these
    "cuda": "on the CUDA EP only where a GPU and onnxruntime-gpu are at hand (tests marked gpu)",
    "webgpu": "on the WebGPU EP in the browser (tests marked browser)",
    "wasm": "on onnxruntime-web's WebAssembly build in the browser (tests marked browser)",
}


def _stderr(*parts) -> None:
    print(*parts, file=sys.stderr)  # progress; stdout stays for results


def export_model(
    checkpoint: Path | str | LoadedCheckpoint,
    out_dir: Path | str,
    target: str = "cpu",
    *,
    force: bool = False,
    validate: bool = True,
    adapter: Path | str | None = None,
    banks: Path | str | None = None,
    answer_store: Path | str | None = None,
    block_size: int = artifact.ArtifactConfig.block_size,
    min_agreement: float | None = None,
    quantization: str | None = None,
    attention: str | None = None,
    accuracy_level: int | None = None,
    top_k: int | None = None,
    adapter_slots: int | None = None,
    adapter_rank: int | None = None,
    table_bits: int | None = None,
    adapter_switch: bool | None = None,
    validate_window: int | None = None,
    log=_stderr,
) -> Path:
    """Write the model directory for `target` ("cpu", "cuda", "webgpu") and return its path.

    Args:
        checkpoint: a Hugging Face model directory, a .gguf file, or an already loaded checkpoint.
        out_dir: the directory to create (refused if it exists, unless `force`).
        validate: run onnx.checker and the onnxruntime CPU parity check (on by default).
        adapter: a static LoRA file (safetensors, docs/artifact.md) baked in as float side branches.
        banks: an adapter bank directory (`ruvdllm train-banks`) copied into the model's banks/,
            where the runtime loads it; its shapes must be the graph's adapter slots.
        answer_store: an answer store (`ruvdllm distill store`) copied in as answers.ngrams, the
            verified sampler's drafts from the model's own answers; checked against the vocabulary.
        min_agreement: fail unless top-1 agreement with the checkpoint on the paragraph reaches it.
        quantization .. adapter_switch: GraphOptions overrides; None keeps the target's default.
        validate_window: layers per validation window over the shipped file (validate_windows.py);
            0 runs the whole graph in one session; None picks by size (_window_size).
        log: where progress lines go (None for silence).
    """
    say = log or (lambda *_: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise RuvdllmError(f"{out_dir}: already exists (choose another --out, or --force to replace it)")
    started = time.perf_counter()
    memory = PhaseMemory()
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)
    memory.mark("load")
    try:
        options = options_for_target(
            target,
            quantization=quantization,
            attention=attention,
            accuracy_level=accuracy_level,
            top_k=top_k,
            adapter_slots=adapter_slots,
            adapter_rank=adapter_rank,
            table_bits=table_bits,
            adapter_switch=adapter_switch,
        )
    except ValueError as exc:
        raise RuvdllmError(f"export options: {exc}") from None
    if block_size < 1:
        raise RuvdllmError(f"export options: block size must be >= 1, not {block_size}")
    if validate_window is not None and validate_window < 0:
        raise RuvdllmError(f"export options: validation window must be >= 0 layers, not {validate_window}")
    spec = loaded.spec
    lora = load_static_adapter(Path(adapter), loaded) if adapter else {}
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise RuvdllmError(f"export options: minimum agreement must be within 0..1, not {min_agreement}")
    if answer_store is not None:  # before minutes of graph building
        AnswerStore.read(Path(answer_store)).check_model(spec.vocab_size, str(answer_store))
    if banks is not None:  # readable and whole, before minutes of graph building; fit: checked at the copy
        Bank.load(Path(banks))

    rope = f", rope scaling {spec.rope_scaling.kind}" if spec.rope_scaling else ""
    say(
        f"building the {options.quantization} graph for {target} ({spec.architecture}, {spec.num_layers} layers{rope})"
    )
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise RuvdllmError(f"{out_dir}: cannot create the output directory ({exc.strerror})") from None
    prepared = None
    try:
        # one tensor at a time: quantized, written to a scratch file, read back when asked for
        prepared = spill_prepared(spec, loaded.weights, options, staging / SCRATCH_NAME)
        memory.mark("prepare")
        model_path = staging / artifact.GRAPH_NAME
        try:  # the weights stream into model.onnx.data as the graph is built, layer by layer
            model = build_graph(spec, prepared, options, lora=lora, external_data=staging / DATA_NAME)
        except ValueError as exc:
            where = adapter if lora and "LoRA" in str(exc) else _source_name(loaded)
            raise RuvdllmError(f"{where}: {exc}") from None
        memory.mark("graph")
        ops = Counter(node.op_type for node in forward_nodes(model))
        folded = len(model.graph.node) - ops.total()
        say(
            f"graph: {ops.total()} nodes per forward ({', '.join(f'{n} {op}' for op, n in ops.most_common(6))}, ...)"
            + (f", {folded} more folded at load" if folded else "")
        )
        onnx.save_model(model, str(model_path))  # the graph alone: its weights are in the data file
        ar_nodes = None
        if wants_ar_graph(options, bool(lora), target):  # gate-0 rows alone, on the data file just written
            shared = SharedExternalData(staging / DATA_NAME, external_index(model))
            ar_model = build_ar_graph(spec, prepared, options, target, shared)
            ar_nodes = len(forward_nodes(ar_model))
            say(f"AR graph: {ar_nodes} nodes per forward, the same weights")
            onnx.save_model(ar_model, str(staging / artifact.AR_GRAPH_NAME))
            del ar_model
        del model
        memory.mark("save")
        validation = {"skipped": "--no-validate"}
        if validate:
            window = _window_size(validate_window, spec, staging / DATA_NAME)
            say(
                "validating: onnx.checker and onnxruntime CPU parity"
                + (f", {window} layers at a time over the shipped file" if window else "")
            )
            validation = _validate(
                model_path, loaded, prepared, options, lora, min_agreement, target, window, memory.mark
            )
            if ar_nodes is not None:  # its gate-0 rows, through both graphs
                validation["ar_graph"] = check_ar_graph(
                    model_path,
                    staging / artifact.AR_GRAPH_NAME,
                    spec,
                    options,
                    paragraph_ids(loaded),
                    prepared,
                )
                memory.mark("validate.ar_graph")
            memory.mark("validate")
        held_kinds = Counter(_held_kind(prepared[name]) for name in prepared)
        prepared.close()  # the scratch file goes before the manifest lists the directory
        loaded.tokenizer.save(str(staging / artifact.TOKENIZER_NAME))
        config = _artifact_config(
            loaded, options, target, block_size, validation, held_kinds, adapter, lora, ops, memory, ar_nodes
        )
        (staging / artifact.CONFIG_NAME).write_text(config.to_json())
        if banks is not None:
            _copy_banks(Path(banks), config, staging / BANKS_DIR, say)
        if answer_store is not None:
            # read again rather than held through the export; written in the runtime's current
            # format (a store of an older format, such as the one shipped, is compressed on the way)
            AnswerStore.read(Path(answer_store)).write(staging / artifact.ANSWER_STORE_NAME)
        artifact.write_manifest(staging)
        if target in ("webgpu", "wasm"):  # the browser's graphs, fetched over HTTP: gzip cuts ~20%
            artifact.write_gzip_copies(staging)
        _move_into_place(staging, out_dir)
    except OSError as exc:
        _discard(prepared, staging)
        raise RuvdllmError(f"{out_dir}: writing the model failed ({exc.strerror or exc})") from None
    except RuvdllmError as exc:
        _discard(prepared, staging)
        # the staging directory is gone and was never the user's: name the model they asked for
        raise RuvdllmError(str(exc).replace(str(staging), str(out_dir))) from None
    except BaseException:
        _discard(prepared, staging)
        raise
    peak = memory.report()["peak_rss_mib"]  # the kernel's mark restarts at each phase: not VmHWM
    at_peak = f", peak memory {peak:.0f} MiB" if peak else ""
    say(f"wrote {out_dir} in {time.perf_counter() - started:.1f}s ({_size_mb(out_dir):.1f} MB{at_peak})")
    return out_dir


def _discard(prepared, staging: Path) -> None:
    if prepared is not None:
        prepared.close()
    shutil.rmtree(staging, ignore_errors=True)


def _window_size(asked: int | None, spec, data_file: Path) -> int:
    """Layers per validation window; 0 validates the whole graph in one session. Auto (None): the
    whole graph while its data file is under FULL_VALIDATION_MAX_BYTES (the default model's 0.1 GB
    keeps today's full check), windows of WINDOW_LAYERS layers above it."""
    if asked is not None:
        return 0 if asked >= spec.num_layers else asked
    big = data_file.stat().st_size > FULL_VALIDATION_MAX_BYTES
    return WINDOW_LAYERS if big and spec.num_layers > WINDOW_LAYERS else 0


def _copy_banks(source: Path, config, destination: Path, say=_stderr) -> None:
    """Copy a bank directory into the model after checking it fits the graph (a bank of another
    model, slot layout or conversion adapter is refused here, not at the user's first generate)."""
    Bank.load(source).check_model(config, str(source))
    warning = check_bank_adapter(source, config)
    if warning:
        say(f"warning: {warning}")
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(PATTERNS_HNSW))


def check_bank_adapter(bank_dir: Path, config) -> str | None:
    """Refuse a bank trained over another conversion adapter than the one the model bakes in:
    its adapters learnt what that adapter left to learn, and over another one they are noise.
    `ruvdllm train-banks` records the adapter's sha256 in the bank's training.json (null: trained
    over none). A bank that records nothing is accepted; the returned line says so."""
    path = Path(bank_dir) / TRAINING_JSON
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        report = {}
    except (OSError, ValueError) as exc:
        raise RuvdllmError(f"{path}: unreadable ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(report, dict) or "adapter_sha256" not in report:
        return (
            f"{path}: records no adapter_sha256, so the bank cannot be checked against this "
            "model's conversion adapter (retrain it with `ruvdllm train-banks` to record one)"
        )
    recorded = report["adapter_sha256"]
    baked = (config.source.get("static_adapter") or {}).get("sha256")
    if recorded != baked:
        trained = f"conversion adapter {str(recorded)[:12]}" if recorded else "no conversion adapter"
        have = f"conversion adapter {baked[:12]}" if baked else "none"
        raise RuvdllmError(
            f"{path}: the bank was trained over {trained}, this model bakes in {have} "
            "(retrain the bank over it with `ruvdllm train-banks --adapter`)"
        )
    return None


def _validate(
    model_path, loaded, prepared, options, lora, min_agreement, target, window=0, mark=None
) -> dict:
    # The reference runs the very weights the graph holds, packed as they are (4-bit linears are
    # dequantized one at a time inside its forward), with the static LoRA as side branches, as
    # the graph has them: no float copy of the model (4-8x the graph's size) is made.
    switched = bool(lora) and options.adapter_switch
    # tables last: a float checkpoint's first linear already answers, before a table is widened
    names = sorted(prepared, key=lambda name: name in (EMBED, LM_HEAD))
    exact = all(_held_exactly(loaded.weights[name], prepared[name]) for name in names)
    paragraph = paragraph_ids(loaded)
    if window:
        report = validate_by_windows(
            model_path,
            loaded.spec,
            options,
            prepared,
            loaded.mask_token_id,
            paragraph,
            window,
            source_weights=None if exact else loaded.weights,
            min_source_agreement=min_agreement,
            base_weights=prepared if switched else None,
            lora=lora,
            mark=mark,
        )
        if target == "cuda":
            report["cuda"] = (
                "skipped: windows run on the CPU EP (validate_window=0 runs the whole graph on both)"
            )
        return report
    return validate_export(
        model_path,
        loaded.spec,
        options,
        prepared,
        loaded.mask_token_id,
        paragraph,
        source_weights=None if exact else loaded.weights,
        min_source_agreement=min_agreement,
        also_on_cuda=target == "cuda",
        base_weights=prepared if switched else None,
        lora=lora,
        mark=mark,
    )


def paragraph_ids(loaded) -> list[int]:
    """The validation paragraph's tokens, in the vocabulary and within the context."""
    ids = loaded.tokenizer.encode(PARAGRAPH, add_special_tokens=False).ids
    return [i for i in ids if i < loaded.spec.vocab_size][: min(PARAGRAPH_TOKENS, loaded.spec.max_position)]


def _held_exactly(source, held) -> bool:
    """True when the graph holds the checkpoint's numbers unchanged (exact blocks, float norms, or a
    table whose 8-bit codes reproduce the source exactly, as Q8_0 tables do)."""
    if held is source:
        return True
    if isinstance(held, Q4Tensor) and isinstance(source, Q4Tensor):  # the same blocks, compared packed
        fields = ("packed", "scales", "zero_points", "mins")
        return all(np.array_equal(getattr(held, f), getattr(source, f)) for f in fields)
    if isinstance(held, Q4Tensor | Q8Tensor | SplitQ8Tensor):  # by row slices: dequantizing
        # a whole 2048 x 8192 linear made ~0.3 GB of temporaries; the first slice usually answers
        rows = max(1, QUANTIZE_ELEMENTS // max(1, held.shape[1]))
        return all(
            np.array_equal(
                as_float(table_rows(held, start, start + rows)),
                as_float(table_rows(source, start, start + rows)),
            )
            for start in range(0, held.shape[0], rows)
        )
    return isinstance(source, np.ndarray) and held.dtype == np.float32 and np.array_equal(held, source)


def merge_lora(spec, weights: dict[str, np.ndarray], lora: dict[str, StaticLora]):
    """(spec, float weights) with each static LoRA delta b @ a added (embedding: PEFT layout,
    transposed). The graph adds head and embedding deltas as separate branches, so once either is
    present a tied table stops being tied: the merged model gets its own head."""
    merged = dict(weights)
    if spec.tie_word_embeddings and ({EMBED, LM_HEAD} & lora.keys()):
        spec = replace(spec, tie_word_embeddings=False)
        merged[LM_HEAD] = weights[EMBED]
    for name, factors in lora.items():
        delta = factors.b @ factors.a
        merged[name] = merged[name] + (delta.T if name == EMBED else delta)
    return spec, merged


def load_static_adapter(path: Path, loaded: LoadedCheckpoint) -> dict[str, StaticLora]:
    """The conversion adapter file `ruvdllm convert` writes (ruvdllm_export/convert/adapter_file.py,
    docs/artifact.md): canonical weight name -> factors with the scale folded in. An adapter trained
    for another base is refused."""
    from ruvdllm_export.convert.adapter_file import read_static_lora

    factors = read_static_lora(path, loaded)
    if not factors:
        raise RuvdllmError(f"{path}: no LoRA factors in the adapter file")
    return {name: StaticLora(a=a, b=b) for name, (a, b) in factors.items()}


def trained_samplers(adapter: Path) -> tuple[str, ...]:
    """The samplers a conversion adapter was trained for: its training objective (the adapter
    file's `training` metadata). Empty when it does not say (all samplers allowed)."""
    from ruvdllm_export.convert.adapter_file import read_adapter

    objective = read_adapter(adapter).training.get("objective")
    return (objective,) if objective in DIFFUSION_SAMPLERS else ()  # verified / ar run the base model


def _artifact_config(
    loaded,
    options: GraphOptions,
    target,
    block_size,
    validation,
    held_kinds: Counter,
    adapter,
    lora,
    ops: Counter,
    memory: PhaseMemory,
    ar_nodes: int | None = None,
):
    spec = loaded.spec
    source = dict(loaded.source)
    source["graph"] = {"nodes": ops.total(), "ops": dict(ops.most_common())}  # the nodes run per forward
    if ar_nodes is not None:
        source["graph"]["ar_graph_nodes"] = ar_nodes
    source["exactness"] = dict(Counter(loaded.exactness.values()))
    source["lossy"] = loaded.lossy
    source["graph_weights"] = dict(held_kinds)
    source["validation"] = validation
    source["memory"] = memory.report()  # peak resident memory of the export and of each phase
    source["validated_on"] = [] if "skipped" in validation else ["cpu"]
    if isinstance(validation.get("cuda"), dict):
        source["validated_on"].append("cuda")
    elif target in NOT_VALIDATED_HERE:
        source["not_validated_here"] = {target: NOT_VALIDATED_HERE[target]}
    samplers: tuple[str, ...] = ()
    if lora:
        source["static_adapter"] = {
            "path": str(adapter),
            "sha256": artifact.sha256_file(Path(adapter)),
            "linears": len(lora),
        }
        samplers = trained_samplers(Path(adapter))
    return artifact.ArtifactConfig(
        architecture=spec.architecture,
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position=options.max_position or spec.max_position,
        mask_token_id=loaded.mask_token_id,
        bos_token_id=spec.bos_token_id,
        eos_token_ids=tuple(spec.eos_token_ids),
        pad_token_id=spec.pad_token_id,
        block_size=block_size,
        top_k=min(options.top_k, spec.vocab_size),
        adapter_targets=tuple(options.adapter_targets) if options.has_adapters else (),
        adapter_slots=options.adapter_slots if options.has_adapters else 0,
        adapter_rank=options.adapter_rank,
        adapter_gate=bool(lora) and options.adapter_switch,
        ar_graph=ar_nodes is not None,
        targets=(target,),
        attention=options.attention,
        quantization=options.quantization,
        accuracy_level=options.accuracy_level,
        requires_onnxruntime=required_onnxruntime(options),
        chat_template=spec.chat_template,
        samplers=samplers,
        source=json.loads(json.dumps(source, default=str)),
    )


def _held_kind(weight) -> str:
    if isinstance(weight, Q4Tensor):
        return "q4 with block mins" if weight.mins is not None else "q4"
    if isinstance(weight, Q8Tensor):
        return "q8 token table"
    if isinstance(weight, SplitQ8Tensor):
        return "q8 token table as two exact q4 halves"
    return "float32"


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Atomic for a fresh directory; with --force the old one is moved aside first, then removed."""
    if out_dir.exists():
        aside = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, aside)
        artifact.replace_directory_atomically(staging, out_dir)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        artifact.replace_directory_atomically(staging, out_dir)


def _source_name(loaded: LoadedCheckpoint) -> str:
    return str(loaded.source.get("path", "checkpoint"))


def _size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6
