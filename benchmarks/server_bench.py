"""Server benchmark: requests/s and p50/p99 latency of `ruvdllm serve` with 1, 4 and 16 concurrent
streaming clients, against the same generations run in-process (no HTTP) in this same script.

    python benchmarks/server_bench.py                      # the tiny test model (built here)
    python benchmarks/server_bench.py --model DIR          # an exported model directory
    python benchmarks/server_bench.py --default            # the default model (exported once)

A real server process on loopback (`--port 0`), clients are threads streaming with httpx (SSE)
through /v1/completions. Every request generates exactly --max-tokens tokens (ignore_eos), each
with its own prompt and seed, so levels are comparable. Reported per level:

  req/s        requests finished per second of wall time (best of --rounds rounds)
  tok/s        generated tokens per second, all clients together
  p50 / p99    latency from sending the request to `data: [DONE]` (p99 of n samples: the
               ceil(0.99 n)-th smallest)
  TTFT p50     time to the first streamed text
  ÷ in-proc    req/s over the in-process baseline's req/s (sequential DiffusionModel.generate
               with the same settings and threads): what HTTP, SSE and queueing cost or gain
  CPU ms/req   the server process's CPU time per request (all its threads); `CPU ÷` is its ratio
               to the baseline's: the server's overhead in work done, which, unlike wall time,
               holds up on a shared, loaded machine
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.cpython_model import open_model  # noqa: E402
from runtime.ort_backend import OrtOptions  # noqa: E402
from runtime.settings import USER_ACCEPTANCE, settings_from  # noqa: E402
from tests.runtime.server_process import serve  # noqa: E402


@dataclass(frozen=True)
class Sample:
    latency_s: float
    first_text_s: float
    tokens: int


def percentile(values: list[float], q: float) -> float:
    """The ceil(q·n)-th smallest value (nearest rank): no interpolation between samples."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def prompt_of(i: int) -> str:
    return f"Request {i}: explain in a few words what a diffusion language model does."


def stream_one(client: httpx.Client, body: dict) -> Sample:
    started = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read().decode()}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - started
    return Sample(latency, first if first is not None else latency, tokens)


def run_level(
    url: str, model_name: str, clients: int, requests: int, knobs: dict
) -> tuple[list[Sample], float]:
    """`requests` streaming requests from `clients` threads; returns the samples and the wall time."""
    local = threading.local()

    def one(i: int) -> Sample:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=600)
        body = {
            "model": model_name,
            "prompt": prompt_of(i),
            "seed": i,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            **knobs,
        }
        return stream_one(local.client, body)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        samples = list(pool.map(one, range(requests)))
    return samples, time.perf_counter() - started


def in_process_baseline(
    model_dir: Path, requests: int, knobs: dict, threads: int, rounds: int
) -> tuple[float, float, float]:
    """Sequential generations in this process, best of `rounds`: (requests/s, p50 latency s,
    CPU s per request)."""
    model = open_model(model_dir, options=OrtOptions(intra_op_threads=threads), verify="sizes")
    model.warm_up()
    # as the server maps a request: its knobs by name, and the acceptance a request names none of
    other = {k: v for k, v in knobs.items() if k != "max_tokens"}
    settings = settings_from(
        {"acceptance": USER_ACCEPTANCE, **other, "length": knobs["max_tokens"], "stop_at_eos": False}
    )
    best = (0.0, 0.0, 0.0)
    for _ in range(rounds):
        latencies = []
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(requests):
            ids = model.encode(prompt_of(i))
            t = time.perf_counter()
            model.generate(ids, settings, seed=i)
            latencies.append(time.perf_counter() - t)
        rate = requests / (time.perf_counter() - started)
        best = max(best, (rate, statistics.median(latencies), (time.process_time() - cpu) / requests))
    return best


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU time of a process, all its threads."""
    times = process.cpu_times()
    return times.user + times.system


def model_directory(args, scratch: Path) -> Path:
    if args.model is not None:
        return args.model
    if args.default:
        from ruvdllm.default_artifact import default_model_dir

        return default_model_dir("cpu")
    from tests.runtime.tiny_artifact import make_tiny_artifact

    return make_tiny_artifact(scratch / "tiny-model")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="exported model directory (default: the tiny test model)")
    parser.add_argument(
        "--default", action="store_true", help="use the default model (SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=48, help="requests per level (default 48)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--block-size", type=int, help="BD3LM block size (default: the model's)")
    parser.add_argument("--steps", type=int, help="denoising steps per block (default: one token per step)")
    parser.add_argument("--workers", type=int, default=1, help="server --max-concurrency (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model (default 1)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per level; the fastest is reported (default 3)"
    )
    args = parser.parse_args()

    knobs = {"max_tokens": args.max_tokens}
    knobs.update({k: v for k, v in (("block_size", args.block_size), ("steps", args.steps)) if v is not None})
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = model_directory(args, Path(scratch))
        baseline_rps, baseline_p50, baseline_cpu = in_process_baseline(
            model_dir, args.requests, knobs, args.threads, args.rounds
        )
        server_args = ("--max-concurrency", str(args.workers), "--queue-size", str(max(args.clients)))
        with serve(
            model_dir, *server_args, "--threads", str(args.threads), cache_dir=Path(scratch) / "cache"
        ) as server:
            print(
                f"== server: {server.name}, {args.max_tokens} tokens/request, knobs {knobs}, {args.workers} "
                f"worker(s) x {args.threads} thread(s), {args.requests} requests per level, best of {args.rounds} =="
            )
            print(
                f"in-process baseline (sequential, no HTTP): {baseline_rps:.2f} req/s, "
                f"p50 {baseline_p50 * 1e3:.1f} ms, {baseline_cpu * 1e3:.1f} CPU ms/request"
            )
            header = (
                "clients",
                "req/s",
                "tok/s",
                "p50 ms",
                "p99 ms",
                "TTFT p50",
                "÷ in-proc",
                "CPU ms/req",
                "CPU ÷",
            )
            print("  ".join(f"{h:>10}" for h in header))
            run_level(server.url, server.name, 1, 2, knobs)  # warm the connection path
            server_process = psutil.Process(server.process.pid)
            for clients in args.clients:
                # Best of --rounds: the machine may be shared, the fastest round is the least disturbed.
                rounds = []
                for _ in range(args.rounds):
                    cpu = cpu_seconds(server_process)
                    samples, wall = run_level(server.url, server.name, clients, args.requests, knobs)
                    rounds.append((samples, wall, (cpu_seconds(server_process) - cpu) / len(samples)))
                samples, wall, cpu_per_request = min(rounds, key=lambda r: r[1])
                latencies = [s.latency_s * 1e3 for s in samples]
                rps = len(samples) / wall
                cells = (
                    clients,
                    f"{rps:.2f}",
                    f"{sum(s.tokens for s in samples) / wall:.1f}",
                    f"{percentile(latencies, 0.5):.1f}",
                    f"{percentile(latencies, 0.99):.1f}",
                    f"{percentile([s.first_text_s * 1e3 for s in samples], 0.5):.1f}",
                    f"{rps / baseline_rps:.2f}",
                    f"{cpu_per_request * 1e3:.1f}",
                    f"{cpu_per_request / baseline_cpu:.2f}",
                )
                print("  ".join(f"{c:>10}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
