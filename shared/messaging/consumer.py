"""Consuming integration events: at least once, idempotent handlers, nothing lost.

For each batch the subscriber receives, every record is either handled or parked in its topic's
dead-letter topic (with the reason), and only then is the batch's offset committed. Records of one
aggregate (same topic, partition and key) are handled in order; different aggregates concurrently.

- Cannot be decoded (whatever the decoder raised), invalid envelope, unknown type or version,
  payload fails its schema: parked at once.
- Handler finds a dependency unreachable (the store or the broker does not answer at all): nothing
  is parked, since the message is not at fault. The batch is given up (its other lanes stop at
  their next record or retry, nothing is committed) and read again after a growing pause: an
  outage delays messages, it does not send them to the dead-letter topic.
- Handler raises another transient error (store busy, provider unavailable, concurrent write):
  retried with exponential backoff and jitter, a bounded number of times, then parked. Bounded, so
  one bad aggregate never holds its partition forever.
- A batch still running after ``batch_budget_s`` is given up the same way, and one still running
  after twice that is cancelled. The consumer does not poll while it handles a batch, and aiokafka
  evicts a member that has not polled for ``MAX_POLL_INTERVAL_MS``: an evicted member's commit
  fails, and its whole batch is handled again.

Lanes are stopped between handler calls rather than cancelled: pymongo 4.20's async client,
cancelled while it waits for a server, can be left hanging for every later operation.
- Handler raises anything else: parked at once with the error as the reason.
- The dead-letter topic refuses the message itself (too large with the dead-letter headers, say):
  a truncated copy is parked instead, pointing at the original's topic, partition and offset.
- The dead-letter topic cannot be written at all: nothing is committed, the consumer seeks back
  and the batch is read again after a pause.
- Shutdown cancels a running batch: it is not committed, so it is delivered again.
- A replayed copy of a parked message is handled only by the group that parked it.

FastStream runs the subscriber with ``AckPolicy.MANUAL``: FastStream never commits by itself (its
other policies commit after a failure, or redeliver in a tight loop), this module does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure

from shared.clock import Clock, SystemClock
from shared.events.envelope import Envelope, Event
from shared.events.registry import UnknownEvent, dead_letter_topic, event_class, topic_for
from shared.logging import log_context
from shared.messaging.dead_letters import park_headers, replay_target, truncated_copy
from shared.messaging.errors import TransientError, is_transient
from shared.messaging.fetch_pacing import IDLE_MAX_WAIT_MS, IDLE_MIN_BYTES, FetchPacing
from shared.runtime.metrics import Metrics
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Delivery:
    """What a handler knows about the message it is handling, besides the event itself."""

    envelope: Envelope
    topic: str
    partition: int
    offset: int
    attempt: int
    clock: Clock
    source: str

    @property
    def event_id(self) -> str:
        return self.envelope.id

    def follow(self, event: Event) -> Envelope:
        """An envelope for an event caused by this one: same correlation, causation = this event."""
        return Envelope.wrap(
            event,
            source=self.source,
            time=self.clock.now(),
            correlation_id=self.envelope.correlationid,
            causation_id=self.envelope.id,
        )


Handler = Callable[[E, Delivery], Awaitable[None]]


@dataclass(frozen=True)
class _Route(Generic[E]):
    event_cls: type[E]
    handler: Handler[E]


class Parked(Exception):
    def __init__(self, kind: str, reason: str, attempts: int = 0) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.attempts = attempts


class BatchAborted(Exception):
    """The batch is given up: nothing is committed, and it is read again after a pause."""


class _Batch:
    """What the lanes of one batch share: whether it was given up, and its deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.reason = ""

    @classmethod
    def unbounded(cls) -> "_Batch":
        return cls(float("inf"))

    def give_up(self, reason: str) -> None:
        self.reason = self.reason or reason

    def check(self) -> None:
        """Between records and retries: stop here when the batch was given up or is over budget."""
        if not self.reason and asyncio.get_running_loop().time() > self.deadline:
            self.give_up("batch still running after its time budget")
        if self.reason:
            raise BatchAborted(self.reason)


#: aiokafka's (and FastStream's) default, passed explicitly: a member that does not poll again
#: within it is evicted from its group. A batch is given up long before (``BATCH_BUDGET_S``).
MAX_POLL_INTERVAL_MS = 300_000
BATCH_BUDGET_S = MAX_POLL_INTERVAL_MS / 1000 / 3
#: How long a stop waits for the last commit (see ``EventConsumer.settle``).
SETTLE_TIMEOUT_S = 10.0
#: Records parked by a batch that was then given up, so that reading it again does not park them
#: twice; forgotten once committed (nothing before a commit is read again by this process).
_PARKED_MEMORY = 10_000

