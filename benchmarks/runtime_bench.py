"""Runtime benchmark: our graph against autoregressive baselines on the same GGUF, threads and run.

    python benchmarks/runtime_bench.py [--model DIR] [--gguf FILE] [--threads 2] [--length 64]
        [--sections speed decoding adapters index hf reference]

`speed` (the default section) prints, in one run:

  llama.cpp AR            tokens/s, ms per decoded token (benchmarks/baselines.py)
  onnxruntime-genai AR    the same on the graph its own builder writes from the same weights
  our graph, block 1      BD3LM with block 1 = AR decoding through our graph: tokens/s, and ms per
                          forward as the sampler runs it (one row per token) and of a bare one-row
                          forward after the prompt (the graph alone)
  block-8 step            ms per step of BD3LM block 8 (one token per step), ÷ the one-row forward
  default decoding        tokens/s of `ruvdllm generate`'s defaults
  peak RSS                of a `ruvdllm generate` process on the same model (a subprocess: this one
                          also holds llama.cpp, onnxruntime-genai and torch)
  nodes                   per forward, from the export report

`session` compares onnxruntime's intra-op threads (1 / 2) and spinning (on / off) on the same model.

`rows` times one forward of 1 / 2 / 4 / 8 rows after the prompt, llama.cpp's (logits for every
row) beside our graph's, interleaved: what one more row costs either engine on this CPU.

Ratios compare numbers measured in this run; every measurement is repeated `--repeats` times,
round-robin across the contenders; the median and the best run (the least disturbed on a shared
machine) are printed, with their ratios.
The other sections are the earlier, longer tables (benchmarks/README.md):

  decoding    tokens/s and ms/step for MDLM and BD3LM (block 32 / 8), low-confidence and threshold
              decoding, and BD3LM with block 1, per length
  adapters    step time with TALoRA + DGR on / off (bank of 8 slots, 10,000 DGR patterns), and
              with / without the bank branch in the graph (--model-without-adapters)
  index       hnswlib knn p50 / p99 at 10,000 patterns of the model's hidden size
  hf          Hugging Face `generate` on the dequantized GGUF (AR)
  reference   ORT runtime / torch reference sampler (same algorithm, same prompt)

Every generation runs `length` tokens (no EOS stop) so configurations are comparable.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import BaselineResult, LlamaCppRows, genai_ar, llama_cpp_ar  # noqa: E402
from runtime_tables import (  # noqa: E402
    adapters_section,
    decoding_section,
    graph_branch_section,
    hf_baseline,
    index_section,
    llama_cpp_baseline,
    reference_section,
)

from runtime.backend import Chunk  # noqa: E402
from runtime.chat_template import chat_prompt  # noqa: E402
from runtime.cpython_model import open_model  # noqa: E402
from runtime.model import DiffusionModel  # noqa: E402
from runtime.ort_backend import OrtOptions  # noqa: E402
from runtime.settings import USER_ACCEPTANCE, GenerationSettings, settings_from  # noqa: E402

PROMPT = "Explain what a diffusion language model is, in a few sentences."
ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("speed", "session", "rows", "decoding", "adapters", "index", "hf", "reference")
ROWS = (1, 2, 4, 8)  # the rows section's forwards: one token, a verified forward's drafts, a block


def row(*cells, widths=(34, 8, 8, 12, 12, 10)) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))


def one_row_forward_ms(model: DiffusionModel, ids: list[int], rows: int, repeats: int) -> list[float]:
    """Bare forwards of `rows` rows after the prompt in the cache (no sampler): the graph's own cost."""
    backend = model.backend
    backend.reset()
    gate = 0.0 if getattr(backend, "ar_only", False) else None  # the AR graph's rows are gate-0 rows
    prompt = Chunk(
        input_ids=ids,
        position_ids=list(range(len(ids))),
        block_ids=list(range(len(ids))),
        output_offset=len(ids) - 1,
        adapter_weights=[[0.0] * model.config.adapter_slots for _ in ids],
        adapter_gate=None if gate is None else [gate] * len(ids),
    )
    backend.forward(prompt)
    backend.commit(len(ids))
    chunk = Chunk(
        input_ids=[model.config.mask_token_id] * rows,
        position_ids=list(range(len(ids), len(ids) + rows)),
        block_ids=[0] * rows,
        output_offset=0,
        adapter_weights=[[0.0] * model.config.adapter_slots for _ in range(rows)],
        adapter_gate=None if gate is None else [gate] * rows,
    )
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        backend.forward(chunk)
        times.append((time.perf_counter() - started) * 1e3)
    return times


