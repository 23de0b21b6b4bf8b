"""Validation run on every export: onnx.checker, then onnxruntime CPU against a reference model.

The parity check feeds the graph what a BD3LM sampler feeds it — a cached prefix, a block-causal
chunk with masked positions, output_offset > 0, a per-position mixture of random adapter slots —
and compares every output with the reference running the very weights the graph holds, within a
per-architecture tolerance. The agreement check runs a real paragraph causally (the AR model as it
was trained) and counts how often onnxruntime's top-1 token equals the reference's, both on the
held weights and on the checkpoint's own weights (the second includes what quantization changed).
A graph with the adapter switch (adapter_gate) also runs the paragraph with the gate at 0 against
the base weights without the conversion adapter: those rows must be the AR model.

The reference is the torch model (ruvdllm_export/reference) when torch is importable. Without
torch (the user's export path) it is the same architecture as an fp32 graph of plain MatMuls and
MatMul+Softmax attention on onnxruntime: independent of MatMulNBits, the fused attention ops and
their kernels, though not of this builder (the tests check the builder against transformers).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from runtime import artifact
from runtime.artifact import bank_factor_shapes
from runtime.resident import release_load_memory
from runtime.widening import add_widened_initializers, has_widened, read_index
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.onnx_graph import GraphOptions, build_graph
from ruvdllm_export.spec import ModelSpec

Outputs = dict[str, np.ndarray]
Feeds = dict[str, np.ndarray]

# A real paragraph (written for this project) for the top-1 agreement check.
PARAGRAPH = (
    "The printing press changed how ideas travelled. Before it, a book was copied by hand, one page at a "
    "time, and a single volume could take a scribe many months. When Johannes Gutenberg combined movable "
    "metal type with an oil-based ink and a press adapted from those used for wine, a workshop could "
    "produce hundreds of identical pages in a day. Prices fell, more people learned to read, and scholars "
    "in distant cities could compare the same text line by line. Within fifty years, presses were running "
    "in more than two hundred towns across Europe, printing bibles, grammars, calendars and pamphlets. "
    "Historians still argue about how much the press caused and how much it merely accelerated, but few "
    "doubt that the cheap, reliable copy was one of the quiet foundations of modern science."
)


@dataclass(frozen=True)
class Tolerance:
    logits: float  # max |Δ| / max |reference| over top-k logits and logsumexp
    entropy: float  # max |Δ| in nats
    query: float  # max |Δ| between unit query vectors
    cache: float  # max |Δ| / max |reference| over present keys/values
    top1: float  # least top-1 agreement with the reference on the paragraph (held weights)


# Per architecture and MatMulNBits accuracy level. Level 0 computes in float32: the gap is float
# rounding (SmolLM2: logits 5e-6, top-1 100%). Level 4 quantizes activations to int8 per block of
# 32, which compounds over layers: SmolLM2 measured logits 0.056, entropy 0.41 nats, cache 0.061,
# top-1 94.9% — so level 4 gets bounds that catch a wrong graph, not int8 noise. Qwen2's q/k biases
# give it larger activations, hence more room.
_EXACT = Tolerance(logits=2e-4, entropy=2e-3, query=2e-3, cache=2e-4, top1=0.99)
TOLERANCES: dict[str, dict[int, Tolerance]] = {
    "llama": {0: _EXACT, 4: Tolerance(logits=0.1, entropy=0.8, query=0.2, cache=0.15, top1=0.9)},
    "qwen2": {0: _EXACT, 4: Tolerance(logits=0.15, entropy=1.0, query=0.25, cache=0.2, top1=0.85)},
    "qwen3": {0: _EXACT, 4: Tolerance(logits=0.1, entropy=0.8, query=0.2, cache=0.15, top1=0.9)},
}


def tolerance_for(architecture: str, options: GraphOptions) -> Tolerance:
    # widened linears compute in float32 (level 0); int8 ones quantize activations (level 4's kind)
    level = {"fp32": 0, "widened": 0, "int8": 4}.get(options.quantization, options.accuracy_level)
    per_level = TOLERANCES.get(architecture, TOLERANCES["llama"])
    return per_level[0] if level == 0 else per_level.get(level, per_level[4])


# --- the reference models -------------------------------------------------------------------------
def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


REFERENCE_KINDS = {
    True: "torch reference model (ruvdllm_export.reference)",
    False: "onnxruntime fp32 MatMul graph (torch not installed)",
}


def reference_model(spec: ModelSpec, weights: dict, options: GraphOptions, lora: dict | None = None):
    """The reference the graphs are checked against, as a function of feeds: the torch model where
    torch is installed, else onnxruntime's fp32 MatMul graph of the same weights."""
    if torch_available():
        return torch_reference(spec, weights, options.top_k, options.max_position, lora)
    return onnx_fp32_reference(spec, weights, options, lora)


