"""What the unit's SQLite-backed stores (the outbox, the adjudication records) share: one
connection guarded by one lock, closed once, usable as a context manager."""
from __future__ import annotations

import sqlite3
import threading


class DbHandle:
    """Mixin: the subclass sets ``self._lock`` (a Lock or RLock) and ``self._db`` (an open
    connection, or None once closed)."""

    _lock: "threading.Lock | threading.RLock"
    _db: "sqlite3.Connection | None"

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                finally:
                    self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
