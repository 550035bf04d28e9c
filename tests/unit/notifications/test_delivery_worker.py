"""The delivery worker's last look before sending, with fakes around it: what changed since the
delivery was recorded (a withdrawn consent, the clock now in the recipient's night) wins."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from services.notifications.adapters.email_message import Sender
from services.notifications.adapters.templates import TemplateRenderer
from services.notifications.domain import consent
from services.notifications.domain.delivery import Delivery, FinalOutcome, Status
from services.notifications.domain.messages import MESSAGES, Category, MessageSpec, MessageTable, Urgency
from services.notifications.domain.planning import QuietHours, delivery_id
from services.notifications.domain.retries import PermanentFailure, RetryPolicy
from services.notifications.service_layer.delivering import DeliveryWorker, WorkerSettings
from shared.clock import FixedClock
from shared.events import Envelope, Event
from shared.events import catalogue as c
from shared.storage.documents import StoredDocument
from tests.unit.examples import DEALER, LONG_DEALER, RING

PORTAL = "https://portal.leaseline.example"
QUIET = QuietHours(time(21, 0), time(8, 0), "Europe/Paris")
NOON_PARIS = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
LATE_PARIS = datetime(2026, 11, 22, 21, 30, tzinfo=UTC)  # 22:30 in Paris
EIGHT_NEXT_MORNING = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # 08:00 in Paris
JEANNE = {"customer_id": "cus_jeanne", "email": "jeanne.martin@example.fr", "first_name": "Jeanne",
          "locale": "fr-FR"}

NEWSLETTER_BY_SMS = MessageSpec("contract.nearing_end", "lease_end_decision", ("sms",), Category.MARKETING,
                                Urgency.DEFERRABLE, fallback="email")
NEWSLETTER_BY_EMAIL = MessageSpec("contract.nearing_end", "lease_end_decision", ("email",), Category.MARKETING)


class Store:
    def __init__(self) -> None:
        self.rescheduled: list[Delivery] = []
        self.recorded: list[Delivery] = []
        self.waiting: list[Delivery] = []  # what the active set holds, for claim_due
        self.claimed: list[str] = []

    async def retry_later(self, delivery: Delivery) -> None:
        self.rescheduled.append(delivery)

    async def record(self, delivery: Delivery) -> bool:
        self.recorded.append(delivery)
        return True

    async def claim(self, delivery: Delivery, lease_until: datetime) -> bool:
        self.claimed.append(delivery.id)
        return True

    async def due(self, now: datetime, limit: int) -> list[Delivery]:
        return [d for d in self.waiting if d.claimable(now)][:limit]

    async def finished(self, delivery_id: str) -> dict[str, Any] | None:
        return None

    async def ensure_key(self, delivery: Delivery) -> None:
        pass


class Outcomes:
    def __init__(self) -> None:
        self.finished: list[FinalOutcome] = []
        self.unarchived: set[str] = set()

    def add(self, outcome: FinalOutcome) -> None:
        self.finished.append(outcome)
        self.unarchived.add(outcome.delivery.id)

    def holds(self, delivery_id: str) -> bool:
        return delivery_id in self.unarchived

    async def flush(self) -> None:
        pass


class Recipients:
    """The projection, as the Recorder keeps it: one document per customer."""

    def __init__(self) -> None:
        self.docs: dict[str, StoredDocument] = {}

    def state(self, customer_id: str, given: bool, channel: str, at: datetime) -> None:
        doc = self.docs.get(customer_id)
        consents = consent.record(doc.state.get("consents", {}) if doc else {}, "marketing", channel, given, at)
        assert consents is not None
        self.docs[customer_id] = StoredDocument(customer_id, {"consents": consents})

    async def get(self, doc_id: str) -> StoredDocument | None:
        return self.docs.get(doc_id)


class Email:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        self.sent.append(recipient)
        return "250 OK"


class Sms:
    def __init__(self, refusal: PermanentFailure | None = None) -> None:
        self.sent: list[tuple[str, str]] = []
        self.refusal = refusal

    async def send(self, to: str, body: str) -> str:
        if self.refusal is not None:
            raise self.refusal
        self.sent.append((to, body))
        return "SM" + "0" * 32


class DeadLetters:
    async def park(self, *args: Any, **kwargs: Any) -> str:
        raise AssertionError("nothing here is worth parking")


class World:
    def __init__(self, now: datetime, specs: tuple[MessageSpec, ...] = MESSAGES, sms: Sms | None = None) -> None:
        self.clock = FixedClock(now)
        self.store, self.outcomes, self.recipients = Store(), Outcomes(), Recipients()
        self.email, self.sms = Email(), sms or Sms()
        self.worker = DeliveryWorker(
            store=self.store, outcomes=self.outcomes,  # type: ignore[arg-type]
            renderer=TemplateRenderer(portal_base_url=PORTAL, default_time_zone="Europe/Paris"),
            table=MessageTable(specs), email=self.email, sms=self.sms, dead_letters=DeadLetters(),  # type: ignore[arg-type]
            recipients=self.recipients, keyring=RING, clock=self.clock, policy=RetryPolicy(8, 5.0, 600.0),
            quiet=QUIET, settings=WorkerSettings(concurrency=1, queue_max=10, poll_s=1.0, lease=timedelta(seconds=60)),
            sender=Sender.parse("Leaseline <no-reply@leaseline.example>"), portal_base_url=PORTAL,
        )


def recorded(event: Event, spec: MessageSpec, channel: str, recipient: str, at: datetime, **changes: Any) -> Delivery:
    """A delivery as the Recorder stores it, read back from the store (its event as JSON only)."""
    envelope = Envelope.wrap(event, source="test", time=at)
    delivery = Delivery(
        id=delivery_id(envelope.id, channel, recipient), source_event_id=envelope.id, source_event_type=envelope.type,
        channel=channel, recipient=recipient, template=spec.template, locale="fr-FR", category=spec.category.value,
        urgency=spec.urgency.value, created_at=at, envelope=envelope.model_dump(mode="json"),
        origin={"topic": envelope.type, "partition": 0, "offset": 1, "group": "notifications"},
        customer_id=JEANNE["customer_id"], first_name="Jeanne", fallback_channel=spec.fallback, next_attempt_at=at,
    )
    return replace(delivery, **changes)


def lease_end_letter() -> c.ContractNearingEnd:
    return c.ContractNearingEnd(contract_number="FR-LOA-0042", milestone="decision_6_months",
                                end_date=date(2027, 5, 31), vehicle_model="Megane E-Tech", **JEANNE)


def reminder() -> c.AppointmentReminderDue:
    return c.AppointmentReminderDue(appointment_id="apt_9", contract_number="FR-LOA-0042", mobile="+33611112222",
                                    dealer=DEALER, starts_at=datetime(2026, 11, 23, 13, 0, tzinfo=UTC),
                                    time_zone="Europe/Paris", **JEANNE)


# --- consent, asked again before sending --------------------------------------------------------


async def test_a_marketing_sms_whose_consent_was_withdrawn_after_it_was_recorded_is_not_sent() -> None:
    world = World(NOON_PARIS, (NEWSLETTER_BY_SMS,))
    world.recipients.state("cus_jeanne", True, "sms", NOON_PARIS - timedelta(days=30))
    letter = recorded(lease_end_letter(), NEWSLETTER_BY_SMS, "sms", "+33611112222", NOON_PARIS - timedelta(hours=1),
                      status=Status.RETRYING, attempts=1)  # waited between two attempts
    world.recipients.state("cus_jeanne", False, "sms", NOON_PARIS - timedelta(minutes=5))  # consent.withdrawn

    outcome = await world.worker.attempt(letter)

    assert world.sms.sent == [] and world.email.sent == [] and world.store.recorded == [], "no fallback either"
    assert outcome is not None and outcome.status is Status.FAILED and outcome.permanent and not outcome.parked
    assert outcome.reason == "marketing consent for sms missing or withdrawn before sending"
    assert outcome.delivery.log[-1] == {"at": NOON_PARIS, "outcome": "permanent", "reason": outcome.reason}
    assert world.outcomes.finished == [outcome], "announced as notification.failed"


async def test_a_marketing_email_still_consented_to_is_sent() -> None:
    world = World(NOON_PARIS, (NEWSLETTER_BY_EMAIL,))
    world.recipients.state("cus_jeanne", True, "email", NOON_PARIS - timedelta(days=30))
    letter = recorded(lease_end_letter(), NEWSLETTER_BY_EMAIL, "email", JEANNE["email"], NOON_PARIS)

    outcome = await world.worker.attempt(letter)

    assert outcome is not None and outcome.status is Status.SENT
    assert world.email.sent == [JEANNE["email"]]


async def test_a_marketing_message_falling_back_to_email_needs_consent_for_email() -> None:
    promotion = MessageSpec("appointment.reminder_due", "appointment_reminder", ("sms",), Category.MARKETING,
                            Urgency.DEFERRABLE, fallback="email")  # a reminder sent as marketing, to have both texts
    world = World(NOON_PARIS, (promotion,), sms=Sms(PermanentFailure("unsubscribed (STOP)", code="21610")))
    world.recipients.state("cus_jeanne", True, "sms", NOON_PARIS - timedelta(days=30))  # for SMS only

    refused = await world.worker.attempt(recorded(reminder(), promotion, "sms", "+33611112222", NOON_PARIS))
    assert refused is not None and refused.fallback_id is not None
    [fallback] = world.store.recorded
    outcome = await world.worker.attempt(fallback)

    assert fallback.channel == "email" and world.email.sent == []
    assert outcome is not None and outcome.status is Status.FAILED and outcome.permanent
    assert outcome.reason == "marketing consent for email missing or withdrawn before sending"


async def test_a_transactional_message_goes_whatever_the_consents_say() -> None:
    world = World(NOON_PARIS)
    world.recipients.state("cus_jeanne", False, "any", NOON_PARIS - timedelta(minutes=5))
    spec = next(s for s in MESSAGES if s.template == "appointment_reminder")

    outcome = await world.worker.attempt(recorded(reminder(), spec, "sms", "+33611112222", NOON_PARIS))

    assert outcome is not None and outcome.status is Status.SENT and len(world.sms.sent) == 1


# --- quiet hours, asked again before sending ----------------------------------------------------


async def test_a_reminder_retry_falling_due_at_night_waits_for_eight_without_counting_an_attempt() -> None:
    world = World(LATE_PARIS)
    spec = next(s for s in MESSAGES if s.template == "appointment_reminder")
    retry = recorded(reminder(), spec, "sms", "+33611112222", LATE_PARIS - timedelta(hours=1),
                     status=Status.RETRYING, attempts=2, last_error="503 from Twilio",
                     log=({"at": LATE_PARIS - timedelta(hours=1), "outcome": "transient", "reason": "503"},) * 2)

    assert await world.worker.attempt(retry) is None

    assert world.sms.sent == [] and world.outcomes.finished == []
    [held] = world.store.rescheduled
    assert (held.status, held.attempts, held.next_attempt_at, held.lease_until) == (
        Status.RETRYING, 2, EIGHT_NEXT_MORNING, None)
    assert held.log[-1]["outcome"] == "deferred" and "quiet hours" in held.log[-1]["reason"]
    assert world.worker._scheduled == [EIGHT_NEXT_MORNING], "the worker looks again at eight"

    world.clock.set(EIGHT_NEXT_MORNING + timedelta(seconds=1))
    outcome = await world.worker.attempt(held)
    assert outcome is not None and outcome.status is Status.SENT and outcome.delivery.attempts == 3
    assert [to for to, _ in world.sms.sent] == ["+33611112222"]


async def test_a_marketing_sms_falling_due_at_night_waits_but_a_code_does_not() -> None:
    code_spec = next(s for s in MESSAGES if s.template == "device_code")
    world = World(LATE_PARIS, (NEWSLETTER_BY_SMS, code_spec))
    world.recipients.state("cus_jeanne", True, "sms", LATE_PARIS - timedelta(days=30))
    letter = recorded(lease_end_letter(), NEWSLETTER_BY_SMS, "sms", "+33611112222", LATE_PARIS)
    code = recorded(c.DeviceCodeIssued(device_id="dev_2", channel="sms", mobile="+33633334444",
                                       code=c.DeviceCodeIssued.seal(RING, "code", "555111"),
                                       code_expires_at=LATE_PARIS + timedelta(minutes=10), **JEANNE),
                    code_spec, "sms", "+33633334444", LATE_PARIS, expires_at=LATE_PARIS + timedelta(minutes=10))

    assert await world.worker.attempt(letter) is None
    sent = await world.worker.attempt(code)

    assert [d.next_attempt_at for d in world.store.rescheduled] == [EIGHT_NEXT_MORNING]
    assert sent is not None and sent.status is Status.SENT
    assert [to for to, _ in world.sms.sent] == ["+33633334444"]


# --- the segments a line allows -----------------------------------------------------------------


async def test_the_worker_holds_a_text_to_the_segments_its_line_allows_and_sends_the_rest_by_the_fallback() -> None:
    three = next(s for s in MESSAGES if s.template == "appointment_reminder")
    one = replace(three, sms_segments=1)
    at_besancon = reminder().model_copy(update={"dealer": LONG_DEALER})  # three UCS-2 segments
    world = World(NOON_PARIS, (three,))
    sent = await world.worker.attempt(recorded(at_besancon, three, "sms", "+33611112222", NOON_PARIS))
    assert sent is not None and sent.status is Status.SENT and len(world.sms.sent) == 1

    world = World(NOON_PARIS, (one,))
    refused = await world.worker.attempt(recorded(at_besancon, one, "sms", "+33611112222", NOON_PARIS))

    assert world.sms.sent == []
    assert refused is not None and refused.status is Status.FAILED and refused.permanent
    assert "3 UCS-2 segments, at most 1 allowed" in (refused.reason or "")
    [fallback] = world.store.recorded
    assert (fallback.channel, fallback.recipient, refused.fallback_id) == ("email", JEANNE["email"], fallback.id)


# --- a finished delivery whose lease ends before its outcome is archived ------------------------


async def test_a_sent_delivery_is_not_claimed_again_while_its_outcome_waits_for_the_history() -> None:
    # The store was away longer than a lease: the outcome is still in memory, the active document
    # still says "leased until" a time now past. Claiming it would send the email a second time.
    world = World(NOON_PARIS, (NEWSLETTER_BY_EMAIL,))
    world.recipients.state("cus_jeanne", True, "email", NOON_PARIS - timedelta(days=30))
    letter = recorded(lease_end_letter(), NEWSLETTER_BY_EMAIL, "email", JEANNE["email"], NOON_PARIS,
                      lease_until=NOON_PARIS + timedelta(seconds=60))
    outcome = await world.worker.attempt(letter)
    assert outcome is not None and outcome.status is Status.SENT
    world.store.waiting = [letter]
    world.clock.advance(timedelta(minutes=5))  # the lease has ended

    assert await world.worker.claim_due() == 0
    assert world.store.claimed == [] and world.email.sent == [JEANNE["email"]]

    world.outcomes.unarchived.clear()  # archived at last: from now on recovery may look at it
    assert await world.worker.claim_due() == 1


# --- a hand-over cut short while the queue is full ----------------------------------------------


async def test_a_delivery_whose_hand_over_was_cut_short_is_claimed_once_its_lease_ends() -> None:
    # The consumer's handler deadline ends a hand-over waiting for room in a full queue: the
    # delivery is recorded and leased here but not queued. Once its lease ends, the poller must
    # take it like any abandoned lease, or it would wait for the process to restart.
    world = World(NOON_PARIS, (NEWSLETTER_BY_EMAIL,))
    world.recipients.state("cus_jeanne", True, "email", NOON_PARIS - timedelta(days=30))
    queued = [recorded(lease_end_letter(), NEWSLETTER_BY_EMAIL, "email", f"client{i}@example.fr", NOON_PARIS,
                       lease_until=NOON_PARIS + timedelta(seconds=60)) for i in range(10)]
    for delivery in queued:  # the queue holds ten
        assert await world.worker.hand_over(delivery)
    letter = recorded(lease_end_letter(), NEWSLETTER_BY_EMAIL, "email", JEANNE["email"], NOON_PARIS,
                      lease_until=NOON_PARIS + timedelta(seconds=60))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(world.worker.hand_over(letter), timeout=0.05)

    world.worker._queue = asyncio.Queue(10)  # the workers have emptied it meanwhile
    world.worker._in_flight.difference_update(d.id for d in queued)
    world.store.waiting = [letter]
    world.clock.advance(timedelta(minutes=5))  # the lease has ended

    assert await world.worker.claim_due() == 1
    assert world.store.claimed == [letter.id]
