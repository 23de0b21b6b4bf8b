"""WebAssembly threads: one block step of a browser model in onnxruntime-web on 1 and on N threads,
in two pages of one headless Chromium, rounds interleaved so that both see the same machine.

    python benchmarks/browser_threads.py --model DIR [--threads 2] [--rounds 6] [--reps 3]
    python benchmarks/browser_threads.py --default ...

Prints per thread count the wall time per forward (min and median) and the CPU time per forward of
all Chromium processes. On a busy machine the wall times are the loaded case; the CPU times say
what an idle one would see: N threads that spend c_N ms of CPU per forward finish in about
c_N / N ms when the cores are free (docs/web.md, "Threads", decides the page's default from this).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_bench import ARGS, CHROMIUM, CountingServer  # noqa: E402

from runtime.web_command import DEFAULT_MODEL_TARGET  # noqa: E402
from ruvdllm.default_artifact import default_model_dir  # noqa: E402

PAGE = """<!doctype html><script type="module">
const worker = new Worker('threads_worker.js', { type: 'module' });
const pending = new Map(); let next = 0;
worker.onmessage = ({ data }) => { const p = pending.get(data.id); pending.delete(data.id); data.error ? p.reject(new Error(data.error)) : p.resolve(data.value); };
window.rpc = (op, args) => new Promise((resolve, reject) => { const id = next++; pending.set(id, { resolve, reject }); worker.postMessage({ id, op, args }); });
window.ready = true;
</script>"""
# One forward as the sampler's block steps run it: `rows` chunk rows after `past` cached positions.
WORKER = """
import { loadOrt, createSession } from '/js/ort_engine.js';
import { INDEX_SUFFIX, widenAll } from '/js/widen.js';
let session, feeds;
const ops = {
  async load({ modelUrl, threads, past, rows }) {
    const ort = await loadOrt('wasm', { numThreads: threads });
    const bytes = async (u) => new Uint8Array(await (await fetch(u)).arrayBuffer());
    const data = [{ path: 'model.onnx.data', data: await bytes(modelUrl + 'model.onnx.data') }];
    const index = await fetch(modelUrl + 'model.onnx' + INDEX_SUFFIX);
    if (index.ok) {  // the wasm target: its weights widened from the shipped blocks, as the page does
      const parsed = await index.json();
      const started = performance.now();
      data.push(await widenAll(parsed, await bytes(modelUrl + parsed.blocks)));
      self.widenMs = performance.now() - started;
    }
    session = await createSession(ort, await bytes(modelUrl + 'model.onnx'), { ep: 'wasm', externalData: data });
    const ints = (a, dims) => new ort.Tensor('int64', BigInt64Array.from(a, BigInt), dims);
    feeds = {
      input_ids: ints(Array(rows).fill(5), [1, rows]),
      position_ids: ints(Array.from({ length: rows }, (_, i) => past + i), [1, rows]),
      block_ids: ints([0, ...Array(rows - 1).fill(1)], [1, rows]),
      output_offset: ints([0], [1]),
    };
    for (const m of session.inputMetadata) {
      if (feeds[m.name]) continue;
      let dims = m.shape.map((d) => (typeof d === 'number' ? d : 0));
      if (m.name.startsWith('past_')) dims = [1, dims[1], past, dims[3]];
      if (m.name === 'adapter_weights') dims = [1, rows, dims[2]];
      const gate = m.name === 'adapter_gate'; // the conversion adapter's per-row switch: on
      if (gate) dims = [1, rows];
      feeds[m.name] = new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(gate ? 1 : 0), dims);
    }
    await session.run(feeds); // warm-up
    return ort.env.wasm.numThreads;
  },
  async run({ reps }) {
    const times = [];
    for (let i = 0; i < reps; i++) { const t = performance.now(); await session.run(feeds); times.push(performance.now() - t); }
    return times;
  },
};
self.onmessage = async ({ data: { id, op, args } }) => {
  try { self.postMessage({ id, value: await ops[op](args) }); } catch (e) { self.postMessage({ id, error: String(e?.stack || e) }); }
};
"""


def processes_with(file: str, marker: str):
    """/proc/PID of every process whose /proc/PID/`file` contains `marker` (one that ends while
    being read is skipped; its other files may vanish too, so callers catch OSError)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / file).read_text():
                yield proc
        except OSError:
            continue


def chromium_cpu_s() -> float:
    """utime + stime of every Chromium process (the page's worker and onnxruntime-web's threads)."""
    total = 0
    for proc in processes_with("comm", "chromium"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="exported model directory (target webgpu)")
    source.add_argument("--default", action="store_true", help="the default model, exported for WebGPU once")
    parser.add_argument("--threads", type=int, default=2, help="compared with one thread")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--reps", type=int, default=3, help="forwards per page per round")
    parser.add_argument("--rows", type=int, default=9, help="chunk rows (a block of 8 and its lead token)")
    parser.add_argument("--past", type=int, default=32, help="cached positions")
    args = parser.parse_args(argv)
    model_dir = default_model_dir(DEFAULT_MODEL_TARGET) if args.default else args.model
    from playwright.sync_api import sync_playwright

    counts = (1, args.threads)
    print(
        f"model {model_dir}  ·  {args.rows} rows after {args.past} cached  ·  load average {os.getloadavg()[0]:.1f}"
    )
    server = CountingServer(model_dir)
    with sync_playwright() as driver, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "index.html").write_text(PAGE)
        (directory / "threads_worker.js").write_text(WORKER)
        server.site.mount("/bench/", directory)
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pages = {}
        for threads in counts:
            page = browser.new_page()
            page.set_default_timeout(1_800_000)
            page.goto(server.url + "bench/index.html")
            page.wait_for_function("window.ready")
            load = {
                "modelUrl": server.url + "model/",
                "threads": threads,
                "past": args.past,
                "rows": args.rows,
            }
            got = page.evaluate("(a) => rpc('load', a)", load)
            assert got == threads, f"asked for {threads} threads, onnxruntime-web has {got} (isolation?)"
            pages[threads] = page
        times = {t: [] for t in counts}
        cpu = dict.fromkeys(counts, 0.0)
        for r in range(args.rounds):
            for threads in counts if r % 2 == 0 else counts[::-1]:
                before = chromium_cpu_s()
                times[threads] += pages[threads].evaluate("(a) => rpc('run', a)", {"reps": args.reps})
                cpu[threads] += chromium_cpu_s() - before
        browser.close()
    server.close()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"{'threads':>8}  {'min ms':>9}  {'median ms':>9}  {'CPU ms':>9}  {'CPU / threads':>13}")
    for t in counts:
        per = 1e3 * cpu[t] / len(times[t])
        print(
            f"{t:>8}  {min(times[t]):9.1f}  {statistics.median(times[t]):9.1f}  {per:9.1f}  {per / t:13.1f}"
        )
    one, many = counts
    wall = statistics.median(times[many]) / statistics.median(times[one])
    idle = (cpu[many] / many) / cpu[one]
    print(
        f"{many} threads ÷ 1 thread: wall (median, this machine as loaded) {wall:.2f}; idle estimate (CPU / threads) {idle:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
