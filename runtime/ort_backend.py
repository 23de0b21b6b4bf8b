"""The CPython Backend: onnxruntime (CPU by default, CUDA with onnxruntime-gpu on a GPU).

Per step only the chunk's small inputs are copied in; everything large stays where the execution
provider keeps it:

    adapter banks     OrtValues on the device, bound once (rebound only by `set_bank`)
    key/value cache   the previous forward's present_* OrtValues, bound as past_* as they are;
                      a commit that keeps fewer positions than present holds slices once per block.
                      A graph over a key/value buffer (the cpu target's) writes into one buffer
                      per layer in place instead, bound once (runtime/kv_buffer.py)
    outputs           presents on the device; top-k ids/logits, logsumexp, entropy and the query
                      rows come back to the host (O(S' · top_k + S' · hidden)); over a buffer,
                      into host arrays bound once per output row count

One IOBinding is reused across steps. Not thread-safe: one sequence at a time (model.py locks).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime import artifact
from runtime.artifact import ArtifactConfig
from runtime.backend import Chunk, StepOutput
from runtime.banks import Bank
from runtime.kv_buffer import KeyValueBuffer
from runtime.resident import release_load_memory
from runtime.row_cost import RowCost, kept, measure
from runtime.verify import cache_root
from runtime.widening import add_widened_initializers
from ruvdllm.errors import RuvdllmError

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
ROW_COST_FILE = "row_cost.json"  # in the cache directory, beside verified.json
KEY_SEPARATOR = " | "  # between the parts of a row-cost record's key
SMALL_OUTPUTS = (
    artifact.TOPK_IDS,
    artifact.TOPK_LOGITS,
    artifact.LOGSUMEXP,
    artifact.ENTROPY,
    artifact.QUERY,
)


@dataclass(frozen=True)
class OrtOptions:
    device: str = "auto"  # "auto": CUDA when onnxruntime-gpu sees a GPU, else CPU; or "cpu" / "cuda"
    intra_op_threads: int = 0  # 0: onnxruntime's default, one per physical core
    inter_op_threads: int = 1  # the graph is one chain of layers: nothing to run in parallel
    spinning: bool | None = None  # workers spin between ops; None: only on an otherwise idle machine
    optimization: str = "all"  # fuse what the EP can (MatMulNBits + bias, layer norms, ...)
    device_id: int = 0  # which GPU with device "cuda"
    optimized_model_path: str | None = None  # write the optimised graph here (debugging, warm starts)


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container or `taskset` narrows),
    not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on this platform (macOS, Windows)
        return os.cpu_count() or 1


def check_threads(threads: int) -> None:
    """onnxruntime starts every intra-op thread it is asked for, and more of them than cores only
    contend: 9,999 threads took a 2-core machine to a load of ~600 and never produced a token."""
    cores = usable_cores()
    if not 0 <= threads <= cores:
        raise RuvdllmError(
            f"threads {threads}: choose 0 (one per core) or 1..{cores} (the cores this process may use)"
        )


def machine_is_idle() -> bool:
    """True when the last minute's load leaves a core free for each of onnxruntime's workers.

    A forward is ~1,300 short ops; between them onnxruntime's workers spin (its default) rather than
    sleep, which saves a wake-up per op on an idle machine but, on one whose cores are already
    busy, takes them from whoever else runs: on 2 cores at a load of 12, 2 spinning threads ran
    one-row forwards 8x slower than 2 that sleep (benchmarks/README.md)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return True
    return load < (os.cpu_count() or 1) - 0.5


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def choose_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    if requested == "cuda" and not cuda_available():
        raise RuvdllmError(
            "device cuda: onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)"
        )
    if requested not in ("cpu", "cuda"):
        raise RuvdllmError(f"device {requested!r}: choose auto, cpu or cuda")
    return requested


