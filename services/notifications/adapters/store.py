"""Where deliveries live: three collections, shaped by what the store does quickly.

- ``delivery_ledger``: one small document per delivery ever recorded, insert-only, with a unique
  index on (source event id, channel, recipient). Recording a delivery is an insert there; a
  duplicate key means the event was already handled: the idempotency rule, no check-then-insert.
- ``deliveries``: the deliveries not finished yet (queued, sending, retrying, waiting for quiet
  hours to end), each with the source event it is rendered from (as JSON text). Kept small:
  finished ones leave, and with them the source event (it holds personal data, and sealed
  secrets), so nothing has to be purged later.
- ``delivery_history``: finished deliveries, one document each (``_id`` = delivery id).

A delivery finishes in three steps: its final state into the history, its outcome event published,
its active document out. A crash between them is repaired when the delivery is recovered (its lease
ends): found in the history, its event is published again, with the same event id (consumers drop
the copy), and it is not sent again.

Why not one collection updated in place: on FerretDB v1 (SQLite), the local and test store, only
inserts and lookups by ``_id`` take constant time; every other update, delete or query reads the
whole collection (30 to 75 µs per document, per kB of document roughly), commands are served one at
a time, and an update command of 100 statements or more deadlocks the database. Lookups by ``_id``
are cheap only with our FerretDB patch (docs/assumptions.md). So the hot path inserts in batches,
reads and deletes by ``_id``, and scans only the small active collection. On MongoDB the declared indexes serve every query here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure

from services.notifications.domain.delivery import Delivery
from shared.storage.batching import InsertBatcher
from shared.storage.mongo import IndexSpec

log = logging.getLogger(__name__)


def store_busy(error: BaseException) -> bool:
    """FerretDB on SQLite answers concurrent writers with "database is locked" (SQLITE_BUSY) as an
    internal error (code 1): a transient condition, not a verdict on the data."""
    return isinstance(error, OperationFailure) and (
        "database is locked" in str(error) or "SQLITE_BUSY" in str(error)
    )

ACTIVE = "deliveries"
LEDGER = "delivery_ledger"
HISTORY = "delivery_history"
RECIPIENTS = "recipients"

INDEXES = [
    IndexSpec(LEDGER, (("source_event_id", 1), ("channel", 1), ("recipient", 1)), unique=True, name="delivery_key"),
    IndexSpec(ACTIVE, (("next_attempt_at", 1),), name="due"),
    IndexSpec(ACTIVE, (("customer_id", 1), ("created_at", -1)), name="by_customer"),
    IndexSpec(HISTORY, (("customer_id", 1), ("created_at", -1)), name="by_customer"),
]




class DeliveryStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.active = db[ACTIVE]
        self.ledger = db[LEDGER]
        self.history = db[HISTORY]
        self._active_inserts = InsertBatcher(self.active)
        self._ledger_inserts = InsertBatcher(self.ledger)

    # --- recording -----------------------------------------------------------------------------

    async def record(self, delivery: Delivery) -> bool:
        """Record a new delivery; False when its event was already handled.

        The active document (with its source event) goes first, then the ledger key: a crash in
        between leaves a delivery that will be sent (and its key written then), never a key
        without its delivery. A key already in the ledger means a duplicate, unless
        the delivery had failed and its source event was parked: a replay, and it is re-opened.
        So is a delivery whose fallback failed and parked the event: tried again, it falls back
        again, and its fallback is re-opened the same way."""
        inserted = await self._active_inserts.insert(delivery.active_document())
        if not inserted:
            return False  # still active: recorded, not finished
        if await self._ledger_inserts.insert(ledger_key(delivery)):
            return True
        finished = await self.history.find_one({"_id": delivery.id},
                                               projection={"status": 1, "parked": 1, "fallback_id": 1})
        if finished is None:
            return True  # a key, but neither the delivery nor its outcome: nothing says it was sent
        if await self._parked(finished):
            log.info("re-opening a failed delivery: its source event was replayed", extra={"delivery": delivery.id})
            return True
        await self.active.delete_one({"_id": delivery.id, "created_at": delivery.created_at})
        return False

    async def _parked(self, finished: dict[str, Any]) -> bool:
        """Whether this outcome, or that of the fallback it handed over to, failed and parked the event."""
        if _parked_failure(finished):
            return True
        fallback_id = finished.get("fallback_id")
        if not fallback_id:
            return False
        return _parked_failure(await self.history.find_one({"_id": fallback_id}, projection={"status": 1, "parked": 1}))

    async def ensure_key(self, delivery: Delivery) -> None:
        """The ledger key of a delivery recovered after a crash (it may never have been written)."""
        await self._ledger_inserts.insert(ledger_key(delivery))

    # --- claiming and retrying -----------------------------------------------------------------

    async def due(self, now: datetime, limit: int) -> list[Delivery]:
        raw = await self.active.find({"next_attempt_at": {"$lte": now}}, limit=limit * 4).to_list()
        return [d for d in map(Delivery.from_document, raw) if d.claimable(now)][:limit]

    async def claim(self, delivery: Delivery, lease_until: datetime) -> bool:
        """Take the lease, if nobody took it since ``delivery`` was read."""
        result = await self.active.update_one(
            {"_id": delivery.id, "lease_until": delivery.lease_until, "attempts": delivery.attempts},
            {"$set": {"lease_until": lease_until}},
        )
        return result.matched_count == 1

    async def retry_later(self, delivery: Delivery) -> None:
        """A delivery that stays active until its next attempt (to send, or to park its event)."""
        await self.active.update_one(
            {"_id": delivery.id},
            {
                "$set": {
                    "status": delivery.status.value,
                    "attempts": delivery.attempts,
                    "next_attempt_at": delivery.next_attempt_at,
                    "lease_until": None,
                    "last_error": delivery.last_error,
                    "log": list(delivery.log),
                    "parking": delivery.parking,
                }
            },
        )

    async def finished(self, delivery_id: str) -> dict[str, Any] | None:
        return await self.history.find_one({"_id": delivery_id})

    # --- finishing -----------------------------------------------------------------------------

    async def archive(self, documents: Sequence[dict[str, Any]]) -> None:
        """Final states into the history (idempotent: run again, it converges)."""
        try:
            await self.history.insert_many(list(documents), ordered=False)
        except BulkWriteError as error:
            for write_error in error.details.get("writeErrors", []):
                if write_error.get("code") != 11000:
                    raise
                # already archived (a re-run), or a re-opened delivery that finished again
                document = documents[write_error["index"]]
                await self.history.replace_one({"_id": document["_id"]}, document)

    async def release(self, delivery_ids: Sequence[str]) -> None:
        """Finished deliveries leave the active set."""
        await self.active.delete_many({"_id": {"$in": list(delivery_ids)}})

    # --- reading (staff API) -------------------------------------------------------------------

    async def for_customer(self, customer_id: str, limit: int) -> list[dict[str, Any]]:
        """Newest first; a delivery still active wins over its archived copy (a re-opened one)."""
        return await self._newest({"customer_id": customer_id}, limit)

    async def for_customer_number(self, customer_number: str, limit: int) -> list[dict[str, Any]]:
        """The same, by customer number (messages sent before the customer had an account). No
        index: support asks rarely, and every insert on the hot path would pay for one."""
        return await self._newest({"customer_number": customer_number}, limit)

    async def _newest(self, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        active = await self.active.find(query).sort("created_at", DESCENDING).to_list(limit)
        history = await self.history.find(query).sort("created_at", DESCENDING).to_list(limit)
        merged = {d["_id"]: d for d in history} | {d["_id"]: d for d in active}
        return sorted(merged.values(), key=lambda d: d["created_at"], reverse=True)[:limit]

    async def one(self, delivery_id: str) -> dict[str, Any] | None:
        found = await self.active.find_one({"_id": delivery_id})
        return found or await self.history.find_one({"_id": delivery_id})


def _parked_failure(finished: dict[str, Any] | None) -> bool:
    return finished is not None and finished.get("status") == "failed" and bool(finished.get("parked"))


def ledger_key(delivery: Delivery) -> dict[str, Any]:
    return {
        "_id": delivery.id,
        "source_event_id": delivery.source_event_id,
        "channel": delivery.channel,
        "recipient": delivery.recipient,
        "created_at": delivery.created_at,
    }
