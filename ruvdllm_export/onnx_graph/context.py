"""State shared by the build steps: the builder, the model, and the tensors every layer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from ruvdllm_export.onnx_graph.graph import GraphBuilder
from ruvdllm_export.onnx_graph.linear import AdapterBank, LinearFormat, StaticLora, Weight, make_linear
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
        weight_name = linear_weight(layer, proj)
        bank = None
        if proj in self.banks:
            a, b = self.banks[proj]
            bank = AdapterBank(a=a, b=b, layer=layer, slot_weights=self.slot_weights)
        return make_linear(
            self.g,
            f"{scope}/{proj}",
            weight_name,
            x,
            self.weights[weight_name],
            self.fmt,
            bias=self.weights.get(linear_bias(layer, proj)),
            bank=bank,
            lora=self.lora.get(weight_name),
            lora_gate=self.lora_gate or None,
        )
