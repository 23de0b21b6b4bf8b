"""Small ONNX graphs for browser tests: the ops the exported model leans on, built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from ruvdllm_export.quant.q4 import pack_zero_points, quantize_q4


def matmulnbits_graph(path: Path, k: int = 96, n: int = 80, seed: int = 0) -> Path:
    """x [M, K] -> y = MatMulNBits(x, q4(W)) with the reference quantizer's zero points, and
    y0 = MatMulNBits with zero points 0 (the exporter's layout for blocks with mins), then a Softmax.

    accuracy_level 0 (float activations) everywhere: wasm and WebGPU ignore level 4, so the CPU
    reference must not use it either for a tight comparison.
    """
    rng = np.random.default_rng(seed)
    q = quantize_q4(rng.standard_normal((n, k)).astype(np.float32))
    zeros = np.zeros_like(q.zero_points)
    inits = [
        numpy_helper.from_array(q.packed, "W.q4"),
        numpy_helper.from_array(q.scales.reshape(-1), "W.scales"),
        numpy_helper.from_array(pack_zero_points(q.zero_points).reshape(-1), "W.zero_points"),
        numpy_helper.from_array(pack_zero_points(zeros).reshape(-1), "W.zero_points0"),
    ]
    attrs = dict(domain="com.microsoft", K=k, N=n, bits=4, block_size=32, accuracy_level=0)
    nodes = [
        helper.make_node(
            "MatMulNBits",
            ["x", "W.q4", "W.scales", "W.zero_points"],
            ["y"],
            name="/probe/MatMulNBits",
            **attrs,
        ),
        helper.make_node(
            "MatMulNBits",
            ["x", "W.q4", "W.scales", "W.zero_points0"],
            ["y0"],
            name="/probe/MatMulNBits_zp0",
            **attrs,
        ),
        helper.make_node("Softmax", ["y"], ["p"], axis=-1, name="/probe/Softmax"),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["M", n]) for name in ("y", "y0", "p")]
    graph = helper.make_graph(
        nodes,
        "matmulnbits_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        outputs,
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    save(model, str(path))
    return path
