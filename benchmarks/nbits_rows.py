"""What one more row costs a 4-bit linear: onnxruntime's MatMulNBits at 1-9 rows, accuracy levels 0
and 4, on the default model's packed shapes (q/k/v, o, gate/up, down), random weights, block 32.

    python benchmarks/nbits_rows.py                 # one thread
    python benchmarks/nbits_rows.py --threads 2

A verified forward runs 1 + drafted rows and a block-8 step 9; if a linear cost the same at 1 and
9 rows, extra rows would be nearly free on the CPU. Microseconds per run, best of `--rounds` rounds
of `--runs` runs (spinning off, so that a loaded machine's figures are the kernel's, not a spin's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ruvdllm_export.quant.q4 import pack_zero_points, quantize_q4  # noqa: E402

SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate_up": (576, 3072), "down": (1536, 576)}  # [in, out]
ROWS = (1, 2, 3, 5, 8, 9)


def nbits_graph(fan_in: int, fan_out: int, level: int) -> bytes:
    """One MatMulNBits [M, fan_in] x [fan_in, fan_out] in the exported graph's form: the project's
    own 4-bit quantizer (block 32, integer zero points), as the exporter writes its linears."""
    weight = np.random.default_rng(0).standard_normal((fan_out, fan_in)).astype(np.float32) * 0.05
    q4 = quantize_q4(weight)
    init = numpy_helper.from_array
    node = helper.make_node(
        "MatMulNBits",
        ["X", "B", "scales", "zero_points"],
        ["Y"],
        domain="com.microsoft",
        K=fan_in,
        N=fan_out,
        bits=4,
        block_size=32,
        accuracy_level=level,
    )
    weights = [
        init(q4.packed, "B"),
        init(q4.scales.reshape(-1), "scales"),
        init(pack_zero_points(q4.zero_points).reshape(-1), "zero_points"),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", fan_in])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", fan_out])
    model = helper.make_model(
        helper.make_graph([node], "linear", [x], [y], weights),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 10
    return model.SerializeToString()


def microseconds(session: ort.InferenceSession, x: np.ndarray, runs: int, rounds: int) -> float:
    for _ in range(runs // 4):
        session.run(None, {"X": x})
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(runs):
            session.run(None, {"X": x})
        best = min(best, (time.perf_counter() - started) / runs * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    print(
        f"onnxruntime {ort.__version__}, {args.threads} thread(s); microseconds per run, best of {args.rounds}"
    )
    print(
        f"{'linear':8} {'shape':>9} level " + "".join(f"{f'M={m}':>9}" for m in ROWS) + "   M=5÷M=1  M=9÷M=1"
    )
    for name, (fan_in, fan_out) in SHAPES.items():
        for level in (0, 4):
            session = ort.InferenceSession(
                nbits_graph(fan_in, fan_out, level), options, providers=["CPUExecutionProvider"]
            )
            rng = np.random.default_rng(1)
            times = [
                microseconds(
                    session, rng.standard_normal((m, fan_in)).astype(np.float32), args.runs, args.rounds
                )
                for m in ROWS
            ]
            ratios = f"{times[ROWS.index(5)] / times[0]:9.2f}{times[-1] / times[0]:9.2f}"
            print(
                f"{name:8} {fan_in:>4}x{fan_out:<4} {level:>5} "
                + "".join(f"{t:9.1f}" for t in times)
                + "  "
                + ratios
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
