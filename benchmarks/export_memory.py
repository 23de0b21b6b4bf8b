"""Export memory benchmark: the peak resident memory of `ruvdllm export` against the bound it aims at.

    python benchmarks/export_memory.py                        # the default model (SmolLM2-135M GGUF)
    python benchmarks/export_memory.py --checkpoint PATH      # any checkpoint
    python benchmarks/export_memory.py --synthetic DIR        # a Llama-3.2-1B-shaped random checkpoint,
                                                              # built into DIR first if it is not there
    python benchmarks/export_memory.py --synthetic DIR --layers 2   # the same shapes, 2 layers: the
                                                              # same bound, a fraction of the time
    python benchmarks/export_memory.py --synthetic DIR --convert    # `ruvdllm convert` a few steps
                                                              # instead: its estimate vs its peak
    python benchmarks/export_memory.py --adapter shipped      # the default model with its conversion
                                                              # adapter baked in (as `ruvdllm` ships it)
    python benchmarks/export_memory.py --synthetic DIR --adapter synthetic   # a random adapter of the
                                                              # shipped one's layout (rank 8, 7 linears)

Each export runs in a fresh child process (`python -m ruvdllm export`, validation on), whose report
(config.json source.memory) gives each phase's own peak (on Linux; the running maximum elsewhere):
load, prepare (quantize), graph (built while streaming weights into model.onnx.data), save, and
validate's steps (checker, window_graph, reference: the streamed torch reference's forwards,
onnxruntime: the session and its runs). The progress lines' peak is the child's high-water mark
since its last phase boundary. Printed beside it:

  bound     2 x the largest decoder layer + the token table, both in float32 (docs/checkpoints.md)
  baseline  a child that only imports what the exporter imports (torch, onnx, onnxruntime, ...)

The synthetic model has Llama 3.2 1B's shapes (hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocab
128,256, tied table, llama3 RoPE scaling; 1.24B parameters) with random bf16 weights written
shard by shard, and the small BPE tokenizer the tests build (a model's vocabulary may exceed its
tokenizer's). Building it needs ~2.5 GB of disk and ~1 GB of memory. The bound
depends on the largest layer and the table only, so a shallower copy (--layers) has the same
bound: a streamed export's peak must not depend on the depth. Absolute times on a shared machine
are noisy; memory figures are not.

--adapter bakes a conversion adapter in (`ruvdllm export --adapter`): PATH, `shipped` (the default
model's, ruvdllm_export/adapters/), or `synthetic`: random factors of the shipped adapter's layout
(rank 8, alpha 16, every linear of every layer) for the checkpoint, written for the run. The
graph then carries float LoRA side branches and the adapter switch, and validation also runs the
gate-0 rows against the base weights.

--convert runs `ruvdllm convert` (seq-len 64, batch 1, gradient checkpointing, 2 optimizer
steps) on the checkpoint and prints the memory estimate it printed before training against the
child's measured peak (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_32_1B = {  # Llama-3.2-1B's config.json, as published
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
PHASES = ("load", "prepare", "graph", "save", "validate")
VALIDATE_STEPS = ("checker", "window_graph", "reference", "session", "onnxruntime")  # validate.<step>
SHARD_BYTES = 1 << 30  # ~1 GB shards, as released checkpoints are cut


def build_synthetic(directory: Path, config: dict = LLAMA_32_1B, seed: int = 0) -> Path:
    """Random bf16 weights of `config`'s shapes as sharded safetensors + index, config.json and a
    tokenizer.json; one shard in memory at a time."""
    import torch
    from safetensors.torch import save_file

    from ruvdllm_export.checkpoints.hf import spec_from_config
    from ruvdllm_export.spec import expected_shapes
    from tests.fixtures.tiny_tokenizer import make_tokenizer, tokenizer_config

    directory.mkdir(parents=True, exist_ok=True)
    spec, _ = spec_from_config(config, "synthetic config")
    rng = np.random.default_rng(seed)
    weight_map, shard, shard_bytes, files = {}, {}, 0, []

    def flush():
        nonlocal shard, shard_bytes
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        files.append(name)
        shard, shard_bytes = {}, 0

    for name, shape in expected_shapes(spec).items():
        if len(shape) == 1:  # norms: ones, as initialised
            values = np.ones(shape, np.float32)
        else:  # N(0, 1/in): activations keep their scale through the layers
            values = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[1]))
        shard[name] = torch.from_numpy(values).to(torch.bfloat16)
        shard_bytes += values.size * 2
        del values
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    index = {
        "metadata": {"total_size": sum((directory / f).stat().st_size for f in files)},
        "weight_map": weight_map,
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = make_tokenizer(2048)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tokenizer), indent=2))
    return directory


def build_synthetic_adapter(checkpoint: Path, path: Path, seed: int = 0) -> Path:
    """Random LoRA factors of the shipped adapter's layout (rank 8, alpha 16, all seven linears of
    every layer) for `checkpoint`, written to `path` as `ruvdllm convert` writes them."""
    from ruvdllm_export.adapters import DEFAULT_ADAPTER
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.convert.adapter_file import base_identity, read_adapter, write_adapter

    loaded = load_checkpoint(checkpoint)
    lora = read_adapter(DEFAULT_ADAPTER).lora
    rank, rng, factors = int(lora["rank"]), np.random.default_rng(seed), {}
    for layer in range(loaded.spec.num_layers):
        for proj, features in loaded.spec.linear_features().items():
            group = "self_attn" if proj.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            stem = f"model.layers.{layer}.{group}.{proj}"
            a = rng.standard_normal((rank, features.in_features)) / np.sqrt(features.in_features)
            factors[stem + ".lora_A.weight"] = a.astype(np.float32)
            factors[stem + ".lora_B.weight"] = (
                rng.standard_normal((features.out_features, rank)) * 0.01
            ).astype(np.float32)
    write_adapter(path, factors, lora, {"objective": "bd3lm", "block_size": 8}, base_identity(loaded))
    return path


def bound_mib(spec) -> dict[str, float]:
    """2 x the largest decoder layer + the token table, float32 MiB (the exporter's goal)."""
    from ruvdllm_export.spec import EMBED, expected_shapes

    shapes = expected_shapes(spec)
    layer = {}
    for name, shape in shapes.items():
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            layer[index] = layer.get(index, 0) + int(np.prod(shape))
    largest = max(layer.values()) * 4 / 2**20
    table = int(np.prod(shapes[EMBED])) * 4 / 2**20
    return {"layer_mib": largest, "table_mib": table, "bound_mib": 2 * largest + table}


def baseline_mib() -> float:
    code = (
        "import re, torch, onnx, onnxruntime, gguf, tokenizers, safetensors; "
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)"
    )
    return float(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    )