DeadLetterSink = Callable[[str, bytes | None, bytes | None, dict[str, str]], Awaitable[None]]


class EventConsumer:
    """Routes the events of a consumer group to their handlers (one handler per event type)."""

    def __init__(
        self,
        *,
        group_id: str,
        settings: ServiceSettings,
        metrics: Metrics,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        batch_budget_s: float = BATCH_BUDGET_S,
    ) -> None:
        self.group_id = group_id
        worst = _longest_retries(settings)
        if worst >= batch_budget_s:
            # A record still retrying when its batch runs out of time is read again with the batch,
            # and so on: it would never reach its last attempt, hence never be parked.
            raise ValueError(
                f"a record's attempts may take {worst:g}s (CONSUMER_MAX_ATTEMPTS x CONSUMER_HANDLER_TIMEOUT_S "
                f"plus backoff), more than a batch's budget of {batch_budget_s:g}s: lower one of them"
            )
        self._batch_budget_s = batch_budget_s
        self._aborts_in_a_row = 0
        self._parked_uncommitted: dict[tuple[str, int, int], None] = {}
        self._uncommitted: dict[TopicPartition, int] = {}  # handled, per partition the next offset
        self._commit_through: Any = None  # the latest batch message: its consumer commits
        self._committer: asyncio.Task[None] | None = None
        self._commit_now = asyncio.Event()
        self._last_commit = 0.0
        self._stopping = False
        self._settings = settings
        self._metrics = metrics
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._routes: dict[tuple[str, int], _Route[Any]] = {}
        self._dead_letters: DeadLetterSink | None = None
        self._pacing = FetchPacing(settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms)

    def on(self, event_cls: type[E]) -> Callable[[Handler[E]], Handler[E]]:
        """Decorator: ``@consumer.on(CustomerRegistered)`` above ``async def handler(event, delivery)``."""

        def register(handler: Handler[E]) -> Handler[E]:
            self.add(event_cls, handler)
            return handler

        return register

    def add(self, event_cls: type[E], handler: Handler[E]) -> None:
        key = (event_cls.event_type, event_cls.schema_version)
        if key in self._routes:
            raise ValueError(f"{self.group_id} already handles {key}")
        self._routes[key] = _Route(event_cls, handler)

    @property
    def topics(self) -> list[str]:
        namespace = self._settings.topic_namespace
        return sorted({topic_for(event_type, namespace) for event_type, _ in self._routes})

    def subscribe(self, broker: KafkaBroker) -> None:
        """Attach this consumer to the broker as one batch subscriber over all its topics."""
        if not self._routes:
            raise ValueError(f"{self.group_id} handles no events")

        async def publish_dead_letter(topic: str, key: bytes | None, value: bytes | None, headers: dict[str, str]) -> None:
            await broker.publish(value or b"", topic, key=key, headers=headers)

        self._dead_letters = publish_dead_letter
        subscriber = broker.subscriber(
            *self.topics,
            group_id=self.group_id,
            batch=True,
            max_records=self._settings.consumer_batch_max,
            batch_timeout_ms=100,
            auto_offset_reset="earliest",
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            fetch_min_bytes=IDLE_MIN_BYTES,  # until the first batch: see shared.messaging.fetch_pacing
            fetch_max_wait_ms=IDLE_MAX_WAIT_MS,
            ack_policy=AckPolicy.MANUAL,
            parser=_headers_left_alone,
            decoder=_undecoded,
        )

        @subscriber
        async def on_batch(message: Any) -> None:
            await self.handle_batch(message)

    async def handle_batch(self, message: Any) -> None:
        """Handle or park every record of a FastStream batch message, then commit it."""
        records: tuple[ConsumerRecord[Any, Any], ...] = message.raw_message
        self._pacing.batch_arrived(message.consumer)
        self._record_lag(message, _first_not_done(records, done=False))
        try:
            await self.process(records)
        except asyncio.CancelledError:
            raise  # shutting down: commit nothing, the batch will be read again
        except BatchAborted as aborted:
            self._aborts_in_a_row += 1
            settings = self._settings
            pause = min(settings.consumer_backoff_max_s,
                        settings.consumer_backoff_initial_s * 2 ** (self._aborts_in_a_row - 1))
            log.warning(
                "batch given up, nothing committed; reading it again after a pause",
                extra={"reason": str(aborted), "pause_s": round(pause, 3), "in_a_row": self._aborts_in_a_row},
            )
            await message.nack()
            await self._sleep(pause)
            return
        except Exception:
            log.exception("batch could not be handled nor parked; it will be read again")
            await message.nack()
            await self._sleep(self._settings.consumer_backoff_max_s)
            return
        self._aborts_in_a_row = 0
        self._uncommitted.update(_first_not_done(records, done=True))
        self._commit_through = message
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_handled(), name="offset-commit")
        if self._stopping:  # the last batch before the consumer closes: its commit must land first
            await self.settle()

    async def _commit_handled(self) -> None:
        """Commit the offsets after what was handled, at most every ``consumer_commit_interval_s``,
        until nothing handled is left uncommitted.

        In the background: a commit is a round trip to the broker that took 40 % of a consumer's
        cycle under load (7 ms of 18 at 900 events/s), and the next batch need not wait for it. And
        not after every batch: under a steady trickle a batch comes every fetch (40 a second per
        consumer), and each commit is a request the broker's group coordinator writes to its log.
        The offsets are named, not "whatever was read": the next batch is read meanwhile. A commit
        that fails (a rebalance took the partitions away), or a crash before it, means the records
        are delivered again, to idempotent handlers; a graceful stop commits at once (``settle``)."""
        loop = asyncio.get_running_loop()
        while self._uncommitted:
            wait = self._last_commit + self._settings.consumer_commit_interval_s - loop.time()
            if wait > 0 and not self._commit_now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._commit_now.wait(), wait)
            offsets, self._uncommitted = self._uncommitted, {}
            self._last_commit = loop.time()
            await self._commit(self._commit_through, offsets)

    async def _commit(self, message: Any, offsets: dict[TopicPartition, int]) -> None:
        consumer = message.consumer
        assigned = consumer.assignment()  # partitions a rebalance took away are the new owner's to commit
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except Exception:
            log.warning("offset commit failed; records will be delivered again", exc_info=True)
            return
        for key in [k for k in self._parked_uncommitted if k[2] < offsets.get(TopicPartition(k[0], k[1]), -1)]:
            del self._parked_uncommitted[key]
        self._record_lag(message, offsets)

    def stopping(self) -> None:
        """From now on each batch's commit is awaited before its handling ends (graceful stop)."""
        self._stopping = True
        self._pacing.stop()

    async def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Commit what was handled now, without waiting for the interval, and wait for it, but not
        forever: aiokafka retries a commit until the broker answers, and a process asked to stop
        while the broker is away must still stop. What is left uncommitted is delivered again."""
        self._commit_now.set()
        try:
            if self._committer is not None and not self._committer.done():
                _, pending = await asyncio.wait([self._committer], timeout=timeout_s)
                if pending:
                    self._committer.cancel()
                    log.warning("offsets not committed in time; their records will be delivered again",
                                extra={"timeout_s": timeout_s})
        finally:
            self._commit_now.clear()

    async def process(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """Handle or park every record: one lane per key, in order, lanes concurrently. Raises
        :class:`BatchAborted` when the batch must be read again (dependency unreachable, over budget)."""
        lanes: dict[tuple[str, int, bytes | None], list[ConsumerRecord[Any, Any]]] = defaultdict(list)
        for record in records:
            lanes[(record.topic, record.partition, record.key)].append(record)
        limit = asyncio.Semaphore(self._settings.consumer_concurrency)
        batch = _Batch(asyncio.get_running_loop().time() + self._batch_budget_s)

        async def run_lane(lane: list[ConsumerRecord[Any, Any]]) -> None:
            async with limit:
                for record in lane:
                    batch.check()
                    await self._process_one(record, batch)

        hard_limit = asyncio.timeout(2 * self._batch_budget_s)
        try:
            async with hard_limit:
                results = await asyncio.gather(*(run_lane(lane) for lane in lanes.values()), return_exceptions=True)
        except TimeoutError:
            if hard_limit.expired():
                raise BatchAborted(f"batch of {len(records)} cancelled after {2 * self._batch_budget_s:g}s") from None
            raise
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, BatchAborted):
                raise failure
        if failures:
            raise failures[0]

    async def _process_one(self, record: ConsumerRecord[Any, Any], batch: _Batch | None = None) -> None:
        labels = (self._metrics.service, record.topic)
        self._metrics.consumed.labels(*labels).inc()
        target = replay_target(record)
        if target is not None and target != self.group_id:
            return  # a replayed copy of what another group parked (see shared.messaging.dead_letters)
        if (record.topic, record.partition, record.offset) in self._parked_uncommitted:
            return  # parked already, by a batch that was then given up
        started = time.perf_counter()
        # The ids every line about this record carries: the envelope's, or, when it cannot be
        # decoded, the event id its headers name (if any).
        ids: dict[str, str | None] = {"event_id": _header(record, "ce_id"), "correlation_id": None}
        try:
            route, envelope, event = self._decode(record)
            ids = {"event_id": envelope.id, "correlation_id": envelope.correlationid}
            with log_context(**ids):
                await self._run_with_retries(route, envelope, event, record, batch or _Batch.unbounded())
            self._metrics.handled.labels(*labels).inc()
        except Parked as parked:
            with log_context(**ids):
                await self._park(record, parked, batch)
        finally:
            self._metrics.latency.labels(*labels).observe(time.perf_counter() - started)

    def _decode(self, record: ConsumerRecord[Any, Any]) -> tuple[_Route[Any], Envelope, Event]:
        try:
            return self._decode_strictly(record)
        except Parked:
            raise
        except Exception as error:  # e.g. RecursionError on deeply nested JSON: poison all the same
            raise Parked("undecodable", f"decoding failed: {type(error).__name__}: {error}") from None

    def _decode_strictly(self, record: ConsumerRecord[Any, Any]) -> tuple[_Route[Any], Envelope, Event]:
        try:
            document = json.loads(record.value)
        except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise Parked("undecodable", f"value is not JSON: {error}") from None
        try:
            envelope = Envelope.model_validate(document)
        except ValidationError as error:
            raise Parked("invalid_envelope", f"not a Leaseline CloudEvent: {_brief(error)}") from None
        try:
            event_cls = event_class(envelope.type, envelope.schemaversion)
        except UnknownEvent as error:
            raise Parked("unknown_type", str(error)) from None
        route = self._routes.get((envelope.type, envelope.schemaversion))
        if route is None:
            raise Parked(
                "unexpected_type",
                f"{self.group_id} does not handle {envelope.type} v{envelope.schemaversion} (on {record.topic})",
            )
        try:
            event = event_cls.model_validate(envelope.data)
        except ValidationError as error:
            raise Parked("schema", f"{envelope.type} v{envelope.schemaversion} data invalid: {_brief(error)}") from None
        return route, envelope, event

    async def _run_with_retries(
        self, route: _Route[Any], envelope: Envelope, event: Event, record: ConsumerRecord[Any, Any], batch: _Batch
    ) -> None:
        settings = self._settings
        for attempt in range(1, settings.consumer_max_attempts + 1):
            delivery = Delivery(
                envelope, record.topic, record.partition, record.offset, attempt, self._clock, self._settings.service_name
            )
            cut_off = asyncio.timeout(settings.consumer_handler_timeout_s)
            try:
                async with cut_off:
                    await route.handler(event, delivery)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if _being_cancelled():
                    # Cancelled (shutdown, or another lane gave the batch up), and the handler's
                    # library turned the cancellation into an error of its own (pymongo may raise
                    # RuntimeError from a lock it was waiting for): neither retry nor park.
                    raise asyncio.CancelledError from error
                if cut_off.expired():
                    error = TransientError(f"handler still running after {settings.consumer_handler_timeout_s:g}s")
                if _unreachable(error):
                    self._metrics.failed.labels(self._metrics.service, record.topic, "unreachable").inc()
                    batch.give_up(f"a dependency is unreachable: {type(error).__name__}: {error}")
                    raise BatchAborted(batch.reason) from error
                transient = is_transient(error)
                self._metrics.failed.labels(
                    self._metrics.service, record.topic, "transient" if transient else "permanent"
                ).inc()
                if not transient:
                    log.warning("handler rejected the event", exc_info=True)
                    raise Parked("handler_rejected", f"{type(error).__name__}: {error}", attempt) from None
                if attempt == settings.consumer_max_attempts:
                    raise Parked(
                        "retries_exhausted", f"gave up after {attempt} attempts: {type(error).__name__}: {error}", attempt
                    ) from None
                delay = min(settings.consumer_backoff_max_s, settings.consumer_backoff_initial_s * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)  # jitter: retries of many consumers do not line up
                batch.check()
                log.info("transient failure, retrying", extra={"attempt": attempt, "delay_s": round(delay, 3)})
                await self._sleep(delay)
                batch.check()

    async def _park(self, record: ConsumerRecord[Any, Any], parked: Parked, batch: _Batch | None = None) -> None:
        if self._dead_letters is None:
            raise RuntimeError("consumer is not subscribed: nowhere to park")
        headers = park_headers(
            record,
            reason=parked.reason,
            kind=parked.kind,
            group_id=self.group_id,
            attempts=parked.attempts,
            at=self._clock.now(),
        )
        topic = dead_letter_topic(record.topic)
        try:
            await self._dead_letters(topic, record.key, record.value, headers)
        except Exception as error:
            if _unreachable(error):
                if batch is not None:
                    batch.give_up(f"the dead-letter topic is unreachable: {type(error).__name__}: {error}")
                raise BatchAborted(f"the dead-letter topic is unreachable: {type(error).__name__}: {error}") from error
            if is_transient(error):
                raise  # the broker, not the message: the batch is read again after a pause
            # The message itself is refused (too large with our headers, say). Blocking the batch
            # for good is worse than parking a truncated copy that points at the original.
            log.error(
                "message could not be parked whole; parking a truncated copy",
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset,
                       "error": f"{type(error).__name__}: {error}"},
            )
            why = f"{type(error).__name__}: {error}"
            await self._dead_letters(topic, *truncated_copy(record.key, record.value, headers, why))
        self._parked_uncommitted[(record.topic, record.partition, record.offset)] = None
        if len(self._parked_uncommitted) > _PARKED_MEMORY:
            del self._parked_uncommitted[next(iter(self._parked_uncommitted))]
        self._metrics.parked.labels(self._metrics.service, record.topic, parked.kind).inc()
        log.warning(
            "message parked",
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset, "reason": parked.reason},
        )

    def attach_dead_letter_sink(self, sink: DeadLetterSink) -> None:
        """For tests of the routing logic without a broker."""
        self._dead_letters = sink

    def _record_lag(self, message: Any, not_done: dict[TopicPartition, int]) -> None:
        """Lag per partition: messages from the first one not done. Set when a batch is fetched
        (from its first record) and again once it is committed (from the record after it)."""
        consumer = message.consumer
        for tp, offset in not_done.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self._metrics.lag.labels(self._metrics.service, tp.topic, str(tp.partition)).set(
                    max(0, highwater - offset)
                )


def _first_not_done(records: Sequence[ConsumerRecord[Any, Any]], *, done: bool) -> dict[TopicPartition, int]:
    """Per partition, the first offset not done: the one after the batch once it is done (what a
    commit names), else the batch's first."""
    offsets: dict[TopicPartition, list[int]] = defaultdict(list)
    for record in records:
        offsets[TopicPartition(record.topic, record.partition)].append(record.offset)
    return {tp: max(seen) + 1 if done else min(seen) for tp, seen in offsets.items()}


