"""Final outcomes: archived, announced, and taken out of the active set, in that order.

Outcomes are written in batches (up to ``batch_max``, or every ``flush_s``): one insert of their
final states into the history, their ``notification.sent`` / ``notification.failed`` events
published, one delete from the active set. The history is the durable record and the active
document the mark "not announced yet", so no outbox document is needed: after a crash, recovery
finds the delivery both active and in the history and announces it again. Event ids are derived
from the delivery and its attempt, so an outcome announced twice is recognised by consumers as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from services.notifications.adapters.store import DeliveryStore
from services.notifications.domain.delivery import Delivery, FinalOutcome, Status
from services.notifications.service_layer.patience import patiently
from shared.clock import Clock
from shared.events import Envelope, NotificationFailed, NotificationSent
from shared.events.envelope import Event

log = logging.getLogger(__name__)


def outcome_event(outcome: FinalOutcome) -> Event:
    delivery = outcome.delivery
    common = dict(
        notification_id=delivery.id,
        source_event_id=delivery.source_event_id,
        source_event_type=delivery.source_event_type,
        customer_id=delivery.customer_id,
        channel=delivery.channel,
        template=delivery.template,
    )
    if outcome.status is Status.SENT:
        return NotificationSent(
            **common, provider_message_id=outcome.provider_id, sent_at=outcome.finished_at, attempts=delivery.attempts
        )
    return NotificationFailed(
        **common,
        reason=outcome.reason or "unknown",
        permanent=outcome.permanent,
        failed_at=outcome.finished_at,
        attempts=delivery.attempts,
        fallback_notification_id=outcome.fallback_id,
    )


def outcome_event_id(outcome: FinalOutcome) -> str:
    """The same for an outcome announced again after a crash, so consumers see it once; another
    for each recording of the delivery (a replayed event re-opens a failed delivery, whose attempts
    count from zero again, and its new outcome must not pass for a repeat of the old one)."""
    delivery = outcome.delivery
    recorded_ms = int(delivery.created_at.timestamp() * 1000)
    return f"{delivery.id}.{recorded_ms}.{outcome.status.value}.{delivery.attempts}"


class OutcomeLog:
    """Collects final outcomes and writes them in batches, one batch at a time: when the store is
    slow, outcomes pile up into bigger batches (fewer, larger writes) instead of more writes."""

    def __init__(
        self,
        store: DeliveryStore,
        clock: Clock,
        publish: Callable[[Sequence[Envelope]], Awaitable[None]],
        *,
        source: str,
        batch_max: int,
        flush_s: float,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self._store = store
        self._publish = publish
        self._clock = clock
        self._source = source
        self._batch_max = batch_max
        self._flush_s = flush_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._pending: list[FinalOutcome] = []
        self._unarchived: set[str] = set()  # deliveries whose outcome is here and not in the history yet
        self._arrived = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def add(self, outcome: FinalOutcome) -> None:
        self._pending.append(outcome)
        self._unarchived.add(outcome.delivery.id)
        self._arrived.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever(), name="outcome-writer")

    async def _write_forever(self) -> None:
        failures = 0
        while True:
            await self._arrived.wait()
            if len(self._pending) < self._batch_max:  # let a batch gather, unless it is full
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full(), timeout=self._flush_s)
            try:
                await self._write_some()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The batch is back in front of the queue. Until it reaches the history these
                # deliveries are only here, and their leases will end: once they do, they are
                # sent again. Nothing an operator can miss, then: an error, every time.
                failures += 1
                delay = min(self._retry_max_s, self._retry_initial_s * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                log.error("archiving delivery outcomes failed; they are kept and written again",
                          extra={"pending": len(self._pending), "failures": failures, "retry_in_s": round(delay, 3)},
                          exc_info=True)
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _full(self) -> None:
        while len(self._pending) < self._batch_max:
            self._arrived.clear()
            await self._arrived.wait()

    async def _write_some(self) -> None:
        batch, self._pending = self._pending[: self._batch_max], self._pending[self._batch_max :]
        if not self._pending:
            self._arrived.clear()
        if batch:
            try:
                await self._write(batch)
            except BaseException:  # cancelled, or the store refused: written again, every step is idempotent
                self._pending[:0] = batch
                self._arrived.set()
                raise

    def holds(self, delivery_id: str) -> bool:
        """Whether this delivery's outcome waits here for the history. Its lease may have ended
        meanwhile (the store slow or away for longer): it is finished all the same, and must not be
        claimed and sent again by this process."""
        return delivery_id in self._unarchived

    async def flush(self) -> None:
        """Write everything pending now (shutdown, tests)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
            self._writer = None
        while self._pending:
            await self._write_some()

    async def _write(self, batch: list[FinalOutcome]) -> None:
        documents = [outcome.to_document() for outcome in batch]
        # Until the history holds them, these outcomes exist only here: keep trying. (A process
        # that dies meanwhile leaves leased deliveries, sent again once their lease ends.)
        await patiently(lambda: self._store.archive(documents), forever=True, what="archive outcomes")
        self._unarchived.difference_update(outcome.delivery.id for outcome in batch)
        await self._announce(batch)

    async def _announce(self, batch: list[FinalOutcome]) -> None:
        """Publish the outcome events, then let the deliveries leave the active set.

        No outbox document is needed: the history is the outcome's durable record and the active
        document is the mark "not announced yet". A crash before the release leaves the delivery
        active; once its lease ends, recovery finds it in the history and announces it again,
        with the same event id."""
        events = [self._envelope(outcome) for outcome in batch]
        try:
            await patiently(lambda: self._publish(events), what="publish outcome events")
            await patiently(lambda: self._store.release([o.delivery.id for o in batch]), what="release deliveries")
        except Exception:  # their leases will end; recovery finds them finished and announces them again
            log.warning("finishing a batch of deliveries failed; recovery will complete it", exc_info=True)

    def _envelope(self, outcome: FinalOutcome) -> Envelope:
        delivery = outcome.delivery
        return Envelope.wrap(
            outcome_event(outcome),
            source=self._source,
            time=outcome.finished_at,
            correlation_id=delivery.envelope.get("correlationid") or delivery.source_event_id,
            causation_id=delivery.source_event_id,
            event_id=outcome_event_id(outcome),
        )

    async def announce_again(self, archived: dict[str, Any]) -> None:
        """A delivery found finished in the history while still active (a crash came between the
        two): announce its outcome again (same event id) and release it."""
        delivery = Delivery.from_document(archived)
        outcome = FinalOutcome(
            delivery=delivery, finished_at=archived["finished_at"], provider_id=archived.get("provider_id"),
            reason=archived.get("reason"), permanent=archived.get("permanent", False),
            parked=archived.get("parked", False), fallback_id=archived.get("fallback_id"),
        )
        await self._announce([outcome])

