"""One block step of several graphs of the same model in onnxruntime-web's wasm build: one page per
graph in one headless Chromium, rounds interleaved so that every graph sees the same machine, and
the memory each page's process held at its peak.

    python benchmarks/browser_forward.py DIR [DIR ...] [--threads 2] [--rounds 4] [--reps 3] [--cpython]

Prints per graph (its config's target and quantization): ms per forward (min, median), ÷ the first
graph, the session's load time, and the peak resident memory of the renderer process that ran it
(VmHWM: the weights as the page holds them, onnxruntime-web's copy, and what folding at load made).
`--cpython` adds the first graph on CPython onnxruntime (same threads, same feeds) to every round,
so the browser ÷ CPython ratio is measured interleaved, on the machine as loaded at that moment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_bench import ARGS, CHROMIUM, CountingServer  # noqa: E402
from browser_threads import PAGE, WORKER, processes_with  # noqa: E402


def renderer_peaks() -> dict[int, int]:
    """pid -> VmHWM (bytes) of every Chromium renderer process."""
    peaks = {}
    for proc in processes_with("cmdline", "--type=renderer"):
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[int(proc.name)] = int(line.split()[1]) * 1024
    return peaks


def cpython_forward(model: Path, threads: int, past: int, rows: int):
    """() -> ms of one forward of `model` on CPython onnxruntime with the worker's feeds."""
    import numpy as np

    from runtime.ort_backend import OrtOptions, make_session

    session, _ = make_session(model / "model.onnx", OrtOptions(device="cpu", intra_op_threads=threads))
    ints = {
        "input_ids": [[5] * rows],
        "position_ids": [list(range(past, past + rows))],
        "block_ids": [[0] + [1] * (rows - 1)],
        "output_offset": [0],
    }
    feeds = {}
    for meta in session.get_inputs():
        if meta.name in ints:
            feeds[meta.name] = np.array(ints[meta.name], np.int64)
            continue
        dims = [d if isinstance(d, int) else 0 for d in meta.shape]
        if meta.name.startswith("past_"):
            dims = [1, dims[1], past, dims[3]]
        elif meta.name == "adapter_weights":
            dims = [1, rows, dims[2]]
        elif meta.name == "adapter_gate":  # the conversion adapter's switch: on
            dims = [1, rows]
        feeds[meta.name] = np.full(dims, 1.0 if meta.name == "adapter_gate" else 0.0, np.float32)
    session.run(None, feeds)  # warm-up

    def forward() -> float:
        started = time.perf_counter()
        session.run(None, feeds)
        return (time.perf_counter() - started) * 1e3

    return forward


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="exported model directories (same model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--reps", type=int, default=3, help="forwards per page per round")
    parser.add_argument("--rows", type=int, default=9, help="chunk rows (a block of 8 and its lead token)")
    parser.add_argument("--past", type=int, default=32, help="cached positions")
    parser.add_argument("--cpython", action="store_true", help="also the first graph on CPython onnxruntime")
    args = parser.parse_args(argv)
    models = list(args.models)
    if not models:
        parser.error("give model directories")
    from playwright.sync_api import sync_playwright

    print(
        f"{args.rows} rows after {args.past} cached, {args.threads} thread(s)  ·  load average {os.getloadavg()[0]:.1f}"
    )
    server = CountingServer(None)
    labels, pages, loads, peaks = [], [], [], []
    with sync_playwright() as driver, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "index.html").write_text(PAGE)
        (directory / "threads_worker.js").write_text(WORKER)
        server.site.mount("/bench/", directory)
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        for i, model in enumerate(models):
            config = json.loads((model / "config.json").read_text())
            labels.append(f"{'/'.join(config['targets'])} ({config['quantization']})")
            server.site.mount(f"/graph{i}/", model)
            before = set(renderer_peaks())
            page = browser.new_page()
            page.set_default_timeout(1_800_000)
            page.goto(server.url + "bench/index.html")
            page.wait_for_function("window.ready")
            load = {
                "modelUrl": f"{server.url}graph{i}/",
                "threads": args.threads,
                "past": args.past,
                "rows": args.rows,
            }
            started = time.perf_counter()
            got = page.evaluate("(a) => rpc('load', a)", load)
            loads.append(time.perf_counter() - started)
            assert got == args.threads, f"asked for {args.threads} threads, onnxruntime-web has {got}"
            pages.append((page, set(renderer_peaks()) - before))
        times = [[] for _ in models]
        native = cpython_forward(models[0], args.threads, args.past, args.rows) if args.cpython else None
        native_times = []
        for r in range(args.rounds):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                times[i] += pages[i][0].evaluate("(a) => rpc('run', a)", {"reps": args.reps})
            if native:
                native_times += [native() for _ in range(args.reps)]
        now = renderer_peaks()
        peaks = [max((now.get(pid, 0) for pid in pids), default=0) for _, pids in pages]
        browser.close()
    server.close()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    first = statistics.median(times[0])
    print(f"{'graph':<22}  {'min ms':>8}  {'median ms':>9}  {'÷ first':>7}  {'load s':>7}  {'peak MB':>8}")
    for label, t, load, peak in zip(labels, times, loads, peaks, strict=True):
        median = statistics.median(t)
        print(
            f"{label:<22}  {min(t):8.1f}  {median:9.1f}  {median / first:7.2f}  {load:7.1f}  {peak / 1e6:8.0f}"
        )
    if native_times:
        median = statistics.median(native_times)
        print(f"{'CPython ORT, first':<22}  {min(native_times):8.1f}  {median:9.1f}  {median / first:7.2f}")
        for label, t in zip(labels, times, strict=True):
            print(f"browser ÷ CPython, {label}: median {median / statistics.median(t):.2f}x the speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
