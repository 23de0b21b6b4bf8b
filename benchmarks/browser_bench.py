"""Browser benchmark: the client in headless Chromium against the CPython runtime on the same model,
prompt and settings, measured in this same run.

    python benchmarks/browser_bench.py --model DIR [--length 32] [--threads 1 2] [--webgpu] [--rounds 2]
    python benchmarks/browser_bench.py --default ...   (the default model, exported for WebGPU once)

With a wasm variant (`--wasm-model DIR`) the wasm rows come twice, in the same run:
"webgpu graph" is the WebGPU target's graph on the wasm EP (what the page ran before the wasm
target: MatMulNBits), "wasm graph" the wasm target's (float32 MatMuls over weights widened at
load), which the page now loads.

Sections:

  load        page load to "ready" (Pyodide, runtime wheel, model download and verification,
              onnxruntime-web session, warm-up): cold (fresh profile) and warm (reload: Cache
              Storage and the service worker); bytes the server sent for each
  generate    tokens/s on the wasm EP (per thread count) and on WebGPU (SwiftShader here: for the
              record, a software rasteriser) ÷ CPython onnxruntime with the same thread count;
              ms per step; Pyodide <-> JavaScript crossing per step (the Python-side forward minus
              onnxruntime-web's session.run)
  bytes       per forward, what the runner fed from JavaScript and read back (the key/value cache's
              share apart: on wasm it crosses every forward, on WebGPU it stays on the GPU) and, on
              WebGPU, what the device itself read back and was written (onnxruntime's own copies
              included)

  kernels     (--kernels) one linear layer as MatMulNBits, int8 and float32 MatMul, onnxruntime-web
              wasm vs CPython onnxruntime, one thread: where the wasm time goes (browser_ops.py)

Every generation runs `length` tokens (no EOS stop), TALoRA and DGR as the model's bank allows,
temperature 0, seed 0; both sides get the same chat-formatted prompt. Figures are the best of
`--rounds` (the machine may be shared: the minimum is the least disturbed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.chat_template import chat_prompt  # noqa: E402
from runtime.cpython_model import open_model  # noqa: E402
from runtime.ort_backend import OrtOptions  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402
from runtime.web_command import DEFAULT_MODEL_TARGET, WebServer, build_site, default_web_dir  # noqa: E402
from ruvdllm.default_artifact import default_model_dir  # noqa: E402

PROMPT = "Explain what a diffusion language model is, in a few sentences."
CHROMIUM = os.environ.get("RUVDLLM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARGS += ["--no-first-run", "--disable-quic"]


class CountingServer:
    """`ruvdllm web`'s server with a byte counter: the body bytes of 200 responses (what a user would
    download, compressed where the server compresses)."""

    def __init__(self, model: Path | None, wasm_model: Path | None = None):
        self.sent = 0
        self.site = build_site(default_web_dir(), model, wasm_model_dir=wasm_model)
        app = self.site.app

        async def counting(scope, receive, send):
            status = 0

            async def counted(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif message["type"] == "http.response.body" and status == 200:
                    self.sent += len(message.get("body", b""))
                await send(message)

            await app(scope, receive, counted)

        self.server = WebServer(counting, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def take(self) -> int:
        sent, self.sent = self.sent, 0
        return sent

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_ready(page, timeout_s: float) -> dict:
    page.wait_for_function(
        "window.ruvdllm && (window.ruvdllm.ready || window.ruvdllm.error)", timeout=timeout_s * 1e3
    )
    info = page.evaluate("window.ruvdllm.info")
    if info is None:
        raise SystemExit(f"the page reports an error: {page.evaluate('window.ruvdllm.error')}")
    return info


def browser_generate(page, settings: dict, rounds: int) -> dict:
    best = None
    for _ in range(rounds):
        done = page.evaluate(
            "([p, s]) => window.ruvdllm.run(p, s, {chat: true, seed: 0})", [PROMPT, settings]
        )
        if best is None or done["stats"]["wallMs"] < best["stats"]["wallMs"]:
            best = done
    return best


def breakdown(stats: dict, cpython_rate: float, digits: int = 2) -> list[str]:
    rate = stats["tokensPerSecond"]
    step = stats["wallMs"] / stats["steps"]
    parts = (stats["forwardMs"], stats["bridgeMs"], stats["pythonMs"], stats["viewMs"])
    return [
        f"{rate:.{digits}f}",
        f"{rate / cpython_rate:.{digits}f}",
        f"{step:.1f}",
        *(f"{p:.1f}" for p in parts),
    ]


MOVED_WIDTHS = (26, 10, 10, 10, 10, 10, 10)


def moved_row(label: str, stats: dict) -> str:
    """Bytes per forward of one run: in / cache in / out / cache out, and the device's reads and
    writes where there is a WebGPU device."""
    moved, device = stats["transfers"], stats.get("gpuTraffic")
    per = max(moved["forwards"], 1)
    cells = [moved[k] / per for k in ("inBytes", "kvInBytes", "outBytes", "kvOutBytes")]
    cells += [device["readBytes"] / per, device["writeBytes"] / per] if device else []
    return row(label, *(f"{c:,.0f}" for c in cells), widths=MOVED_WIDTHS)


def cpython_generate(model_dir: Path, settings: GenerationSettings, threads: int, rounds: int):
    model = open_model(model_dir, options=OrtOptions(intra_op_threads=threads))
    text = chat_prompt(model, [{"role": "user", "content": PROMPT}]) if model.config.chat_template else PROMPT
    ids = model.encode(text)
    model.warm_up()
    best = None
    for _ in range(rounds):
        done = model.generate(ids, settings, seed=0)
        if best is None or done.result.wall_ms < best.result.wall_ms:
            best = done
    return best


def row(*cells, widths=(26, 9, 7, 9, 9, 8, 8, 8)) -> str:
    return "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
    )


def kernels_section(driver, server: CountingServer) -> None:
    """Why wasm is slower: one linear in every form, onnxruntime-web wasm vs CPython onnxruntime
    (benchmarks/browser_ops.py has the full per-op table)."""
    from browser_ops import measure, report

    print("\n== kernels: one linear per form, wasm vs native (browser_ops.py) ==")
    results = measure(driver, server, ["gate_up"], [1], [9], reps=10)
    report(results, ["gate_up"], [1], [9])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="exported model directory (target webgpu)")
    source.add_argument("--default", action="store_true", help="the default model, exported for WebGPU once")
    parser.add_argument("--wasm-model", type=Path, help="the same model exported with --target wasm")
    parser.add_argument("--length", type=int, default=32, help="tokens per generation (no EOS stop)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="wasm / onnxruntime thread counts"
    )
    parser.add_argument("--webgpu", action="store_true", help="also WebGPU (SwiftShader here: slow)")
    parser.add_argument("--webgpu-length", type=int, default=8, help="tokens for the WebGPU run")
    parser.add_argument("--rounds", type=int, default=2, help="best of this many generations")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per page action")
    parser.add_argument("--kernels", action="store_true", help="also time one linear layer, wasm vs native")
    args = parser.parse_args(argv)
    model_dir = default_model_dir(DEFAULT_MODEL_TARGET) if args.default else args.model
    wasm_dir = args.wasm_model
    from playwright.sync_api import sync_playwright

    page_settings = {"length": args.length, "stop_at_eos": False}
    settings = GenerationSettings(length=args.length, stop_at_eos=False)
    print(
        f"model {model_dir}  ·  {args.length} tokens, BD3LM default block, temperature 0  ·  load average {os.getloadavg()[0]:.1f}"
    )

    server = CountingServer(model_dir, wasm_dir)
    if wasm_dir:
        print(f"wasm variant {wasm_dir}")
    with sync_playwright() as driver, tempfile.TemporaryDirectory() as profiles:
        print("\n== load (page open to ready) ==")
        print(row("", "seconds", "MB sent"))
        threads = args.threads[0]
        context = driver.chromium.launch_persistent_context(
            str(Path(profiles) / "wasm"), executable_path=CHROMIUM, headless=True, args=ARGS
        )
        context.set_default_timeout(args.timeout * 1e3)
        page = context.new_page()
        server.take()
        started = time.perf_counter()
        page.goto(f"{server.url}?ep=wasm&threads={threads}")
        info = wait_ready(page, args.timeout)
        print(
            row("cold (fresh profile)", f"{time.perf_counter() - started:.1f}", f"{server.take() / 1e6:.1f}")
        )
        started = time.perf_counter()
        page.reload()
        info = wait_ready(page, args.timeout)
        print(row("warm (reload)", f"{time.perf_counter() - started:.1f}", f"{server.take() / 1e6:.1f}"))
        print(
            f"model files {info['model']['bytes'] / 1e6:.1f} MB; warm start read {info['cache']['cachedBytes'] / 1e6:.1f} MB from Cache Storage"
        )

        print("\n== generate (tokens/s; ratio = browser ÷ CPython onnxruntime, same threads) ==")
        print(
            "per step, ms: run = session.run; bridge = Pyodide <-> JS crossing (feeds and outputs included);"
        )
        print("python = sampler, TALoRA and DGR in Pyodide; view = the live view's work in the worker")
        print(row("configuration", "tokens/s", "ratio", "step", "run", "bridge", "python", "view"))
        moved = []
        for threads in args.threads:
            cpython = cpython_generate(model_dir, settings, threads, args.rounds)
            c_rate = len(cpython.tokens) / (cpython.result.wall_ms / 1e3)
            c_step = cpython.result.wall_ms / cpython.result.steps
            c_run = cpython.result.forward_ms / cpython.result.steps
            print(
                row(
                    f"CPython ORT, {threads} thread(s)",
                    f"{c_rate:.2f}",
                    "1.00",
                    f"{c_step:.1f}",
                    f"{c_run:.1f}",
                )
            )
            # ?model= alone: the page has no wasm variant and runs the WebGPU graph on wasm (before)
            graphs = [("webgpu graph", "&model=model/")] + ([("wasm graph", "")] if wasm_dir else [])
            for graph, query in graphs:
                page.goto(f"{server.url}?ep=wasm&threads={threads}{query}")
                wait_ready(page, args.timeout)
                done = browser_generate(page, page_settings, args.rounds)
                label = f"wasm {threads}t, {graph}" if wasm_dir else f"browser wasm, {threads} thread(s)"
                print(row(label, *breakdown(done["stats"], c_rate)))
                moved.append(moved_row(label, done["stats"]))
        context.close()

        if args.webgpu:
            context = driver.chromium.launch_persistent_context(
                str(Path(profiles) / "webgpu"),
                executable_path=CHROMIUM,
                headless=True,
                args=ARGS + ["--enable-unsafe-webgpu"],
            )
            context.set_default_timeout(args.timeout * 1e3)
            page = context.new_page()
            page.goto(f"{server.url}?ep=webgpu")
            info = wait_ready(page, args.timeout)
            short = {"length": args.webgpu_length, "stop_at_eos": False}
            cpython = cpython_generate(
                model_dir,
                GenerationSettings(length=args.webgpu_length, stop_at_eos=False),
                args.threads[0],
                1,
            )
            c_rate = len(cpython.tokens) / (cpython.result.wall_ms / 1e3)
            done = browser_generate(page, short, 1)
            print(
                row(f"browser WebGPU ({info['adapter']})"[:26], *breakdown(done["stats"], c_rate, digits=3))
            )
            moved.append(moved_row(f"browser WebGPU ({info['adapter']})"[:26], done["stats"]))
            context.close()
        print(
            "\n== bytes per forward (JavaScript <-> the execution provider; device = the GPU's own count) =="
        )
        print(
            row(
                "configuration",
                "in",
                "cache in",
                "out",
                "cache out",
                "device rd",
                "device wr",
                widths=MOVED_WIDTHS,
            )
        )
        print("\n".join(moved))
        if args.kernels:
            kernels_section(driver, server)
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