def version_tuple(version: str) -> tuple[int, ...]:
    """ "1.32.0" -> (1, 32, 0); a suffix such as "1.33.0.dev2026" keeps its numeric part."""
    parts = []
    for piece in version.split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_onnxruntime(graph: Path, config: ArtifactConfig) -> None:
    """A graph whose ops need a newer onnxruntime fails here with one line, not in the session."""
    needed = config.requires_onnxruntime
    if needed and version_tuple(ort.__version__) < version_tuple(needed):
        raise RuvdllmError(
            f"{graph}: built for target {'/'.join(config.targets)} ({config.attention} attention), which needs "
            f"onnxruntime >= {needed}; this is {ort.__version__} (pip install -U onnxruntime, or export "
            "with --attention matmul for older versions)"
        )


def make_session(graph: Path, options: OrtOptions) -> tuple[ort.InferenceSession, str]:
    if options.optimization not in OPTIMIZATION_LEVELS:
        raise RuvdllmError(
            f"optimization {options.optimization!r}: choose from {', '.join(OPTIMIZATION_LEVELS)}"
        )
    check_threads(options.intra_op_threads)
    device = choose_device(options.device)
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = OPTIMIZATION_LEVELS[options.optimization]
    spin = machine_is_idle() if options.spinning is None else options.spinning
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if options.optimized_model_path:
        so.optimized_model_filepath = options.optimized_model_path
    providers: list = ["CPUExecutionProvider"]
    if device == "cuda":
        providers = [("CUDAExecutionProvider", {"device_id": options.device_id}), "CPUExecutionProvider"]
    # the wasm target's weights, widened from their blocks (none for other targets)
    widened = add_widened_initializers(so, Path(graph))
    try:
        session = ort.InferenceSession(os.fspath(graph), so, providers=providers)
        session.widened_weights = widened  # onnxruntime reads them in place: they live with it
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuvdllmError(f"{graph}: onnxruntime cannot load the graph ({first_line})") from None
    return session, device


