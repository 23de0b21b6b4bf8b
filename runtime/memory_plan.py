"""What one forward needs in memory, and a long prompt read in pieces so that it fits.

The browser's engines have hard limits: onnxruntime-web's WebAssembly heap is at most 4 GiB (a
32-bit memory), a WebGPU buffer at most the adapter's `maxStorageBufferBindingSize`. The graph's
attention holds heads × rows × keys float32 scores, several times over, so one forward over a
6,364-token prompt needs ~7 GB: it fails after minutes with `std::bad_alloc`. Two remedies:

- A causal prefix of a chunk (the prompt, in BD3LM's first step) is exact in pieces: forward the
  first rows, commit them to the cache, forward the next rows after them, ... Each piece's rows
  see the cache as they would have seen the earlier rows of the whole chunk, and no earlier row
  could see a later one (`forward_in_pieces`). Each piece is a forward of its own, so Stop acts
  between pieces and the page can show how far the prompt has been read.
- What cannot be split — MDLM's span is one bidirectional block with the prompt, which attends
  to the answer — is checked before the run against what the device allows (`check_fits`), and
  refused in one line.

The estimates are upper bounds from the config alone (standard library: the browser runs this).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from runtime.artifact import ArtifactConfig
from runtime.backend import Chunk, StepOutput
from ruvdllm.errors import RuvdllmError

FLOAT = 4  # bytes
# Peak of one long forward over its float32 score tensor, measured with CPython onnxruntime on the
# default model's browser graph (the `matmul` attention): 4.5-5× at 2,048-4,096 rows.
SCORE_COPIES = 5
# Hidden-sized float rows alive at once per chunk row (residual, norms, q/k/v, the MLP's ~3×
# hidden twice), rounded up.
ACTIVATION_COPIES = 16
MAX_PIECE = 512  # rows per prompt piece: large enough that a piece's matmuls run at full speed
MIN_PIECE = 16  # below this the per-forward overhead dominates; a device that small is refused


@dataclass(frozen=True)
class DeviceLimits:
    """What the engine may use, from the page (web/js/ort_engine.js deviceLimits)."""

    budget: int  # bytes one forward may use beyond the weights
    largest_tensor: int | None = None  # bytes in one tensor (a WebGPU buffer); None: only the budget
    piece_rows: int | None = None  # prompt rows per forward; None: the most that fit, ≤ MAX_PIECE


def score_bytes(config: ArtifactConfig, rows: int, keys: int) -> int:
    return FLOAT * config.num_heads * rows * keys


def kv_bytes(config: ArtifactConfig, positions: int) -> int:
    """Keys and values of every layer for `positions` positions."""
    return FLOAT * 2 * config.num_layers * config.num_kv_heads * config.head_dim * positions


def forward_bytes(config: ArtifactConfig, rows: int, cached: int) -> int:
    """Upper bound of one forward of `rows` chunk rows after `cached` positions: the attention
    scores, the past fed in and the present returned, the activations."""
    keys = cached + rows
    return (
        SCORE_COPIES * score_bytes(config, rows, keys)
        + kv_bytes(config, cached)
        + kv_bytes(config, keys)
        + ACTIVATION_COPIES * FLOAT * config.hidden_size * rows
    )


def fits(config: ArtifactConfig, limits: DeviceLimits, rows: int, cached: int) -> bool:
    if forward_bytes(config, rows, cached) > limits.budget:
        return False
    return limits.largest_tensor is None or score_bytes(config, rows, cached + rows) <= limits.largest_tensor


def piece_rows(config: ArtifactConfig, limits: DeviceLimits) -> int:
    """Prompt rows per forward: the limits' own, else the largest power of two ≤ MAX_PIECE whose
    forward fits after a full context (at least MIN_PIECE)."""
    if limits.piece_rows:
        return limits.piece_rows
    rows = MAX_PIECE
    while rows > MIN_PIECE and not fits(config, limits, rows, max(config.max_position - rows, 0)):
        rows //= 2
    return rows


def split_points(chunk: Chunk, rows: int) -> list[int]:
    """Where `chunk` may be cut into forwards of about `rows` rows: before its output rows (they
    come from the last piece), and only at a row c where every earlier row's block is before every
    later row's (max(block_ids[:c]) < min(block_ids[c:])): the earlier rows never saw the later
    ones, and the later ones see all earlier ones in the cache, as every cached key is visible."""
    blocks = chunk.block_ids
    last = chunk.output_offset  # cuts at 1..output_offset keep every output row in the last piece
    if len(chunk) <= rows or last < 1:
        return []
    suffix_min = blocks[-1:] * len(blocks)
    for i in range(len(blocks) - 2, -1, -1):
        suffix_min[i] = min(blocks[i], suffix_min[i + 1])
    cuts, start, prefix_max = [], 0, blocks[0]
    for c in range(1, last + 1):
        if c - start >= rows and prefix_max < suffix_min[c]:
            cuts.append(c)
            start = c
        prefix_max = max(prefix_max, blocks[c])
    return cuts


def piece(chunk: Chunk, start: int, stop: int, output_offset: int) -> Chunk:
    return Chunk(
        input_ids=chunk.input_ids[start:stop],
        position_ids=chunk.position_ids[start:stop],
        block_ids=chunk.block_ids[start:stop],
        output_offset=output_offset,
        adapter_weights=chunk.adapter_weights[start:stop],
    )


def forward_in_pieces(
    forward: Callable[[Chunk], StepOutput],
    commit: Callable[[int], None],
    cached: int,
    chunk: Chunk,
    rows: int,
    on_piece: Callable[[int, int], None] | None = None,
) -> StepOutput:
    """`forward(chunk)` for a backend with `cached` positions in its cache, as several forwards of
    about `rows` rows where the chunk can be cut (`split_points`), each committed to the cache
    before the next; `on_piece(rows done, rows in all)` after each. Returns the last piece's
    outputs — the chunk's own — and leaves the last forward's present keys/values for the
    caller's commit, exactly as one forward would."""
    start = 0
    for cut in split_points(chunk, rows):
        forward(piece(chunk, start, cut, output_offset=cut - start - 1))  # one output row: unused
        commit(cached + cut)
        start = cut
        if on_piece is not None:
            on_piece(cut, len(chunk))
    if start == 0:
        return forward(chunk)
    return forward(piece(chunk, start, len(chunk), chunk.output_offset - start))


