"""Structured logs (one JSON object per line) and Prometheus metrics.

Logs carry what an operator needs to follow a request — id, method, path, status, duration, the
calling client — and never a payload. Metrics live in the app's own registry, so several apps in
one process (tests, replicas in one interpreter) never collide.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_config(level: str) -> dict:
    """logging.dictConfig for the hub and uvicorn: JSON lines on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"default": handler},
        "loggers": {
            "federation_hub": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {
                "handlers": [],
                "level": "WARNING",
                "propagate": False,
            },  # our middleware logs requests
        },
    }


class HubMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hub_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "hub_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.updates = Counter("hub_updates_total", "updates by outcome", ["tier", "outcome"], registry=r)
        self.budget_refusals = Counter(
            "hub_budget_refusals_total", "public updates refused: ε budget spent", registry=r
        )
        self.releases = Counter(
            "hub_releases_total", "round outcomes", ["tier", "timestep_group", "outcome"], registry=r
        )
        self.aggregation_seconds = Histogram(
            "hub_aggregation_seconds",
            "time to aggregate a round",
            ["timestep_group"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.gossip = Counter(
            "hub_gossip_exchanges_total", "anti-entropy exchanges", ["peer", "outcome"], registry=r
        )
        self.gossip_merged = Counter("hub_gossip_merged_total", "releases received from peers", registry=r)
        self.releases_held = Gauge("hub_releases_held", "releases stored, ours and peers'", registry=r)
        self.folded = Counter(
            "hub_contributions_folded_total",
            "contributions folded into this process's running sums",
            registry=r,
        )
        self.partial_saves = Counter(
            "hub_running_sums_saved_total",
            "running sums saved (partials), by outcome",
            ["outcome"],
            registry=r,
        )


class RequestLogMiddleware:
    """Pure ASGI: times each request, logs it as one JSON line and counts it by route template."""

    def __init__(self, app, metrics: HubMetrics):
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger("federation_hub.access")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], template).observe(elapsed)
            self.log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status["code"],
                    "ms": round(elapsed * 1000, 2),
                    "caller": scope["state"].get("caller"),
                },
            )
