"""`ruvdllm` command line: a thin dispatcher. Each subcommand lives in the package that owns it
and is imported only when used, so running a model never imports torch or the exporter.

A subcommand module provides `add_arguments(parser)` and `run(args) -> int`. The commands that run a
model take one more argument, `default_model`: the step that finds the default model in the cache or
exports it once (ruvdllm.default_artifact). Exporting needs the exporter, which `runtime` must not
import, so this layer, which wires the parts together, hands that step in.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ruvdllm.errors import RuvdllmError

# name -> (module, one-line help)
SUBCOMMANDS = {
    "export": (
        "ruvdllm_export.export_command",
        "convert a checkpoint (HF dir or GGUF) into an ONNX model directory",
    ),
    "fetch": (
        "ruvdllm_export.default_model",
        "download the default model (SmolLM2-135M-Instruct) into the cache",
    ),
    "convert": ("ruvdllm_export.convert_command", "train the AR->diffusion conversion adapter (QLoRA)"),
    "distill": (
        "ruvdllm_export.distill_command",
        "build distillation prompts, sample the AR model's answers to them",
    ),
    "train-banks": (
        "ruvdllm_export.banks_command",
        "train TALoRA banks (one adapter per timestep group) for a converted model",
    ),
    "generate": ("runtime.generate_command", "generate text with a diffusion model"),
    "feedback": ("runtime.learning.feedback_command", "rate, thumb or correct an answer (learning loop A)"),
    "learn": ("runtime.learning.learn_command", "run a learning step now (consolidate: loop C)"),
    "serve": ("runtime.server.command", "serve an OpenAI-compatible HTTP API"),
    "web": ("runtime.web_command", "serve the browser client and a model directory"),
    "hub": ("federation_hub.command", "run the federation hub"),
    "federate": (
        "ruvdllm.federate.command",
        "share this device's adapters with a hub, merge what it releases",
    ),
}
MODEL_COMMANDS = {
    "generate",
    "serve",
    "web",
    "learn",
}  # run(args, default_model=...): no model given -> the default


def _load(name: str):
    module_name, _ = SUBCOMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"ruvdllm_export", "runtime", "federation_hub"}:
            raise RuvdllmError(
                f"`ruvdllm {name}` is not available in this version ({exc.name} missing)"
            ) from None
        raise RuvdllmError(
            f"`ruvdllm {name}` needs the package {exc.name!r}: install the extra, e.g. pip install 'ruvdllm[{_extra(name)}]'"
        ) from None


def _extra(name: str) -> str:
    return {
        "export": "export",
        "fetch": "export",
        "convert": "train",
        "distill": "train",
        "train-banks": "train",
        "hub": "hub",
        "federate": "hub",
    }.get(name, "runtime")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ruvdllm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def without_debug(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` wherever it stands before a `--` (users add it after the
    command, where the subcommand's parser would refuse it), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return kept, len(kept) < len(argv)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ruvdllm",
        description="4-bit diffusion LLMs: export, generate, serve, browser client, federation hub.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks (before or after the command)"
    )
    parser.add_argument("--version", action="version", version=f"ruvdllm {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported (to add its arguments).
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(name).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv, debug = without_debug(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        module = _load(args.command)
        if args.command in MODEL_COMMANDS:
            from ruvdllm.default_artifact import default_model_dir

            if args.command == "serve":  # its background loop B: first order where torch is
                from ruvdllm.loop_b_trainer import trainer_for

                return int(module.run(args, default_model=default_model_dir, loop_b_trainer=trainer_for) or 0)
            return int(module.run(args, default_model=default_model_dir) or 0)
        return int(module.run(args) or 0)
    except RuvdllmError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ruvdllm generate ... | head`): nothing to say
        # to it, and Python's flush at exit must not fail on the closed pipe again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
