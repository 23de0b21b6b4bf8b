"""Export benchmark: the default model through `ruvdllm export`, and the exported graph on ORT CPU.

    python benchmarks/export_bench.py [--checkpoint FILE] [--threads 2] [--repeats 5] [--lengths 8 64 256]

Prints, with ratios against baselines measured in this same run:

  export      wall time and peak RSS of `ruvdllm export` (q4 at accuracy level 0 and 4; fp32 for size),
              each in a fresh child process; top-1 agreement ORT vs the torch reference from the
              validation report each export writes
  size        model.onnx + model.onnx.data, q4 vs fp32
  latency     ORT CPU forward (ms, min of --repeats, configurations interleaved) at each length L,
              block-causal, no cache: q4 at accuracy level 0 and 4 for each attention formulation,
              against the fp32 graph; plus a BD3LM-like step (L = 8 after a 256-token cache)
  attention   the attention formulations alone (one layer of the model's shapes, fp32) so the
              choice per target rests on the attention op, not on the linears around it
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402

from runtime import artifact  # noqa: E402
from ruvdllm_export.checkpoints import load_checkpoint  # noqa: E402
from ruvdllm_export.onnx_graph import GraphOptions, build_graph, prepare_weights  # noqa: E402
from ruvdllm_export.onnx_graph.options import ATTENTION_FORMULATIONS  # noqa: E402
from ruvdllm_export.spec import expected_shapes  # noqa: E402
from ruvdllm_export.validate import graph_feeds  # noqa: E402


def export_child(checkpoint: Path, out: Path, *flags: str) -> dict:
    """One `ruvdllm export` in a child process: wall seconds, the child's peak RSS, its report."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ruvdllm.cli",
            "export",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            *flags,
        ],
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    seconds = time.perf_counter() - started
    peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    config = json.loads((out / artifact.CONFIG_NAME).read_text())
    size_mb = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith(artifact.GRAPH_NAME)) / 1e6
    return {
        "seconds": seconds,
        "peak_mb": peak_mb,
        "size_mb": size_mb,
        "validation": config["source"]["validation"],
    }


