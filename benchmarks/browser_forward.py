"""One block step of several graphs of the same model in onnxruntime-web's wasm build: one page per
graph in one headless Chromium, rounds interleaved so that every graph sees the same machine, and
the memory each page's process held at its peak.

    python benchmarks/browser_forward.py DIR [DIR ...] [--threads 2] [--rounds 4] [--reps 3]

Prints per graph (its config's target and quantization): ms per forward (min, median), ÷ the first
graph, the session's load time, and the peak resident memory of the renderer process that ran it
(VmHWM: the weights as the page holds them, onnxruntime-web's copy, and what folding at load made).
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
from browser_threads import PAGE, WORKER  # noqa: E402


def renderer_peaks() -> dict[int, int]:
    """pid -> VmHWM (bytes) of every Chromium renderer process."""
    peaks = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if "--type=renderer" not in (proc / "cmdline").read_text():
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[int(proc.name)] = int(line.split()[1]) * 1024
        except OSError:
            continue
    return peaks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="exported model directories (same model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--reps", type=int, default=3, help="forwards per page per round")
    parser.add_argument("--rows", type=int, default=9, help="chunk rows (a block of 8 and its lead token)")
    parser.add_argument("--past", type=int, default=32, help="cached positions")
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
        for r in range(args.rounds):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                times[i] += pages[i][0].evaluate("(a) => rpc('run', a)", {"reps": args.reps})
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
