"""The CUDA check, prepared to run in one go on a GPU machine (an H200 within 10 minutes):
the `gpu`-marked tests, then the runtime figures of the default model on onnxruntime-gpu's CUDA
execution provider beside the CPU provider, written to a folder.

    python benchmarks/cuda_check.py --out DIR [--gguf FILE | --model DIR] [--length 64] [--threads 16]
    python benchmarks/cuda_check.py --out DIR --dry-run       # the same steps on the CPU, tiny model

Steps (each one's outcome is recorded, a failing step does not stop the next):

  environment   GPU (nvidia-smi), onnxruntime version and execution providers
  tests         pytest --run-gpu -m gpu (tiny models: CUDA against CPU tokens, every attention
                formulation's outputs on CUDA against CPU)
  export        the default model for --target cuda (validation repeats the parity on CUDA), unless
                --model gives one; needs the GGUF (--gguf, or the default model's in the user cache)
  speed         one-row forward ms (60 cached positions), BD3LM block 1 and block 8 tokens/s and ms
                per step, on CUDA and on the CPU, same model, same run

Writes DIR/cuda_figures.json (everything measured) and DIR/cuda_report.txt (the same, readable).
It needs: a Python with this repository's runtime and exporter dependencies, onnxruntime-gpu (whose
wheel is larger than what this project's device calls carry: install it where a registry is
reachable), and for the speed step the 98 MB GGUF or an exported model.

--dry-run runs every step on the CPU provider with the tiny test model (no GPU, no GGUF): what CI
and a machine without a GPU can check of this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PROMPT = "Explain what a diffusion language model is, in a few sentences."
TEST_FILES = ["tests/runtime/test_ort_backend_gpu.py", "tests/export/test_onnx_graph_cuda.py"]


def environment() -> dict:
    import onnxruntime as ort

    found = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        found["gpu"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        found["gpu"] = f"nvidia-smi unavailable ({exc})"
    return found


def run_tests(dry_run: bool, timeout: int) -> dict:
    """The gpu-marked tests; in a dry run only collected (they need a GPU to pass)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES]
    command += ["--collect-only"] if dry_run else ["--run-gpu", "-m", "gpu"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout} s"}
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {
        "command": " ".join(command[2:]),
        "returncode": done.returncode,
        "summary": lines[-1] if lines else "",
        "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20],
        "seconds": round(time.perf_counter() - started, 1),
    }


def export_model_dir(args, scratch: Path) -> tuple[Path, dict]:
    """The model to measure: --model, the tiny test model (dry run), or the default model exported
    for the cuda target (validated on CUDA when a GPU is there)."""
    from ruvdllm_export.export import export_model

    if args.model is not None:
        return args.model, {"model": str(args.model), "exported": False}
    if args.dry_run:
        from tests.runtime.tiny_artifact import make_tiny_artifact

        return make_tiny_artifact(scratch / "tiny"), {"model": "tiny test model", "exported": True}
    from ruvdllm_export.adapters import DEFAULT_ADAPTER
    from ruvdllm_export.default_model import default_gguf_path

    gguf = args.gguf or default_gguf_path(progress=False)
    started = time.perf_counter()
    out = export_model(gguf, scratch / "default-cuda", target="cuda", adapter=DEFAULT_ADAPTER, log=print)
    from runtime import artifact

    config = artifact.load_config(out)
    return out, {
        "model": f"{gguf.name} + the shipped adapter, target cuda",
        "exported": True,
        "export_seconds": round(time.perf_counter() - started, 1),
        "validated_on": config.source.get("validated_on"),
        "cuda_validation": config.source.get("validation", {}).get("cuda"),
        "nodes": config.source.get("graph", {}).get("nodes"),
    }


