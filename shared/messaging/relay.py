"""The outbox relay: publishes the events stored in documents' outboxes, then removes them.

At least once: an event is removed only after Kafka acknowledged it (``acks=all``, idempotent
producer). A crash between the acknowledgement and the removal re-sends the event on the next
pass; consumers recognise it by its id. One aggregate's events are sent in the order they were
stored, each keyed by the aggregate id, so they keep that order on their partition.

Finding the documents with events to send: a store of this process names the document it just
wrote (:meth:`OutboxRelay.wake`), and the relay reads those by ``_id``. A sweep over whole
collections (at start, then every ``sweep_s``) finds the rest: events written by another process,
or left behind by a crash. On MongoDB the sweep uses the ``outbox_pending`` index; FerretDB v1
cannot use an index for it and reads every document, which is why it is not the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from shared.messaging.topics import TopicKeeper
from shared.runtime.metrics import Metrics
from shared.storage.documents import OUTBOX, PENDING

log = logging.getLogger(__name__)


class Publisher(Protocol):
    async def __call__(self, topic: str, key: str, value: bytes, headers: dict[str, str]) -> None: ...


def faststream_publisher(broker: Any) -> Publisher:
    async def publish(topic: str, key: str, value: bytes, headers: dict[str, str]) -> None:
        await broker.publish(value, topic, key=key.encode(), headers=headers)

    return publish


class OutboxRelay:
    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        collections: Sequence[str],
        publish: Publisher,
        *,
        topics: TopicKeeper | None = None,
        metrics: Metrics | None = None,
        batch_max: int = 500,
        idle_poll_s: float = 0.2,
        sweep_s: float = 30.0,
        error_backoff_s: float = 1.0,
    ) -> None:
        self._db = db
        self._collections = list(collections)
        self._publish = publish
        self._metrics = metrics
        self._topics = topics
        self._batch_max = batch_max
        self._idle_poll_s = idle_poll_s
        self._error_backoff_s = error_backoff_s
        self._sweep_s = sweep_s
        self._next_sweep = 0.0  # the first pass sweeps
        self._hinted: dict[str, dict[str, None]] = {}  # collection -> ids, in the order written
        self._wake = asyncio.Event()
        self.after_publish: Callable[[], Awaitable[None]] | None = None  # a seam for fault-injection tests

    def add_collection(self, name: str) -> None:
        if name not in self._collections:
            self._collections.append(name)

    def wake(self, collection: str | None = None, doc_id: str | None = None) -> None:
        """Called after a write that stored events in ``collection``/``doc_id``: relay them now."""
        if collection is not None and doc_id is not None:
            self._hinted.setdefault(collection, {})[doc_id] = None
        self._wake.set()

    async def run(self) -> None:
        """Relay until cancelled. Errors (broker or store down) are logged and retried."""
        while True:
            try:
                sent = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay pass failed; retrying")
                await asyncio.sleep(self._error_backoff_s)
                continue
            if sent:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._idle_poll_s)
            except TimeoutError:
                pass

    async def relay_once(self) -> int:
        """One pass: the documents named since the last pass, or every collection when a sweep is
        due; returns how many events were published."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_sweep:
            self._hinted.clear()  # the sweep finds them too
            self._next_sweep = loop.time() + self._sweep_s
            try:
                return sum([await self._relay(name, {PENDING: {"$gt": 0}}) for name in self._collections])
            except BaseException:
                self._next_sweep = 0.0  # the sweep did not finish: again on the next pass
                raise
        total = 0
        for name in list(self._hinted):
            hinted = self._hinted.pop(name)
            ids = list(hinted)
            for start in range(0, len(ids), self._batch_max):
                chunk = ids[start : start + self._batch_max]
                try:
                    total += await self._relay(name, {"_id": {"$in": chunk}})
                except BaseException:  # not sent: keep them, ahead of newer ones, for the next pass
                    self._hinted[name] = {**dict.fromkeys(ids[start:]), **self._hinted.get(name, {})}
                    raise
        return total

    async def _relay(self, name: str, which: dict[str, Any]) -> int:
        collection = self._db[name]
        docs = await collection.find(which, projection={OUTBOX: True}, limit=self._batch_max).to_list()
        docs = [doc for doc in docs if doc.get(OUTBOX)] if "_id" in which else docs
        if not docs:
            return 0
        if self._topics is not None:
            await self._topics.ensure({entry["topic"] for doc in docs for entry in doc.get(OUTBOX, [])})
        await asyncio.gather(*(self._publish_document(doc) for doc in docs))
        if self.after_publish is not None:
            await self.after_publish()
        # FerretDB v1 never answers an update command of 100 or more statements: send chunks of 50.
        marks = [self._mark_sent(doc) for doc in docs]
        for start in range(0, len(marks), 50):
            await collection.bulk_write(marks[start : start + 50], ordered=False)
        sent = sum(len(doc.get(OUTBOX, [])) for doc in docs)
        if self._metrics is not None:
            for doc in docs:
                for entry in doc.get(OUTBOX, []):
                    self._metrics.relayed.labels(self._metrics.service, entry["topic"]).inc()
        if len(docs) == self._batch_max and "_id" not in which:
            self._next_sweep = 0.0  # more than one batch waiting: sweep again at once
        return sent

    @staticmethod
    def _mark_sent(doc: dict[str, Any]) -> UpdateOne:
        entries = doc.get(OUTBOX) or []
        if not entries:  # a counter left behind by an interrupted write: nothing to send
            return UpdateOne({"_id": doc["_id"], OUTBOX: {"$size": 0}}, {"$set": {PENDING: 0}})
        # $pullAll with the exact entries read: FerretDB v1 ignores $pull with a condition.
        return UpdateOne({"_id": doc["_id"]}, {"$pullAll": {OUTBOX: entries}, "$inc": {PENDING: -len(entries)}})

    async def _publish_document(self, doc: dict[str, Any]) -> None:
        # One aggregate's events go out one after the other so that their order is kept.
        for entry in doc.get(OUTBOX, []):
            await self._publish(entry["topic"], entry["key"], entry["value"].encode(), entry["headers"])

    async def backlog(self) -> int:
        total = 0
        for name in self._collections:
            async for doc in self._db[name].find({PENDING: {"$gt": 0}}, projection={PENDING: True}):
                total += doc.get(PENDING, 0)
        return total
