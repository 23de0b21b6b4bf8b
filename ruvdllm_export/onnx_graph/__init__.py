"""The diffusion model's ONNX graph, built from numpy weights (no torch): see builder.py."""

from ruvdllm_export.onnx_graph.builder import (
    build_graph,
    graph_weights_as_float,
    prepare_weights,
)
from ruvdllm_export.onnx_graph.linear import StaticLora
from ruvdllm_export.onnx_graph.options import GraphOptions, options_for_target

__all__ = [
    "GraphOptions",
    "StaticLora",
    "build_graph",
    "graph_weights_as_float",
    "options_for_target",
    "prepare_weights",
]
