"""What the GGUF's exact numerics cost the AR graph's one-row forward, beside onnxruntime-genai's.

The cpu target's AR graph (`model_ar.onnx`) computes what the GGUF holds: every Q4_1 linear is a
MatMulNBits plus a small float branch for its block minimums (ruvdllm_export/onnx_graph/linear.py),
and the Q8_0 token table is an 8-bit head. onnxruntime-genai's graph, the speed goal's baseline,
re-quantizes the same weights to int4 with integer zero points and a 4-bit head: no branch, half
the head's bytes, and 28 points less top-1 agreement with the float model (benchmarks/README.md,
"Accuracy level 0 vs 4"). This times the shipped AR graph against copies of it without the
minimum branches, with a 4-bit head in place of the 8-bit one, and with neither — timing only: the
copies' outputs are wrong — and genai's own graph, one token after the same cached length, rounds
interleaved:

    python benchmarks/exactness_cost.py [--model DIR] [--threads 2] [--rounds 6] [--forwards 40]

What is left between "neither" and genai is the graph itself; what lies between the shipped graph
and "neither" is the price of the GGUF's numerics.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runtime
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts: the baselines

from runtime_bench import one_row_forward_ms  # noqa: E402

from runtime import artifact  # noqa: E402
from runtime.cpython_model import open_model  # noqa: E402
from runtime.ort_backend import OrtOptions  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402
from ruvdllm_export.onnx_graph.graph import forward_nodes  # noqa: E402

AR_GRAPH = "model_ar.onnx"
CACHED = 100  # positions in the cache before the timed forwards: about a chat prompt and an answer


def without_minimum_branches(graph: onnx.GraphProto) -> int:
    """Every Add that joins a MatMulNBits to its block-minimum branch passes the MatMulNBits
    through instead; the branches, now unread, are dropped. Returns the Adds removed."""
    nbits = {o for n in graph.node if n.op_type == "MatMulNBits" for o in n.output}
    bypass = {
        n.output[0]: next(i for i in n.input if i in nbits)
        for n in graph.node
        if n.op_type == "Add" and any(i in nbits for i in n.input)
    }
    kept = [n for n in graph.node if n.output[0] not in bypass]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = bypass.get(name, name)
    outputs = {o.name for o in graph.output}
    while True:  # drop what nothing reads any more
        read = {i for n in kept for i in n.input} | outputs
        alive = [n for n in kept if any(o in read for o in n.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    del graph.node[:]
    graph.node.extend(kept)
    read = {i for n in kept for i in n.input}
    unread = [t for t in graph.initializer if t.name not in read]
    for tensor in unread:  # the branches' minimums, left in the data file
        graph.initializer.remove(tensor)
    return len(bypass)


def with_4bit_head(graph: onnx.GraphProto, rng: np.random.Generator) -> int:
    """The 8-bit MatMulNBits (the head over the Q8_0 table) as a 4-bit one of the same shape, with
    random codes in an initializer of its own. Returns the nodes changed."""
    changed = 0
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "MatMulNBits" or attrs["bits"].i != 8:
            continue
        n, k, block = attrs["N"].i, attrs["K"].i, attrs["block_size"].i
        codes = rng.integers(0, 256, (n, -(-k // block), block // 2), dtype=np.uint8)
        name = f"{node.input[1]}.as_4bit"
        graph.initializer.append(numpy_helper.from_array(codes, name))
        node.input[1] = name
        attrs["bits"].i = 4
        changed += 1
    return changed


def variant(source: Path, target: Path, minimums: bool, head_8bit: bool, graph: str = AR_GRAPH) -> Path:
    """A copy of the model directory (files linked, `graph` rewritten, a new manifest)."""
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.is_file() and entry.name not in (graph, artifact.MANIFEST_NAME):
            os.link(entry, target / entry.name)
    model = onnx.load(str(source / graph), load_external_data=False)
    if not minimums:
        without_minimum_branches(model.graph)
    if not head_8bit:
        with_4bit_head(model.graph, np.random.default_rng(0))
    onnx.save(model, str(target / graph))
    artifact.write_manifest(target)
    return target


def open_genai(threads: int):
    """genai's graph of the default model's GGUF (baselines.GenaiGraph), or None and why not."""
    try:
        from baselines import GenaiGraph

        from ruvdllm_export.default_model import default_gguf_path

        return GenaiGraph.open(default_gguf_path(), threads), ""
    except Exception as exc:  # the `bench` extra (onnxruntime-genai's builder) is optional
        return None, f"not measured ({exc})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, help="exported cpu model directory (default: the default model)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--forwards", type=int, default=40, help="timed forwards per contender per round")
    parser.add_argument("--no-genai", action="store_true")
    args = parser.parse_args()
    source = args.model
    if source is None:
        from ruvdllm.default_artifact import default_model_dir

        source = default_model_dir("cpu")
    if not (source / AR_GRAPH).is_file():
        print(f"{source}: no {AR_GRAPH} (export for the cpu target)", file=sys.stderr)
        return 1
    options = OrtOptions(intra_op_threads=args.threads)
    ids = list(range(100, 100 + CACHED))
    with tempfile.TemporaryDirectory() as scratch:
        directories = {
            "as shipped (exact)": source,
            "no block-minimum branches": variant(source, Path(scratch, "a"), minimums=False, head_8bit=True),
            "4-bit head": variant(source, Path(scratch, "b"), minimums=True, head_8bit=False),
            "neither": variant(source, Path(scratch, "c"), minimums=False, head_8bit=False),
        }
        models = {
            name: open_model(
                directory, options=options, settings=GenerationSettings(sampler="ar"), verify="sizes"
            )
            for name, directory in directories.items()
        }
        genai, reason = (None, "skipped") if args.no_genai else open_genai(args.threads)
        times: dict[str, list[float]] = {name: [] for name in models}
        if genai is not None:
            times["onnxruntime-genai"] = []
        for _ in range(args.rounds):  # round-robin: a busy machine slows every contender alike
            for name, model in models.items():
                times[name].append(statistics.median(one_row_forward_ms(model, ids, 1, args.forwards)))
            if genai is not None:
                times["onnxruntime-genai"].append(
                    statistics.median(genai.one_token_ms(CACHED, args.forwards))
                )
        nodes = {
            name: len(forward_nodes(onnx.load(str(d / AR_GRAPH), load_external_data=False)))
            for name, d in directories.items()
        }
    base = statistics.median(times["as shipped (exact)"])
    print(
        f"{source.name}: one-row forward after {CACHED} cached positions, {args.threads} thread(s), "
        f"onnxruntime {ort.__version__}; median of {args.rounds} rounds (each the median of {args.forwards})"
    )
    print(f"{'':28s} {'nodes/forward':>13s} {'median ms':>10s} {'min ms':>8s} {'x shipped':>10s}")
    for name, values in times.items():
        count = str(nodes[name]) if name in nodes else "-"
        median = statistics.median(values)
        print(f"{name:28s} {count:>13s} {median:10.2f} {min(values):8.2f} {median / base:10.3f}")
    if genai is None:
        print(f"onnxruntime-genai: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
