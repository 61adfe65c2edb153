"""The attendance store: one ``Store`` over SQLite or PostgreSQL, one module per idea; open_store.

May import gerbang (the wire contract) and its own modules; never other gateway modules or device.
"""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import Store
from gateway.store.events import EVENT_COLUMNS
from gateway.store.postgres import PostgresStore
from gateway.store.rejects import REJECT_SAMPLE, reject_key
from gateway.store.schema import MIGRATIONS
from gateway.store.sqlite import SqliteStore

__all__ = ["EVENT_COLUMNS", "MIGRATIONS", "REJECT_SAMPLE", "PostgresStore", "SqliteStore",
           "Store", "open_store", "reject_key"]


def open_store(location: str | Path) -> Store:
    """A store for ``location``: a ``postgresql://`` URL, or a SQLite file path."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    return SqliteStore(Path(text))
