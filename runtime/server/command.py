"""`ruvdllm serve`: an OpenAI-compatible HTTP API over a model directory (the default model when
--model is not given), on uvicorn.

    ruvdllm serve --model DIR --port 8000
    curl localhost:8000/v1/completions -H 'content-type: application/json' \\
         -d '{"model": "DIR-name", "prompt": "Hello", "max_tokens": 32, "steps": 8}'

--max-concurrency opens that many copies of the model (each its own onnxruntime session and
key/value cache) and runs that many generations at once; --queue-size more wait in arrival order.
The socket is bound before the model loads, so a taken port fails at once; the line
`serving MODEL on URL` is printed when the model is loaded and warm, and from then on connections
are accepted — scripts can pass `--port 0` (a free port) and read the URL from that line.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from runtime.learning.feedback_command import add_learning_arguments, learning_loop
from runtime.server.app import ServerLimits
from ruvdllm.errors import RuvdllmError

DEFAULTS = ServerLimits()
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
API_KEY_ENV = "RUVDLLM_API_KEY"  # the environment keeps the key out of `ps` listings
SHUTDOWN_GRACE_S = 5.0  # as uvicorn's default wait; well inside `docker stop`'s 10 s before SIGKILL
# After the grace period, how long uvicorn waits on for the stopped generations to reach their
# next step and send their 503s before it cancels what is left (a forward takes milliseconds to
# a fraction of a second): a request cancelled by uvicorn gets its plain-text 500 or a cut stream.
STOP_MARGIN_S = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, help="model directory from `ruvdllm export` (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--model-name", help="the id clients send as `model` (default: the directory name)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument(
        "--max-concurrency", type=int, default=1, help="generations at once, one model copy each (default 1)"
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULTS.queue_size,
        help=f"requests waiting beyond those running; more get 429 (default {DEFAULTS.queue_size})",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULTS.max_request_bytes,
        help=f"largest request body; larger get 413 (default {DEFAULTS.max_request_bytes})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require this bearer token on /v1 (default: ${API_KEY_ENV}; none: no authentication)",
    )
    parser.add_argument(
        "--bank", type=Path, help="TALoRA/DGR adapter bank directory (default: the model's banks/)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="onnxruntime intra-op threads per model (0: the cores shared among --max-concurrency models)",
    )
    parser.add_argument("--verify", default="cached", help="manifest check: cached (default) | full | sizes")
    parser.add_argument(
        "--log-level", default="info", choices=LOG_LEVELS, help="uvicorn log level (default info)"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=SHUTDOWN_GRACE_S,
        help="on SIGTERM / Ctrl-C, seconds running generations may take to finish; queued requests "
        f"get 503 at once (default {SHUTDOWN_GRACE_S:g})",
    )
    add_learning_arguments(parser)


def check_arguments(args: argparse.Namespace) -> None:
    if args.max_concurrency < 1:
        raise RuvdllmError(f"--max-concurrency {args.max_concurrency}: must be at least 1")
    if args.queue_size < 0:
        raise RuvdllmError(f"--queue-size {args.queue_size}: must be at least 0")
    if args.max_request_bytes < 1024:
        raise RuvdllmError(f"--max-request-bytes {args.max_request_bytes}: must be at least 1024")
    if args.threads < 0:
        raise RuvdllmError(f"--threads {args.threads}: must be at least 0")
    if not 0 <= args.shutdown_grace <= 3600:  # NaN fails too
        raise RuvdllmError(f"--shutdown-grace {args.shutdown_grace}: out of range 0..3600 seconds")


def threads_per_model(requested: int, models: int) -> int:
    """Without --threads, the models share the cores instead of each taking all of them."""
    if requested or models == 1:
        return requested
    return max(1, (os.cpu_count() or 1) // models)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (before the model loads, so a taken port fails fast); `ruvdllm serve`'s
    and `ruvdllm web`'s."""
    if not 0 <= port <= 65535:
        raise RuvdllmError(f"--port {port}: out of range 0..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise RuvdllmError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def open_engine(args: argparse.Namespace, default_model: Callable[..., Path]):
    """The model directory opened `--max-concurrency` times (verified, warm) and its served name;
    `default_model(target)` finds or exports the default model when --model is not given."""
    from runtime.cpython_model import open_model
    from runtime.ort_backend import OrtOptions
    from runtime.server.engine import Engine
    from runtime.server.jobs import DEFAULTS

    directory = args.model if args.model is not None else default_model("cpu")
    threads = threads_per_model(args.threads, args.max_concurrency)
    options = OrtOptions(device=args.device, intra_op_threads=threads)
    # on the AR graph where a request with the defaults runs `ar` on this machine; a request for
    # another sampler switches the model that serves it to the full graph (DiffusionModel.concrete)
    models = [
        open_model(directory, bank=args.bank, options=options, verify=args.verify, settings=DEFAULTS)
        for _ in range(args.max_concurrency)
    ]
    for model in models:
        model.warm_up()
    return Engine(models), args.model_name or Path(directory).resolve().name


def server_for(app, args: argparse.Namespace):
    """uvicorn's server for `app`, telling the app when shutdown starts: uvicorn's own signal to
    an app (the lifespan's shutdown) comes only after every connection has closed, too late to
    answer the queued requests, so `shutdown` is where the app hears of it (begin_shutdown)."""
    import uvicorn

    from runtime.server.app import begin_shutdown

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            begin_shutdown(app, args.shutdown_grace)
            await super().shutdown(sockets=sockets)

    grace = args.shutdown_grace + STOP_MARGIN_S
    return Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=grace))


def run(
    args: argparse.Namespace, default_model: Callable[..., Path], loop_b_trainer: Callable | None = None
) -> int:
    """`default_model` is handed in by the command layer (ruvdllm.default_artifact): exporting the
    default model needs the exporter, which runtime cannot reach. So is `loop_b_trainer`
    (ruvdllm.loop_b_trainer.trainer_for: loop B's first-order trainer where torch is; None: SPSA)."""
    from runtime.server.app import create_app

    check_arguments(args)
    loop = learning_loop(args)  # a bad learning config fails before the port is taken
    with bind(args.host, args.port) as sock:
        engine, name = open_engine(args, default_model)
        background = None
        if loop is not None:
            from runtime.learning.loop_b_service import background as loop_b  # numpy: CPython only

            # the learnt bank, if on
            background = loop_b(args.learning_config, engine.models, loop, trainer_for=loop_b_trainer)
            for model in engine.models:
                loop.attach(model)
        limits = ServerLimits(queue_size=args.queue_size, max_request_bytes=args.max_request_bytes)
        app = create_app(engine, name, limits, api_key=args.api_key or None, learning=loop)
        server = server_for(app, args)
        logging.getLogger("ruvdllm.server").setLevel(args.log_level.upper())
        print(f"serving {name} on {url_of(sock)}/v1", flush=True)
        try:
            server.run(sockets=[sock])
        finally:
            engine.stop()  # a generation uvicorn gave up on (a forced exit) ends at its next step
            if background is not None:
                background.stop()  # after its current training step; what it committed stays
            engine.close()
            if loop is not None:
                loop.close()  # everything recorded is written before the process ends
    return 0 if server.started else 1
