"""`ruvdllm export`: a checkpoint (Hugging Face directory or GGUF) → a validated ONNX model directory.

    ruvdllm export --out DIR [--checkpoint PATH] [--target cpu|cuda|webgpu] [--force] ...

Without --checkpoint it exports the default model (SmolLM2-135M-Instruct, fetched on first use) and
requires top-1 agreement with the checkpoint on the validation paragraph: ≥ 99% at accuracy level 0,
≥ 93% at level 4 (the CPU default; llama.cpp agrees 96.7% of the time on the same GGUF).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.artifact import ArtifactConfig
from ruvdllm_export.flags import AT_LEAST_1, FRACTION, NON_NEGATIVE, Flag, add_flags, resolve
from ruvdllm_export.onnx_graph.options import (
    ATTENTION_FORMULATIONS,
    QUANTIZATIONS,
    TARGET_DEFAULTS,
    TARGETS,
    GraphOptions,
)

# The default model's graph holds its checkpoint exactly: at accuracy level 0 it agrees with it on
# every token but float ties; at level 4 (int8 activations) as often as llama.cpp does on the same
# GGUF (96.7% over 2,048 tokens, benchmarks/README.md), less a margin for the short paragraph.
DEFAULT_MODEL_MIN_AGREEMENT = {0: 0.99, 4: 0.93}
GRAPH = (
    Flag("top_k", "candidates per position in the outputs", GraphOptions, range=AT_LEAST_1),
    Flag("adapter_slots", "adapter slots composed per position (0: none)", GraphOptions, range=NON_NEGATIVE),
    Flag("adapter_rank", "rank of each adapter slot", GraphOptions, range=AT_LEAST_1),
    Flag("block_size", "BD3LM block size recorded for samplers", ArtifactConfig, range=AT_LEAST_1),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to create")
    parser.add_argument(
        "--target", choices=TARGETS, default="cpu", help="execution provider the graph is built for"
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--adapter", type=Path, help="conversion adapter (safetensors) to bake in as float LoRA branches"
    )
    parser.add_argument(
        "--banks",
        type=Path,
        help="TALoRA/DGR adapter bank (`ruvdllm train-banks`) to ship in the model's banks/",
    )
    parser.add_argument(
        "--answer-store",
        type=Path,
        help="answer store (`ruvdllm distill store`): the verified sampler's drafts from the model's own answers",
    )
    add_flags(parser, GRAPH)
    parser.add_argument(
        "--accuracy-level",
        type=int,
        choices=(0, 1, 2, 3, 4),
        help="MatMulNBits accuracy level (default: per target)",
    )
    parser.add_argument(
        "--attention", choices=ATTENTION_FORMULATIONS, help="attention formulation (default: per target)"
    )
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="q4 (default), widened or int8 (the wasm target's linears), or fp32",
    )
    parser.add_argument(
        "--table-bits", type=int, choices=(4, 8), help="token table bits (default: 4 if exact, else 8)"
    )
    parser.add_argument(
        "--min-agreement",
        type=FRACTION.parser(float),
        help="fail unless top-1 agreement with the checkpoint reaches this (0..1)",
    )
    parser.add_argument(
        "--no-adapter-switch",
        action="store_true",
        help="no per-row adapter_gate input: the conversion adapter is always on (no verified sampler)",
    )
    parser.add_argument("--no-validate", action="store_true", help="skip onnx.checker and the parity check")
    parser.add_argument(
        "--validate-window",
        type=NON_NEGATIVE.parser(int),
        metavar="LAYERS",
        help="validate LAYERS decoder layers at a time over the shipped file (0: the whole graph at once;"
        " default: whole up to a 512 MiB data file, 4 layers above)",
    )


def run(args: argparse.Namespace) -> int:
    from ruvdllm_export.export import export_model

    resolve(args, GRAPH)
    checkpoint, min_agreement = args.checkpoint, args.min_agreement
    if checkpoint is None:
        from ruvdllm_export.default_model import default_gguf_path

        checkpoint = default_gguf_path()
        if min_agreement is None and not args.adapter:
            level = args.accuracy_level
            if level is None:
                level = TARGET_DEFAULTS[args.target]["accuracy_level"]
            min_agreement = DEFAULT_MODEL_MIN_AGREEMENT.get(level, DEFAULT_MODEL_MIN_AGREEMENT[4])
    export_model(
        checkpoint,
        args.out,
        args.target,
        force=args.force,
        validate=not args.no_validate,
        adapter=args.adapter,
        banks=args.banks,
        answer_store=args.answer_store,
        block_size=args.block_size,
        min_agreement=min_agreement,
        quantization=args.quantization,
        attention=args.attention,
        accuracy_level=args.accuracy_level,
        top_k=args.top_k,
        adapter_slots=args.adapter_slots,
        adapter_rank=args.adapter_rank,
        table_bits=args.table_bits,
        adapter_switch=False if args.no_adapter_switch else None,
        validate_window=args.validate_window,
    )
    return 0
