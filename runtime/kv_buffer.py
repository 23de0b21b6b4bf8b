"""The key/value buffer a graph over one attends in place (the cpu target's graphs; the exporter's
GraphOptions.kv_buffer): one OrtValue per layer's keys and one per its values, each bound as both
past_* and present_*. A forward reads the first P positions (the graph's seqlens_k input says
how many) and writes its S rows after them, so no forward copies the cache and nothing is bound
again per step.

Capacity grows by doubling from INITIAL_POSITIONS (SmolLM2-135M holds 46 KB per position: 12 MB
at 256); growing copies the cached positions once into the new buffers and binds those. A new
sequence reuses the buffers as they are. Positions past the cached ones hold whatever a forward
wrote last: the graph reads only the first P, so a commit that keeps fewer rows than a forward
wrote needs no copy either.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from runtime import artifact

INITIAL_POSITIONS = 256


class KeyValueBuffer:
    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        device: tuple[str, int],
        max_positions: int,
    ):
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.device = device
        self.max_positions = max_positions
        self.capacity = 0
        self._values: list[ort.OrtValue] = []  # key 0, value 0, key 1, ...

    def reserve(self, positions: int, keep: int, binding: ort.IOBinding) -> None:
        """Room for `positions` positions; when the buffers grow, their first `keep` positions
        come along and the new buffers are bound to `binding` as past and present."""
        if positions <= self.capacity:
            return
        capacity = max(INITIAL_POSITIONS, self.capacity)
        while capacity < positions:
            capacity *= 2
        capacity = max(positions, min(capacity, self.max_positions))
        grown = []
        for old in self._values or [None] * (2 * self.layers):
            host = np.zeros((1, self.kv_heads, capacity, self.head_dim), np.float32)
            if old is not None and keep:
                host[:, :, :keep] = old.numpy()[:, :, :keep]
            # on the CPU the OrtValue is the array's own memory (onnxruntime keeps it alive)
            grown.append(ort.OrtValue.ortvalue_from_numpy(host, *self.device))
        self._values, self.capacity = grown, capacity
        for layer in range(self.layers):
            for index, (past, present) in enumerate(
                (
                    (artifact.past_key(layer), artifact.present_key(layer)),
                    (artifact.past_value(layer), artifact.present_value(layer)),
                )
            ):
                value = grown[2 * layer + index]
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
