"""Per-op: one linear of the default model in every form the browser's wasm build could run it,
timed in onnxruntime-web (headless Chromium, cross-origin isolated, as `ruvdllm web` serves it)
and in CPython onnxruntime, same shapes, rows and threads, in one run.

    python benchmarks/browser_ops.py [--threads 1 2] [--rows 1 9] [--shapes gate_up head]

Forms of y = x Wᵀ (x float32 [M, K], W [N, K]):

  matmulnbits      com.microsoft.MatMulNBits, 4-bit blocks of 32 (the exported graph's linears)
  matmulinteger    DynamicQuantizeLinear(x) → MatMulInteger(x_u8, W_s8 per column) → Cast → Mul
                   scales (what onnxruntime's optimizer may fuse into the next form)
  dynquant_s8      com.microsoft.DynamicQuantizeMatMul, int8 weights, per-column scales
  dynquant_u8      the same with uint8 weights and zero point 128
  matmul_fp32      MatMul over float32 weights (what weights widened once at load run as)

Shapes: gate_up = the packed gate/up projection [576 -> 3072], the largest linear of a layer;
head = the tied LM head [576 -> 49152], which runs over the output rows only; down = [1536 -> 576].
Figures are ms per run, the best of 5 rounds of `--reps` runs after a warm-up (the machine may be
shared: the minimum is the least disturbed); the ratio column is wasm ÷ the wasm MatMulNBits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_bench import ARGS, CHROMIUM, CountingServer, row  # noqa: E402

SHAPES = {"gate_up": (576, 3072), "head": (576, 49152), "down": (1536, 576)}
FORMS = ("matmulnbits", "matmulinteger", "dynquant_s8", "dynquant_u8", "matmul_fp32")

PAGE = """<!doctype html><script type="module">
window.timeGraphs = (args) => new Promise((resolve, reject) => {
  const worker = new Worker('ops_worker.js', { type: 'module' });
  worker.onmessage = ({ data }) => { worker.terminate(); data.error ? reject(new Error(data.error)) : resolve(data); };
  worker.postMessage(args);
});
window.ready = true;
</script>"""
# One worker per thread count: onnxruntime-web fixes its thread pool when the module first loads.
WORKER = """
self.onmessage = async ({ data: { graphs, rows, threads, reps } }) => {
  try {
    const ort = await import('/vendor/ort/ort.wasm.min.mjs');
    ort.env.wasm.wasmPaths = new URL('/vendor/ort/', location.href).href;
    ort.env.wasm.numThreads = threads;
    ort.env.logLevel = 'error';
    const out = { isolated: self.crossOriginIsolated, times: {} };
    for (const name of graphs) {
      const bytes = new Uint8Array(await (await fetch(name + '.onnx')).arrayBuffer());
      const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
      const k = session.inputMetadata[0].shape[1];
      for (const m of rows) {
        const x = new Float32Array(m * k);
        for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37);
        const feeds = { x: new ort.Tensor('float32', x, [m, k]) };
        await session.run(feeds);
        let best = Infinity;
        for (let round = 0; round < 5; round++) {
          const started = performance.now();
          for (let i = 0; i < reps; i++) await session.run(feeds);
          best = Math.min(best, (performance.now() - started) / reps);
        }
        out.times[`${name}@${m}`] = best;
      }
      await session.release();
    }
    out.threads = ort.env.wasm.numThreads;
    self.postMessage(out);
  } catch (e) { self.postMessage({ error: String(e?.stack || e) }); }
};
"""


def per_column_int8(w: np.ndarray, unsigned: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """W [N, K] → (codes [K, N] int8, or uint8 around 128; scales [N]): symmetric per output column
    (MatMul's B is [K, N]), error at most half a step."""
    scales = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    inv = np.divide(1, scales, out=np.zeros_like(scales), where=scales > 0)
    codes = np.clip(np.rint(w * inv[:, None]), -127, 127).T
    return (codes + 128).astype(np.uint8) if unsigned else codes.astype(np.int8), scales


def op_graphs(directory: Path, shape: str, rng: np.random.Generator) -> dict[str, Path]:
    """One .onnx per form for one shape, same random weights ([N, K] ~ N(0, 0.05)) in each."""
    from onnx import TensorProto, helper, numpy_helper, save

    from ruvdllm_export.quant.q4 import pack_zero_points, quantize_q4

    k, n = SHAPES[shape]
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    init = numpy_helper.from_array
    ms = {"domain": "com.microsoft"}
    q4 = quantize_q4(w)
    s8, s8_scales = per_column_int8(w)
    u8, _ = per_column_int8(w, unsigned=True)
    forms = {
        "matmulnbits": (
            [
                helper.make_node(
                    "MatMulNBits", ["x", "B", "s", "z"], ["y"], K=k, N=n, bits=4, block_size=32, **ms
                )
            ],
            [
                init(q4.packed, "B"),
                init(q4.scales.reshape(-1), "s"),
                init(pack_zero_points(q4.zero_points).reshape(-1), "z"),
            ],
        ),
        "matmulinteger": (
            [
                helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                helper.make_node("MatMulInteger", ["xq", "W", "xz"], ["acc"]),
                helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["xs", "ws"], ["scale"]),
                helper.make_node("Mul", ["accf", "scale"], ["y"]),
            ],
            [init(s8, "W"), init(s8_scales, "ws")],
        ),
        "dynquant_s8": (
            [helper.make_node("DynamicQuantizeMatMul", ["x", "W", "ws"], ["y"], **ms)],
            [init(s8, "W"), init(s8_scales, "ws")],
        ),
        "dynquant_u8": (
            [helper.make_node("DynamicQuantizeMatMul", ["x", "W", "ws", "wz"], ["y"], **ms)],
            [init(u8, "W"), init(s8_scales, "ws"), init(np.full(n, 128, np.uint8), "wz")],
        ),
        "matmul_fp32": ([helper.make_node("MatMul", ["x", "W"], ["y"])], [init(w.T.copy(), "W")]),
    }
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])
    paths = {}
    for form, (nodes, inits) in forms.items():
        model = helper.make_model(
            helper.make_graph(nodes, form, [x], [y], inits),
            opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
        )
        model.ir_version = 10
        paths[f"{shape}.{form}"] = directory / f"{shape}.{form}.onnx"
        save(model, str(paths[f"{shape}.{form}"]))
    return paths


