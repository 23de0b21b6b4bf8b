"""Who sees whom: the attention patterns of the diffusion model, as `block_ids` and as boolean
visibility matrices.

The graph takes `block_ids` [B, S]: chunk key j is visible to query i iff
`block_ids[j] <= block_ids[i]`, and every cached (past) key is visible. Three patterns cover the
samplers:

    causal          arange(S)          block_ids 0 1 2 3 4 5   (the AR model as it was trained)
    bidirectional   zeros(S)           block_ids 0 0 0 0 0 0   (MDLM: the whole span at once)
    block-causal    arange(S) // b     block_ids 0 0 1 1 2 2   (BD3LM, b = 2)

Training also needs patterns no `block_ids` can express (the BD3LM two-copy trick, mask
annealing), so the model accepts an explicit visibility matrix as well; these helpers build them.
"""

from __future__ import annotations

import torch


def causal_block_ids(seq_len: int, start: int = 0) -> torch.Tensor:
    """[1, S] block ids of a causal chunk; `start` keeps ids after a prefix's."""
    return torch.arange(start, start + seq_len, dtype=torch.long)[None]


def bidirectional_block_ids(seq_len: int, block: int = 0) -> torch.Tensor:
    """[1, S] one block: every position sees every other."""
    return torch.full((1, seq_len), block, dtype=torch.long)


def block_causal_block_ids(seq_len: int, block_size: int, start: int = 0) -> torch.Tensor:
    """[1, S] blocks of `block_size` (the last one may be short), each seeing itself and earlier
    blocks; `start` is the absolute position of the chunk's first token so that block boundaries
    stay where they are when the chunk follows a cached prefix."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return (torch.arange(start, start + seq_len, dtype=torch.long) // block_size)[None]


def visibility(block_ids: torch.Tensor, past_len: int = 0) -> torch.Tensor:
    """bool [B, S, P + S]: True where query i may attend key j, exactly the graph's rule."""
    batch, seq_len = block_ids.shape
    in_chunk = block_ids[:, None, :] <= block_ids[:, :, None]  # [B, S(query), S(key)]
    past = torch.ones(batch, seq_len, past_len, dtype=torch.bool, device=block_ids.device)
    return torch.cat([past, in_chunk], dim=-1)


def bd3lm_training_visibility(seq_len: int, block_size: int) -> torch.Tensor:
    """bool [2L, 2L] for BD3LM's vectorised training over the concatenation [x_t, x_0]
    (Arriola et al. 2025): the noisy copy's block b sees itself and the clean copy's blocks < b;
    the clean copy is block-causal. Positions of both copies are the same 0..L-1.

        query\\key   x_t          x_0
        x_t          same block   earlier blocks
        x_0          none         same or earlier blocks
    """
    block = torch.arange(seq_len) // block_size
    same = block[:, None] == block[None, :]
    earlier = block[None, :] < block[:, None]
    same_or_earlier = block[None, :] <= block[:, None]
    top = torch.cat([same, earlier], dim=1)
    bottom = torch.cat([torch.zeros_like(same), same_or_earlier], dim=1)
    return torch.cat([top, bottom], dim=0)


def annealed_visibility(target: torch.Tensor, progress: float, generator: torch.Generator) -> torch.Tensor:
    """Attention-mask annealing (DiffuLLaMA): start causal and open each extra key of the
    `target` pattern ([S, S] bool) with probability `progress` (0 = causal, 1 = target), so the
    AR model's attention is bent gradually instead of all at once."""
    seq_len = target.shape[-1]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=target.device).tril()
    opened = torch.rand(target.shape, generator=generator, device=target.device) < progress
    return causal | (target & opened)
