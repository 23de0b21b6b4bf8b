"""Loop A's cost on the request path: generation with and without recording, in the same run.

    python benchmarks/learning_overhead.py                 # the tiny test model with a DGR bank (built here)
    python benchmarks/learning_overhead.py --model DIR     # an exported model directory
    python benchmarks/learning_overhead.py --default       # the default model (exported once)

Each round runs the same request twice, alternating which goes first: once plain, once with loop
A on (the prompt embedding kept, the trajectory recorded into a real SQLite store by the writer
thread). Reported:

  record() p50     the call on the caller's path alone (build a Pending, enqueue): the goal is
                   <= 0.1 ms p50
  request p50      whole requests, plain and recorded, and the ratio and difference of their
                   medians: includes the embedding fetch and the writer thread competing for the
                   interpreter lock; noisy on a shared machine (compare the ratio, not the ms;
                   the ratio of the minimums is the least disturbed by other load)
  writer ms/row    the writer's time per trajectory (off the path): the rate the store sustains
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.cpython_model import open_model  # noqa: E402
from runtime.dgr import DgrConfig  # noqa: E402
from runtime.learning.config import LoopAConfig  # noqa: E402
from runtime.learning.loop_a import LoopA  # noqa: E402
from runtime.ort_backend import OrtOptions  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402


def tiny_model(scratch: Path) -> Path:
    from runtime import artifact
    from tests.runtime.tiny_artifact import make_tiny_artifact, random_bank

    directory = make_tiny_artifact(scratch / "model")
    random_bank(artifact.load_config(directory), seed=5).save(directory / "banks")
    artifact.write_manifest(directory)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: the tiny test model)")
    parser.add_argument("--default", action="store_true", help="the default model (exported once)")
    parser.add_argument("--requests", type=int, default=200, help="requests per arm (default 200)")
    parser.add_argument("--length", type=int, default=16, help="tokens per request (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    parser.add_argument("--park-writer", action="store_true", help="the writer drains only at exit")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="learning-bench-"))
    if args.default:
        from ruvdllm.default_artifact import default_model_dir

        directory = default_model_dir("cpu")
    else:
        directory = args.model or tiny_model(scratch)
    model = open_model(directory, options=OrtOptions(intra_op_threads=args.threads), verify="sizes")
    # retrieve at every step, so that the recorded trace carries DGR patterns
    settings = replace(
        GenerationSettings(length=args.length, stop_at_eos=False),
        dgr_config=DgrConfig(strategy="entropy", threshold=0.0),
    )
    ids = model.encode("The quick brown fox jumps over the lazy dog. Tell me about it.")
    loop = LoopA(LoopAConfig(store=str(scratch / "trajectories.db"), queue_size=4096))
    if args.park_writer:  # the caller's cost alone: the writer only drains at close
        loop.recorder.interval = 1e9
    loop.attach(model)
    for _ in range(5):  # warm both paths
        model.generate(ids, settings)

    plain, recorded, record_calls = [], [], []
    for i in range(args.requests):
        for arm in (0, 1) if i % 2 == 0 else (1, 0):
            model.record_query = bool(arm)
            control = model.control(settings)
            started = time.perf_counter()
            done = model.generate(ids, settings, control=control)
            if arm:
                before = time.perf_counter()
                loop.record_completion(model, ids, settings, done, control)
                record_calls.append(time.perf_counter() - before)
            (recorded if arm else plain).append(time.perf_counter() - started)

    started = time.perf_counter()
    loop.close()
    drain_s = time.perf_counter() - started
    writes = []  # the writer's own cost, measured apart: rows written synchronously
    sync = LoopA(LoopAConfig(store=str(scratch / "sync.db")), threaded=False)
    control = model.control(settings)
    done = model.generate(ids, settings, control=control)
    for _ in range(50):
        before = time.perf_counter()
        sync.record_completion(model, ids, settings, done, control)
        writes.append(time.perf_counter() - before)
    sync.close()

    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    print(
        f"model {directory.name}: {args.requests} requests per arm, {args.length} tokens, {done.result.steps} steps each"
    )
    print(
        f"record() on the caller's path: p50 {ms(record_calls):.4f} ms, min {min(record_calls) * 1e3:.4f} ms, "
        f"p99 {sorted(record_calls)[int(0.99 * len(record_calls))] * 1e3:.4f} ms"
    )
    print(
        f"request p50: plain {ms(plain):.3f} ms (min {min(plain) * 1e3:.3f}), recorded {ms(recorded):.3f} ms "
        f"(min {min(recorded) * 1e3:.3f}); ratio {ms(recorded) / ms(plain):.4f}, added {ms(recorded) - ms(plain):+.4f} ms; "
        f"ratio of the minimums {min(recorded) / min(plain):.4f}"
    )
    print(
        f"writer: {ms(writes):.3f} ms per trajectory written (p50, synchronous); drain at close {drain_s * 1e3:.1f} ms; "
        f"dropped {loop.recorder.dropped}, failed {loop.recorder.failed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
