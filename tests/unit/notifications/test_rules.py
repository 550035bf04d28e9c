"""The rules of notifications, without I/O: who gets what, on which channel, when."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.notifications.domain import consent
from services.notifications.domain.locales import format_for, template_chain
from services.notifications.domain.messages import MESSAGES, Category, MessageSpec, MessageTable, Urgency
from services.notifications.domain.planning import Contact, QuietHours, delivery_id, plan
from services.notifications.domain.quiet_hours import quiet_until
from services.notifications.domain.retries import FallBack, GiveUp, RetryAt, RetryPolicy
from services.notifications.domain.sms import segments
from shared.events import EVENT_CLASSES, event_class
from tests.unit.examples import example_events

TABLE = MessageTable()
QUIET = QuietHours(time(21, 0), time(8, 0), "Europe/Paris")
NOON_PARIS = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
LATE_PARIS = datetime(2026, 11, 22, 21, 30, tzinfo=UTC)  # 22:30 in Paris


def example(event_type: str, **changes: object) -> dict[str, object]:
    event = next(e for e in example_events() if e.event_type == event_type)
    return event.model_dump() | changes


def planned(event_type: str, data: dict[str, object], *, contact: Contact | None = None, consents=None,
            now: datetime = NOON_PARIS, table: MessageTable = TABLE):
    return plan(event_type, data, table, contact=contact, consents=consents or {}, now=now, quiet=QUIET)


# --- the table ------------------------------------------------------------------------------------


# Every event of the catalogue, and what it leads to: the messages it sends, or why it sends none.
# A new catalogue event fails the test below until it is written into one of the two.
SENDS: dict[str, set[str]] = {
    "customer.registered": {"activation"},
    "customer.already_registered": {"already_registered"},
    "customer.activation_link_reissued": {"activation"},
    "customer.password_reset_requested": {"password_reset"},
    "customer.password_changed": {"password_changed"},
    "customer.account_locked": {"account_locked"},
    "customer.account_unlocked": {"account_unlocked"},
    "customer.device_code_issued": {"device_code"},
    "device.authorised": {"new_device"},
    "customer.registration_code_issued": {"registration_code"},
    "customer.access_ended": {"access_ended"},
    "customer.access_restored": {"access_restored"},
    "organisation_user.invited": {"organisation_invitation"},
    "contract.nearing_end": {"lease_end_decision", "lease_end_return"},
    "secure_message.replied": {"secure_message_reply"},
    "appointment.booked": {"appointment_confirmation"},
    "appointment.cancelled": {"appointment_cancelled"},
    "appointment.reminder_due": {"appointment_reminder"},
    "inspection.completed": {"inspection_report"},
    "counter_inspection.acknowledged": {"counter_inspection"},
    "invoice.issued": {"invoice"},
    "terms.acceptance_required": {"terms_acceptance_required"},
    "terms.changed": {"terms_changed"},
    "terms.accepted": {"terms_accepted"},
    "privacy_request.received": {"privacy_request_received"},
    "privacy_request.completed": {"privacy_request_completed"},
}
SENDS_NOTHING: dict[str, str] = {
    "customer.activated": "the customer has just followed the emailed link, and the portal answers them there",
    "customer.details_changed": "contact details for the projection (where and in which language to write)",
    "contract.link_requested": "the customer's own request in the portal, answered by contracts",
    "contract.link_verified": "the customer waits for it in the portal, which shows it; their next sign-in "
                              "asks to authorise the device, and that code is a message of its own",
    "contract.link_rejected": "the portal shows it with its reason where the customer asked; an email would "
                              "go to the login that asked, not to the contract's holder, so it protects no one",
    "contract.opened": "contract data for identity; a customer without a login has no portal to hear about",
    "contract.closed": "the lease-end letters come before it, and access ending 18 months later has its own",
    "counter_inspection.requested": "the fact for other services; the customer's acknowledgement is "
                                    "counter_inspection.acknowledged, with their address and the storage site",
    "terms.published": "names no one (one event per version and market); each customer concerned gets "
                       "terms.acceptance_required or terms.changed",
    "terms.rejected": "rejecting ends access, and customer.access_ended (terms_rejected) says so",
    "consent.given": "consent for the projection; the customer made the choice in the portal, which shows it",
    "consent.withdrawn": "consent for the projection; the customer made the choice in the portal, which shows it",
    "notification.sent": "this service's own outcome, for audit",
    "notification.failed": "this service's own outcome, for audit",
}


def test_every_catalogue_event_either_sends_its_messages_or_says_why_it_sends_none() -> None:
    catalogue = {cls.event_type for cls in EVENT_CLASSES}
    unaccounted = catalogue - set(SENDS) - set(SENDS_NOTHING)
    assert not unaccounted, f"say what these events send, or why nothing: {sorted(unaccounted)}"
    assert not set(SENDS) & set(SENDS_NOTHING)
    assert set(SENDS) | set(SENDS_NOTHING) == catalogue, "the register names events the catalogue has not"
    sent = {event_type: {spec.template for spec in MESSAGES if spec.event_type == event_type}
            for event_type in catalogue}
    assert {t: templates for t, templates in sent.items() if templates} == SENDS


def test_the_table_names_only_catalogue_events_and_fields() -> None:
    for spec in MESSAGES:
        cls = event_class(spec.event_type, 1)
        for name in [spec.expires, *spec.when]:
            if name:
                assert name in cls.model_fields, (spec.template, name)


def test_every_message_carrying_a_code_must_fit_one_sms_segment() -> None:
    with_a_code = [spec for spec in MESSAGES if "code" in event_class(spec.event_type, 1).model_fields]
    assert {spec.template for spec in with_a_code} >= {"device_code", "registration_code"}
    assert [spec.template for spec in with_a_code if spec.sms_segments != 1] == []


def test_a_line_allows_at_least_one_sms_segment() -> None:
    with pytest.raises(ValueError, match="at least one segment"):
        MessageTable((MessageSpec("appointment.reminder_due", "appointment_reminder", ("sms",), sms_segments=0),))


def test_the_lease_end_milestones_lead_to_two_different_letters() -> None:
    decision = planned("contract.nearing_end", example("contract.nearing_end"))[0]
    ret = planned("contract.nearing_end", example("contract.nearing_end", milestone="return_3_weeks"))[0]
    assert [p.spec.template for p in decision] == ["lease_end_decision"]
    assert [p.spec.template for p in ret] == ["lease_end_return"]


# --- channels and recipients ----------------------------------------------------------------------


def test_a_device_code_goes_on_the_channel_the_customer_chose() -> None:
    by_sms, _ = planned("customer.device_code_issued", example("customer.device_code_issued"))
    by_email, _ = planned("customer.device_code_issued", example("customer.device_code_issued", channel="email"))
    assert [(p.channel, p.recipient, p.fallback) for p in by_sms] == [("sms", "+33612345678", "email")]
    assert [(p.channel, p.recipient, p.fallback) for p in by_email] == [("email", "jeanne.martin@example.fr", None)]


def test_a_code_by_sms_without_a_known_number_goes_by_email_with_a_note() -> None:
    data = example("customer.device_code_issued", mobile=None)
    deliveries, _ = planned("customer.device_code_issued", data)
    assert [(p.channel, p.recipient) for p in deliveries] == [("email", "jeanne.martin@example.fr")]
    assert "no mobile number known" in (deliveries[0].note or "")


def test_the_mobile_number_comes_from_the_projection_when_the_event_lacks_it() -> None:
    data = example("customer.device_code_issued", mobile=None)
    deliveries, _ = planned("customer.device_code_issued", data, contact=Contact(mobile="+32470999888"))
    assert [(p.channel, p.recipient) for p in deliveries] == [("sms", "+32470999888")]


def test_the_same_message_for_the_same_event_and_person_always_has_the_same_id() -> None:
    assert delivery_id("evt_1", "email", "Jeanne@Example.fr") == delivery_id("evt_1", "email", "jeanne@example.fr")
    assert delivery_id("evt_1", "email", "a@b.fr") != delivery_id("evt_2", "email", "a@b.fr")
    assert delivery_id("evt_1", "email", "a@b.fr") != delivery_id("evt_1", "sms", "a@b.fr")


# --- quiet hours ----------------------------------------------------------------------------------


def test_a_reminder_due_at_night_waits_for_eight_in_the_recipients_zone() -> None:
    data = example("appointment.reminder_due", starts_at=datetime(2026, 11, 23, 14, 0, tzinfo=UTC))
    deliveries, _ = planned("appointment.reminder_due", data, now=LATE_PARIS)
    assert deliveries[0].not_before == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # 08:00 in Paris


def test_codes_and_security_notices_are_never_held_back_at_night() -> None:
    for event_type in ("customer.device_code_issued", "customer.registration_code_issued", "device.authorised",
                       "customer.account_locked"):
        deliveries, _ = planned(event_type, example(event_type), now=LATE_PARIS)
        assert all(p.not_before is None for p in deliveries), event_type


def test_quiet_hours_follow_the_recipients_time_zone() -> None:
    toronto, paris = ZoneInfo("America/Toronto"), ZoneInfo("Europe/Paris")
    at = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)  # midnight in Paris, 18:00 in Toronto
    assert quiet_until(at, paris, time(21), time(8)) == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    assert quiet_until(at, toronto, time(21), time(8)) is None
    summer = datetime(2026, 7, 1, 5, 30, tzinfo=UTC)  # 07:30 in Paris (UTC+2)
    assert quiet_until(summer, paris, time(21), time(8)) == datetime(2026, 7, 1, 6, 0, tzinfo=UTC)


def test_a_reminder_is_not_held_back_past_the_appointment_itself() -> None:
    data = example("appointment.reminder_due", starts_at=datetime(2026, 11, 23, 6, 30, tzinfo=UTC))  # 07:30 Paris
    deliveries, _ = planned("appointment.reminder_due", data, now=LATE_PARIS)
    assert deliveries[0].not_before is None


# --- consent --------------------------------------------------------------------------------------

NEWSLETTER = MessageTable((MessageSpec("contract.nearing_end", "lease_end_decision", ("email", "sms"), Category.MARKETING,
                                       Urgency.DEFERRABLE),))


def test_transactional_messages_go_whatever_the_marketing_consent() -> None:
    withdrawn = {"marketing": {"any": {"given": False, "at": NOON_PARIS}}}
    deliveries, _ = planned("invoice.issued", example("invoice.issued"), consents=withdrawn)
    assert len(deliveries) == 1


def test_marketing_goes_only_on_the_channels_consented_to() -> None:
    data = example("contract.nearing_end")
    contact = Contact(mobile="+33612345678")
    none, skipped = planned("contract.nearing_end", data, contact=contact, table=NEWSLETTER)
    assert none == [] and {s.reason for s in skipped} == {"no marketing consent for email", "no marketing consent for sms"}
    email_only = {"marketing": {"email": {"given": True, "at": NOON_PARIS}}}
    deliveries, _ = planned("contract.nearing_end", data, contact=contact, consents=email_only, table=NEWSLETTER)
    assert [p.channel for p in deliveries] == ["email"]


def test_the_latest_consent_statement_wins_whatever_order_they_arrive_in() -> None:
    early, late = NOON_PARIS, NOON_PARIS + timedelta(hours=1)
    given_late = consent.record({}, "marketing", "email", True, late)
    assert consent.record(given_late, "marketing", "email", False, early) is None, "an older withdrawal changes nothing"
    withdrawn_late = consent.record(consent.record({}, "marketing", "email", True, early), "marketing", "email", False, late)
    assert not consent.may_send(Category.MARKETING, "email", withdrawn_late)
    assert consent.may_send(Category.MARKETING, "email", given_late)
    any_channel = consent.record({}, "marketing", "any", True, early)
    assert consent.may_send(Category.MARKETING, "sms", any_channel)


# --- retries --------------------------------------------------------------------------------------


def test_retries_back_off_exponentially_with_jitter_and_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=5, initial_s=2, max_s=10)
    rng = random.Random(7)
    delays = [(policy.next_attempt_at(n, NOON_PARIS, rng) - NOON_PARIS).total_seconds() for n in range(1, 5)]  # type: ignore[operator]
    assert 1 <= delays[0] <= 2 and 2 <= delays[1] <= 4 and 4 <= delays[2] <= 8 and 5 <= delays[3] <= 10
    assert policy.next_attempt_at(5, NOON_PARIS) is None


DEFAULT_POLICY = RetryPolicy(max_attempts=8, initial_s=5, max_s=600)  # the service's defaults


def test_without_a_fallback_a_transient_failure_is_retried_until_the_attempts_run_out() -> None:
    code_expiry = NOON_PARIS + timedelta(minutes=10)
    for attempts in range(1, 8):
        verdict = DEFAULT_POLICY.after_transient_failure(attempts, NOON_PARIS, expires_at=code_expiry, can_fall_back=False)
        assert isinstance(verdict, RetryAt), attempts
    assert DEFAULT_POLICY.after_transient_failure(8, NOON_PARIS, expires_at=code_expiry, can_fall_back=False) == GiveUp()


def test_a_message_with_a_fallback_but_no_deadline_keeps_its_channel() -> None:
    verdict = DEFAULT_POLICY.after_transient_failure(5, NOON_PARIS, expires_at=None, can_fall_back=True)
    assert isinstance(verdict, RetryAt)
    assert DEFAULT_POLICY.after_transient_failure(8, NOON_PARIS, expires_at=None, can_fall_back=True) == GiveUp()


def test_a_code_falls_back_after_a_bounded_number_of_transient_failures_with_time_to_spare() -> None:
    expiry = NOON_PARIS + timedelta(minutes=10)
    first, second = (DEFAULT_POLICY.after_transient_failure(n, NOON_PARIS, expires_at=expiry, can_fall_back=True)
                     for n in (1, 2))
    assert isinstance(first, RetryAt) and isinstance(second, RetryAt)
    third = DEFAULT_POLICY.after_transient_failure(3, NOON_PARIS, expires_at=expiry, can_fall_back=True)
    assert isinstance(third, FallBack) and "3 attempts" in third.why


def test_a_code_falls_back_at_once_when_the_next_attempt_would_come_too_close_to_its_expiry() -> None:
    almost_expired = NOON_PARIS + timedelta(seconds=121)  # margin 120 s, next attempt in 2.5 to 5 s
    verdict = DEFAULT_POLICY.after_transient_failure(1, NOON_PARIS, expires_at=almost_expired, can_fall_back=True)
    assert isinstance(verdict, FallBack) and "expiry" in verdict.why
    roomy = NOON_PARIS + timedelta(seconds=126)
    assert isinstance(DEFAULT_POLICY.after_transient_failure(1, NOON_PARIS, expires_at=roomy, can_fall_back=True), RetryAt)


def test_a_code_whose_sms_keeps_failing_reaches_the_customer_by_email_long_before_it_expires() -> None:
    rng = random.Random(3)
    now, expiry, attempts = NOON_PARIS, NOON_PARIS + timedelta(minutes=10), 0
    while True:
        attempts += 1
        verdict = DEFAULT_POLICY.after_transient_failure(attempts, now, expires_at=expiry, can_fall_back=True, rng=rng)
        if not isinstance(verdict, RetryAt):
            break
        now = verdict.at
    assert isinstance(verdict, FallBack)
    assert now - NOON_PARIS <= timedelta(seconds=15), "5 s doubling: the third failure comes within 15 s"


# --- SMS segments and locale formats ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "units", "count"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("€" * 80, "GSM-7", 160, 1),  # the euro sign takes two septets
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),  # and is never split across two segments
        ("ç" + "a" * 69, "UCS-2", 70, 1),  # a lower-case c cedilla is not GSM-7
        ("ç" + "a" * 70, "UCS-2", 71, 2),
        ("😀" * 35, "UCS-2", 70, 1),
    ],
)
def test_sms_segments_are_counted_per_encoding(text: str, encoding: str, units: int, count: int) -> None:
    assert segments(text) == type(segments(text))(encoding, units, count)


def test_locales_fall_back_through_their_language_to_english() -> None:
    assert template_chain("fr-CA") == ("fr-CA", "fr", "en")
    assert template_chain("nl-BE") == ("nl-BE", "nl", "en")
    assert template_chain("en") == ("en",)


def test_amounts_and_dates_per_locale() -> None:
    amount = Decimal("1234.56")
    assert format_for("fr-FR").money(amount, "EUR") == "1\u202f234,56\u00a0€"
    assert format_for("fr-CA").money(amount, "CAD") == "1\u00a0234,56\u00a0$"
    assert format_for("nl-BE").money(amount, "EUR") == "€\u00a01.234,56"
    assert format_for("en").money(amount, "EUR") == "€1,234.56"
    assert format_for("fr-FR").long_date(date(2026, 12, 1)) == "mardi 1er décembre 2026"
    assert format_for("nl-NL").long_date(date(2026, 12, 1)) == "dinsdag 1 december 2026"
    assert format_for("fr-CA").day_month(date(2026, 12, 1)) == "1er décembre"


def test_times_per_locale() -> None:
    morning = datetime(2026, 11, 23, 9, 5)
    assert format_for("fr-FR").time(morning) == "9\u00a0h\u00a005"
    assert format_for("nl-NL").time(morning) == format_for("nl-BE").time(morning) == "9.05\u00a0uur"
    assert format_for("en").time(morning) == "09:05"


def test_french_spacing_keeps_punctuation_on_its_line() -> None:
    from services.notifications.domain.locales import french_spacing

    assert french_spacing("Rappel : votre code ? Oui ; « fin » !") == (
        "Rappel\u00a0: votre code\u202f? Oui\u202f; «\u00a0fin\u00a0»\u202f!")
    assert french_spacing("https://portal.example/a?b=c") == "https://portal.example/a?b=c", "links are left alone"
