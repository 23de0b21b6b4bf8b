"""When to try each federation task again after it failed: exponential backoff, kept in a small
JSON file so that it holds across runs of `ruvdllm federate` (a timer or `--loop`).

    {"format": 1, "tasks": {"send:public": {"failures": 2, "next_at": 1764780000.0, "reason": "…"}},
     "contributed": [12, 13]}

Only failures are kept: a task with no entry is due. `contributed` lists the rounds this device has
sent to (the hub takes one contribution per client and round). What a task sends is rebuilt from the bank each
time (with the same update id for the same content), so nothing waits in this file that could be
lost with it; losing the file costs one early retry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

STATE_FORMAT = 1


def backoff_s(failures: int, first_s: float, most_s: float) -> float:
    """first_s · 2^(failures − 1), at most most_s: the wait after the `failures`-th failure in a row."""
    return min(most_s, first_s * 2.0 ** min(max(failures - 1, 0), 60))


@dataclass
class RetryState:
    path: Path
    tasks: dict[str, dict]
    contributed: set[int]

    @classmethod
    def load(cls, path: Path) -> RetryState:
        """The file's state; an unreadable or foreign file counts as no failures (it only delays)."""
        try:
            values = json.loads(Path(path).read_text())
            if values.get("format") != STATE_FORMAT:
                return cls(Path(path), {}, set())
            tasks = values["tasks"] if isinstance(values["tasks"], dict) else {}
            contributed = {int(r) for r in values.get("contributed", [])}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            tasks, contributed = {}, set()
        return cls(Path(path), tasks, contributed)

    def due_in(self, task: str, now: float) -> float:
        """Seconds until `task` may run again (0: now)."""
        entry = self.tasks.get(task)
        return 0.0 if entry is None else max(0.0, float(entry.get("next_at", 0.0)) - now)

    def reason(self, task: str) -> str:
        return str(self.tasks.get(task, {}).get("reason", ""))

    def failed(self, task: str, reason: str, now: float, first_s: float, most_s: float) -> float:
        """Record a failure; returns the wait before the next try."""
        failures = int(self.tasks.get(task, {}).get("failures", 0)) + 1
        wait = backoff_s(failures, first_s, most_s)
        self.tasks[task] = {"failures": failures, "next_at": now + wait, "reason": reason}
        return wait

    def succeeded(self, task: str) -> None:
        self.tasks.pop(task, None)

    def save(self) -> None:
        """Written beside and renamed over: a crash leaves the previous file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(self.path.name + ".tmp")
        staging.write_text(
            json.dumps(
                {"format": STATE_FORMAT, "tasks": self.tasks, "contributed": sorted(self.contributed)},
                indent=1,
            )
        )
        os.replace(staging, self.path)