class OrtBackend:
    """Backend over one onnxruntime session; see the module docstring for what lives where."""

    def __init__(
        self,
        graph: Path,
        config: ArtifactConfig,
        options: OrtOptions = OrtOptions(),
        bank: Bank | None = None,
        ar_only: bool = False,
    ):
        """`ar_only`: `graph` is the model's AR graph (artifact.AR_GRAPH_NAME), which computes the
        rows of the AR model only: adapter_gate 0 and every adapter weight 0."""
        self.config = config
        self.graph = Path(graph)
        self.options = options
        self.ar_only = ar_only
        check_onnxruntime(Path(graph), config)
        self.session, self.device = make_session(Path(graph), options)
        # The weights file's pages read while loading are not needed by forwards (runtime/resident.py);
        # the AR graph's weights are its full graph's data file
        names = {self.graph.name, self.full_graph.name}
        release_load_memory([p for n in names for p in self.graph.parent.glob(n + "*") if p.is_file()])
        self._ort_device = ("cuda", options.device_id) if self.device == "cuda" else ("cpu", 0)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.layers = sum(1 for name in self.input_names if name.startswith("past_key."))
        if self.layers != config.num_layers:
            raise RuvdllmError(
                f"{graph}: {self.layers} layers in the graph, config.json says {config.num_layers}"
            )
        self.adapter_shapes = self._adapter_shapes()
        self._binding = self.session.io_binding()
        self._buffer = None
        if artifact.SEQLENS_K in self.input_names:  # the graph attends over a key/value buffer
            self._buffer = KeyValueBuffer(
                self.layers, config.num_kv_heads, config.head_dim, self._ort_device, config.max_position
            )
            self._outputs_rows = -1  # rows the bound output arrays hold (none bound yet)
        self.set_bank(bank)
        self.reset()

    # --- the machine ------------------------------------------------------------------------------

    def row_cost(self) -> RowCost | None:
        """What one more row costs a forward of this graph here (runtime/row_cost.py): as recorded
        in the cache directory under `row_cost_key`, else measured and recorded. Measured only on
        an otherwise idle machine: on a busy one a measurement would be mostly noise, so none is
        made (None) until a run finds the machine idle. The AR graph reads its full graph's record
        and measures nothing."""
        return recorded_row_cost(
            self.full_graph,
            self.device,
            self.options.intra_op_threads,
            # the AR graph's rows are all alike: what it would measure is not the drafts' cost
            measure_now=None if self.ar_only else lambda: measure(self) if machine_is_idle() else None,
        )

    @property
    def full_graph(self) -> Path:
        """The graph with every row kind: this one, or beside the AR graph."""
        return self.graph.parent / artifact.GRAPH_NAME if self.ar_only else self.graph

    def row_cost_key(self) -> str:
        return row_cost_key(self.full_graph, self.device, self.options.intra_op_threads)

    # --- banks -----------------------------------------------------------------------------------

    def _adapter_shapes(self) -> dict[str, artifact.Features]:
        """(in, out) per adapter target, read from the graph's adapter.{t}.a/b inputs."""
        shapes = {}
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        for target in self.config.adapter_targets:
            a, b = inputs.get(artifact.adapter_a(target)), inputs.get(artifact.adapter_b(target))
            if a is not None and b is not None:
                shapes[target] = artifact.Features(int(a[1]), int(b[2]))
        # Graphs since the bank width became symbolic take zero-width factors for "no adapters".
        self._empty_bank_ok = all(not isinstance(inputs[artifact.adapter_a(t)][2], int) for t in shapes)
        return shapes

    @property
    def has_adapters(self) -> bool:
        return artifact.ADAPTER_WEIGHTS in self.input_names

    @property
    def has_gate(self) -> bool:
        return artifact.ADAPTER_GATE in self.input_names

    def set_bank(self, bank: Bank | None) -> None:
        """Bind the bank's assembled A/B factors once. Without adapters (None, or an empty bank) the
        factors are bound zero-width where the graph allows it, so the bank branches read nothing;
        older graphs get zeros of the full width (the base model either way). The AR graph takes
        no bank: its rows carry no adapter."""
        if self.ar_only:
            return
        if not self.has_adapters:
            if bank is not None and bank.adapters:
                raise RuvdllmError("bank: this graph was exported without adapter inputs")
            return
        bank = bank or Bank.for_model(self.config, self.adapter_shapes)
        bank.check_model(self.config, "bank", self.adapter_shapes)
        self._bank_values = []  # keep the OrtValues alive as long as they are bound
        for target, (fan_in, fan_out) in self.adapter_shapes.items():
            if bank.adapters or not self._empty_bank_ok:
                a, b = assemble_numpy(bank, target, fan_in, fan_out)
            else:
                a = np.zeros((bank.layers, fan_in, 0), np.float32)
                b = np.zeros((bank.layers, 0, fan_out), np.float32)
            for name, array in ((artifact.adapter_a(target), a), (artifact.adapter_b(target), b)):
                value = ort.OrtValue.ortvalue_from_numpy(array, *self._ort_device)
                self._bank_values.append(value)
                self._binding.bind_ortvalue_input(name, value)

    # --- cache -----------------------------------------------------------------------------------

    def reset(self) -> None:
        self._cached = 0
        self._present: list | None = None
        self._written: int | None = None  # positions the last forward left in the buffer
        if self._buffer is not None:  # the buffers stay, for the next sequence to fill
            return
        empty = np.zeros((1, self.config.num_kv_heads, 0, self.config.head_dim), np.float32)
        self._past = [
            ort.OrtValue.ortvalue_from_numpy(empty, *self._ort_device) for _ in range(2 * self.layers)
        ]

    def cached(self) -> int:
        return self._cached

    def commit(self, keep: int) -> None:
        if self._buffer is not None:
            if self._written is None:
                raise RuntimeError("commit without a forward")
            if not 0 <= keep <= self._written:
                raise ValueError(f"keep {keep} outside 0..{self._written}")
            self._cached = keep
            return
        if self._present is None:
            raise RuntimeError("commit without a forward")
        total = self._present[0].shape()[2]
        if not 0 <= keep <= total:
            raise ValueError(f"keep {keep} outside 0..{total}")
        if keep == total:
            self._past = list(self._present)
        else:  # once per block: host round trip for the slice
            self._past = [
                ort.OrtValue.ortvalue_from_numpy(
                    np.ascontiguousarray(v.numpy()[:, :, :keep]), *self._ort_device
                )
                for v in self._present
            ]
        self._cached = keep

    # --- forward ---------------------------------------------------------------------------------

    def forward(self, chunk: Chunk) -> StepOutput:
        if self.ar_only:
            check_ar_rows(chunk)
        s = len(chunk)
        binding = self._binding
        binding.bind_cpu_input(artifact.INPUT_IDS, np.asarray(chunk.input_ids, np.int64).reshape(1, s))
        binding.bind_cpu_input(artifact.POSITION_IDS, np.asarray(chunk.position_ids, np.int64).reshape(1, s))
        binding.bind_cpu_input(artifact.OUTPUT_OFFSET, np.asarray([chunk.output_offset], np.int64))
        if artifact.BLOCK_IDS in self.input_names:  # not in a causal-only graph (the cpu AR graph)
            binding.bind_cpu_input(artifact.BLOCK_IDS, np.asarray(chunk.block_ids, np.int64).reshape(1, s))
        if self.has_adapters:
            weights = np.asarray(chunk.adapter_weights, np.float32).reshape(1, s, self.config.adapter_slots)
            binding.bind_cpu_input(artifact.ADAPTER_WEIGHTS, weights)
        if self.has_gate:
            gate = [1.0] * s if chunk.adapter_gate is None else chunk.adapter_gate
            binding.bind_cpu_input(artifact.ADAPTER_GATE, np.asarray(gate, np.float32).reshape(1, s))
        elif not self.ar_only and chunk.adapter_gate is not None and self.config.source.get("static_adapter"):
            if min(chunk.adapter_gate, default=1.0) < 1.0:  # the adapter cannot be switched off
                raise RuvdllmError(
                    "adapter gate: this graph's conversion adapter has no switch (re-export it)"
                )
        if self._buffer is not None:
            return self._forward_in_buffer(chunk)
        for layer in range(self.layers):
            binding.bind_ortvalue_input(artifact.past_key(layer), self._past[2 * layer])
            binding.bind_ortvalue_input(artifact.past_value(layer), self._past[2 * layer + 1])
        # Outputs change shape every step: bind them unallocated (onnxruntime allocates) each time;
        # presents stay on the device, the small outputs come to the host.
        binding.clear_binding_outputs()
        for name in self.output_names:
            device, device_id = self._ort_device if name.startswith("present_") else ("cpu", 0)
            binding.bind_output(name, device, device_id)
        self.session.run_with_iobinding(binding)
        values = dict(zip(self.output_names, binding.get_outputs(), strict=True))
        self._present = [
            values[name(layer)]
            for layer in range(self.layers)
            for name in (artifact.present_key, artifact.present_value)
        ]
        return step_output({name: values[name].numpy() for name in SMALL_OUTPUTS})

    def _forward_in_buffer(self, chunk: Chunk) -> StepOutput:
        """A forward of a graph over a key/value buffer: the past is the buffer's first `cached`
        positions, the chunk's rows are written after them."""
        s, binding = len(chunk), self._binding
        total = self._cached + s
        self._buffer.reserve(total, self._cached, binding)
        binding.bind_cpu_input(artifact.SEQLENS_K, np.asarray([total - 1], np.int32))
        binding.bind_cpu_input(artifact.TOTAL_SEQUENCE_LENGTH, np.asarray(total, np.int32))
        outputs = self._bound_outputs(s - chunk.output_offset)
        self.session.run_with_iobinding(binding)
        self._written = total
        # the arrays are the next forward's outputs too: the query rows, read later, are copied
        # (step_output's lists are copies already)
        return step_output({**outputs, artifact.QUERY: outputs[artifact.QUERY].copy()})

    def _bound_outputs(self, rows: int) -> dict[str, np.ndarray]:
        """Host arrays for the small outputs of a forward with `rows` output rows, bound as its
        outputs; bound again only when the row count changes (one row per AR step)."""
        if rows != self._outputs_rows:
            shapes = {o.name: o.shape for o in self.session.get_outputs()}
            self._outputs = {}
            for name in SMALL_OUTPUTS:
                shape = [1, rows, *shapes[name][2:]]  # [1, S', ...]: the trailing sizes are fixed
                array = np.empty(shape, np.int64 if name == artifact.TOPK_IDS else np.float32)
                self._binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array))
                self._outputs[name] = array
            self._outputs_rows = rows
        return self._outputs