def peak_rss_of_generate(directory: Path, threads: int, length: int) -> float | None:
    """Peak RSS (MB) of `ruvdllm generate` on the model, measured inside a fresh process (Linux)."""
    # VmHWM, not getrusage's ru_maxrss: the latter can carry the (large) parent's RSS across the
    # fork + exec that started the child.
    probe = (
        "import re, sys; from ruvdllm.cli import main; rc = main(sys.argv[1:]); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "print('peak_rss_kb', hwm, file=sys.stderr); sys.exit(rc)"
    )
    args = ["generate", PROMPT, "--model", str(directory), "--length", str(length)]
    args += ["--threads", str(threads), "--json"]
    done = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    lines = done.stderr.strip().splitlines()
    peak = [line.split()[1] for line in lines if line.startswith("peak_rss_kb ")]
    if done.returncode != 0 or not peak:
        print(f"ruvdllm generate failed: {(lines or ['?'])[-1]}")
        return None
    return int(peak[0]) / 1024


def speed_section(model: DiffusionModel, directory: Path, gguf: Path | None, ids, args) -> None:
    length, threads, repeats = args.length, args.threads, args.repeats
    print(
        f"\n== speed: {length} tokens after a {len(ids)}-token prompt, {threads} thread(s), median of {repeats} =="
    )
    base = GenerationSettings(length=length, stop_at_eos=False, talora=False, dgr=False)
    ours = {
        "block 1": replace(base, sampler="bd3lm", block_size=1),
        "block 8": replace(base, sampler="bd3lm", block_size=8),
        # `ruvdllm generate`'s defaults: the user-facing acceptance (lenient when greedy), not the library's
        "default": settings_from({"length": length, "stop_at_eos": False, "acceptance": USER_ACCEPTANCE}),
    }
    runs: dict[str, list] = {name: [] for name in ours}
    baselines: dict[str, list[BaselineResult]] = {"llama.cpp": [], "onnxruntime-genai": []}
    # opened as `ruvdllm generate` opens it for its defaults: on the AR graph where only `ar` will run
    # (which the row cost recorded for this machine decides: measured now if there is none yet)
    model.extra_row_cost()
    as_run = open_model(
        directory, options=OrtOptions(intra_op_threads=threads), settings=ours["default"], verify="sizes"
    )
    as_run = model if as_run.backend.graph == model.backend.graph else as_run
    as_run.warm_up()
    floor, ar_graph_floor = [], []
    for _ in range(repeats):  # round-robin: a busy machine slows every contender alike
        for name, settings in ours.items():
            runs[name].append((as_run if name == "default" else model).generate(ids, settings, seed=0).result)
        floor += one_row_forward_ms(model, ids, 1, 8)
        if as_run is not model:
            ar_graph_floor += one_row_forward_ms(as_run, ids, 1, 8)
        if gguf is not None and "llama" not in args.skip:
            baselines["llama.cpp"].append(llama_cpp_ar(gguf, ids, length, threads, repeats=1))
        if gguf is not None and "genai" not in args.skip:
            baselines["onnxruntime-genai"].append(genai_ar(gguf, ids, length, threads, repeats=1))

    def step_ms(results) -> float:  # forwards after each generation's first (which carries the prompt)
        return statistics.median(e.forward_ms for r in results for e in r.trace[1:])

    # tokens/s per contender: the median, and the best run (the least disturbed on a busy machine)
    rates: dict[str, list[float]] = {}
    decode_ms: dict[str, float] = {}
    for name, results in baselines.items():
        ok = [r for r in results if r.tokens_per_s is not None]
        if not ok:
            reason = results[0].reason if results else "skipped (no --gguf, or --skip)"
            print(f"{name} not measured: {reason}")
            continue
        rates[f"{name} AR"] = [r.tokens_per_s for r in ok]
        decode_ms[f"{name} AR"] = statistics.median(r.ms_per_token for r in ok)
    labels = {
        "block 1": "ours, block 1 (AR)",
        "block 8": "ours, block 8",
        "default": "ours, default decoding",
    }
    for name, label in labels.items():
        rates[label] = [len(r.tokens) / (r.wall_ms / 1e3) for r in runs[name]]
        decode_ms[label] = step_ms(runs[name])
    widths = (24, 9, 9, 11, 17, 17)
    print(row("", "tok/s", "best", "ms/forward", "x llama.cpp", "x genai", widths=widths))
    print(row("", "median", "", "(decode)", "median / best", "median / best", widths=widths))

    def vs(label: str, base: str) -> str:
        if base not in rates:
            return "-"
        median = statistics.median(rates[label]) / statistics.median(rates[base])
        return f"{median:.2f} / {max(rates[label]) / max(rates[base]):.2f}"

    for label, values in rates.items():
        cells = (f"{statistics.median(values):.1f}", f"{max(values):.1f}", f"{decode_ms[label]:.1f}")
        cells += (vs(label, "llama.cpp AR"), vs(label, "onnxruntime-genai AR"))
        print(row(label, *cells, widths=widths))
    extra_row = model.extra_row_cost()
    print(
        f"default decoding ran the {runs['default'][0].sampler} sampler on {as_run.backend.graph.name} (one more row costs "
        + (
            "not measured: the machine was busy"
            if extra_row is None
            else f"{extra_row:.2f} of a one-row forward"
        )
        + " here: runtime/row_cost.py)"
    )
    one_row = statistics.median(floor)
    reference = {name: statistics.median(rates[f"{name} AR"]) for name in baselines if f"{name} AR" in rates}
    print(
        f"\none-row forward (the graph alone, {len(ids)} cached): median {one_row:.2f} ms, min {min(floor):.2f} ms"
        f" -> {1e3 / one_row:.1f} forwards/s"
        + (f" = {1e3 / one_row / reference['llama.cpp']:.2f}x llama.cpp" if "llama.cpp" in reference else "")
        + (
            f", {1e3 / one_row / reference['onnxruntime-genai']:.2f}x genai"
            if "onnxruntime-genai" in reference
            else ""
        )
    )
    if ar_graph_floor:
        ar_row = statistics.median(ar_graph_floor)
        print(
            f"one-row forward of the AR graph ({as_run.backend.graph.name}): median {ar_row:.2f} ms, "
            f"min {min(ar_graph_floor):.2f} ms = {ar_row / one_row:.2f}x the full graph's"
            + (
                f" -> {1e3 / ar_row / reference['llama.cpp']:.2f}x llama.cpp"
                if "llama.cpp" in reference
                else ""
            )
            + (
                f", {1e3 / ar_row / reference['onnxruntime-genai']:.2f}x genai"
                if "onnxruntime-genai" in reference
                else ""
            )
        )
    block1, block8 = step_ms(runs["block 1"]), step_ms(runs["block 8"])
    print(f"block-1 step {block1:.2f} ms = {block1 / one_row:.2f}x the one-row forward")
    print(f"block-8 step {block8:.2f} ms = {block8 / one_row:.2f}x the one-row forward (goal <= 1.5)")
    graph = model.config.source.get("graph", {})
    nodes = graph.get("nodes") or count_nodes(directory)
    print(
        f"graph: {nodes} nodes per forward; target {'/'.join(model.config.targets)}, attention "
        f"{model.config.attention}, accuracy level {model.config.accuracy_level}, adapter slots "
        f"{model.config.adapter_slots}"
    )
    if "rss" not in args.skip:
        peak = peak_rss_of_generate(directory, threads, length)
        if peak is not None:
            print(f"peak RSS of `ruvdllm generate --length {length}`: {peak:.0f} MB (goal <= 300)")


