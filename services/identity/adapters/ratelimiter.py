"""Fixed-window counters, kept in the service's store and counted in memory between syncs.

A counter's first use in a process (or in a new window) is counted in the store at once and the
store's count is what it answers, so a restarted process, or a subject new to it, starts from what
every replica counted. After that, uses are counted in memory, added to the store every
``sync_s`` (one bulk of increments for all counters) and the counts read back, so that what other
replicas counted is seen within ``sync_s``. A sign-in, which counts two subjects, then costs the
store nothing in the common case. The price, written down in docs/identity.md: with N replicas an
attacker spreading attempts over all of them gets at most N × ``sync_s`` worth of attempts past a
limit before every replica sees it; a crash forgets at most ``sync_s`` worth of counting. Lockout
itself (failed sign-ins) is not a rate limit: it is counted in the account, exactly.

FerretDB v1 has no TTL index: windows are enforced here, and counters of windows long over are
purged by the periodic sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from services.identity.domain.ratelimits import Limit, Window
from shared.storage.batching import GroupCommit
from shared.storage.mongo import is_duplicate_write_error

log = logging.getLogger(__name__)


def counter_key(action: str, scope: str, subject: str) -> str:
    """Subjects (addresses, emails) are hashed: the counters hold no personal data in clear."""
    return f"{action}:{scope}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"


@dataclass
class _Known:
    """A counter as this process last saw it in the store, plus the uses it has not written yet."""

    started: datetime
    stored: int
    unsynced: int = 0

    @property
    def count(self) -> int:
        return self.stored + self.unsynced


class RateLimiter:
    def __init__(self, collection: AsyncCollection[dict[str, Any]], *, sync_s: float = 0.25) -> None:
        self._counters = collection
        self._sync_s = sync_s
        self._known: dict[str, _Known] = {}
        self._first_uses = _FirstUses(collection)
        self._sync_task: asyncio.Task[None] | None = None

    async def hit(self, key: str, limit: Limit, now: datetime) -> Window:
        """Count one more use of ``key`` in the current window and return the window."""
        known = self._known.get(key)
        if known is not None and known.started > now - limit.window:
            known.unsynced += 1
            self._sync_soon()
            return Window(known.started, known.count)
        counter = await self._first_uses.count(key, now)
        if counter["started"] <= now - limit.window:
            counter = await self._restart(key, counter["started"], now)
        self._known[key] = _Known(counter["started"], counter["count"])
        return Window(counter["started"], counter["count"])

    async def _restart(self, key: str, stale_start: datetime, now: datetime) -> dict[str, Any]:
        """The counter found belongs to a window that is over: open a new one, unless a concurrent
        use (here or in another replica) did, in which case this use counts in that one."""
        restarted = await self._counters.find_one_and_update(
            {"_id": key, "started": stale_start},
            {"$set": {"started": now, "count": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if restarted is None:
            restarted = await self._counters.find_one_and_update(
                {"_id": key}, {"$inc": {"count": 1}}, return_document=ReturnDocument.AFTER
            )
        assert restarted is not None, "counters are never deleted while in use"
        return restarted

    def _sync_soon(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_later(), name="rate-limit-sync")

    async def _sync_later(self) -> None:
        await asyncio.sleep(self._sync_s)
        try:
            await self.sync()
        except Exception:  # the uses stay counted in memory and go with the next sync
            log.warning("rate-limit counters could not be synced; trying again", exc_info=True)
            self._sync_soon()

    async def sync(self) -> None:
        """Write the uses counted in memory, and read back what every replica counted."""
        pending = {key: known for key, known in self._known.items() if known.unsynced}
        if not pending:
            return
        written = {key: known.unsynced for key, known in pending.items()}
        await self._counters.bulk_write(
            [UpdateOne({"_id": key, "started": known.started}, {"$inc": {"count": written[key]}})
             for key, known in pending.items()],
            ordered=False,
        )
        for key, known in pending.items():
            # Now in the store: counted there, not twice, and not zero times either while the
            # read-back below is on its way (a use meanwhile must see them).
            known.unsynced -= written[key]
            known.stored += written[key]
        fresh = {doc["_id"]: doc for doc in await self._counters.find({"_id": {"$in": list(pending)}}).to_list()}
        for key, known in pending.items():
            doc = fresh.get(key)
            if doc is None or doc["started"] != known.started:
                self._known.pop(key, None)  # restarted or purged meanwhile: read again at next use
            else:
                known.stored = doc["count"]

    async def close(self) -> None:
        """Write what is still counted only in memory (at shutdown)."""
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync_task
        await self.sync()

    async def purge(self, older_than: datetime) -> int:
        """Forget counters whose window started before ``older_than`` (no TTL index to do it)."""
        self._known = {key: known for key, known in self._known.items() if known.started >= older_than}
        result = await self._counters.delete_many({"started": {"$lt": older_than}})
        return result.deleted_count


class _FirstUses(GroupCommit[tuple[str, datetime], dict[str, Any]]):
    """First uses of counters, concurrent ones in two commands: one bulk of upserts, one read."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        super().__init__(max_batch=200)
        self._collection = collection

    async def count(self, key: str, now: datetime) -> dict[str, Any]:
        return await self._submit((key, now))

    async def _run(self, uses: list[tuple[str, datetime]]) -> Sequence[dict[str, Any] | BaseException]:
        per_key = Counter(key for key, _ in uses)
        opened_at: dict[str, datetime] = {}
        for key, now in uses:
            opened_at.setdefault(key, now)
        increments = [
            UpdateOne({"_id": key}, {"$inc": {"count": n}, "$setOnInsert": {"started": opened_at[key]}}, upsert=True)
            for key, n in per_key.items()
        ]
        try:
            await self._collection.bulk_write(increments, ordered=False)
        except BulkWriteError as error:
            # Another replica created some of these counters at the same moment: those upserts
            # lost the race and counted nothing; counted again, they find the counter and add to it.
            failed = error.details.get("writeErrors", [])
            if not failed or not all(is_duplicate_write_error(e) for e in failed):
                raise
            await self._collection.bulk_write([increments[e["index"]] for e in failed], ordered=False)
        counters = {doc["_id"]: doc for doc in await self._collection.find({"_id": {"$in": list(per_key)}}).to_list()}
        # The uses of one key in this batch were counted together: each sees its own count, in order
        # (another replica counting meanwhile only makes them see more, never fewer).
        seen: Counter[str] = Counter()
        outcomes: list[dict[str, Any] | BaseException] = []
        for key, _ in uses:
            counter = counters.get(key)
            if counter is None:
                outcomes.append(RuntimeError(f"rate-limit counter {key} vanished"))
                continue
            seen[key] += 1
            outcomes.append({**counter, "count": counter["count"] - per_key[key] + seen[key]})
        return outcomes
