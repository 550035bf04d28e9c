"""Delivery on the real broker, store and sinks: duplicates, outages, refusals, poison, quiet hours."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from deploy.sinks import SmtpCatcher
from services.notifications.domain.messages import MESSAGES, Category, MessageTable
from shared.clock import FixedClock
from shared.events import catalogue as c
from shared.messaging.dead_letters import replay
from tests.integration.helpers import eventually
from tests.integration.notifications.conftest import PORTAL, Harness, StartNotifications, person
from tests.unit.examples import DEALER, LONG_DEALER, RING

pytestmark = pytest.mark.integration


def password_changed(who: dict[str, Any]) -> c.PasswordChanged:
    return c.PasswordChanged(reason="reset", **who)


def device_code(who: dict[str, Any], *, mobile: str | None = "+33612345678", code: str = "482913") -> c.DeviceCodeIssued:
    return c.DeviceCodeIssued(
        device_id="dev_1", channel="sms", mobile=mobile, code=c.DeviceCodeIssued.seal(RING, "code", code),
        code_expires_at=datetime.now(UTC) + timedelta(minutes=10), **who,
    )


async def mail_to(harness: Harness, address: str, count: int = 1, timeout: float = 30) -> list[Any]:
    return await eventually(lambda: (m := harness.sinks.mail.to(address)) and len(m) >= count and m, timeout,
                            f"{count} email(s) to {address}")


# A short lease, so that a test can wait past it: a delivery left claimable after it was sent
# would be claimed by the next sweep and sent again within LEASE_S + SWEEP_S.
LEASE_S, SWEEP_S = 2.0, 0.5
SHORT_LEASE = {"delivery_lease_s": LEASE_S, "delivery_sweep_s": SWEEP_S}


async def past_the_lease() -> None:
    await asyncio.sleep(LEASE_S + SWEEP_S + 1.0)


def duplicates(harness: Harness, event_type: str) -> float:
    metrics = harness.service.runtime.metrics
    return metrics.duplicates.labels(metrics.service, harness.topic(event_type))._value.get()


async def test_the_same_event_delivered_three_times_sends_one_email(notifications: StartNotifications, unique: str) -> None:
    harness = await notifications(**SHORT_LEASE)
    jeanne = person(unique)
    envelope = harness.wrap(password_changed(jeanne))

    await harness.publish(envelope, envelope, envelope)
    await harness.wait_handled("customer.password_changed", 3)
    [mail] = await mail_to(harness, jeanne["email"])
    await past_the_lease()  # time for a second email, were there to be one

    assert len(harness.sinks.mail.to(jeanne["email"])) == 1
    assert duplicates(harness, "customer.password_changed") == 2
    assert mail.subject == "Votre mot de passe Leaseline a été modifié"
    [delivery] = await harness.deliveries_of(jeanne["customer_id"])
    assert (delivery["status"], delivery["attempts"], delivery["channel"]) == ("sent", 1, "email")
    assert delivery["recipient"].startswith("j***@")  # staff see a masked address
    sent = await eventually(lambda: harness.events_on("notification.sent"), 30, "notification.sent")
    assert [e["data"]["source_event_id"] for e in sent] == [envelope.id]
    assert sent[0]["causationid"] == envelope.id and sent[0]["correlationid"] == envelope.correlationid


async def test_the_same_event_arriving_after_its_email_was_sent_and_archived_sends_nothing(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications(**SHORT_LEASE)
    jeanne = person(unique)
    envelope = harness.wrap(password_changed(jeanne))
    await harness.publish(envelope)
    await mail_to(harness, jeanne["email"])
    await eventually(lambda: _gone(harness, envelope.id), 30, "the delivery archived and out of the active set")

    await harness.publish(envelope)  # a producer's re-send, long after: only the ledger remembers it
    await harness.wait_handled("customer.password_changed", 2)
    assert duplicates(harness, "customer.password_changed") == 1
    assert await _gone(harness, envelope.id), "the copy recorded for a moment is gone again"
    await past_the_lease()
    assert len(harness.sinks.mail.to(jeanne["email"])) == 1
    [delivery] = await harness.deliveries_of(jeanne["customer_id"])
    assert (delivery["status"], delivery["attempts"]) == ("sent", 1)


async def test_a_change_of_the_terms_that_needs_no_acceptance_emails_the_customer_a_copy_of_the_full_text(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications()
    bruno = person(unique, "bruno") | {"locale": "fr-BE"}
    text = "https://portal.example.com/terms/BE-2027-01/fr-BE"
    await harness.publish(c.TermsChanged(terms_version="BE-2027-01", document_url=text,
                                         effective_at=datetime(2027, 1, 14, 23, 0, tzinfo=UTC), **bruno))

    [mail] = await mail_to(harness, bruno["email"])
    assert mail.subject == "Votre exemplaire des nouvelles conditions d'utilisation (version BE-2027-01)"
    assert f"\n{text}\n" in mail.text() and f'href="{text}"' in mail.html()
    [delivery] = await eventually(lambda: _sent(harness, bruno), 30, "the delivery sent")
    assert (delivery["template"], delivery["locale"]) == ("terms_changed", "fr-BE")


async def test_messages_sent_while_the_smtp_server_is_down_arrive_once_when_it_returns(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications(delivery_max_attempts=30, delivery_backoff_initial_s=0.5, delivery_backoff_max_s=3,
                                  **SHORT_LEASE)
    catcher = harness.sinks.mail
    port = catcher.port
    await catcher.stop()
    down_since = time.monotonic()
    people = [person(unique, f"p{i}") for i in range(6)]
    await harness.publish(*(password_changed(p) for p in people))

    async def all_retrying() -> bool:
        for p in people:
            found = await harness.deliveries_of(p["customer_id"])
            if not found or found[0]["attempts"] < 1:
                return False
        return True

    await eventually(all_retrying, 30, "every delivery failed once and waits for a retry")
    await asyncio.sleep(max(0.0, 20 - (time.monotonic() - down_since)))
    for p in people:  # 20 s of refused connections: tried, and still waiting to be sent
        [delivery] = await harness.deliveries_of(p["customer_id"])
        assert delivery["status"] in ("retrying", "sending") and delivery["attempts"] >= 2, delivery
        assert all(a["outcome"] == "transient" and "SMTP connection" in a["reason"] for a in delivery["history"])
    back = await SmtpCatcher(harness.sinks.directory / "mail", port=port).start()
    try:
        await eventually(lambda: back.received >= len(people), 30, "every message after the server returned")
        await past_the_lease()
        recipients = sorted(r for m in back.messages for r in m.rcpt_tos)
        assert recipients == sorted(p["email"] for p in people), "each message exactly once"
        assert len({m.parsed()["Message-ID"] for m in back.messages}) == len(people)
        for p in people:
            [delivery] = await harness.deliveries_of(p["customer_id"])
            assert delivery["status"] == "sent" and delivery["attempts"] >= 2
            assert delivery["history"][0]["outcome"] == "transient"
    finally:
        await back.stop()


async def test_a_message_whose_recipient_keeps_being_refused_for_now_holds_up_no_other_message(
    notifications: StartNotifications, unique: str
) -> None:
    # The clock moves only when the test says: retries fall due then, and everything else must go
    # meanwhile, on a single delivery worker that the waiting message must not keep busy. (Leases
    # longer than the clock's jumps: a jump past a lease is a sender that stalled for that long, and
    # what it had just sent would be claimed and sent again.)
    clock = FixedClock(datetime.now(UTC))
    harness = await notifications(clock=clock, delivery_concurrency=1, delivery_backoff_initial_s=120,
                                  delivery_backoff_max_s=600, delivery_max_attempts=8, delivery_lease_s=3600)
    catcher = harness.sinks.mail
    busy = person(unique, "bruno")
    catcher.refuse_recipient(busy["email"], 451, "4.2.1 Mailbox busy, try again later", times=2)
    await harness.publish(password_changed(busy))

    waits = []
    for attempt in (1, 2):
        [waiting] = await eventually(lambda: _waiting_after(harness, busy, attempt), 30, f"attempt {attempt} refused")
        assert "451" in waiting["history"][-1]["reason"] and waiting["history"][-1]["outcome"] == "transient"
        waits.append(datetime.fromisoformat(waiting["next_attempt_at"]) - clock.now())
        others = [person(unique, f"a{attempt}o{i}") for i in range(4)]
        await harness.publish(*(password_changed(p) for p in others))
        for other in others:  # delivered while the refused one waits for its retry
            await mail_to(harness, other["email"])
        [still] = await harness.deliveries_of(busy["customer_id"])
        assert (still["status"], still["attempts"]) == ("retrying", attempt), "the clock has not moved"
        clock.set(datetime.fromisoformat(waiting["next_attempt_at"]) + timedelta(seconds=1))
        harness.service.worker.wake()

    [mail] = await mail_to(harness, busy["email"])
    [delivery] = await eventually(lambda: _sent(harness, busy), 30, "the refused message sent at last")
    assert delivery["attempts"] == 3 and [a["outcome"] for a in delivery["history"]] == ["transient", "transient", "sent"]
    assert timedelta(seconds=60) <= waits[0] <= timedelta(seconds=120), "2 minutes, with jitter down to half"
    assert timedelta(seconds=120) <= waits[1] <= timedelta(seconds=240), "then twice as long"
    assert [address for address, _ in catcher.refused] == [busy["email"]] * 2
    assert len(catcher.messages) == 9 and len(catcher.to(busy["email"])) == 1


async def _waiting_after(harness: Harness, who: dict[str, Any], attempts: int) -> list[dict[str, Any]] | None:
    found = await harness.deliveries_of(who["customer_id"])
    return found if found and found[0]["status"] == "retrying" and found[0]["attempts"] == attempts else None


async def test_a_mailbox_refused_for_good_is_failed_at_once_without_retries(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications(delivery_backoff_initial_s=0.2, delivery_backoff_max_s=0.5, **SHORT_LEASE)
    catcher = harness.sinks.mail
    gone = person(unique, "simon")
    catcher.refuse_recipient(gone["email"], 550, "5.1.1 Recipient address rejected: User unknown", times=5)
    [envelope] = await harness.publish(password_changed(gone))

    [delivery] = await eventually(lambda: _deliveries(harness, gone, 1), 30, "the delivery failed")
    assert (delivery["status"], delivery["attempts"], delivery["permanent"], delivery["parked"]) == ("failed", 1, True, False)
    assert "550" in delivery["reason"] and "5.1.1" in delivery["reason"] and delivery["fallback_id"] is None
    assert [a["outcome"] for a in delivery["history"]] == ["permanent"]
    [failed] = await eventually(lambda: harness.events_on("notification.failed"), 30, "notification.failed")
    assert failed["data"]["source_event_id"] == envelope.id and failed["data"]["permanent"] is True
    assert failed["data"]["attempts"] == 1 and failed["data"]["fallback_notification_id"] is None
    await past_the_lease()  # many backoffs long: a retry would have come by now
    assert len(catcher.refused) == 1 and catcher.to(gone["email"]) == []


async def test_an_email_refused_for_good_goes_by_the_lines_fallback_channel(
    notifications: StartNotifications, unique: str
) -> None:
    # No email line falls back on SMS today; a code the customer asked for by email may.
    email_then_sms = tuple(replace(s, fallback="sms") if s.template == "device_code" else s for s in MESSAGES)
    harness = await notifications(messages=email_then_sms)
    gone = person(unique, "simon")
    harness.sinks.mail.refuse_recipient(gone["email"], 550, "5.1.1 Recipient address rejected: User unknown")
    await harness.publish(device_code(gone, mobile="+33687654321", code="274019").model_copy(update={"channel": "email"}))

    [sms] = await eventually(lambda: harness.sinks.sms.messages, 30, "the code by SMS")
    assert sms.to == "+33687654321" and "274019" in sms.body
    found = await eventually(lambda: _deliveries(harness, gone, 2), 30, "both deliveries finished")
    email, text = (next(d for d in found if d["channel"] == channel) for channel in ("email", "sms"))
    assert (email["status"], email["attempts"], email["permanent"]) == ("failed", 1, True)
    assert "550" in email["reason"] and email["fallback_id"] == text["id"]
    assert (text["status"], text["fallback_of"]) == ("sent", email["id"])
    [failed] = await eventually(lambda: harness.events_on("notification.failed"), 30, "notification.failed")
    assert failed["data"]["permanent"] is True and failed["data"]["fallback_notification_id"] == text["id"]


async def test_an_invalid_number_is_recorded_and_the_code_goes_by_email(notifications: StartNotifications, unique: str) -> None:
    harness = await notifications()
    harness.sinks.sms.fail(status=400, code=21211)
    jeanne = person(unique)
    [envelope] = await harness.publish(device_code(jeanne, code="730215"))

    [mail] = await mail_to(harness, jeanne["email"])
    assert "730215" in mail.text() and "730215" in mail.subject
    assert harness.sinks.sms.messages == []
    email, sms = await eventually(lambda: _deliveries(harness, jeanne, 2), 30, "both deliveries recorded")
    assert (sms["channel"], sms["status"], sms["permanent"]) == ("sms", "failed", True)
    assert "21211" in sms["reason"] and sms["fallback_id"] == email["id"]
    assert (email["channel"], email["status"], email["fallback_of"]) == ("email", "sent", sms["id"])
    failed = await eventually(lambda: harness.events_on("notification.failed"), 30, "notification.failed")
    assert failed[0]["data"]["fallback_notification_id"] == email["id"]
    assert failed[0]["data"]["source_event_id"] == envelope.id and failed[0]["data"]["permanent"] is True


async def test_a_code_whose_sms_keeps_failing_transiently_goes_by_email_before_it_expires(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications(delivery_fallback_after_attempts=3)
    harness.sinks.sms.fail(status=503, code=20503, times=1000)  # Twilio down for longer than the code lives
    jeanne = person(unique)
    [envelope] = await harness.publish(device_code(jeanne, code="661204"))

    [mail] = await mail_to(harness, jeanne["email"])
    assert "661204" in mail.text()
    found = await eventually(lambda: _deliveries(harness, jeanne, 2), 30, "both deliveries finished")
    email, sms = (next(d for d in found if d["channel"] == channel) for channel in ("email", "sms"))
    assert (sms["status"], sms["permanent"], sms["attempts"]) == ("failed", False, 3)
    assert "20503" in sms["reason"] and sms["fallback_id"] == email["id"] and not sms["parked"]
    assert [a["outcome"] for a in sms["history"]] == ["transient"] * 3
    assert (email["status"], email["fallback_of"]) == ("sent", sms["id"])
    assert harness.sinks.sms.messages == [] and harness.sinks.sms.state.requests == 3
    failed = await eventually(lambda: harness.events_on("notification.failed"), 30, "notification.failed")
    assert failed[0]["data"]["source_event_id"] == envelope.id and failed[0]["data"]["permanent"] is False
    assert failed[0]["data"]["fallback_notification_id"] == email["id"]


async def test_twilio_refusing_our_credentials_is_never_the_recipients_fault(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications()
    harness.sinks.sms.fail(status=401, code=20003, times=1000)  # a rotated auth token nobody updated
    jeanne = person(unique)
    await harness.publish(device_code(jeanne, code="552710"))

    [mail] = await mail_to(harness, jeanne["email"])
    assert "552710" in mail.text()
    found = await eventually(lambda: _deliveries(harness, jeanne, 2), 30, "both deliveries finished")
    sms = next(d for d in found if d["channel"] == "sms")
    assert (sms["status"], sms["permanent"], sms["attempts"]) == ("failed", False, 3), "retried, not refused for good"
    assert "not the recipient" in sms["reason"]
    metrics = harness.service.runtime.metrics.registry.get_sample_value(
        "leaseline_notifications_total", {"channel": "sms", "outcome": "misconfigured"})
    assert metrics == 2  # the two failures that were retried; the third fell back


async def _deliveries(harness: Harness, who: dict[str, Any], count: int) -> list[dict[str, Any]] | None:
    found = await harness.deliveries_of(who["customer_id"])
    return found if len(found) == count and all(d["status"] in ("sent", "failed") for d in found) else None


async def test_a_rate_limited_sms_is_retried_and_delivered_once(notifications: StartNotifications, unique: str) -> None:
    harness = await notifications(**SHORT_LEASE)
    harness.sinks.sms.fail(status=429, code=20429, times=1)
    jeanne = person(unique)
    await harness.publish(device_code(jeanne, mobile="+33698765432", code="118822"))

    await eventually(lambda: harness.sinks.sms.messages, 30, "the SMS")
    await past_the_lease()
    [sms] = harness.sinks.sms.messages
    assert sms.to == "+33698765432" and "118822" in sms.body
    assert harness.sinks.mail.to(jeanne["email"]) == []
    assert harness.sinks.sms.state.requests == 2
    [delivery] = await eventually(lambda: _deliveries(harness, jeanne, 1), 30, "the delivery finished")
    assert (delivery["status"], delivery["attempts"], delivery["provider_id"]) == ("sent", 2, sms.sid)


async def test_poison_events_are_parked_with_their_reason_and_the_next_ones_still_go(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications()
    jeanne, bruno = person(unique), person(unique, "bruno")
    stranger = c.CustomerRegistered(
        customer_id=bruno["customer_id"], email=bruno["email"], first_name="Bruno", locale="fr-BE", last_name="Dumont",
        terms_version="BE-2026-01", activation_expires_at=datetime.now(UTC) + timedelta(hours=72),
        activation_token="sealed:v1:retired-key:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    good = harness.wrap(password_changed(jeanne))
    invalid = json.loads(good.to_bytes())
    invalid["data"].pop("email")
    key = jeanne["customer_id"].encode()
    await harness.publish(
        ("customer.password_changed", key, b"\x00 not json"),
        ("customer.password_changed", key, json.dumps(invalid).encode()),
        stranger,
        good,
    )

    await mail_to(harness, jeanne["email"])
    parked = await harness.parked("customer.password_changed", 2)
    assert [p.headers["dlq-reason-kind"] for p in parked] == ["undecodable", "schema"]
    assert "email" in parked[1].reason
    [sealed] = await harness.parked("customer.registered")
    assert sealed.headers["dlq-reason-kind"] == "handler_rejected"
    assert "cannot open a sealed field" in sealed.reason and "retired-key" in sealed.reason
    assert harness.sinks.mail.to(bruno["email"]) == []


async def test_a_message_that_never_gets_through_is_failed_parked_and_sent_after_a_replay(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications(delivery_max_attempts=3, delivery_backoff_initial_s=0.1, delivery_backoff_max_s=0.2)
    harness.sinks.mail.fail(451, "Mailbox busy", times=3)
    jeanne = person(unique)
    [envelope] = await harness.publish(password_changed(jeanne))

    [delivery] = await eventually(lambda: _deliveries(harness, jeanne, 1), 30, "the delivery given up")
    assert (delivery["status"], delivery["attempts"], delivery["permanent"], delivery["parked"]) == ("failed", 3, False, True)
    assert "gave up after 3 attempts" in delivery["reason"] and "451" in delivery["reason"]
    [parked] = await harness.parked("customer.password_changed")
    assert parked.headers["dlq-reason-kind"] == "delivery_failed" and "451" in parked.reason
    assert json.loads(parked.value)["id"] == envelope.id
    failed = await eventually(lambda: harness.events_on("notification.failed"), 30, "notification.failed")
    assert failed[0]["data"]["permanent"] is False and failed[0]["data"]["attempts"] == 3

    assert await replay(harness.settings.kafka_bootstrap_servers, harness.topic("customer.password_changed")) == 1
    [mail] = await mail_to(harness, jeanne["email"])
    [delivery] = await eventually(lambda: _sent(harness, jeanne), 30, "the re-opened delivery sent")
    assert delivery["id"] == failed[0]["data"]["notification_id"], "the same delivery, re-opened"


async def test_a_replayed_delivery_that_fails_again_for_a_while_is_retried_and_sent(
    notifications: StartNotifications, unique: str
) -> None:
    # The history still holds the first recording's failure while the re-opened delivery waits
    # for its retry: that old outcome must not be taken for this one's and end it unsent.
    harness = await notifications(delivery_max_attempts=3, delivery_backoff_initial_s=0.1, delivery_backoff_max_s=0.2)
    harness.sinks.mail.fail(451, "Mailbox busy", times=3)
    jeanne = person(unique)
    await harness.publish(password_changed(jeanne))
    [first] = await eventually(lambda: harness.events_on("notification.failed"), 30, "the first recording given up")

    harness.sinks.mail.fail(451, "Mailbox busy", times=2)  # the server is still unwell at the replay
    assert await replay(harness.settings.kafka_bootstrap_servers, harness.topic("customer.password_changed")) == 1
    [mail] = await mail_to(harness, jeanne["email"])
    [delivery] = await eventually(lambda: _sent(harness, jeanne), 30, "the re-opened delivery sent")
    assert delivery["id"] == first["data"]["notification_id"] and delivery["attempts"] == 3
    [sent] = await eventually(lambda: harness.events_on("notification.sent"), 30, "notification.sent")
    assert sent["data"]["notification_id"] == delivery["id"] and sent["id"] != first["id"]


async def test_a_replay_of_an_event_whose_fallback_email_was_parked_sends_the_email(
    notifications: StartNotifications, unique: str
) -> None:
    # The code's SMS was refused for good, its fallback email gave up and parked the event. The
    # replay must not stop at the SMS, finished long ago: tried again, it falls back again, and
    # the parked email is re-opened and sent.
    harness = await notifications(delivery_max_attempts=2, delivery_backoff_initial_s=0.1, delivery_backoff_max_s=0.2)
    harness.sinks.sms.fail(status=400, code=21211, times=2)  # refused now, and again at the replay
    harness.sinks.mail.fail(451, "Mailbox busy", times=2)
    jeanne = person(unique)
    await harness.publish(device_code(jeanne, code="508193"))
    [parked] = await harness.parked("customer.device_code_issued")
    assert parked.headers["dlq-reason-kind"] == "delivery_failed"
    await eventually(lambda: _parked_in_history(harness, jeanne, of=("email",)), 30, "the fallback's failure archived")

    assert await replay(harness.settings.kafka_bootstrap_servers, harness.topic("customer.device_code_issued")) == 1
    [mail] = await mail_to(harness, jeanne["email"])
    assert "508193" in mail.text()
    [email] = await eventually(lambda: _sent(harness, jeanne, of=("email",)), 30, "the fallback email re-opened")
    [sms] = [d for d in await harness.deliveries_of(jeanne["customer_id"]) if d["channel"] == "sms"]
    assert email["fallback_of"] == sms["id"] and sms["fallback_id"] == email["id"]
    assert harness.sinks.sms.messages == [], "refused both times"


class RefusesFirst:
    """A dead-letter publisher in front of the real one whose first ``times`` calls fail."""

    def __init__(self, real: Any, times: int) -> None:
        self.real, self.times, self.calls = real, times, 0

    async def park(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise ConnectionError("the broker refused the dead letter")
        return await self.real.park(*args, **kwargs)


async def test_a_failure_whose_event_could_not_be_parked_is_parked_later_and_can_be_replayed(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications(delivery_max_attempts=2, delivery_backoff_initial_s=0.1, delivery_backoff_max_s=0.3)
    worker = harness.service.worker
    worker._dead_letters = parking = RefusesFirst(worker._dead_letters, times=2)
    harness.sinks.mail.fail(451, "Mailbox busy", times=2)
    jeanne = person(unique)
    [envelope] = await harness.publish(password_changed(jeanne))

    [delivery] = await eventually(lambda: _deliveries(harness, jeanne, 1), 30, "the failure recorded")
    [parked] = await harness.parked("customer.password_changed")
    assert parking.calls == 3, "refused twice, then parked"
    assert json.loads(parked.value)["id"] == envelope.id and parked.headers["dlq-reason-kind"] == "delivery_failed"
    [delivery] = await eventually(lambda: _parked_in_history(harness, jeanne), 30, "the parked failure archived")
    assert (delivery["status"], delivery["attempts"], delivery["parked"]) == ("failed", 2, True)
    assert "gave up after 2 attempts" in delivery["reason"]
    assert [a["outcome"] for a in delivery["history"]] == ["transient", "transient", "parked"]

    assert await replay(harness.settings.kafka_bootstrap_servers, harness.topic("customer.password_changed")) == 1
    await mail_to(harness, jeanne["email"])
    await eventually(lambda: _sent(harness, jeanne), 30, "the replayed delivery sent")


async def _parked_in_history(harness: Harness, who: dict[str, Any],
                             of: tuple[str, ...] = ("email", "sms")) -> list[dict[str, Any]] | None:
    found = [d for d in await harness.deliveries_of(who["customer_id"]) if d["channel"] in of]
    return found if found and all(d["parked"] for d in found) else None


async def _sent(harness: Harness, who: dict[str, Any], of: tuple[str, ...] = ("email", "sms")) -> list[dict[str, Any]] | None:
    found = [d for d in await harness.deliveries_of(who["customer_id"]) if d["channel"] in of]
    return found if found and all(d["status"] == "sent" for d in found) else None


async def test_a_reminder_waits_for_the_end_of_quiet_hours_but_a_code_does_not(
    notifications: StartNotifications, unique: str
) -> None:
    late_in_paris = datetime(2026, 11, 22, 21, 30, tzinfo=UTC)  # 22:30 in Paris
    clock = FixedClock(late_in_paris)
    harness = await notifications(clock=clock)
    jeanne = person(unique)
    reminder = c.AppointmentReminderDue(
        appointment_id="apt_9", contract_number="FR-LOA-0042", mobile="+33611112222", dealer=DEALER,
        starts_at=datetime(2026, 11, 23, 13, 0, tzinfo=UTC), time_zone="Europe/Paris", **jeanne,
    )
    code = c.DeviceCodeIssued(device_id="dev_2", channel="sms", mobile="+33633334444",
                              code=c.DeviceCodeIssued.seal(RING, "code", "555111"),
                              code_expires_at=late_in_paris + timedelta(minutes=10), **jeanne)
    await harness.publish(reminder, code)

    await eventually(lambda: [m for m in harness.sinks.sms.messages if m.to == "+33633334444"], 30, "the code at once")
    await harness.wait_handled("appointment.reminder_due", 1)
    await asyncio.sleep(1.0)
    assert [m.to for m in harness.sinks.sms.messages] == ["+33633334444"]
    waiting = next(d for d in await harness.deliveries_of(jeanne["customer_id"]) if d["template"] == "appointment_reminder")
    assert waiting["status"] == "queued"
    assert datetime.fromisoformat(waiting["next_attempt_at"]) == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)

    clock.set(datetime(2026, 11, 23, 7, 0, 1, tzinfo=UTC))  # 08:00:01 in Paris
    harness.service.worker.wake()
    reminded = await eventually(lambda: [m for m in harness.sinks.sms.messages if m.to == "+33611112222"], 30,
                                "the reminder at eight")
    assert "23 novembre à 14 h 00" in reminded[0].body


async def test_a_reminder_too_long_for_three_sms_segments_goes_by_email(
    notifications: StartNotifications, unique: str
) -> None:
    noon_in_paris = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
    harness = await notifications(clock=FixedClock(noon_in_paris))
    jeanne = person(unique)
    dealer = LONG_DEALER.model_copy(update={
        "name": "Garage Côté Beaulieu Automobiles – Véhicules utilitaires",
        "address": "Zone d'activités de Châteaufarine, 147 boulevard François-Mitterrand"})
    reminder = c.AppointmentReminderDue(
        appointment_id="apt_10", contract_number="FR-LOA-0042", mobile="+33611113333", dealer=dealer,
        starts_at=datetime(2026, 11, 23, 13, 0, tzinfo=UTC), time_zone="Europe/Paris", **jeanne,
    )
    [envelope] = await harness.publish(reminder)

    [mail] = await mail_to(harness, jeanne["email"])
    assert "Châteaufarine" in mail.text() and mail.subject.startswith("Rappel")
    found = await eventually(lambda: _deliveries(harness, jeanne, 2), 30, "both deliveries finished")
    email, sms = (next(d for d in found if d["channel"] == channel) for channel in ("email", "sms"))
    assert (sms["status"], sms["permanent"], sms["parked"]) == ("failed", True, False)
    assert "UCS-2 segments, at most 3 allowed" in sms["reason"] and sms["fallback_id"] == email["id"]
    assert (email["status"], email["fallback_of"]) == ("sent", sms["id"])
    assert harness.sinks.sms.messages == [], "nothing was sent by SMS"
    failed = await eventually(lambda: harness.events_on("notification.failed"), 30, "notification.failed")
    assert failed[0]["data"]["source_event_id"] == envelope.id
    assert failed[0]["data"]["fallback_notification_id"] == email["id"]


async def test_marketing_goes_only_with_consent_and_carries_an_unsubscribe_link(
    notifications: StartNotifications, unique: str
) -> None:
    as_marketing = tuple(replace(s, category=Category.MARKETING) if s.template == "lease_end_decision" else s
                         for s in MESSAGES)
    harness = await notifications(messages=as_marketing)
    agreed, silent = person(unique, "agathe"), person(unique, "simon")
    now = datetime.now(UTC)
    await harness.publish(c.ConsentGiven(customer_id=agreed["customer_id"], purpose="marketing", channel="email",
                                         given_at=now, proof="form:newsletter-v3"))
    await harness.wait_handled("consent.given", 1)

    def letter(who: dict[str, Any]) -> c.ContractNearingEnd:
        return c.ContractNearingEnd(contract_number=f"FR-{who['customer_id']}", milestone="decision_6_months",
                                    end_date=datetime(2027, 5, 31).date(), vehicle_model="Megane E-Tech", **who)

    await harness.publish(letter(agreed), letter(silent))
    [mail] = await mail_to(harness, agreed["email"])
    await harness.wait_handled("contract.nearing_end", 2)
    assert await harness.deliveries_of(silent["customer_id"]) == [], "handled, and nothing recorded to send"
    assert harness.sinks.mail.to(silent["email"]) == []
    assert mail.parsed()["List-Unsubscribe"] == f"<{PORTAL}/preferences/communications?channel=email>"
    assert "Se désinscrire" in mail.html()

    await harness.publish(c.ConsentWithdrawn(customer_id=agreed["customer_id"], purpose="marketing", channel="email",
                                             withdrawn_at=now + timedelta(seconds=1)))
    await harness.wait_handled("consent.withdrawn", 1)
    await harness.publish(letter(agreed))
    await harness.wait_handled("contract.nearing_end", 3)
    assert len(await harness.deliveries_of(agreed["customer_id"])) == 1, "the letter after the withdrawal: not recorded"
    assert len(harness.sinks.mail.to(agreed["email"])) == 1


async def test_a_marketing_sms_held_back_by_quiet_hours_is_not_sent_once_consent_is_withdrawn(
    notifications: StartNotifications, unique: str
) -> None:
    as_marketing = tuple(replace(s, category=Category.MARKETING) if s.template == "appointment_reminder" else s
                         for s in MESSAGES)
    late_in_paris = datetime(2026, 11, 22, 21, 30, tzinfo=UTC)
    clock = FixedClock(late_in_paris)
    harness = await notifications(clock=clock, messages=as_marketing)
    jeanne = person(unique)
    await harness.publish(c.ConsentGiven(customer_id=jeanne["customer_id"], purpose="marketing", channel="sms",
                                         given_at=late_in_paris - timedelta(days=30), proof="form:offers-v1"))
    await harness.wait_handled("consent.given", 1)
    await harness.publish(c.AppointmentReminderDue(
        appointment_id="apt_12", contract_number="FR-LOA-0042", mobile="+33611115555", dealer=DEALER,
        starts_at=datetime(2026, 11, 23, 13, 0, tzinfo=UTC), time_zone="Europe/Paris", **jeanne,
    ))
    await harness.wait_handled("appointment.reminder_due", 1)  # recorded, waiting for 08:00
    await harness.publish(c.ConsentWithdrawn(customer_id=jeanne["customer_id"], purpose="marketing", channel="sms",
                                             withdrawn_at=late_in_paris + timedelta(minutes=5)))
    await harness.wait_handled("consent.withdrawn", 1)

    clock.set(datetime(2026, 11, 23, 7, 0, 1, tzinfo=UTC))
    harness.service.worker.wake()
    [delivery] = await eventually(lambda: _deliveries(harness, jeanne, 1), 30, "the delivery finished")
    assert (delivery["status"], delivery["permanent"], delivery["parked"]) == ("failed", True, False)
    assert delivery["reason"] == "marketing consent for sms missing or withdrawn before sending"
    assert harness.sinks.sms.messages == [] and harness.sinks.mail.to(jeanne["email"]) == []
    failed = await eventually(lambda: harness.events_on("notification.failed"), 30, "notification.failed")
    assert failed[0]["data"]["reason"] == delivery["reason"] and failed[0]["data"]["permanent"] is True


async def test_a_code_by_sms_reaches_the_number_known_from_the_customers_details(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications()
    jeanne = person(unique)
    await harness.publish(c.CustomerDetailsChanged(customer_id=jeanne["customer_id"], email=jeanne["email"],
                                                   first_name="Jeanne", last_name="Martin", locale="nl-BE",
                                                   mobile="+32470555666"))
    await harness.wait_handled("customer.details_changed", 1)
    await harness.publish(device_code(jeanne, mobile=None, code="909090"))

    [sms] = await eventually(lambda: harness.sinks.sms.messages, 30, "the SMS")
    assert sms.to == "+32470555666" and "909090" in sms.body


async def test_the_service_sends_its_sms_over_one_http_session(notifications: StartNotifications, unique: str) -> None:
    harness = await notifications(delivery_concurrency=2)
    numbers = [f"+3247012{i:04d}" for i in range(8)]
    await harness.publish(*(c.RegistrationCodeIssued(
        customer_number=f"BE-{unique}-{i}", mobile=number, locale="nl-BE",
        code=c.RegistrationCodeIssued.seal(RING, "code", f"65432{i}"),
        code_expires_at=datetime.now(UTC) + timedelta(minutes=10),
    ) for i, number in enumerate(numbers)))

    await eventually(lambda: len(harness.sinks.sms.messages) >= len(numbers), 30, "every code texted")
    assert sorted(m.to for m in harness.sinks.sms.messages) == numbers
    assert harness.sinks.sms.connections <= 2, "connections kept and reused, one per delivery worker at most"


async def test_a_registration_code_sent_before_any_account_exists_is_found_by_the_customer_number(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications()
    number = f"BE-{unique}"
    await harness.publish(c.RegistrationCodeIssued(
        customer_number=number, mobile="+32470123456", locale="nl-BE",
        code=c.RegistrationCodeIssued.seal(RING, "code", "654321"),
        code_expires_at=datetime.now(UTC) + timedelta(minutes=10),
    ))

    [sms] = await eventually(lambda: [m for m in harness.sinks.sms.messages if "654321" in m.body], 30, "the code")

    async def found() -> list[dict[str, Any]] | None:
        async with harness.http() as http:
            answer = await http.get(f"/v1/customer-numbers/{number}/deliveries")
        assert answer.status_code == 200, answer.text
        return [d for d in answer.json() if d["status"] == "sent"] or None

    [delivery] = await eventually(found, 30, "the delivery, by customer number")
    assert (delivery["template"], delivery["channel"], delivery["provider_id"]) == ("registration_code", "sms", sms.sid)
    assert delivery["recipient"] == "+324*****456"


class Broken:
    """An email transport with a bug: every call raises something no one classified."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        self.calls += 1
        raise RuntimeError("the transport tripped over itself")


