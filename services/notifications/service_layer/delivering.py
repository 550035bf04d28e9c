"""The delivery worker: takes recorded deliveries and sends them, one attempt at a time.

New deliveries arrive from the Kafka handler of this process, already leased to it. Retries that
fall due, messages held back by quiet hours, and deliveries whose sender died (lease expired) are
found by querying the active deliveries by ``next_attempt_at`` against the injected clock: when
something this process scheduled falls due (it keeps those times in memory), and otherwise every
``sweep_s`` (other processes' work, abandoned leases, what a restart forgot). The query is a full
scan on FerretDB v1, which serves one command at a time; polling it every second held up every
other write while a burst was queued. A bounded
queue between the two gives backpressure: when sending falls behind, the consumer waits rather
than filling the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from services.notifications.adapters.dead_letters import DeadLetterPublisher
from services.notifications.adapters.email_message import Sender, build_email, message_id
from services.notifications.adapters.store import DeliveryStore
from services.notifications.adapters.templates import SmsTooLong, TemplateError, TemplateRenderer
from services.notifications.domain.consent import Consents, may_send
from services.notifications.domain.delivery import Delivery, FinalOutcome, Status
from services.notifications.domain.messages import Category, MessageTable, Urgency
from services.notifications.domain.planning import QuietHours, address, delivery_id, held_back_until
from services.notifications.domain.retries import (
    FallBack,
    GiveUp,
    PermanentFailure,
    ProviderMisconfigured,
    RetryPolicy,
    TransientFailure,
)
from services.notifications.service_layer.outcomes import OutcomeLog
from services.notifications.service_layer.patience import patiently
from services.notifications.service_layer.recording import opened
from shared.clock import Clock
from shared.crypto import Keyring
from shared.events import Envelope, event_class
from shared.logging import log_context, mask_email, mask_phone

log = logging.getLogger(__name__)


class EmailTransport(Protocol):
    async def send(self, sender: str, recipient: str, message: bytes) -> str: ...


class SmsTransport(Protocol):
    async def send(self, to: str, body: str) -> str: ...


class RecipientDocument(Protocol):
    state: dict[str, Any]


class Recipients(Protocol):
    """The projection of what is known about customers (contact details, consents), by customer id."""

    async def get(self, doc_id: str) -> RecipientDocument | None: ...


@dataclass(frozen=True)
class Rendered:
    channel: str
    payload: bytes | str
    provider_id: str | None = None  # known before sending for email (our Message-ID)


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int
    queue_max: int
    poll_s: float
    lease: timedelta
    sweep_s: float = 15.0


class DeliveryWorker:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        outcomes: OutcomeLog,
        renderer: TemplateRenderer,
        table: MessageTable,
        email: EmailTransport,
        sms: SmsTransport,
        dead_letters: DeadLetterPublisher,
        recipients: Recipients,
        keyring: Keyring,
        clock: Clock,
        policy: RetryPolicy,
        quiet: QuietHours,
        settings: WorkerSettings,
        sender: Sender,
        portal_base_url: str,
        observe: Callable[[str, str], None] = lambda channel, outcome: None,
    ) -> None:
        self._store = store
        self._outcomes = outcomes
        self._renderer = renderer
        self._table = table
        self._email = email
        self._sms = sms
        self._dead_letters = dead_letters
        self._recipients = recipients
        self._keyring = keyring
        self._clock = clock
        self._policy = policy
        self._quiet = quiet
        self._settings = settings
        self._sender = sender
        self._portal = portal_base_url.rstrip("/")
        self._observe = observe
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(settings.queue_max)
        self._in_flight: set[str] = set()
        self._wake = asyncio.Event()
        self._forced = True  # the first pass sweeps
        self._scheduled: list[datetime] = []  # when what this process scheduled falls due (a heap)
        self._next_sweep = 0.0

    # --- intake --------------------------------------------------------------------------------

    async def hand_over(self, delivery: Delivery) -> bool:
        """A delivery just recorded and leased to this process: queue it (waits when full)."""
        if delivery.id in self._in_flight:
            return False
        await self._enqueue(delivery)
        return True

    async def _enqueue(self, delivery: Delivery) -> None:
        """Queue a delivery this process holds the lease of, marked in flight until a worker is done.

        The wait for room can be cut short (the consumer's handler deadline, a shutdown): the
        delivery is then not queued, and must not stay marked, or the poller would skip it for
        the life of the process once its lease ends."""
        self._in_flight.add(delivery.id)
        try:
            await self._queue.put(delivery)
        except BaseException:
            self._in_flight.discard(delivery.id)
            raise

    def wake(self) -> None:
        """Look for due deliveries now."""
        self._forced = True
        self._wake.set()

    def expect(self, at: datetime) -> None:
        """Something recorded or rescheduled by this process falls due at ``at``."""
        heapq.heappush(self._scheduled, at)
        if at <= self._clock.now():
            self.wake()

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        workers = [asyncio.create_task(self._work(), name=f"delivery-{i}") for i in range(self._settings.concurrency)]
        try:
            await self._poll()
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                with log_context(event_id=delivery.source_event_id,
                                 correlation_id=delivery.envelope.get("correlationid")):
                    await self.attempt(delivery)
            except asyncio.CancelledError:
                raise
            except Exception:  # not even counted (the store is down): the lease ends, the poller retries
                log.exception("delivery attempt crashed", extra={"delivery": delivery.id})
            finally:
                self._in_flight.discard(delivery.id)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._query_due(loop.time()):
                try:
                    await self.claim_due()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("polling for due deliveries failed", exc_info=True)
                    self._forced = True
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.poll_s)

    def _query_due(self, loop_now: float) -> bool:
        """Whether to query the store now: asked to, something scheduled here fell due, or a
        sweep is due. Consumes what it answers for."""
        now = self._clock.now()
        due = self._forced or loop_now >= self._next_sweep
        while self._scheduled and self._scheduled[0] <= now:
            heapq.heappop(self._scheduled)
            due = True
        if due:
            self._forced = False
            self._next_sweep = loop_now + self._settings.sweep_s
        return due

    async def claim_due(self) -> int:
        """Claim what fell due (retries, quiet hours ended, abandoned leases) and queue it."""
        room = self._settings.queue_max - self._queue.qsize()
        if room <= 0:
            return 0
        now = self._clock.now()
        claimed = 0
        for delivery in await self._store.due(now, limit=room):
            if delivery.id in self._in_flight or self._outcomes.holds(delivery.id):
                continue  # being sent here, or sent and its outcome not archived yet
            leased = delivery.leased(now, self._settings.lease)
            if not await self._store.claim(delivery, leased.lease_until):  # type: ignore[arg-type]
                continue  # another process took it
            archived = await self._store.finished(delivery.id)
            if archived is not None and _same_recording(archived, delivery):
                # finished, but a crash kept it from leaving the active set
                await self._outcomes.announce_again(archived)
                continue
            # else nothing, or the outcome of an earlier recording: a failure whose source event
            # was replayed and re-opened it, and which still has to be sent
            await self._store.ensure_key(delivery)
            await self._enqueue(leased)  # the poller may wait; never a worker
            claimed += 1
        return claimed

    # --- one attempt ---------------------------------------------------------------------------

    async def attempt(self, delivery: Delivery) -> FinalOutcome | None:
        """Send once. Returns the final outcome, or None when a retry was scheduled (or another
        process took the delivery over)."""
        now = self._clock.now()
        if delivery.lease_until is not None and delivery.lease_until <= now:
            if not await self._store.claim(delivery, now + self._settings.lease):
                return None  # waited too long in the queue: someone else took over
        try:
            outcome = await self._attempt(delivery, now)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if delivery.parking is not None:
                raise  # nothing was sent; parking is tried again once the lease ends
            # Whatever went wrong (a bug, a store refusing a write), it is an attempt: counted,
            # retried with backoff, and failed and parked once the attempts run out. Left to the
            # lease alone, the delivery would be claimed and tried again forever.
            log.exception("delivery attempt failed unexpectedly", extra={"delivery": delivery.id})
            outcome = await self._transient(delivery, TransientFailure(f"unexpected {type(error).__name__}: {error}"))
        return self._finish(outcome) if outcome is not None else None

    async def _attempt(self, delivery: Delivery, now: datetime) -> FinalOutcome | None:
        if delivery.parking is not None:  # failed already; only its source event is still to park
            return await self._park_again(delivery, now)
        if delivery.expired(now):
            return delivery.finish(Status.FAILED, now, reason="expired before it could be sent", permanent=True)
        if delivery.category == Category.MARKETING.value and not may_send(
            Category.MARKETING, delivery.channel, await self._consents_of(delivery.customer_id)
        ):
            # Failed for good, like a refusal: consumers of notification.failed know that shape.
            reason = f"marketing consent for {delivery.channel} missing or withdrawn before sending"
            return delivery.finish(Status.FAILED, now, reason=reason, permanent=True)
        held_until = self._held_back_until(delivery, now)
        if held_until is not None:
            await self._hold_back(delivery, now, held_until)
            return None
        try:
            rendered = self._render(delivery)
        except SmsTooLong as error:
            # The email says the same without a length limit: the line's fallback takes over.
            recipient = self._fallback_recipient(delivery)
            if recipient is None:
                return await self._cannot_render(delivery, now, error)
            reason = f"cannot send by {delivery.channel}: {error}"
            fallback_id = await self._fall_back(delivery, reason, recipient)
            return delivery.finish(Status.FAILED, now, reason=reason, permanent=True, fallback_id=fallback_id)
        except Exception as error:  # a template, a secret, the event or the table: no retry will fix it
            return await self._cannot_render(delivery, now, error)
        try:
            provider_id = await self._send(delivery, rendered)
        except TransientFailure as failure:
            return await self._transient(delivery, failure)
        except PermanentFailure as failure:
            recipient = self._fallback_recipient(delivery)
            fallback_id = await self._fall_back(delivery, failure.reason, recipient) if recipient else None
            return delivery.finish(Status.FAILED, self._clock.now(), reason=failure.reason, permanent=True,
                                   fallback_id=fallback_id)
        except Exception as error:  # a provider client's bug: whether it sent is unknown, so retry
            log.exception("sending failed unexpectedly", extra={"delivery": delivery.id})
            return await self._transient(delivery, TransientFailure(f"unexpected {type(error).__name__}: {error}"))
        return delivery.finish(Status.SENT, self._clock.now(), provider_id=provider_id)

    async def _consents_of(self, customer_id: str | None) -> Consents:
        """The consents known now: they may have changed since the delivery was recorded."""
        doc = await self._recipients.get(customer_id) if customer_id else None
        return (doc.state.get("consents") or {}) if doc is not None else {}

    def _held_back_until(self, delivery: Delivery, now: datetime) -> datetime | None:
        return held_back_until(
            delivery.channel, Category(delivery.category), Urgency(delivery.urgency), now, self._quiet,
            time_zone=delivery.envelope.get("data", {}).get("time_zone"), locale=delivery.locale,
            expires_at=delivery.expires_at,
        )

    async def _hold_back(self, delivery: Delivery, now: datetime, until: datetime) -> None:
        held = delivery.held_back(now, until, f"quiet hours at the recipient's until {until.isoformat()}")
        await patiently(lambda: self._store.retry_later(held), what="hold back until quiet hours end")
        self.expect(until)
        log.info("delivery held back by quiet hours", extra={"delivery": delivery.id, "until": until.isoformat()})

    async def _cannot_render(self, delivery: Delivery, now: datetime, error: Exception) -> FinalOutcome | None:
        reason = f"cannot render {delivery.template}.{delivery.channel}: {type(error).__name__}: {error}"
        return await self._fail_and_park(delivery, now, reason, "render_failed", permanent=True)

    async def _fail_and_park(
        self, delivery: Delivery, now: datetime, reason: str, kind: str, *, permanent: bool
    ) -> FinalOutcome | None:
        """Failed, with its source event parked so that it can be replayed. When parking fails,
        the delivery stays active (failed, not parked) and parking is tried again later: a
        failure recorded without its parked event could never be replayed."""
        if await self._park(delivery, reason, kind, attempts=delivery.attempts + 1):
            return delivery.finish(Status.FAILED, now, reason=reason, permanent=permanent, parked=True)
        waiting = delivery.failed_unparked(now, now + timedelta(seconds=self._policy.delay_s(1)), reason=reason,
                                           kind=kind, permanent=permanent)
        await self._park_later(waiting)
        return None

    async def _park_again(self, delivery: Delivery, now: datetime) -> FinalOutcome | None:
        parking = delivery.parking or {}
        if await self._park(delivery, parking["reason"], parking["kind"], attempts=delivery.attempts):
            return delivery.parked_now(now)
        tries = int(parking.get("tries", 1))
        await self._park_later(delivery.park_again_later(now + timedelta(seconds=self._policy.delay_s(tries + 1))))
        return None

    async def _park_later(self, delivery: Delivery) -> None:
        assert delivery.next_attempt_at is not None and delivery.parking is not None
        await patiently(lambda: self._store.retry_later(delivery), what="schedule parking")
        self.expect(delivery.next_attempt_at)
        log.error("could not park the source event of a failed delivery; trying again later",
                  extra={"delivery": delivery.id, "tries": delivery.parking.get("tries"),
                         "retry_at": delivery.next_attempt_at.isoformat()})

    def _finish(self, outcome: FinalOutcome) -> FinalOutcome:
        self._outcomes.add(outcome)
        delivery = outcome.delivery
        self._observe(delivery.channel, "sent" if outcome.status is Status.SENT else "failed")
        log.info(
            "delivery %s", outcome.status.value,
            extra={"delivery": delivery.id, "template": delivery.template, "channel": delivery.channel,
                   "to": _masked(delivery), "attempts": delivery.attempts, "reason": outcome.reason},
        )
        return outcome

    async def _transient(self, delivery: Delivery, failure: TransientFailure) -> FinalOutcome | None:
        now = self._clock.now()
        attempts = delivery.attempts + 1
        recipient = self._fallback_recipient(delivery)
        verdict = self._policy.after_transient_failure(attempts, now, expires_at=delivery.expires_at,
                                                       can_fall_back=recipient is not None)
        if isinstance(verdict, FallBack):
            assert recipient is not None
            reason = f"{failure.reason} ({verdict.why}; sent by {delivery.fallback_channel} instead)"
            fallback_id = await self._fall_back(delivery, reason, recipient)
            return delivery.finish(Status.FAILED, now, reason=reason, fallback_id=fallback_id)
        if isinstance(verdict, GiveUp):
            reason = f"gave up after {attempts} attempts: {failure.reason}"
            return await self._fail_and_park(delivery, now, reason, "delivery_failed", permanent=False)
        next_at = verdict.at
        retry = delivery.retry_later(now, next_at, failure.reason)
        await patiently(lambda: self._store.retry_later(retry), what="schedule retry")
        self.expect(next_at)
        self._observe(delivery.channel, "misconfigured" if isinstance(failure, ProviderMisconfigured) else "retrying")
        log.info("delivery will be retried", extra={"delivery": delivery.id, "attempt": retry.attempts,
                                                    "retry_at": next_at.isoformat(), "reason": failure.reason})
        return None

    @staticmethod
    def _fallback_recipient(delivery: Delivery) -> str | None:
        """Where the message goes on the line's fallback channel, if it has one and the event says."""
        if not delivery.fallback_channel:
            return None
        return address(delivery.fallback_channel, delivery.envelope.get("data", {}), None)

    async def _fall_back(self, delivery: Delivery, reason: str, recipient: str) -> str:
        """The first channel cannot deliver: the same message on the fallback channel.
        Recorded as due now and picked up by the poller at once (a worker never waits for room
        in the queue it takes from)."""
        assert delivery.fallback_channel is not None
        now = self._clock.now()
        fallback = replace(
            delivery,
            id=delivery_id(delivery.source_event_id, delivery.fallback_channel, recipient),
            channel=delivery.fallback_channel,
            recipient=recipient,
            created_at=now,
            fallback_channel=None,
            fallback_of=delivery.id,
            note=f"instead of {delivery.channel}: {reason}",
            status=Status.QUEUED,
            attempts=0,
            next_attempt_at=now,
            lease_until=None,
            last_error=None,
            log=(),
        )
        await patiently(lambda: self._store.record(fallback), what="record fallback")
        self.expect(now)
        return fallback.id

    async def _park(self, delivery: Delivery, reason: str, kind: str, *, attempts: int) -> bool:
        try:
            await self._dead_letters.park(delivery.envelope, delivery.origin, reason=reason, kind=kind,
                                          attempts=attempts, at=self._clock.now())
            return True
        except Exception:
            log.warning("parking the source event failed", extra={"delivery": delivery.id}, exc_info=True)
            return False

    # --- rendering and sending -----------------------------------------------------------------

    def _render(self, delivery: Delivery) -> Rendered:
        event = delivery.event
        if event is None:  # recovered from the store: validate the source event again
            envelope = Envelope.model_validate(delivery.envelope)
            event = event_class(envelope.type, envelope.schemaversion).model_validate(envelope.data)
        data = opened(event, self._keyring)
        spec = next((s for s in self._table.for_event(event.event_type, data) if s.template == delivery.template), None)
        if spec is None:  # the table changed between recording and sending
            raise TemplateError(f"no line of the message table sends {delivery.template} for {event.event_type}")
        link = spec.link.build(self._portal, data) if spec.link else None
        context = self._renderer.context(data, delivery.locale, link)
        if delivery.channel == "sms":
            sms = self._renderer.sms(delivery.template, delivery.locale, context, max_segments=spec.sms_segments)
            return Rendered("sms", sms.text)
        marketing = spec.category is Category.MARKETING
        unsubscribe = f"{self._portal}/preferences/communications?channel=email" if marketing else None
        content = self._renderer.email(delivery.template, delivery.locale, context, unsubscribe_url=unsubscribe)
        message = build_email(
            delivery_id=delivery.id,
            sender=self._sender,
            to_address=delivery.recipient,
            to_name=delivery.first_name,
            subject=content.subject,
            text=content.text,
            html=content.html,
            date=self._clock.now(),
            language=delivery.locale,
            unsubscribe_url=unsubscribe,
        )
        return Rendered("email", message, message_id(delivery.id, self._sender))

    async def _send(self, delivery: Delivery, rendered: Rendered) -> str:
        if rendered.channel == "email":
            assert isinstance(rendered.payload, bytes)
            await self._email.send(self._sender.address, delivery.recipient, rendered.payload)
            return rendered.provider_id or ""
        assert isinstance(rendered.payload, str)
        return await self._sms.send(delivery.recipient, rendered.payload)

    async def drain(self) -> None:
        """Wait until nothing is queued or being sent (tests)."""
        while self._in_flight:
            await asyncio.sleep(0.01)
        await self._outcomes.flush()


def _masked(delivery: Delivery) -> str:
    return mask_email(delivery.recipient) if delivery.channel == "email" else mask_phone(delivery.recipient)


def _same_recording(archived: dict[str, Any], delivery: Delivery) -> bool:
    """Whether an archived outcome is the one of this active delivery, and not of an earlier
    recording of it (a re-opened delivery keeps its id; it is recorded anew, at a later time)."""
    return Delivery.from_document(archived).created_at == delivery.created_at