def measure(directory: Path, device: str, threads: int, length: int, repeats: int) -> dict:
    from dataclasses import replace

    from runtime_bench import one_row_forward_ms

    from runtime.chat_template import chat_prompt
    from runtime.cpython_model import open_model
    from runtime.ort_backend import OrtOptions
    from runtime.settings import GenerationSettings

    model = open_model(directory, options=OrtOptions(device=device, intra_op_threads=threads))
    text = chat_prompt(model, [{"role": "user", "content": PROMPT}]) if model.config.chat_template else PROMPT
    ids = model.encode(text)[:60] or [1]
    model.warm_up()
    base = GenerationSettings(sampler="bd3lm", length=length, stop_at_eos=False, talora=False, dgr=False)
    figures = {"device": model.backend.device, "prompt_tokens": len(ids)}
    forward = one_row_forward_ms(model, ids, 1, 5)  # warm the one-row shape
    forward = [t for _ in range(repeats) for t in one_row_forward_ms(model, ids, 1, 10)]
    figures["one_row_forward_ms"] = {"median": statistics.median(forward), "min": min(forward)}
    for block in (1, 8):
        runs = [model.generate(ids, replace(base, block_size=block), seed=0).result for _ in range(repeats)]
        figures[f"block_{block}"] = {
            "tokens_per_s": statistics.median(len(r.tokens) / (r.wall_ms / 1e3) for r in runs),
            "ms_per_step": statistics.median(e.forward_ms for r in runs for e in r.trace[1:] or r.trace),
        }
    return figures


def report_text(figures: dict) -> str:
    lines = [f"cuda check, {figures['started']}", json.dumps(figures["environment"])]
    tests = figures.get("tests", {})
    lines.append(f"tests: {tests.get('summary', tests.get('status', '-'))}")
    lines += [f"  {line}" for line in tests.get("failures", [])]
    lines.append(f"model: {json.dumps(figures.get('model', {}))}")
    for device, speed in figures.get("speed", {}).items():
        if "error" in speed:
            lines.append(f"{device}: {speed['error']}")
            continue
        fwd = speed["one_row_forward_ms"]
        lines.append(
            f"{device} ({speed['device']}): one-row forward {fwd['median']:.2f} ms (min {fwd['min']:.2f}); "
            f"block 1 {speed['block_1']['tokens_per_s']:.1f} tok/s, {speed['block_1']['ms_per_step']:.2f} ms/step; "
            f"block 8 {speed['block_8']['tokens_per_s']:.1f} tok/s, {speed['block_8']['ms_per_step']:.2f} ms/step "
            f"({speed['block_8']['ms_per_step'] / fwd['median']:.2f}x the one-row forward)"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for cuda_figures.json and cuda_report.txt"
    )
    parser.add_argument("--gguf", type=Path, help="the default model's GGUF (default: the user cache)")
    parser.add_argument("--model", type=Path, help="an exported model directory to measure instead")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="CPU provider threads (0: one per core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-timeout", type=int, default=240)
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU provider and the tiny model: no GPU needed"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run}
    figures["environment"] = environment()
    print(json.dumps(figures["environment"]), flush=True)
    figures["tests"] = run_tests(args.dry_run, args.test_timeout)
    print(f"tests: {figures['tests'].get('summary', figures['tests'])}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            directory, figures["model"] = export_model_dir(args, Path(scratch))
        except Exception as exc:  # record and stop: nothing to measure
            figures["model"] = {
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            }
            directory = None
        figures["speed"] = {}
        devices = {"cuda": "cpu" if args.dry_run else "cuda", "cpu": "cpu"}
        for label, device in devices.items() if directory is not None else ():
            try:
                figures["speed"][label] = measure(directory, device, args.threads, args.length, args.repeats)
            except Exception as exc:  # a provider that cannot run the graph is a finding, not a crash
                figures["speed"][label] = {
                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                }
            print(f"{label}: {json.dumps(figures['speed'][label])}", flush=True)
    (args.out / "cuda_figures.json").write_text(json.dumps(figures, indent=1, default=str))
    text = report_text(figures)
    (args.out / "cuda_report.txt").write_text(text)
    print(text)
    return (
        0
        if figures["tests"].get("returncode", 1) == 0
        and all("error" not in s for s in figures["speed"].values())
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
