"""A pure-Python two-layer "transformer" over hashes, implementing the Backend protocol with the
graph's exact visibility and cache rules (docs/artifact.md). It lets the sampler logic be tested
without onnxruntime: what a row predicts depends on exactly what it can see, and a cached token's
key depends on what that token saw when it was computed — so a wrong chunk, block id, output
offset or cache truncation changes the tokens.

    layer 0 key of j:  (position, token, adapter row, adapter gate)   (like an embedding)
    layer 1 key of j:  digest(own layer-0 key, layer-0 keys j sees)   (depends on context)
    row i:             digest(own layer-1 key, layer-1 keys i sees) -> logits over the vocabulary
"""

from __future__ import annotations

import hashlib
import math
import random

from runtime.artifact import ArtifactConfig
from runtime.backend import Chunk, StepOutput

TOY_CONFIG = ArtifactConfig(
    architecture="toy",
    vocab_size=40,
    hidden_size=8,
    num_layers=2,
    num_heads=1,
    num_kv_heads=1,
    head_dim=8,
    max_position=512,
    mask_token_id=39,
    eos_token_ids=(0,),
    block_size=4,
    top_k=6,
    adapter_slots=5,
    adapter_rank=1,
)


def _digest(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


class ToyBackend:
    def __init__(self, config: ArtifactConfig = TOY_CONFIG, use_cache: bool = True, peaked: float = 3.0):
        self.config = config
        self.use_cache = use_cache  # False: never cache, so every chunk must carry all committed tokens
        self.peaked = peaked  # logit scale: larger = more confident model
        self.cache: list[tuple] = []  # (layer-0 key, layer-1 key) per cached position
        self.present: list[tuple] = []
        self.chunks: list[Chunk] = []

    def reset(self) -> None:
        self.cache = []
        self.present = []

    def cached(self) -> int:
        return len(self.cache)

    def commit(self, keep: int) -> None:
        if self.use_cache:
            self.cache = self.present[:keep]

    def forward(self, chunk: Chunk) -> StepOutput:
        self.chunks.append(chunk)
        n = len(chunk)
        assert len(chunk.position_ids) == n and len(chunk.block_ids) == n and len(chunk.adapter_weights) == n
        assert all(len(row) == self.config.adapter_slots for row in chunk.adapter_weights)
        assert chunk.position_ids == list(range(len(self.cache), len(self.cache) + n)), (
            "positions follow the cache"
        )
        weights = [tuple(round(w, 9) for w in row) for row in chunk.adapter_weights]
        # adapter_gate 0: the row runs without the conversion adapter (the "AR model" of the toy)
        base = [False] * n if chunk.adapter_gate is None else [g == 0.0 for g in chunk.adapter_gate]
        assert chunk.adapter_gate is None or len(chunk.adapter_gate) == n
        k0 = [
            (chunk.position_ids[j], chunk.input_ids[j], weights[j]) + (("base",) if base[j] else ())
            for j in range(n)
        ]
        sees = [[j for j in range(n) if chunk.block_ids[j] <= chunk.block_ids[i]] for i in range(n)]
        past0 = [c[0] for c in self.cache]
        past1 = [c[1] for c in self.cache]
        k1 = [_digest(k0[i], sorted(past0 + [k0[j] for j in sees[i]])) for i in range(n)]
        self.present = self.cache + list(zip(k0, k1, strict=True))
        out_rows = range(chunk.output_offset, n)
        hidden = [_digest(k1[i], sorted(past1 + [k1[j] for j in sees[i]])) for i in out_rows]
        return self._outputs(hidden)

    def _outputs(self, hidden: list[int]) -> StepOutput:
        ids, logits, lse, ent, queries = [], [], [], [], []
        for h in hidden:
            rng = random.Random(h)
            row = [self.peaked * rng.gauss(0.0, 1.0) for _ in range(self.config.vocab_size)]
            top = max(row)
            total = sum(math.exp(x - top) for x in row)
            log_z = top + math.log(total)
            probs = [math.exp(x - log_z) for x in row]
            order = sorted(range(len(row)), key=lambda v: (-row[v], v))[: self.config.top_k]
            ids.append(order)
            logits.append([row[v] for v in order])
            lse.append(log_z)
            ent.append(-sum(p * math.log(p) for p in probs if p > 0))
            queries.append([rng.gauss(0.0, 1.0) for _ in range(self.config.hidden_size)])
        return StepOutput(ids, logits, lse, ent, lambda r: queries[r])