def _child_peak_mib(pid: int) -> float:
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return float("nan")
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def convert_child(checkpoint: Path, run_dir: Path, steps: int = 2) -> tuple[float, str, float]:
    """`ruvdllm convert` for `steps` steps in a child -> (seconds, its estimate line, peak MiB)."""
    data = [str(p) for p in sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))]
    command = [sys.executable, "-m", "ruvdllm", "convert", "--model", str(checkpoint), "--data", *data]
    command += ["--seq-len", "64", "--batch-size", "1", "--grad-accum", "1", "--max-steps", str(steps)]
    command += ["--warmup-steps", "1", "--anneal-steps", "1", "--eval-every", "0", "--eval-rows", "1"]
    command += ["--gradient-checkpointing", "--threads", "1", "--run-dir", str(run_dir)]
    started, estimate, peak = time.perf_counter(), "", 0.0
    child = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True
    )
    for line in child.stderr:  # the peak is read at each progress line (the last one is after training)
        peak = max(peak, _child_peak_mib(child.pid))
        estimate = line.strip() if "memory estimate" in line else estimate
        print(f"  [{time.perf_counter() - started:6.0f} s, peak {peak:6.0f} MiB] {line.rstrip()}", flush=True)
    if child.wait():
        raise SystemExit(f"convert failed with exit status {child.returncode}")
    return time.perf_counter() - started, estimate, peak