def session(model, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def interleaved_ms(runs: dict[str, tuple], repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (session, feeds) → name -> (wall ms, CPU ms), each the min over repeats, one run of
    each per round (drift hits all alike). CPU time (this process, all threads) is the steadier
    figure on a shared machine: waiting for a core does not count."""
    for sess, feeds in runs.values():
        sess.run(None, feeds)  # warm-up: allocations, prepacking
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (sess, feeds) in runs.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            sess.run(None, feeds)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {name: (1000 * min(wall[name]), 1000 * min(cpu[name])) for name in runs}


def latency_section(loaded, model_dir: Path, args) -> None:
    spec = loaded.spec
    rng = np.random.default_rng(0)
    exported = json.loads((model_dir / artifact.CONFIG_NAME).read_text())
    default = GraphOptions(attention=exported["attention"], accuracy_level=exported["accuracy_level"])
    # the exported cpu model itself (as `ruvdllm export` wrote it), then the alternatives built here
    configs = {
        f"q4 {default.attention} acc{default.accuracy_level}": (model_dir / artifact.GRAPH_NAME, default)
    }
    for attention in ATTENTION_FORMULATIONS:
        for level in (0, 4):
            name = f"q4 {attention} acc{level}"
            if name not in configs:
                configs[name] = (None, GraphOptions(attention=attention, accuracy_level=level))
    configs["fp32 matmul"] = (None, GraphOptions(quantization="fp32", attention="matmul"))
    sessions = {}
    for name, (path, options) in configs.items():
        if path is not None:
            sessions[name] = (session(str(path), args.threads), options)
        else:
            prepared = prepare_weights(spec, loaded.weights, options)
            sessions[name] = (session(build_graph(spec, prepared, options), args.threads), options)
    cases = [(length, 0) for length in args.lengths] + [(8, 256)]
    print(
        f"\nlatency: ORT CPU forward, CPU ms / wall ms (min of {args.repeats}), {args.threads} thread(s)"
        " (ratio of CPU ms to fp32 matmul)"
    )
    header = "".join(f"{f'L={n} P={p}':>25}" for n, p in cases)
    print(f"{'':22}{header}")
    results = {}
    for length, past_len in cases:
        ids = rng.integers(0, spec.vocab_size, length)
        past = None
        if past_len:
            shape = (1, spec.num_kv_heads, past_len, spec.head_dim)
            past = [(rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32))]
            past = past * spec.num_layers
        runs = {
            name: (sess, graph_feeds(spec, options, ids, np.arange(length) // 8, past=past))
            for name, (sess, options) in sessions.items()
        }
        repeats = args.repeats if length < 256 else max(2, args.repeats // 2)
        results[length, past_len] = interleaved_ms(runs, repeats)
    for name in sessions:
        cells = ""
        for case in cases:
            wall_ms, cpu_ms = results[case][name]
            cells += f"{cpu_ms:>8.1f} /{wall_ms:>7.1f} ({cpu_ms / results[case]['fp32 matmul'][1]:.2f})"
        print(f"{name:22}{cells}")


def attention_section(loaded, args) -> None:
    """One decoder layer with the model's attention shapes and a tiny MLP/vocab: the attention op dominates."""
    spec = replace(loaded.spec, num_layers=1, intermediate_size=32, vocab_size=256, tie_word_embeddings=True)
    rng = np.random.default_rng(1)
    weights = {}
    for name, shape in expected_shapes(spec).items():
        weights[name] = (rng.standard_normal(shape) * 0.05 + (1.0 if len(shape) == 1 else 0.0)).astype(
            np.float32
        )
    sessions = {}
    for attention in ATTENTION_FORMULATIONS:
        options = GraphOptions(quantization="fp32", attention=attention, adapter_slots=0, top_k=4)
        sessions[attention] = (session(build_graph(spec, weights, options), args.threads), options)
    print(
        f"\nattention alone: one layer of {spec.num_heads} heads / {spec.num_kv_heads} KV heads, CPU ms (ratio vs matmul)"
    )
    for length, past_len in [(8, 0), (8, 256), (64, 0), (64, 512), (256, 0), (256, 1024)]:
        ids = rng.integers(0, spec.vocab_size, length)
        shape = (1, spec.num_kv_heads, past_len, spec.head_dim)
        past = [(rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32))]
        runs = {
            name: (sess, graph_feeds(spec, options, ids, np.arange(length) // 8, past=past))
            for name, (sess, options) in sessions.items()
        }
        ms = {name: cpu for name, (_, cpu) in interleaved_ms(runs, args.repeats * 4).items()}
        cells = "  ".join(
            f"{name} {ms[name]:.3f} ({ms[name] / ms['matmul']:.2f})" for name in ATTENTION_FORMULATIONS
        )
        print(f"  L={length:<4} P={past_len:<5} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the default model (fetched on first use)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    if args.checkpoint is None:
        from ruvdllm_export.default_model import default_gguf_path

        args.checkpoint = default_gguf_path()
    print(f"checkpoint: {args.checkpoint}\nonnxruntime {ort.__version__}, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        tmp = Path(tmp)
        exports = {
            "q4 cpu (acc 0)": export_child(args.checkpoint, tmp / "q4"),
            "q4 cpu (acc 4)": export_child(args.checkpoint, tmp / "q4-acc4", "--accuracy-level", "4"),
            "fp32 (no validation)": export_child(
                args.checkpoint, tmp / "fp32", "--quantization", "fp32", "--no-validate"
            ),
        }
        base = exports["fp32 (no validation)"]["size_mb"]
        print(
            "\nexport: wall s (child process, incl. interpreter start), peak RSS MB, model size MB (ratio vs fp32)"
        )
        for name, r in exports.items():
            v = r["validation"]
            agreement = (
                f"top-1 vs torch {v['top1_agreement']:.3f} (vs checkpoint {v['top1_agreement_vs_checkpoint']:.3f}),"
                f" logits gap {v['parity']['paragraph']['logits']:.2g}"
                if "top1_agreement" in v
                else "not validated"
            )
            print(
                f"  {name:22} {r['seconds']:6.1f} s  {r['peak_mb']:6.0f} MB  "
                f"{r['size_mb']:7.1f} MB ({r['size_mb'] / base:.3f})  {agreement}"
            )
        loaded = load_checkpoint(args.checkpoint)
        latency_section(loaded, tmp / "q4", args)
    attention_section(loaded, args)
    print(
        f"\npeak RSS of this process (sessions above): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