def torch_reference(
    spec: ModelSpec,
    weights: dict,
    top_k: int,
    max_position: int | None = None,
    lora: dict | None = None,
) -> Callable[[Feeds], Outputs]:
    """The torch model as a function of graph feeds → graph outputs (numpy), one layer resident at
    a time (reference/streamed.py). `weights` may be the packed ones the graph holds (4-bit linears
    run dequantized on the fly) or lazy ones; `lora` (name -> StaticLora) runs as side branches, as
    in the graph. No float copy of the model is made."""
    from ruvdllm_export.reference.streamed import StreamedReference

    return StreamedReference(spec, weights, top_k, max_position, lora)


def onnx_fp32_reference(
    spec: ModelSpec, weights: dict, options: GraphOptions, lora: dict | None = None
) -> Callable[[Feeds], Outputs]:
    """The fp32 MatMul/MatMul+Softmax graph of the same weights on onnxruntime (no torch needed)."""
    plain = GraphOptions(
        quantization="fp32",
        attention="matmul",
        top_k=options.top_k,
        adapter_targets=options.adapter_targets,
        adapter_slots=options.adapter_slots,
        adapter_rank=options.adapter_rank,
        max_position=options.max_position,
        adapter_switch=options.adapter_switch,
    )
    sess = _session(build_graph(spec, weights, plain, lora=lora).SerializeToString())
    return lambda feeds: _run(sess, feeds)


# --- running the exported graph -------------------------------------------------------------------
def _session(model: str | bytes, provider: str = "CPUExecutionProvider") -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # keep onnxruntime's warnings off the user's terminal
    widened = add_widened_initializers(opts, Path(model)) if isinstance(model, str) else []
    sess = ort.InferenceSession(model, opts, providers=[provider])
    sess.widened_weights = widened  # the wasm target's, widened as the runtime widens them: kept alive
    if isinstance(model, str):  # as the runtime does once it has loaded (runtime/resident.py)
        release_load_memory([p for p in Path(model).parent.iterdir() if p.is_file()])
    return sess


def _run(sess: ort.InferenceSession, feeds: Feeds) -> Outputs:
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted}), strict=True))


