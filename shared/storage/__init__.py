"""Storage plumbing: one MongoDB database per service, single-document atomic writes only."""

from shared.storage.documents import ConcurrencyConflict, DocumentExists, DocumentStore, StoredDocument
from shared.storage.mongo import IndexSpec, connect, ensure_indexes, is_duplicate_key

__all__ = [
    "ConcurrencyConflict",
    "DocumentExists",
    "DocumentStore",
    "IndexSpec",
    "StoredDocument",
    "connect",
    "ensure_indexes",
    "is_duplicate_key",
]
