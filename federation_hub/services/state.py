"""What every request handler shares, held on `app.state.hub`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from federation_hub.observability import HubMetrics
from federation_hub.settings import HubSettings
from federation_hub.storage.base import Store


@dataclass
class HubState:
    settings: HubSettings
    store: Store
    hub_id: str
    metrics: HubMetrics
    rng: np.random.Generator  # DP noise and clustering seeds: from OS entropy unless settings.dp_seed
    _rng_lock: threading.Lock = field(default_factory=threading.Lock)

    def child_rng(self) -> np.random.Generator:
        """An independent generator for one job: Generators are not thread-safe, jobs run in threads."""
        with self._rng_lock:
            return self.rng.spawn(1)[0]
