"""State shared by the build steps: the builder, the model, and the tensors every layer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from ruvdllm_export.onnx_graph.graph import GraphBuilder
from ruvdllm_export.onnx_graph.linear import (
    AdapterBank,
    LinearFormat,
    LinearPart,
    StaticLora,
    Weight,
    make_packed_linear,
)
from ruvdllm_export.onnx_graph.options import GraphOptions
from ruvdllm_export.spec import ModelSpec, linear_bias, linear_weight


@dataclass
class BuildContext:
    g: GraphBuilder
    spec: ModelSpec
    weights: dict[str, Weight]  # canonical name -> prepared weight (what the graph holds)
    options: GraphOptions
    lora: dict[str, StaticLora] = field(default_factory=dict)  # canonical linear weight name -> delta
    # Filled in by the input / shared steps:
    input_ids: str = ""
    position_ids: str = ""
    block_ids: str = ""
    kv_lengths: tuple[str, str] = ("", "")  # seqlens_k, total_sequence_length (options.kv_buffer)
    output_offset: str = ""
    rope: tuple[str, str] = ("", "")
    attention_bias: str = ""  # additive visibility bias [1, 1, S, P+S]
    slot_weights: str = ""  # adapter_weights repeated rank times [1, S, slots*rank]
    banks: dict[str, tuple[str, str]] = field(default_factory=dict)  # target -> (A input, B input)
    lora_gate: str = ""  # adapter_gate as [1, S, 1]; "" when the static LoRA is not switchable
    hidden: str = ""  # the hidden state flowing from step to step [1, S, d]
    residual: str = ""  # the residual stream beside it (norms fuse the add)

    @property
    def fmt(self) -> LinearFormat:
        return LinearFormat(self.options.quantization, self.options.accuracy_level)

    def linear(self, layer: int, proj: str, x: str, scope: str) -> str:
        """The canonical linear `proj` of `layer` with its bias, bank and static LoRA if any."""
        part = self.linear_part(layer, proj, scope)
        return make_packed_linear(self.g, part.scope, part.name, [part], x, self.fmt)[0]

    def linears(
        self, layer: int, projs: tuple[str, ...], x: str, scope: str, packed: str, split: bool = True
    ) -> list[str]:
        """Linears of `layer` reading the same x, packed into one matmul named `packed` (qkv_proj,
        gate_up_proj) when the options pack linears. One output per proj, or [packed y] when the
        caller takes it whole (`split` False) and nothing is added per proj."""
        if not self.options.pack_linears:
            return [self.linear(layer, proj, x, scope) for proj in projs]
        parts = [self.linear_part(layer, proj, scope) for proj in projs]
        name = parts[0].name.replace(f".{projs[0]}.", f".{packed}.")
        return make_packed_linear(self.g, f"{scope}/{packed}", name, parts, x, self.fmt, split=split)

    def linear_part(self, layer: int, proj: str, scope: str) -> LinearPart:
        weight_name = linear_weight(layer, proj)
        bank = None
        if proj in self.banks:
            a, b = self.banks[proj]
            bank = AdapterBank(a=a, b=b, layer=layer, slot_weights=self.slot_weights)
        return LinearPart(
            scope=f"{scope}/{proj}",
            name=weight_name,
            weight=self.weights[weight_name],
            bias=self.weights.get(linear_bias(layer, proj)),
            bank=bank,
            lora=self.lora.get(weight_name),
            lora_gate=self.lora_gate or None,
        )
