"""One-row forward and block-8 step of several exported models, interleaved in one run.

    python benchmarks/forward_ab.py BEFORE_DIR AFTER_DIR [--rounds 15] [--past 128]

Each round runs every model once per row count (1, 8) after `--past` cached positions, through the
runtime's own backend (what `ruvdllm generate` runs), one onnxruntime thread, and records the
calling thread's CPU time per forward: with one intra-op thread the whole forward runs on that
thread, and CPU time is not inflated by waiting for a core on a shared machine (memory contention
still shows). Prints median and min per model, the ratio to the first model, and the block-8 step
÷ the one-row forward. Not a test: ratios within one run are the figures to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.backend import Chunk  # noqa: E402
from runtime.cpython_model import open_model  # noqa: E402
from runtime.ort_backend import OrtOptions  # noqa: E402

ROWS = (1, 8)
FORWARDS_PER_SAMPLE = 3  # one sample = the mean of a few forwards after a warm one


def cached_chunk(model, rows: int, past: int) -> Chunk:
    """Reset the cache, fill it with `past` positions, return a chunk of `rows` masked rows after it."""
    backend, slots = model.backend, [0.0] * model.config.adapter_slots
    backend.reset()
    ids = [100 + i % 1000 for i in range(past)]
    prompt = Chunk(ids, list(range(past)), list(range(past)), past - 1, [slots] * past)
    backend.forward(prompt)
    backend.commit(past)
    mask = [model.config.mask_token_id] * rows
    return Chunk(mask, list(range(past, past + rows)), [0] * rows, 0, [slots] * rows)


def forward_cpu_ms(model, chunk: Chunk) -> float:
    model.backend.forward(chunk)  # warm: this cache length's allocations
    started = time.thread_time()
    for _ in range(FORWARDS_PER_SAMPLE):
        model.backend.forward(chunk)
    return (time.thread_time() - started) / FORWARDS_PER_SAMPLE * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models", type=Path, nargs="+", help="exported model directories; the first is the baseline"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--past", type=int, default=128, help="cached positions before the forward")
    args = parser.parse_args()
    options = OrtOptions(intra_op_threads=1, spinning=False)
    models = {str(d): open_model(d, options=options, verify="sizes") for d in args.models}
    samples = {(name, rows): [] for name in models for rows in ROWS}
    for _ in range(args.rounds):
        for rows in ROWS:
            for name, model in models.items():  # interleaved: a change of load hits every model alike
                samples[name, rows].append(forward_cpu_ms(model, cached_chunk(model, rows, args.past)))
    first = str(args.models[0])
    print(f"thread CPU ms per forward, 1 thread, {args.past} cached positions, {args.rounds} rounds")
    for name in models:
        cells = []
        for rows in ROWS:
            median, least = statistics.median(samples[name, rows]), min(samples[name, rows])
            ratio = median / statistics.median(samples[first, rows])
            cells.append(f"S={rows} median {median:6.2f} min {least:6.2f} (x{ratio:.2f})")
        step = statistics.median(samples[name, 8]) / statistics.median(samples[name, 1])
        print(f"{name}\n    {'   '.join(cells)}   block-8 step / one-row {step:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