def rows_section(model: DiffusionModel, gguf: Path | None, ids: list[int], args) -> None:
    """ms of one forward of each of ROWS rows after the prompt, llama.cpp beside our graph, rounds
    interleaved (`--repeats` rounds of 15 forwards; the medians of the round medians)."""
    print(f"\n== what more rows cost: one forward after {len(ids)} cached, {args.threads} thread(s) ==")
    llama = "no GGUF given" if gguf is None else LlamaCppRows.open(gguf, ids, args.threads, max(ROWS))
    if isinstance(llama, str):
        print(f"llama.cpp: skipped ({llama})")
        llama = None
    ours: dict[int, list[float]] = {rows: [] for rows in ROWS}
    theirs: dict[int, list[float]] = {rows: [] for rows in ROWS}
    for _ in range(args.repeats):
        for rows in ROWS:
            ours[rows].append(statistics.median(one_row_forward_ms(model, ids, rows, 15)))
            if llama is not None:
                theirs[rows].append(statistics.median(llama.forward_ms(rows, 15)))
    widths = (6, 10, 10, 14, 10)
    print(row("rows", "ours ms", "÷ one row", "llama.cpp ms", "÷ one row", widths=widths))
    for rows in ROWS:
        mine = statistics.median(ours[rows])
        cells = [f"{mine:.2f}", f"{mine / statistics.median(ours[1]):.2f}"]
        if llama is not None:
            other = statistics.median(theirs[rows])
            cells += [f"{other:.2f}", f"{other / statistics.median(theirs[1]):.2f}"]
        print(row(rows, *cells, widths=widths))