def export_child(checkpoint: Path | None, out: Path, adapter: Path | None = None) -> tuple[float, dict]:
    """`ruvdllm export` in a child; each progress line is echoed with the time and the child's
    peak so far, so a run stopped early still shows where its memory went."""
    command = [sys.executable, "-m", "ruvdllm", "export", "--out", str(out), "--force"]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    if adapter is not None:
        command += ["--adapter", str(adapter)]
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True
    )
    for line in child.stderr:
        peak = _child_peak_mib(child.pid)
        print(f"  [{time.perf_counter() - started:6.0f} s, peak {peak:6.0f} MiB] {line.rstrip()}", flush=True)
    if child.wait():
        raise SystemExit(f"export failed with exit status {child.returncode}")
    seconds = time.perf_counter() - started
    return seconds, json.loads((out / "config.json").read_text())["source"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to export (default: the default model)")
    parser.add_argument(
        "--synthetic", type=Path, help="build (if missing) and export the 1B synthetic model here"
    )
    parser.add_argument("--out", type=Path, help="model directory (default: a temporary one)")
    parser.add_argument("--layers", type=int, help="with --synthetic: build this many layers (default 16)")
    parser.add_argument("--convert", action="store_true", help="run convert a few steps instead of export")
    parser.add_argument("--adapter", help="conversion adapter to bake in: PATH, shipped or synthetic")
    args = parser.parse_args()

    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.default_model import default_gguf_path
    from ruvdllm_export.spec import expected_shapes

    checkpoint = args.checkpoint
    if args.synthetic is not None:
        if not (args.synthetic / "config.json").is_file():
            started = time.perf_counter()
            config = dict(LLAMA_32_1B, num_hidden_layers=args.layers or LLAMA_32_1B["num_hidden_layers"])
            build_synthetic(args.synthetic, config)
            print(f"built {args.synthetic} in {time.perf_counter() - started:.0f}s")
        checkpoint = args.synthetic
    adapter = None
    if args.adapter == "shipped":
        from ruvdllm_export.adapters import DEFAULT_ADAPTER

        adapter = DEFAULT_ADAPTER
    elif args.adapter == "synthetic":
        scratch = tempfile.TemporaryDirectory()  # removed when the benchmark exits
        adapter = build_synthetic_adapter(
            checkpoint or default_gguf_path(), Path(scratch.name) / "adapter-r8.safetensors"
        )
    elif args.adapter is not None:
        adapter = Path(args.adapter)
    spec = load_checkpoint(checkpoint or default_gguf_path()).spec
    params = sum(int(np.prod(s)) for s in expected_shapes(spec).values())
    bound = bound_mib(spec)
    base = baseline_mib()
    if args.convert:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, estimate, peak = convert_child(checkpoint or default_gguf_path(), Path(tmp) / "run")
        print(f"\ncheckpoint  {checkpoint or 'default model'}: {params / 1e9:.3f}B parameters")
        print(f"convert     {seconds:.0f}s wall, seq-len 64, batch 1, gradient checkpointing")
        print(f"estimate    {estimate.split(': ', 1)[-1]}")
        print(f"measured    peak {peak:.0f} MiB = {peak / 1024:.2f} GiB (baseline imports {base:.0f} MiB)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "model"
        seconds, source = export_child(checkpoint, out, adapter)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    memory = source["memory"]
    validation = source["validation"]
    print(
        f"\ncheckpoint  {checkpoint or 'default model'}: {spec.architecture}, {params / 1e9:.3f}B parameters"
        + (f", adapter {adapter.name}" if adapter else "")
    )
    print(
        f"export      {seconds:.0f}s wall, artifact {size:.0f} MiB, top-1 vs checkpoint "
        f"{validation.get('top1_agreement_vs_checkpoint', float('nan')):.3f}"
    )
    print(
        f"bound       2 x layer {bound['layer_mib']:.0f} MiB + table {bound['table_mib']:.0f} MiB = {bound['bound_mib']:.0f} MiB"
    )
    print(f"baseline    imports alone {base:.0f} MiB")
    print(f"peaks       {memory.get('peaks', 'running maximum')} (validate: the largest of its steps)")
    print(f"{'phase':<22} {'peak MiB':>9} {'RSS after':>10}")
    names = [*PHASES[:-1], *(f"validate.{step}" for step in VALIDATE_STEPS), PHASES[-1]]
    for phase in names:  # config.json stores them sorted by name: print them in the order they ran
        entry = memory["phases"].get(phase)
        if entry is not None:
            print(f"{phase:<22} {entry.get('peak_rss_mib', 0):>9.0f} {entry.get('rss_mib', 0):>10.0f}")
    peak = memory["peak_rss_mib"]
    print(
        f"peak        {peak:.0f} MiB = {peak / bound['bound_mib']:.2f} x the bound, "
        f"{(peak - base) / bound['bound_mib']:.2f} x above the imports' baseline"
    )


if __name__ == "__main__":
    main()
