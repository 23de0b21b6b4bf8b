"""What one more row costs a forward on this machine: measured once, kept, and read by sampler auto.

The verified sampler commits more than one token per forward by paying for more rows (drafts to
check, masks to draft). Whether that pays depends on the CPU's 4-bit kernels, not on the model:

    CPU, 2 threads                     ms per forward, 1 / 5 rows   extra row   verified ÷ ar
    AVX-512 VNNI (Sapphire Rapids VM)  6.8 / 9.6                    0.10        1.07-1.15 exact, 1.2-1.3 lenient
    AVX2, no VNNI (AMD EPYC VM)        18.6 / 39.0, 24.8 / 48.0     0.27, 0.23  0.86 exact, 0.89 lenient

(benchmarks/README.md: the default model; the verified sampler's tokens/s over the `ar`
sampler's on 16 held-out prompts, greedy; on the AVX2 CPU at one thread the extra row is 0.31-0.33).
Where a row's int8 dot products are cheap beside reading the weights, which all rows share, extra
rows are nearly free; where each row pays its own dot products, a forward of five rows costs two
to three one-row forwards and drafting loses. `extra_row` is that slope: the cost of one more row
as a fraction of a one-row forward. Interpolating the two machines, the verified sampler breaks
even with `ar` at about 0.17 (exact) to 0.20 (lenient); sampler auto runs `ar` from
DRAFTING_PAYS_BELOW up (runtime/settings.py `sampler_for`). The two machines are the only
evidence; a CPU between them gets the sampler whose side of the line it falls on, and near the
line the two samplers are within ~10% of each other.

Measured on the model's own backend (its graph, threads and device): a short prompt, then one-row
and five-row forwards interleaved, the fastest of each (the least disturbed by other work on a
shared machine). 0.6-0.9 s on the AVX2 CPU, so it is kept in a JSON file keyed by
what decides it (the graph file, the CPU, the threads, the engine's version) and measured again
only when one of those changes: sampler auto then gives the same sampler run after run on a
machine. Pure standard library (the browser has no cache directory and does not measure).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.backend import Backend, Chunk
from runtime.cache_record import read_record, write_record

# From this extra-row cost up sampler auto runs `ar` (see the module docstring for the two machines
# it is interpolated between): below it the verified sampler's drafts pay for their rows.
DRAFTING_PAYS_BELOW = 0.18
ROWS = 5  # the wider forward: about what a verified forward checks and drafts (1 + 2-6 rows)
PROMPT = 32  # cached positions before the timed forwards: a short chat prompt
REPEATS = 7  # per width, interleaved; the fastest counts


@dataclass(frozen=True)
class RowCost:
    one_row_ms: float
    rows: int
    rows_ms: float  # a forward of `rows` rows, same cache

    @property
    def extra_row(self) -> float:
        """One more row's cost as a fraction of a one-row forward (0: rows are free)."""
        return max(0.0, self.rows_ms - self.one_row_ms) / ((self.rows - 1) * self.one_row_ms)


def measure(backend: Backend, repeats: int = REPEATS, rows: int = ROWS) -> RowCost:
    """Time one-row and `rows`-row forwards after a PROMPT-token cache (less where the model's
    context is shorter) on `backend`; the backend's cache is empty afterwards."""
    config = backend.config
    slots = config.adapter_slots
    token = config.mask_token_id
    prompt = max(1, min(PROMPT, config.max_position - rows))  # a short context still fits
    backend.reset()
    backend.forward(_chunk([token] * prompt, 0, slots))
    backend.commit(prompt)
    one, wide = _chunk([token], prompt, slots), _chunk([token] * rows, prompt, slots)
    times: dict[int, list[float]] = {1: [], rows: []}
    for _ in range(repeats):
        for chunk in (one, wide):
            started = time.perf_counter()
            backend.forward(chunk)
            times[len(chunk)].append((time.perf_counter() - started) * 1e3)
    backend.reset()
    return RowCost(one_row_ms=min(times[1]), rows=rows, rows_ms=min(times[rows]))


def _chunk(tokens: list[int], start: int, slots: int) -> Chunk:
    positions = list(range(start, start + len(tokens)))
    return Chunk(
        input_ids=tokens,
        position_ids=positions,
        block_ids=positions,  # causal, as the verifier rows
        output_offset=len(tokens) - 1,
        adapter_weights=[[0.0] * slots for _ in tokens],
    )


def kept(
    path: Path,
    key: str,
    measure_now: Callable[[], RowCost | None],
    gone: Callable[[str], bool] = lambda key: False,
) -> RowCost | None:
    """The row cost recorded under `key` in the JSON file at `path`, else `measure_now()`'s,
    recorded (None: it could not measure, and nothing is recorded). A missing, unreadable or
    malformed file or entry is measured again, never an error: the record is a cache (a file that
    cannot be written only costs the next run a measurement). Writing drops the records whose
    key `gone` says no longer names anything (a model directory since deleted)."""
    records = read_record(path)
    entry = records.get(key)
    try:
        return RowCost(float(entry["one_row_ms"]), int(entry["rows"]), float(entry["rows_ms"]))
    except (TypeError, KeyError, ValueError):
        pass
    cost = measure_now()
    if cost is None:
        return None
    records = {k: v for k, v in records.items() if not gone(k)}
    records[key] = asdict(cost)
    write_record(path, records)
    return cost