def session_section(directory: Path, ids: list[int], args) -> None:
    """onnxruntime session settings as users run them: intra-op threads 1 / 2 x spinning on / off,
    one-row forwards and block-1 decoding, round-robin (the ratios are what to read)."""
    print(f"\n== session settings: one-row forward and block-1 decoding, median of {args.repeats} rounds ==")
    settings = GenerationSettings(length=args.length, sampler="bd3lm", block_size=1, stop_at_eos=False)
    configs = {
        f"threads {threads}, spinning {'on' if spin else 'off'}": OrtOptions(
            intra_op_threads=threads, spinning=spin
        )
        for threads in (1, 2)
        for spin in (True, False)
    }
    models = {name: open_model(directory, options=options) for name, options in configs.items()}
    forward: dict[str, list[float]] = {name: [] for name in models}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            forward[name] += one_row_forward_ms(model, ids, 1, 8)
            done = model.generate(ids, settings, seed=0)
            rates[name].append(len(done.tokens) / (done.result.wall_ms / 1e3))
    first = next(iter(models))
    print(row("", "fwd ms", "tokens/s", "x first", widths=(28, 10, 10, 10)))
    for name in models:
        rate = statistics.median(rates[name])
        ratio = rate / statistics.median(rates[first])
        print(
            row(
                name,
                f"{statistics.median(forward[name]):.2f}",
                f"{rate:.1f}",
                f"{ratio:.2f}",
                widths=(28, 10, 10, 10),
            )
        )


def count_nodes(directory: Path) -> int:
    import onnx

    return len(onnx.load(str(directory / "model.onnx"), load_external_data=False).graph.node)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="exported model directory (default: the default model)")
    parser.add_argument(
        "--gguf",
        type=Path,
        help="the GGUF it was exported from (default: the default model's, for its model)",
    )
    parser.add_argument(
        "--model-without-adapters",
        type=Path,
        help="the same model exported with --adapter-slots 0 (branch cost, section adapters)",
    )
    parser.add_argument("--sections", nargs="+", default=["speed"], choices=SECTIONS)
    parser.add_argument("--length", type=int, default=64, help="tokens per generation (speed section)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256], help="decoding section")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--reference-length", type=int, default=16, help="tokens for the (slow) torch reference"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patterns", type=int, default=10_000)
    parser.add_argument("--skip", nargs="*", default=[], help="in speed: llama genai rss")
    args = parser.parse_args()

    directory, gguf = args.model, args.gguf
    if directory is None:
        from ruvdllm.default_artifact import default_model_dir
        from ruvdllm_export.default_model import default_gguf_path

        directory = default_model_dir("cpu")
        gguf = gguf or default_gguf_path()
    model = open_model(directory, options=OrtOptions(intra_op_threads=args.threads))
    text = chat_prompt(model, [{"role": "user", "content": PROMPT}])
    ids = model.encode(text)
    print(
        f"model {directory} ({model.config.num_layers} layers, hidden {model.config.hidden_size}); "
        f"prompt {len(ids)} tokens; threads {args.threads}; onnxruntime {ort.__version__}"
    )
    model.warm_up()
    if "speed" in args.sections:
        speed_section(model, directory, gguf, ids, args)
    if "session" in args.sections:
        session_section(directory, ids, args)
    if "rows" in args.sections:
        rows_section(model, gguf, ids, args)
    diffusion = (
        decoding_section(model, ids, args.lengths, args.repeats) if "decoding" in args.sections else {}
    )
    if "adapters" in args.sections:
        off_ms = adapters_section(model, ids, min(args.lengths), args.patterns, args.repeats)
        if args.model_without_adapters is not None:
            graph_branch_section(
                args.model_without_adapters, ids, min(args.lengths), args.threads, args.repeats, off_ms
            )
    if "index" in args.sections:
        index_section(model.config.hidden_size, args.patterns)
    if set(args.sections) & {"decoding", "adapters", "index"}:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\n== memory ==\npeak RSS of this process (model, bank, index): {peak_mb:.0f} MB")
    if gguf is None or not set(args.sections) & {"hf", "reference", "decoding"}:
        return 0
    hf = hf_baseline(gguf, ids, args.lengths, args.threads, args.repeats) if "hf" in args.sections else {}
    llama = (
        llama_cpp_baseline(gguf, ids, args.lengths, args.threads, args.repeats)
        if "decoding" in args.sections
        else {}
    )
    if "reference" in args.sections:
        reference_section(model, directory, gguf, ids, args.reference_length, args.threads)
    if diffusion:
        print("\n== diffusion tokens/s / AR tokens/s (same machine, same run) ==")
        print(row("configuration", "length", "", "/ HF", "/ llama.cpp"))
        for (name, length), rate in diffusion.items():
            vs_hf = f"{rate / hf[length]:.2f}" if length in hf else "-"
            vs_llama = f"{rate / llama[length]:.2f}" if length in llama else "-"
            print(row(name, length, "", vs_hf, vs_llama))
    return 0


if __name__ == "__main__":
    sys.exit(main())
