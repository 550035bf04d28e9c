"""Retrying a store operation through the hiccups a store has: a lost connection, a busy file."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.notifications.adapters.store import store_busy
from shared.messaging.errors import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


def worth_retrying(error: BaseException) -> bool:
    return is_transient(error) or store_busy(error)


async def patiently(
    operation: Callable[[], Awaitable[T]], *, what: str, attempts: int = 6, forever: bool = False, max_delay_s: float = 5.0
) -> T:
    """Run ``operation``; on a transient store error, again after a growing pause (jittered)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except Exception as error:
            if not worth_retrying(error) or (not forever and attempt >= attempts):
                raise
            delay = min(max_delay_s, 0.02 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
            if attempt >= 3:
                log.warning("store operation failed, retrying", extra={"what": what, "attempt": attempt, "error": str(error)})
            await asyncio.sleep(delay)