def time_native(path: Path, rows: list[int], threads: int, reps: int) -> dict[str, float]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    k = session.get_inputs()[0].shape[1]
    out = {}
    for m in rows:
        x = np.sin(np.arange(m * k) * 0.37).astype(np.float32).reshape(m, k)
        session.run(None, {"x": x})
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(reps):
                session.run(None, {"x": x})
            best = min(best, (time.perf_counter() - started) / reps * 1e3)
        out[f"{path.stem}@{m}"] = best
    return out


def measure(driver, server: CountingServer, shapes, threads, rows, reps) -> dict:
    """{(threads, 'shape.form@M'): (wasm ms, native ms)} for every combination."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "index.html").write_text(PAGE)
        (directory / "ops_worker.js").write_text(WORKER)
        rng = np.random.default_rng(0)
        paths = {}
        for shape in shapes:
            paths.update(op_graphs(directory, shape, rng))
        server.site.mount("/ops/", directory)
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        page.set_default_timeout(1_800_000)
        page.goto(server.url + "ops/index.html")
        page.wait_for_function("window.ready")
        for t in threads:
            args = {"graphs": list(paths), "rows": rows, "threads": t, "reps": reps}
            wasm = page.evaluate("(a) => window.timeGraphs(a)", args)
            if t > 1 and not wasm["isolated"]:
                raise SystemExit("the page is not cross-origin isolated: onnxruntime-web runs one thread")
            native = {}
            for path in paths.values():
                native.update(time_native(path, rows, t, reps))
            for key, ms in wasm["times"].items():
                results[t, key] = (ms, native[key])
        browser.close()
    return results


def report(results: dict, shapes, threads, rows) -> None:
    widths = (28, 10, 10, 9, 11)
    for t in threads:
        for shape in shapes:
            k, n = SHAPES[shape]
            for m in rows:
                print(f"\n-- {shape} [{m}, {k}] x [{k}, {n}], {t} thread(s), ms per run --")
                print(row("form", "wasm", "native", "wasm÷nat", "÷ nbits", widths=widths))
                nbits = results[t, f"{shape}.matmulnbits@{m}"][0]
                for form in FORMS:
                    wasm, native = results[t, f"{shape}.{form}@{m}"]
                    cells = (f"{wasm:.3f}", f"{native:.3f}", f"{wasm / native:.1f}", f"{wasm / nbits:.2f}")
                    print(row(form, *cells, widths=widths))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 9], help="M: 1 token, a block of 8 + 1")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["gate_up", "head"])
    parser.add_argument("--reps", type=int, default=10, help="runs per round (best of 5 rounds)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    print(f"load average {os.getloadavg()[0]:.1f} (shared machine: compare within this run)")
    server = CountingServer(None)
    try:
        with sync_playwright() as driver:
            results = measure(driver, server, args.shapes, args.threads, args.rows, args.reps)
    finally:
        server.close()
    report(results, args.shapes, args.threads, args.rows)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
