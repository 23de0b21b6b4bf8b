"""Storage behind one interface (`base.Store`): SQLite in WAL mode by default, PostgreSQL by URL
when several hub replicas share state. `open_store(url)` picks the implementation and migrates."""

from federation_hub.storage.base import Conflict, Store
from federation_hub.storage.engines import open_store

__all__ = ["Conflict", "Store", "open_store"]