def bounding_forwards(
    config: ArtifactConfig, sampler: str, prompt_tokens: int, length: int, span: int, rows: int
) -> list[tuple[int, int]]:
    """(rows, cached positions) of the forwards that bound a generation's memory: MDLM reads
    prompt + span in every step; BD3LM reads the prompt in pieces of `rows` (the last one with
    the first block) and ends with its last block after everything else; the verified sampler's
    last forwards carry up to span - 1 drafts and the AR row before its span of masks."""
    if sampler == "mdlm":
        return [(prompt_tokens + length, 0)]
    last = 2 * span if sampler == "verified" else 1 + span
    return [
        (min(rows, prompt_tokens) + span, max(prompt_tokens - rows, 0)),
        (last, max(prompt_tokens + length - last, 0)),
    ]


def check_fits(
    config: ArtifactConfig, limits: DeviceLimits, sampler: str, prompt_tokens: int, length: int, span: int
) -> None:
    """Raise RuvdllmError, in one line, when a generation needs more than the device allows."""
    forwards = bounding_forwards(config, sampler, prompt_tokens, length, span, piece_rows(config, limits))
    if all(fits(config, limits, rows, cached) for rows, cached in forwards):
        return
    need = max(forward_bytes(config, rows, cached) for rows, cached in forwards)
    allowed = f", more than this device allows ({_size(limits.budget)})"
    if need <= limits.budget:  # one tensor too large for a GPU buffer
        need = max(score_bytes(config, rows, rows + cached) for rows, cached in forwards)
        allowed = f" in one buffer, more than this GPU allows ({_size(limits.largest_tensor)})"
    what = f"prompt: {prompt_tokens} tokens + length {length}"
    if sampler == "mdlm":
        raise RuvdllmError(
            f"{what} in one MDLM forward need about {_size(need)}{allowed}: "
            "BD3LM reads a long prompt in pieces, or shorten the prompt"
        )
    raise RuvdllmError(
        f"{what} need about {_size(need)} per forward{allowed}: shorten the prompt or the length"
    )


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
