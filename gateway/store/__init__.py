"""The attendance store (see gateway/store/base.py until it is split into one module per idea).

Re-exports the public names, so ``from gateway.store import X`` keeps working.
"""

from gateway.store.base import (
    EVENT_COLUMNS,
    MIGRATIONS,
    REJECT_SAMPLE,
    PostgresStore,
    SqliteStore,
    Store,
    open_store,
    reject_key,
)

__all__ = ["EVENT_COLUMNS", "MIGRATIONS", "REJECT_SAMPLE", "PostgresStore", "SqliteStore",
           "Store", "open_store", "reject_key"]
