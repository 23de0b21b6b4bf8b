"""The gated MLP of LLaMA/Qwen: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

from ruvdllm_export.onnx_graph.context import BuildContext


def make_mlp_block(ctx: BuildContext, layer: int, x: str) -> str:
    """x (normed) [1,S,d] → [1,S,d].

    x ─gate_proj─► a ─Sigmoid─Mul(a)─► silu ┐
    x ─up_proj─────────────────────────────Mul─► down_proj ─►
    (gate_proj and up_proj as one packed matmul, split, when the options pack linears)
    """
    g, scope = ctx.g, f"/model/layers.{layer}/mlp"
    gate, up = ctx.linears(layer, ("gate_proj", "up_proj"), x, scope, "gate_up_proj")
    # SiLU as Sigmoid·x: both ops have kernels on every execution provider.
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{scope}/act/Sigmoid")], f"{scope}/act/Mul")
    hidden = g.op("Mul", [silu, up], f"{scope}/Mul_up")
    return ctx.linear(layer, "down_proj", hidden, scope)
