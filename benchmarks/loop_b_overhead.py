"""Loop B's cost to generation: step time while loop B trains in the background against step time
while it is paused, in the same run (benchmarks/learning_overhead.py measures loop A).

    python benchmarks/loop_b_overhead.py                 # the tiny test model (built here)
    python benchmarks/loop_b_overhead.py --model DIR     # an exported model directory
    python benchmarks/loop_b_overhead.py --default       # the default model (exported once)

Setup: loop A records `--prompts` generations into a real store and each gets a thumbs up; loop B
(runtime/learning/loop_b.py) then trains on them without pause on its background thread, with its
own onnxruntime session (one thread), installing what it learns into the model being measured.

Measured: phases of `--phase` requests alternate between loop B training and loop B paused
(between two SPSA steps), for `--rounds` rounds; step time = a request's wall time / its steps.
Reported: p50 and min of each arm, their ratio (the goal: <= 1.1), and what loop B did meanwhile.
On a shared machine the medians move with other load; compare the ratios, repeat, and read the
ratio of the minimums beside that of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.cpython_model import open_model  # noqa: E402
from runtime.learning.config import LoopAConfig, LoopBConfig  # noqa: E402
from runtime.learning.loop_a import LoopA  # noqa: E402
from runtime.learning.loop_b import lower_thread_priority  # noqa: E402
from runtime.learning.loop_b_service import for_model  # noqa: E402
from runtime.learning.trajectory import make_feedback  # noqa: E402
from runtime.ort_backend import OrtOptions  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402

PROMPTS = [
    "Explain what the MIT licence allows.",
    "What does the Apache licence say about patents?",
    "Can I copy software under the GPL?",
    "Summarise the BSD licence in one sentence.",
    "What is a permissive licence?",
    "Does the MIT licence require attribution?",
    "What must I keep when I redistribute Apache-licensed code?",
    "Is the GPL compatible with the MIT licence?",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: the tiny test model)")
    parser.add_argument("--default", action="store_true", help="the default model (exported once)")
    parser.add_argument("--rounds", type=int, default=6, help="on/off rounds (default 6)")
    parser.add_argument("--phase", type=int, default=10, help="requests per phase (default 10)")
    parser.add_argument("--length", type=int, default=16, help="tokens per request (default 16)")
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime threads of generation (default 1)"
    )
    parser.add_argument("--steps", type=int, default=100, help="loop B's SPSA steps per MicroLoRA")
    parser.add_argument("--layers", type=int, default=0, help="loop B's trained layers (0: all)")
    parser.add_argument("--duty", type=float, default=LoopBConfig.duty, help="loop B's duty cycle")
    parser.add_argument(
        "--nice", action=argparse.BooleanOptionalAction, default=True, help="loop B's thread at nice 19"
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="loop-b-bench-"))
    if args.default:
        from ruvdllm.default_artifact import default_model_dir

        directory = default_model_dir("cpu")
    elif args.model:
        directory = args.model
    else:
        from tests.runtime.tiny_artifact import make_tiny_artifact

        directory = make_tiny_artifact(scratch / "model")
    model = open_model(directory, options=OrtOptions(intra_op_threads=args.threads), verify="sizes")
    settings = GenerationSettings(length=args.length, stop_at_eos=False)

    # what loop B learns from: real recorded generations, each liked
    loop_a = LoopA(LoopAConfig(store=str(scratch / "trajectories.db")))
    config = LoopBConfig(
        enabled=True,
        bank=str(scratch / "learnt"),
        steps=args.steps,
        layers=args.layers,
        min_cluster=2,
        duty=args.duty,
    )

    def read_good(after, threshold, limit):
        return loop_a.recorder.call(lambda store: store.good_feedback(0, threshold, limit))  # always all

    loop_b = for_model(model, config, read_good)
    loop_a.attach(model)
    for prompt in PROMPTS:
        ids = model.encode(prompt)
        control = model.control(settings)
        done = model.generate(ids, settings, control=control)
        loop_a.feedback(make_feedback(loop_a.record_completion(model, ids, settings, done, control), up=True))

    # loop B trains without pause on its own thread (run after run), paused or resumed per phase
    finished = threading.Event()
    runs, trained = [], []

    def train_forever():
        if args.nice:
            lower_thread_priority()
        while not finished.is_set():
            report = loop_b.run_once()
            runs.append(report.seconds)
            trained.extend(report.trained)

    thread = threading.Thread(target=train_forever, daemon=True)
    ids = model.encode(PROMPTS[0])
    for _ in range(3):
        model.generate(ids, settings)
    loop_b.pause()
    thread.start()

    on, off = [], []
    for round_ in range(args.rounds):
        for active in (True, False) if round_ % 2 == 0 else (False, True):
            (loop_b.resume if active else loop_b.pause)()
            time.sleep(0.2)  # let the other arm's last SPSA step end
            for _ in range(args.phase):
                started = time.perf_counter()
                done = model.generate(ids, replace(settings))
                (on if active else off).append((time.perf_counter() - started) / done.result.steps)
    finished.set()
    loop_b.stop()
    thread.join()
    loop_a.close()

    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    print(
        f"model {Path(directory).name}: {args.rounds} rounds x {args.phase} requests per arm, {args.length} tokens; "
        f"loop B duty {args.duty}, nice {'19' if args.nice else 'as the process'}"
    )
    print(
        f"step time p50: loop B paused {ms(off):.3f} ms (min {min(off) * 1e3:.3f}), training {ms(on):.3f} ms "
        f"(min {min(on) * 1e3:.3f}); ratio {ms(on) / ms(off):.3f}, ratio of the minimums {min(on) / min(off):.3f}"
    )
    kept = sum(t.kept for t in trained)
    print(
        f"loop B meanwhile: {len(runs)} runs, {len(trained)} MicroLoRAs trained ({kept} kept), "
        f"{sum(t.steps for t in trained)} SPSA steps"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