def _longest_retries(settings: ServiceSettings) -> float:
    """The longest one record's attempts can take: every attempt cut off, every backoff at its longest."""
    attempts = settings.consumer_max_attempts
    backoffs = sum(min(settings.consumer_backoff_max_s, settings.consumer_backoff_initial_s * 2 ** (n - 1))
                   for n in range(1, attempts))
    return attempts * settings.consumer_handler_timeout_s + backoffs


def _header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return (value or b"").decode("utf-8", "replace")
    return None


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _unreachable(error: BaseException) -> bool:
    """A dependency that does not answer at all (store or broker down), as opposed to one that
    refused or failed this particular message."""
    return isinstance(error, (ConnectionFailure, KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError))


async def _headers_left_alone(
    records: tuple[ConsumerRecord[Any, Any], ...], parse: Callable[[Any], Awaitable[Any]]
) -> Any:
    """FastStream's batch parser, fed the records without their headers; the message keeps the
    records themselves.

    FastStream 0.7.8 decodes every header value of a batch as UTF-8 before any handler runs, and a
    binary or null value (Kafka allows both) raises there; FastStream logs nothing and, with manual
    acknowledgement, neither rewinds nor commits, so the next batch's commit would skip the whole
    batch, good events with it. This consumer reads the headers it needs from the records itself
    (leniently, see ``_header`` and ``record_headers``), so FastStream need not read them at all."""
    message = await parse(tuple(dataclasses.replace(record, headers=()) for record in records))
    message.raw_message = records
    return message


def _undecoded(message: Any) -> Any:
    """FastStream decoder that leaves records alone: decoding errors must be parked, not raised."""
    return message


def _brief(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in error.errors()[:5])
