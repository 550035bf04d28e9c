"""How a handler tells the consumer what kind of failure it hit."""

from __future__ import annotations

import asyncio

from pymongo.errors import ConnectionFailure, ExecutionTimeout, WTimeoutError

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
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT_ERRORS)
