"""How a handler tells the consumer what kind of failure it hit."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError, KafkaTimeoutError
from pymongo.errors import ConnectionFailure, ExecutionTimeout, OperationFailure, WTimeoutError

from shared.storage.documents import ConcurrencyConflict


class TransientError(Exception):
    """Worth retrying: a store, broker or provider that may answer later."""


class PermanentError(Exception):
    """No retry will fix it (the message itself is wrong): park it with this reason."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    ConcurrencyConflict,
    ConnectionFailure,  # includes AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
    ExecutionTimeout,
    WTimeoutError,
    ConnectionError,
    asyncio.TimeoutError,
    KafkaTimeoutError,  # aiokafka marks it non-retriable, yet a broker that answers late may answer later
)


#: What a store says when it is busy rather than wrong. FerretDB on SQLite answers a write that met
#: a lock with an OperationFailure (code 1) carrying SQLite's message; MongoDB labels such errors.
_BUSY_STORE = ("database is locked", "sqlite_busy", "database table is locked")


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    if isinstance(error, OperationFailure):
        if error.has_error_label("TransientTransactionError") or error.has_error_label("RetryableWriteError"):
            return True
        return any(sign in str(error).lower() for sign in _BUSY_STORE)
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))
