"""The torch diffusion model: the reference the exported graph is validated against and the
network the conversion adapter trains in. torch lives here only; export and runtime never
import this package."""

from ruvdllm_export.reference.lora import (
    LoraConfig,
    apply_lora,
    attach_adapter_file,
    load_lora_state_dict,
    lora_as_bank,
    lora_deltas,
    lora_disabled,
    lora_factors,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    widened_lora_state,
)
from ruvdllm_export.reference.masks import (
    annealed_visibility,
    bd3lm_training_visibility,
    bidirectional_block_ids,
    block_causal_block_ids,
    causal_block_ids,
    visibility,
)
from ruvdllm_export.reference.model import AdapterBank, DiffusionLM, Past, weights_from_state_dict

__all__ = [
    "AdapterBank",
    "DiffusionLM",
    "LoraConfig",
    "Past",
    "annealed_visibility",
    "apply_lora",
    "attach_adapter_file",
    "bd3lm_training_visibility",
    "bidirectional_block_ids",
    "block_causal_block_ids",
    "causal_block_ids",
    "load_lora_state_dict",
    "lora_as_bank",
    "lora_deltas",
    "lora_disabled",
    "lora_factors",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "visibility",
    "weights_from_state_dict",
    "widened_lora_state",
]