def graph_feeds(
    spec: ModelSpec,
    options: GraphOptions,
    ids: np.ndarray,
    block_ids: np.ndarray,
    *,
    past: list[tuple[np.ndarray, np.ndarray]] | None = None,
    output_offset: int = 0,
    mix: np.ndarray | None = None,
    banks: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    gate: float = 1.0,
) -> Feeds:
    """Feeds for every input a graph of `options` may have; `gate` fills adapter_gate (dropped by
    _run when the graph has no switch)."""
    s, p = len(ids), (0 if not past else past[0][0].shape[2])
    feeds = {
        artifact.INPUT_IDS: np.asarray(ids, np.int64)[None],
        artifact.POSITION_IDS: np.arange(p, p + s, dtype=np.int64)[None],
        artifact.BLOCK_IDS: np.asarray(block_ids, np.int64)[None],
        artifact.OUTPUT_OFFSET: np.array([output_offset], np.int64),
        artifact.ADAPTER_GATE: np.full((1, s), gate, np.float32),
        # a graph over a key/value buffer (the cpu target's): here the past fills its buffer
        artifact.SEQLENS_K: np.array([p + s - 1], np.int32),
        artifact.TOTAL_SEQUENCE_LENGTH: np.array(p + s, np.int32),
    }
    empty = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), np.float32)
    for layer in range(spec.num_layers):
        key, value = past[layer] if past else (empty, empty)
        feeds[artifact.past_key(layer)], feeds[artifact.past_value(layer)] = key, value
    if options.has_adapters:
        width = options.adapter_slots * options.adapter_rank
        feeds[artifact.ADAPTER_WEIGHTS] = (
            np.zeros((1, s, options.adapter_slots), np.float32) if mix is None else mix.astype(np.float32)
        )
        for target in options.adapter_targets:
            a_shape, b_shape = bank_factor_shapes(spec.linear_features()[target], spec.num_layers, width)
            a, b = (banks or {}).get(target, (None, None))
            feeds[artifact.adapter_a(target)] = np.zeros(a_shape, np.float32) if a is None else a
            feeds[artifact.adapter_b(target)] = np.zeros(b_shape, np.float32) if b is None else b
    return feeds


def presents(spec: ModelSpec, outputs: Outputs) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (outputs[artifact.present_key(i)], outputs[artifact.present_value(i)]) for i in range(spec.num_layers)
    ]


def random_banks(spec: ModelSpec, options: GraphOptions, rng: np.random.Generator) -> dict:
    """Small random banks: a delta of a few percent of the base output, enough to exercise the branch."""
    width = options.adapter_slots * options.adapter_rank
    banks = {}
    for target in options.adapter_targets:
        features = spec.linear_features()[target]
        a_shape, b_shape = bank_factor_shapes(features, spec.num_layers, width)
        a = rng.standard_normal(a_shape) / np.sqrt(features.in_features)
        b = rng.standard_normal(b_shape) * 0.02
        banks[target] = (a.astype(np.float32), b.astype(np.float32))
    return banks


# --- the checks ---------------------------------------------------------------------------------
def compare(out: Outputs, ref: Outputs, spec: ModelSpec) -> dict[str, float]:
    """Scale-free gaps between two sets of graph outputs."""

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))

    cache = max(
        rel(out[name(i)], ref[name(i)])
        for i in range(spec.num_layers)
        for name in (artifact.present_key, artifact.present_value)
    )
    # the graph's own top-k ids pick the reference logits they claim (robust to near-ties)
    return {
        "logits": max(
            rel(out[artifact.TOPK_LOGITS], ref[artifact.TOPK_LOGITS]),
            rel(out[artifact.LOGSUMEXP], ref[artifact.LOGSUMEXP]),
        ),
        "entropy": float(np.abs(out[artifact.ENTROPY] - ref[artifact.ENTROPY]).max()),
        "query": float(np.abs(out[artifact.QUERY] - ref[artifact.QUERY]).max()),
        "cache": cache,
        "top1": top1_agreement(out, ref),
    }


def top1_agreement(out: Outputs, ref: Outputs) -> float:
    return float((out[artifact.TOPK_IDS][..., 0] == ref[artifact.TOPK_IDS][..., 0]).mean())