async def test_an_unexpected_error_counts_as_an_attempt_and_ends_failed_and_parked(
    notifications: StartNotifications, unique: str
) -> None:
    broken = Broken()
    harness = await notifications(email=broken, delivery_max_attempts=3, delivery_backoff_initial_s=0.1,
                                  delivery_backoff_max_s=0.2, delivery_lease_s=2, delivery_sweep_s=0.5)
    jeanne = person(unique)
    [envelope] = await harness.publish(password_changed(jeanne))

    [delivery] = await eventually(lambda: _deliveries(harness, jeanne, 1), 30, "the delivery given up")
    assert (delivery["status"], delivery["attempts"], delivery["parked"]) == ("failed", 3, True)
    assert "RuntimeError" in delivery["reason"] and "gave up after 3 attempts" in delivery["reason"]
    [parked] = await harness.parked("customer.password_changed")
    assert parked.headers["dlq-reason-kind"] == "delivery_failed" and json.loads(parked.value)["id"] == envelope.id
    await asyncio.sleep(2 + 0.5 + 1.0)  # past the lease and a sweep: nothing claims it again
    assert broken.calls == 3


async def test_a_delivery_whose_line_left_the_table_before_it_was_sent_is_parked_as_unrenderable(
    notifications: StartNotifications, unique: str
) -> None:
    late_in_paris = datetime(2026, 11, 22, 21, 30, tzinfo=UTC)
    clock = FixedClock(late_in_paris)
    harness = await notifications(clock=clock)
    jeanne = person(unique)
    reminder = c.AppointmentReminderDue(
        appointment_id="apt_11", contract_number="FR-LOA-0042", mobile="+33611114444", dealer=DEALER,
        starts_at=datetime(2026, 11, 23, 13, 0, tzinfo=UTC), time_zone="Europe/Paris", **jeanne,
    )
    [envelope] = await harness.publish(reminder)
    await harness.wait_handled("appointment.reminder_due", 1)  # recorded, waiting for 08:00

    # A new version of the service no longer sends this message (the table is data: it changes).
    harness.service.worker._table = MessageTable(tuple(s for s in MESSAGES if s.template != "appointment_reminder"))
    clock.set(datetime(2026, 11, 23, 7, 0, 1, tzinfo=UTC))
    harness.service.worker.wake()

    [delivery] = await eventually(lambda: _deliveries(harness, jeanne, 1), 30, "the delivery failed")
    assert (delivery["status"], delivery["permanent"], delivery["parked"], delivery["attempts"]) == ("failed", True, True, 1)
    assert "no line of the message table sends appointment_reminder" in delivery["reason"]
    [parked] = await harness.parked("appointment.reminder_due")
    assert parked.headers["dlq-reason-kind"] == "render_failed" and json.loads(parked.value)["id"] == envelope.id
    assert harness.sinks.sms.messages == [] and harness.sinks.mail.to(jeanne["email"]) == []


