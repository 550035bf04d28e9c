"""One document per aggregate, written with single-document atomicity.

Each write stores, in one ``update_one``:
- the new state, guarded by a version number (optimistic concurrency);
- the events the change produced, appended to the document's own outbox (``_outbox``), which the
  relay publishes to Kafka and then empties, if the document is still at the version it sent
  (see ``shared.messaging.relay``);
- the id of the event that caused the change, kept in a bounded window (``_applied``), so that a
  redelivered event is recognised and has no second effect.

So a crash anywhere leaves either nothing or everything (state, outgoing events, applied marker),
on MongoDB and on FerretDB alike, without multi-document transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.events.envelope import Envelope
from shared.events.registry import topic_for
from shared.storage.batching import InsertBatcher, ReadBatcher
from shared.storage.mongo import IndexSpec

VERSION = "_v"
OUTBOX = "_outbox"
PENDING = "_outbox_n"
APPLIED = "_applied"
_BOOKKEEPING = frozenset({"_id", VERSION, OUTBOX, PENDING, APPLIED})


class ConcurrencyConflict(Exception):
    """Someone else changed the document since it was loaded: load again and retry."""


class DocumentExists(DuplicateKeyError, ConcurrencyConflict):
    """``create`` lost a race: someone created the document since it was found missing. Load it
    again and update it (a consumer retries this by itself). Still a duplicate key error, for the
    callers that treat any duplicate as "already there"."""


@dataclass
class StoredDocument:
    id: str
    state: dict[str, Any]
    version: int = 0
    applied: list[str] = field(default_factory=list)
    #: Events stored with earlier versions and not yet relayed when the document was loaded.
    outbox: list[dict[str, Any]] = field(default_factory=list)

    def has_applied(self, event_id: str) -> bool:
        return event_id in self.applied


def outbox_entry(envelope: Envelope, topic_namespace: str = "") -> dict[str, Any]:
    """An event as the relay will send it: topic, key and the exact bytes (as UTF-8 text)."""
    return {
        "id": envelope.id,
        "topic": topic_for(envelope.type, topic_namespace),
        "key": envelope.subject,
        "value": envelope.to_bytes().decode(),
        "headers": envelope.kafka_headers(),
    }


#: ``on_events(collection, doc_id, version, outbox)``: after a write that stored events, the
#: document's whole outbox as of ``version`` (what was pending when it was loaded, then the new ones).
OnEvents = Callable[[str, str, int, list[dict[str, Any]]], None]


class DocumentStore:
    """Loads and saves one collection's aggregates together with their outgoing events."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        collection: str,
        *,
        applied_window: int = 200,
        on_events: OnEvents | None = None,
        topic_namespace: str = "",
    ) -> None:
        self.collection = db[collection]
        self.name = collection
        self._window = applied_window
        self._on_events = on_events
        self._namespace = topic_namespace
        # Concurrent loads and creations (a consumer's batch, parallel requests) share commands.
        # The outbox is loaded too (almost always empty): a write then knows its document's whole
        # outbox, and the relay can send it without reading it back.
        self._reads = ReadBatcher(self.collection)
        self._lookups: dict[str, ReadBatcher] = {}
        self._inserts = InsertBatcher(self.collection)

    @property
    def indexes(self) -> list[IndexSpec]:
        return [IndexSpec(self.name, ((PENDING, 1),), name="outbox_pending")]

    def notify_relay(self, callback: OnEvents) -> None:
        """``callback(collection, doc_id, version, outbox)`` after each write that stored events."""
        self._on_events = callback

    @staticmethod
    def _from_raw(raw: Mapping[str, Any]) -> StoredDocument:
        return StoredDocument(
            id=raw["_id"],
            state={k: v for k, v in raw.items() if k not in _BOOKKEEPING},
            version=raw.get(VERSION, 0),
            applied=list(raw.get(APPLIED, [])),
            outbox=list(raw.get(OUTBOX, [])),
        )

    async def get(self, doc_id: str) -> StoredDocument | None:
        if isinstance(doc_id, str):
            raw = await self._reads.get(doc_id)
        else:  # other id types are not batched: FerretDB looks up only strings in a list by index
            raw = await self.collection.find_one({"_id": doc_id})
        return None if raw is None else self._from_raw(raw)

    async def find_one(self, query: Mapping[str, Any]) -> StoredDocument | None:
        raw = await self.collection.find_one(dict(query))
        return None if raw is None else self._from_raw(raw)

    async def get_by(self, field: str, value: str) -> StoredDocument | None:
        """The document whose ``field`` (unique, indexed) equals ``value``. Concurrent lookups by the
        same field share one query (on FerretDB v1, which scans for any field but ``_id``, one scan)."""
        batcher = self._lookups.get(field)
        if batcher is None:
            batcher = self._lookups[field] = ReadBatcher(self.collection, field=field)
        raw = await batcher.get(value)
        return None if raw is None else self._from_raw(raw)

    async def create(
        self,
        doc_id: str,
        state: Mapping[str, Any],
        events: Sequence[Envelope] = (),
        *,
        applied: str | None = None,
    ) -> StoredDocument:
        """Insert a new aggregate; raises ``DocumentExists`` when it exists (a race: retry), and
        ``DuplicateKeyError`` when another document holds one of its unique keys."""
        self._check_state(state)
        applied_ids = [applied] if applied else []
        entries = [outbox_entry(e, self._namespace) for e in events]
        inserted = await self._inserts.insert(
            {"_id": doc_id, **state, VERSION: 1, OUTBOX: entries, PENDING: len(entries), APPLIED: applied_ids}
        )
        if not inserted:
            if await self.collection.find_one({"_id": doc_id}, projection={"_id": True}) is not None:
                raise DocumentExists(f"{self.name}/{doc_id} was created meanwhile", 11000)
            raise DuplicateKeyError(f"{self.name}/{doc_id}: another document has one of its unique keys", 11000)
        self._wake(doc_id, 1, entries)
        return StoredDocument(doc_id, dict(state), 1, applied_ids, entries)

    async def update(
        self,
        doc: StoredDocument,
        state: Mapping[str, Any],
        events: Sequence[Envelope] = (),
        *,
        applied: str | None = None,
    ) -> StoredDocument:
        """Save ``state`` over ``doc`` if nobody changed it since it was loaded."""
        self._check_state(state)
        applied_ids = (doc.applied + [applied])[-self._window :] if applied else doc.applied
        changes: dict[str, Any] = {"$set": {**state, APPLIED: applied_ids}, "$inc": {VERSION: 1}}
        removed = {k: "" for k in doc.state if k not in state}
        if removed:
            changes["$unset"] = removed
        entries = [outbox_entry(e, self._namespace) for e in events]
        if entries:
            changes["$push"] = {OUTBOX: {"$each": entries}}
            changes["$inc"][PENDING] = len(entries)
        result = await self.collection.update_one({"_id": doc.id, VERSION: doc.version}, changes)
        if result.matched_count != 1:
            raise ConcurrencyConflict(f"{self.name}/{doc.id} changed since version {doc.version}")
        # Nobody wrote since the load, so the stored outbox is what was loaded (or less, if the
        # relay sent it meanwhile) plus ours: sending this list sends all of it, or more.
        outbox = doc.outbox + entries
        if entries:
            self._wake(doc.id, doc.version + 1, outbox)
        return StoredDocument(doc.id, dict(state), doc.version + 1, applied_ids, outbox)

    def _wake(self, doc_id: str, version: int, outbox: list[dict[str, Any]]) -> None:
        if outbox and self._on_events is not None:
            self._on_events(self.name, doc_id, version, outbox)

    @staticmethod
    def _check_state(state: Mapping[str, Any]) -> None:
        clash = _BOOKKEEPING.intersection(state)
        if clash:
            raise ValueError(f"state may not use the store's own fields {sorted(clash)}")
