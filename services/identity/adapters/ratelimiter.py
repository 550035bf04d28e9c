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
        """Count one more use of ``key`` in the current window and return the window."""
        stale = now - limit.window
        for _ in range(3):
            doc = await self._counters.find_one_and_update(
                {"_id": key, "started": {"$gt": stale}}, {"$inc": {"count": 1}}, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                return Window(doc["started"], doc["count"])
            try:  # no window yet, or an old one: open a new one (a concurrent opener makes us count again)
                doc = await self._counters.find_one_and_update(
                    {"_id": key, "started": {"$lte": stale}},
                    {"$set": {"started": now, "count": 1}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                return Window(doc["started"], doc["count"])
            except Exception as error:
                if not is_duplicate_key(error):
                    raise
        return Window(now, 1)

    async def pad(self, key: str, now: datetime) -> None:
        """One write of the size an account update costs: unknown emails take as long as known ones."""
        await self._counters.update_one({"_id": key}, {"$set": {"started": now, "count": 0}}, upsert=True)
