"""The outbox relay: publishes the events stored in documents' outboxes, then empties them.

At least once: an outbox is emptied only after Kafka acknowledged its events (``acks=all``,
idempotent producer), and only if the document is still at the version whose outbox was sent (the
writers bump the version with every write; the relay never does). A crash between the
acknowledgement and the emptying re-sends the events on the next pass; consumers recognise them by
their ids. One aggregate's events are sent in the order they were stored, each keyed by the
aggregate id, so they keep that order on their partition.

Finding the events to send: a store of this process hands over, after each write that stored
events, the document's whole outbox as of the version it wrote (:meth:`OutboxRelay.wake`); the
relay sends that without reading the document back, then empties the outbox with one
``update_many`` per version for the whole batch. If the document moved on meanwhile, the later
write's hand-over covers the rest. A sweep over whole collections (at start, then every
``sweep_s``) finds what no hand-over covers: events written by another process, or left behind by
a crash. On MongoDB the sweep uses the ``outbox_pending`` index; FerretDB v1 cannot use an index
for it and reads every document, which is why it is not the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase

from shared.messaging.topics import TopicKeeper
from shared.runtime.metrics import Metrics
from shared.storage.documents import OUTBOX, PENDING, VERSION

log = logging.getLogger(__name__)

#: How many acknowledged event ids the relay remembers (an id forgotten is at worst sent again).
SENT_REMEMBERED = 20_000
#: Outboxes emptied per command. FerretDB v1 serves one command at a time and empties about one
#: outbox per 0.26 ms: 200 per command held every write and read behind them for 50 ms. With 40,
#: the backbone's p99 at 850 events/s was 73-95 ms in five runs, against 90-257 ms in five with 200.
EMPTIED_PER_COMMAND = 40


class Publisher(Protocol):
    """Hands one record to the producer and returns what resolves once Kafka acknowledged it."""

    async def __call__(self, topic: str, key: str, value: bytes, headers: dict[str, str]) -> Awaitable[Any]: ...


def faststream_publisher(broker: Any) -> Publisher:
    async def publish(topic: str, key: str, value: bytes, headers: dict[str, str]) -> Awaitable[Any]:
        # no_confirm: the record joins the producer's batch now, and its acknowledgement is awaited
        # with the others'; records handed over one after the other keep that order per partition.
        return await broker.publish(value, topic, key=key.encode(), headers=headers, no_confirm=True)

    return publish


async def publish_all(publish: Publisher, entries: Sequence[dict[str, Any]]) -> None:
    """Send outbox entries in their order and wait until Kafka acknowledged every one."""
    acknowledgements = [
        await publish(entry["topic"], entry["key"], entry["value"].encode(), entry["headers"]) for entry in entries
    ]
    await asyncio.gather(*acknowledgements)


@dataclass(frozen=True)
class _Outbox:
    """A document's outbox as one of its writes left it."""

    doc_id: str
    version: int
    entries: list[dict[str, Any]]


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
        self._handed: dict[str, dict[str, _Outbox]] = {}  # collection -> doc id -> latest outbox, in write order
        # Ids of the events Kafka acknowledged lately. A document written again before its outbox
        # was emptied hands over the events already sent too: they are not sent twice.
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._wake = asyncio.Event()
        self.after_publish: Callable[[], Awaitable[None]] | None = None  # a seam for fault-injection tests
        self._swept_waiting: dict[str, int] = {}  # collection -> events its last sweep found and did not send

    def backlog(self) -> int:
        """Events stored and not relayed yet, as far as this relay knows without reading: those this
        process's writes handed over, and those its last sweep found and could not send (what another
        process left behind is known from the next sweep on)."""
        handed = sum(
            1 for docs in self._handed.values() for outbox in docs.values()
            for entry in outbox.entries if entry["id"] not in self._sent
        )
        return handed + sum(self._swept_waiting.values())

    def add_collection(self, name: str) -> None:
        if name not in self._collections:
            self._collections.append(name)

    def wake(self, collection: str, doc_id: str, version: int, outbox: list[dict[str, Any]]) -> None:
        """Called after a write that stored events: ``outbox`` is ``doc_id``'s whole outbox at ``version``."""
        docs = self._handed.setdefault(collection, {})
        known = docs.get(doc_id)
        if known is None or known.version < version:  # a later write's outbox covers an earlier one's
            docs.pop(doc_id, None)
            docs[doc_id] = _Outbox(doc_id, version, list(outbox))
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
        """One pass: the outboxes handed over since the last pass, or every collection when a sweep
        is due; returns how many events were published."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_sweep:
            self._handed.clear()  # the sweep finds them too
            self._next_sweep = loop.time() + self._sweep_s
            try:
                return sum([await self._sweep(name) for name in self._collections])
            except BaseException:
                self._next_sweep = 0.0  # the sweep did not finish: again on the next pass
                raise
        total = 0
        for name in list(self._handed):
            handed = list(self._handed.pop(name).values())
            for start in range(0, len(handed), self._batch_max):
                chunk = handed[start : start + self._batch_max]
                try:
                    total += await self._send(name, chunk)
                except BaseException:  # not sent: keep them, ahead of newer ones, for the next pass
                    newer = self._handed.get(name, {})
                    kept = {o.doc_id: o for o in handed[start:] if o.doc_id not in newer}
                    self._handed[name] = {**kept, **newer}
                    raise
        return total

    async def _sweep(self, name: str) -> int:
        """Send what waits in one collection; returns how many events were published."""
        docs = await self._db[name].find(
            {PENDING: {"$gt": 0}}, projection={OUTBOX: True, VERSION: True, PENDING: True}, limit=self._batch_max
        ).to_list()
        if len(docs) == self._batch_max:
            self._next_sweep = 0.0  # more than one batch waiting: sweep again at once
        stale = [doc["_id"] for doc in docs if not doc.get(OUTBOX)]
        if stale:  # a counter left behind by an interrupted write: nothing to send
            await self._db[name].update_many({"_id": {"$in": stale}, OUTBOX: {"$size": 0}}, {"$set": {PENDING: 0}})
        outboxes = [_Outbox(doc["_id"], doc.get(VERSION, 0), doc[OUTBOX]) for doc in docs if doc.get(OUTBOX)]
        self._swept_waiting[name] = sum(1 for o in outboxes for entry in o.entries if entry["id"] not in self._sent)
        sent = await self._send(name, outboxes) if outboxes else 0
        self._swept_waiting[name] = 0
        return sent

    async def _send(self, name: str, outboxes: Sequence[_Outbox]) -> int:
        entries = [entry for outbox in outboxes for entry in outbox.entries if entry["id"] not in self._sent]
        if self._topics is not None:
            await self._topics.ensure({entry["topic"] for entry in entries})
        await publish_all(self._publish, entries)
        for entry in entries:
            self._sent[entry["id"]] = None
        while len(self._sent) > SENT_REMEMBERED:
            self._sent.popitem(last=False)
        if self.after_publish is not None:
            await self.after_publish()
        by_version: dict[int, list[str]] = defaultdict(list)
        for outbox in outboxes:
            by_version[outbox.version].append(outbox.doc_id)
        for version, ids in by_version.items():
            # Emptied only where the version is still the one sent: a write since then added events
            # that this pass did not send, and its own hand-over (or the sweep) sends them all.
            for start in range(0, len(ids), EMPTIED_PER_COMMAND):
                await self._db[name].update_many(
                    {"_id": {"$in": ids[start : start + EMPTIED_PER_COMMAND]}, VERSION: version},
                    {"$set": {OUTBOX: [], PENDING: 0}},
                )
        if self._metrics is not None:
            for entry in entries:
                self._metrics.relayed.labels(self._metrics.service, entry["topic"]).inc()
        return len(entries)
