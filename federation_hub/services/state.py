"""What every request handler shares, held on `app.state.hub`."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from federation_hub.aggregate.cluster import Sketcher
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
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])  # this process, among replicas
    folder: object | None = None  # services.folding.Folder, when this process folds
    _rng_lock: threading.Lock = field(default_factory=threading.Lock)
    _sketchers: OrderedDict = field(default_factory=OrderedDict)
    _sketchers_lock: threading.Lock = field(default_factory=threading.Lock)

    def child_rng(self) -> np.random.Generator:
        """An independent generator for one job: Generators are not thread-safe, jobs run in threads."""
        with self._rng_lock:
            return self.rng.spawn(1)[0]

    def sketcher(self, round_id: int, shapes: dict, seed: int) -> Sketcher:
        """The round's random projections (clustering rounds sketch each update on arrival): built
        once per round, the few most recent kept (a 30-layer model's are a few MB)."""
        with self._sketchers_lock:
            found = self._sketchers.get(round_id)
            if found is None:
                dims = {n: (s["out_features"], s["in_features"]) for n, s in shapes.items()}
                found = self._sketchers[round_id] = Sketcher(dims, np.random.default_rng(seed))
                while len(self._sketchers) > 8:
                    self._sketchers.popitem(last=False)
            self._sketchers.move_to_end(round_id)
            return found
