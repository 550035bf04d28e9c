"""Connecting to a service's own database and ensuring the indexes its code declares.

Runs unchanged on MongoDB and on FerretDB v1: no transactions, change streams, TTL or partial
indexes. Expiry is enforced in code by comparing with the injected clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

from shared.settings import ServiceSettings


@dataclass(frozen=True)
class IndexSpec:
    """An index declared next to the code that queries by it."""

    collection: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def index_name(self) -> str:
        return self.name or "_".join(f"{k}_{d}" for k, d in self.keys)


def connect(settings: ServiceSettings, **overrides: Any) -> AsyncMongoClient[dict[str, Any]]:
    """A client for the service's store; ``tz_aware`` so datetimes come back in UTC."""
    options: dict[str, Any] = {
        "tz_aware": True,
        "serverSelectionTimeoutMS": 10_000,
        "appname": settings.service_name,
    }
    options.update(overrides)
    return AsyncMongoClient(settings.mongodb_uri, **options)


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]], specs: Iterable[IndexSpec]) -> None:
    for spec in specs:
        if "expireAfterSeconds" in spec.options or "partialFilterExpression" in spec.options:
            raise ValueError(f"{spec.index_name}: TTL and partial indexes do not exist on FerretDB v1")
        await db[spec.collection].create_index(
            list(spec.keys), unique=spec.unique, name=spec.index_name, **spec.options
        )


def is_duplicate_key(error: Exception) -> bool:
    """E11000, however the store reports it (FerretDB on SQLite may wrap it differently)."""
    if isinstance(error, DuplicateKeyError):
        return True
    if isinstance(error, OperationFailure):
        return error.code == 11000 or "duplicate key" in str(error).lower()
    return False


def is_duplicate_write_error(write_error: Mapping[str, Any]) -> bool:
    """The same, for one entry of a bulk write's ``writeErrors``."""
    return write_error.get("code") == 11000 or "duplicate key" in str(write_error.get("errmsg", "")).lower()