def check_graph(model_path: Path) -> None:
    """onnx.checker over the whole file (external data included by path), as one line on failure.
    The wasm target's widened weights live in a file made only in memory: the checker sees a sparse
    stand-in of its size (no disk used), so their locations, offsets and lengths are checked too."""
    stand_in = None
    if has_widened(model_path):
        index = read_index(model_path)
        stand_in = Path(model_path).with_name(index["floats"])
        with open(stand_in, "wb") as f:
            f.truncate(index["floats_bytes"])
    try:
        onnx.checker.check_model(str(model_path))
    except onnx.checker.ValidationError as exc:
        raise RuvdllmError(
            f"{model_path}: onnx.checker rejects the graph: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        if stand_in is not None:
            stand_in.unlink(missing_ok=True)


def validate_export(
    model_path: Path,
    spec: ModelSpec,
    options: GraphOptions,
    held_weights: dict[str, np.ndarray],
    mask_token_id: int,
    paragraph_ids: list[int],
    source_weights: dict[str, np.ndarray] | None = None,
    min_source_agreement: float | None = None,
    also_on_cuda: bool = False,
    base_weights: dict[str, np.ndarray] | None = None,
    lora: dict | None = None,
    mark: Callable[[str], None] | None = None,
) -> dict:
    """Check the saved graph; return the report for config.json, or raise RuvdllmError naming it.

    `held_weights` are what the graph holds (packed or float); `source_weights` the checkpoint's
    own (when different) for the agreement that includes quantization; `lora` the static LoRA
    factors the graph adds to both (never to `base_weights`). `also_on_cuda` repeats the
    parity on onnxruntime-gpu's CUDA EP when one is available (reported as skipped otherwise).
    `base_weights` (a graph with the adapter switch): the held weights without the conversion
    adapter, which rows with adapter_gate 0 must compute. `mark` (PhaseMemory.mark) closes the
    memory phases validate.checker, validate.reference, validate.session (onnxruntime's session
    made) and validate.onnxruntime (its runs)."""
    mark = mark or (lambda _: None)
    model_path = Path(model_path)
    check_graph(model_path)
    mark("validate.checker")
    kind = REFERENCE_KINDS[torch_available()]

    def reference_for(weights, with_lora=True):
        return reference_model(spec, weights, options, lora if with_lora else None)

    reference = reference_for(held_weights)
    ids = np.asarray(paragraph_ids, np.int64)
    if len(ids) < 32:
        raise RuvdllmError(f"{model_path}: validation paragraph tokenizes to {len(ids)} tokens, need >= 32")
    tolerance = tolerance_for(spec.architecture, options)
    cases = validation_cases(reference, spec, options, ids, mask_token_id)
    if base_weights is not None:  # before the paragraph, which stays last (the agreement reads it)
        base_rows = paragraph_feeds(spec, options, ids, gate=0.0)
        base_ref = run_case(reference_for(base_weights, with_lora=False), base_rows)
        cases.insert(-1, ("base_rows", base_rows, base_ref))
    mark("validate.reference")

    parity, paragraph_out, failures = _check_provider(
        model_path, "CPUExecutionProvider", cases, spec, tolerance, mark
    )
    mark("validate.onnxruntime")
    report = {
        "onnx_checker": "passed",
        "onnxruntime": ort.__version__,
        "execution_provider": "CPUExecutionProvider",
        "reference": kind,
        "tolerance": asdict(tolerance),
        "parity": parity,
        "paragraph_tokens": int(len(ids)),
        "top1_agreement": parity["paragraph"]["top1"],
    }
    if source_weights is None:  # the graph holds the checkpoint exactly
        report["top1_agreement_vs_checkpoint"] = report["top1_agreement"]
    else:
        source_ref = run_case(reference_for(source_weights), cases[-1][1])
        report["top1_agreement_vs_checkpoint"] = top1_agreement(paragraph_out, source_ref)
        mark("validate.reference")
    if min_source_agreement is not None and report["top1_agreement_vs_checkpoint"] < min_source_agreement:
        failures.append(
            f"top-1 agreement with the checkpoint {report['top1_agreement_vs_checkpoint']:.3f} < {min_source_agreement}"
        )
    if also_on_cuda:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            cuda, _, cuda_failures = _check_provider(
                model_path, "CUDAExecutionProvider", cases, spec, tolerance
            )
            report["cuda"] = {"parity": cuda, "top1_agreement": cuda["paragraph"]["top1"]}
            failures += [f"CUDA {f}" for f in cuda_failures]
        else:
            report["cuda"] = "skipped: no CUDA execution provider here (onnxruntime-gpu and a GPU needed)"
    if failures:
        raise RuvdllmError(f"{model_path}: onnxruntime parity failed ({'; '.join(failures)})")
    return report


Case = tuple[str, Feeds, Outputs]  # name, graph feeds (or Parts), the reference's outputs


def validation_cases(reference, spec, options, ids, mask_token_id) -> list[Case]:
    """A committed prefix in the cache, then a block-causal chunk with masked positions, an output
    offset and a per-position adapter mixture (every input of the graph carries real data), then
    the whole paragraph causally (last: the agreement check reads it)."""
    rng = np.random.default_rng(0)  # fixed: the same check on every export
    prefix, chunk = ids[:8], ids[8:32].copy()
    chunk[rng.random(len(chunk)) < 0.4] = mask_token_id
    first = graph_feeds(spec, options, prefix, np.arange(len(prefix)))
    ref_first = reference(first)
    mix = banks = None
    if options.has_adapters:
        mix = rng.uniform(0, 1, (1, len(chunk), options.adapter_slots)).astype(np.float32)
        banks = random_banks(spec, options, rng)
    second = graph_feeds(
        spec,
        options,
        chunk,
        np.arange(len(chunk)) // 8,
        past=presents(spec, ref_first),  # the reference's cache: each side is judged on the same input
        output_offset=2,
        mix=mix,
        banks=banks,
    )
    whole = paragraph_feeds(spec, options, ids)
    return [
        ("prefix", first, ref_first),
        ("block_chunk", second, reference(second)),
        ("paragraph", whole, run_case(reference, whole)),
    ]


# The paragraph's rows reach the head in parts of at most this many logits (rows x vocabulary):
# over 256 rows of a 128k vocabulary each of the head's activations (logits, softmax, entropy
# terms) is 131 MB, several at once, in onnxruntime and in the reference alike. SmolLM2's 256 x 49k
# paragraph is one part, as before.
HEAD_LOGITS_PER_RUN = 1 << 24  # 64 MiB of float32 logits


@dataclass(frozen=True)
class Parts:
    """One causal run of `ids` as forwards of at most `rows` tokens each, every part over the KV
    cache that the same runner returned for the tokens before it (run_case): each token is run
    once, and the head sees at most `rows` rows per forward. Row r over the cache of rows < r
    sees what it sees in one causal forward over all the ids."""

    spec: ModelSpec
    options: GraphOptions
    ids: np.ndarray
    rows: int
    gate: float = 1.0

    def bounds(self) -> list[tuple[int, int]]:
        return [
            (start, min(start + self.rows, len(self.ids))) for start in range(0, len(self.ids), self.rows)
        ]

    def feeds(self, start: int, stop: int, past: list | None) -> Feeds:
        """Part start..stop, each token its own block (block ids count within the part: the
        cache is visible to all of them)."""
        causal = np.arange(stop - start)
        return graph_feeds(self.spec, self.options, self.ids[start:stop], causal, past=past, gate=self.gate)


AR_GRAPH_TOKENS = 64  # of the paragraph, run causally through both graphs and the reference


def check_ar_graph(
    full: Path, ar: Path, spec: ModelSpec, options: GraphOptions, ids, base_weights: dict
) -> dict:
    """The AR graph (onnx_graph/ar_graph.py) and the full graph's gate-0 rows against the reference
    on `base_weights` (the held weights without the conversion adapter) over the first tokens of
    `ids` (in the vocabulary and the context), one session at a time. The AR graph must reach the
    top-1 agreement the accuracy level's tolerance asks of the full graph. At level 0 the two graphs
    agree to float rounding; at level 4 (int8 activations) the cpu AR graph's attention (causal,
    over a key/value buffer) rounds differently from the full graph's, so their tokens part where
    each parts from the float model: ~90-95% agreement with each other, each as close to the
    reference (benchmarks/README.md, "The AR graph")."""
    ids = np.asarray(ids[:AR_GRAPH_TOKENS])
    feeds = graph_feeds(spec, options, ids, np.arange(len(ids)), gate=0.0)
    outputs = {"reference": reference_model(spec, base_weights, options)(feeds)}
    for name, path in (("full", full), ("ar", ar)):
        session = _session(str(path))
        outputs[name] = _run(session, feeds)
        del session
    top = [outputs[name][artifact.TOPK_LOGITS][..., 0] for name in ("ar", "full")]
    report = {
        "tokens": len(ids),
        "top1_agreement": top1_agreement(outputs["ar"], outputs["reference"]),
        "full_graph_top1_agreement": top1_agreement(outputs["full"], outputs["reference"]),
        "top1_agreement_with_full_graph": top1_agreement(outputs["ar"], outputs["full"]),
        "max_top1_logit_diff_with_full_graph": float(np.max(np.abs(top[0] - top[1]))),
    }
    least = tolerance_for(spec.architecture, options).top1
    if report["top1_agreement"] < least:
        raise RuvdllmError(
            f"{ar.name}: top-1 agreement with the reference AR model {report['top1_agreement']:.3f}, "
            f"below {least} ({full.name}'s gate-0 rows: {report['full_graph_top1_agreement']:.3f})"
        )
    return report


def paragraph_feeds(spec: ModelSpec, options: GraphOptions, ids: np.ndarray, gate: float = 1.0):
    """Feeds for `ids` run causally (each token its own block): one forward, or Parts when the
    rows times the vocabulary pass HEAD_LOGITS_PER_RUN."""
    rows = max(1, HEAD_LOGITS_PER_RUN // spec.vocab_size)
    if len(ids) <= rows:
        return graph_feeds(spec, options, ids, np.arange(len(ids)), gate=gate)
    return Parts(spec, options, np.asarray(ids), rows, gate)


def run_case(run: Callable[[Feeds], Outputs], feeds) -> Outputs:
    """run(feeds), or for Parts each part's run over the cache of the parts before it (`run`'s own
    presents), with the row outputs joined in order and the KV outputs (present_*) of the last
    part, which hold every token's."""
    if not isinstance(feeds, Parts):
        return run(feeds)
    rows, past, out = [], None, {}
    for start, stop in feeds.bounds():
        out = run(feeds.feeds(start, stop, past))
        past = presents(feeds.spec, out)
        rows.append({name: value for name, value in out.items() if not name.startswith("present")})
    return {
        name: value if name.startswith("present") else np.concatenate([r[name] for r in rows], axis=1)
        for name, value in out.items()
    }


def _check_provider(
    model_path: Path, provider: str, cases: list[Case], spec, tolerance: Tolerance, mark=None
):
    """(gaps per case, the paragraph's outputs, failures) of the graph on one execution provider;
    `mark` closes the memory phase validate.session once the session is made."""
    sess = _session(str(model_path), provider)
    if mark is not None:
        mark("validate.session")
    parity, out = {}, {}
    for name, feeds, ref in cases:
        out = run_case(lambda part: _run(sess, part), feeds)  # noqa: B023 (called at once)
        parity[name] = compare(out, ref, spec)
    failures = [
        f"{case} {key} {value:.3g} > {getattr(tolerance, key):.3g}"
        for case, gaps in parity.items()
        for key, value in gaps.items()
        if key != "top1" and value > getattr(tolerance, key)
    ]
    if parity["paragraph"]["top1"] < tolerance.top1:
        failures.append(f"paragraph top-1 agreement {parity['paragraph']['top1']:.3f} < {tolerance.top1}")
    return parity, out, failures
