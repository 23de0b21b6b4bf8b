"""What every checkpoint reader returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from ruvdllm_export.quant.q4 import Q4Tensor
from ruvdllm_export.spec import ModelSpec


@dataclass(frozen=True)
class LoadedCheckpoint:
    spec: ModelSpec
    # canonical name -> float32 array, or Q4Tensor when exact; the readers return a LazyWeights
    # (checkpoints/lazy.py): each access reads the tensor from the file again, nothing is kept
    weights: Mapping[str, np.ndarray | Q4Tensor]
    tokenizer: Tokenizer
    mask_token_id: int  # see checkpoints/tokenizer.py for the rule
    exactness: dict[
        str, str
    ]  # canonical name -> "float", "exact q4 from Q4_1", "lossy: Q6_K dequantized; ..."
    source: dict  # {"path", "format", "bytes", "sha256" | "files"}

    @property
    def lossy(self) -> list[str]:
        return [name for name, how in self.exactness.items() if how.startswith("lossy")]
