"""Fixed-window counters in the service's store (FerretDB v1 has no TTL index: windows are enforced here)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from services.identity.domain.ratelimits import Limit, Window
from shared.storage.mongo import is_duplicate_key


def counter_key(action: str, scope: str, subject: str) -> str:
    """Subjects (addresses, emails) are hashed: the counters hold no personal data in clear."""
    return f"{action}:{scope}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"


class RateLimiter:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._counters = collection

    async def hit(self, key: str, limit: Limit, now: datetime) -> Window:
        """Count one more use of ``key`` in the current window and return the window.

        One command in the common case, whether the counter exists or not (an upsert), so that
        counting costs the same for a subject seen before and for a new one. Once per window the
        counter found is stale and is restarted with a second command."""
        counter = await self._increment({"_id": key}, now, upsert=True)
        if counter["started"] > now - limit.window:
            return Window(counter["started"], counter["count"])
        restarted = await self._counters.find_one_and_update(
            {"_id": key, "started": counter["started"]},
            {"$set": {"started": now, "count": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if restarted is None:  # a concurrent hit restarted it first: count in its window
            restarted = await self._increment({"_id": key}, now, upsert=False)
        return Window(restarted["started"], restarted["count"])

    async def _increment(self, which: dict[str, Any], now: datetime, *, upsert: bool) -> dict[str, Any]:
        change = {"$inc": {"count": 1}, "$setOnInsert": {"started": now}}
        for _ in range(2):
            try:
                found = await self._counters.find_one_and_update(
                    which, change, upsert=upsert, return_document=ReturnDocument.AFTER
                )
            except Exception as error:  # two first hits upserted at once: the loser increments
                if not is_duplicate_key(error):
                    raise
                continue
            if found is not None:
                return found
        raise RuntimeError(f"rate-limit counter {which['_id']} could not be counted")