class Stuck:
    """An email transport whose server accepts the connection and then never answers."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        self.called.set()
        await asyncio.sleep(3600)
        return ""


async def test_a_delivery_abandoned_by_a_sender_that_died_is_sent_by_the_next_one(
    notifications: StartNotifications, unique: str
) -> None:
    stuck = Stuck()
    first = await notifications(email=stuck, **SHORT_LEASE)
    jeanne = person(unique)
    await first.publish(password_changed(jeanne))
    await asyncio.wait_for(stuck.called.wait(), 30)
    await first.service.runtime.stop()  # dies in the middle of sending

    second = await notifications(**SHORT_LEASE)
    [mail] = await mail_to(second, jeanne["email"])
    await past_the_lease()
    assert len(second.sinks.mail.to(jeanne["email"])) == 1
    [delivery] = await second.deliveries_of(jeanne["customer_id"])
    assert delivery["status"] == "sent"


async def test_an_outcome_not_announced_before_a_failure_is_announced_by_recovery_and_not_sent_again(
    notifications: StartNotifications, unique: str
) -> None:
    harness = await notifications(delivery_lease_s=1.0, delivery_sweep_s=0.5)
    outcomes = harness.service.outcomes
    publish = outcomes._publish

    async def broker_refuses(events: Any) -> None:
        raise RuntimeError("the broker refused the outcome events")

    outcomes._publish = broker_refuses
    jeanne = person(unique)
    envelope = harness.wrap(password_changed(jeanne))
    await harness.publish(envelope)
    await mail_to(harness, jeanne["email"])
    await asyncio.sleep(0.5)
    assert await harness.events_on("notification.sent") == []
    still_active = await harness.service.store.active.find_one({"source_event_id": envelope.id})
    assert still_active is not None, "not announced: the delivery stays active, so recovery can finish it"

    outcomes._publish = publish  # the broker is back; the lease runs out and recovery takes over
    sent = await eventually(lambda: harness.events_on("notification.sent"), 30, "notification.sent by recovery")
    assert [e["data"]["source_event_id"] for e in sent] == [envelope.id]
    await eventually(lambda: _gone(harness, envelope.id), 30, "the delivery released")
    assert len(harness.sinks.mail.to(jeanne["email"])) == 1, "recovery announces; it does not send again"


async def _gone(harness: Harness, source_event_id: str) -> bool:
    return await harness.service.store.active.find_one({"source_event_id": source_event_id}) is None