def step_output(small: dict[str, np.ndarray]) -> StepOutput:
    """The host copies of a forward's small outputs as the samplers read them."""
    query = small[artifact.QUERY][0]  # [S', hidden]
    return StepOutput(
        topk_ids=small[artifact.TOPK_IDS][0].tolist(),
        topk_logits=small[artifact.TOPK_LOGITS][0].tolist(),
        logsumexp=small[artifact.LOGSUMEXP][0].tolist(),
        entropy=small[artifact.ENTROPY][0].tolist(),
        query=lambda row: query[row],
    )


def row_cost_key(graph: Path, device: str, threads: int) -> str:
    """What decides the row cost: the graph file (path, size, time), the CPU, the device and
    threads, onnxruntime's version."""
    graph = graph.resolve()
    stat = graph.stat()
    return KEY_SEPARATOR.join(
        (
            f"{graph} {stat.st_size} {stat.st_mtime_ns}",  # `gone` below reads the path back
            cpu_name(),
            f"{device} {threads} threads",
            f"onnxruntime {ort.__version__}",
        )
    )


def recorded_row_cost(
    graph: Path, device: str, threads: int, measure_now: Callable[[], RowCost | None] | None = None
) -> RowCost | None:
    """The row cost of `graph` (a model's full graph) on `device` with `threads`, as recorded in
    the cache directory, else `measure_now()`'s, recorded (runtime/row_cost.py `kept`); None when
    there is no record and nothing measured. Needs no session: a model can be opened for the
    sampler its record decides (runtime/cpython_model.py)."""
    return kept(
        cache_root() / ROW_COST_FILE,
        row_cost_key(graph, device, threads),
        measure_now or (lambda: None),
        gone=lambda key: not Path(key.split(KEY_SEPARATOR, 1)[0].rsplit(" ", 2)[0]).exists(),
    )


def check_ar_rows(chunk: Chunk) -> None:
    """The AR graph computes AR rows only: a row with the adapter on is a caller's mistake."""
    gate_on = chunk.adapter_gate is None or any(chunk.adapter_gate)
    if gate_on or any(any(weights) for weights in chunk.adapter_weights):
        raise RuvdllmError(
            f"{artifact.AR_GRAPH_NAME} runs the AR model only (adapter_gate 0, no adapter weights): "
            "open the model without ar_only for the other samplers"
        )


def assemble_numpy(bank: Bank, target: str, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The graph's adapter.{target}.a [L, in, K·r] and .b [L, K·r, out] (Bank.assemble, vectorised)."""
    layers, r, slots = bank.layers, bank.rank, bank.slots
    a = np.zeros((layers, fan_in, slots * r), np.float32)
    b = np.zeros((layers, slots * r, fan_out), np.float32)
    for adapter in bank.adapters.values():
        fa, fb = adapter.factors[target]
        cols = slice(adapter.slot * r, (adapter.slot + 1) * r)
        a[:, :, cols] = np.frombuffer(fa, np.float32).reshape(layers, fan_in, r)
        b[:, cols, :] = np.frombuffer(fb, np.float32).reshape(layers, r, fan_out)
    return a, b
