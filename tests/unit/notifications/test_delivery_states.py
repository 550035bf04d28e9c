"""A delivery's states, without a store: leases, retries, the end of its life."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.notifications.domain.delivery import Delivery, Status

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def delivery(**changes: object) -> Delivery:
    base = Delivery(
        id="ntf_1", source_event_id="evt_1", source_event_type="customer.password_changed", channel="email",
        recipient="jeanne.martin@example.fr", template="password_changed", locale="fr-FR", category="transactional",
        urgency="immediate", created_at=NOW, envelope={"id": "evt_1"}, origin={"topic": "customer.password_changed"},
        next_attempt_at=NOW,
    )
    return Delivery(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_a_leased_delivery_is_sending_and_nobody_else_may_claim_it_until_the_lease_ends() -> None:
    leased = delivery().leased(NOW, timedelta(seconds=60))
    assert leased.current_status(NOW) is Status.SENDING
    assert not leased.claimable(NOW + timedelta(seconds=59))
    assert leased.claimable(NOW + timedelta(seconds=60)), "a sender that died gives its deliveries back"


def test_a_failed_attempt_schedules_the_next_and_keeps_the_reason() -> None:
    retry = delivery().retry_later(NOW, NOW + timedelta(seconds=5), "451 greylisted")
    assert (retry.status, retry.attempts, retry.lease_until, retry.last_error) == (Status.RETRYING, 1, None, "451 greylisted")
    assert not retry.claimable(NOW) and retry.claimable(NOW + timedelta(seconds=5))
    assert retry.log[-1] == {"at": NOW, "outcome": "transient", "reason": "451 greylisted"}


def test_a_finished_delivery_counts_its_last_attempt_and_keeps_no_secret_in_the_history() -> None:
    sent = delivery().retry_later(NOW, NOW, "timeout").finish(Status.SENT, NOW + timedelta(seconds=1), provider_id="<m>")
    assert (sent.status, sent.delivery.attempts, sent.provider_id) == (Status.SENT, 2, "<m>")
    archived = sent.to_document()
    assert "envelope" not in archived and "origin" not in archived, "the source event holds sealed secrets and PII"
    assert [entry["outcome"] for entry in archived["log"]] == ["transient", "sent"]


def test_a_delivery_past_its_expiry_is_not_worth_sending() -> None:
    code = delivery(expires_at=NOW + timedelta(minutes=10))
    assert not code.expired(NOW + timedelta(minutes=9)) and code.expired(NOW + timedelta(minutes=10))


def test_the_archived_document_leaves_the_source_event_out_and_the_active_one_keeps_it() -> None:
    original = delivery(attempts=2, status=Status.RETRYING, log=({"at": NOW, "outcome": "transient"},))
    stored = original.to_document()
    assert stored["_id"] == "ntf_1" and "envelope" not in stored
    again = Delivery.from_document(stored | {"extra_field_from_a_newer_version": 1})
    assert again == original.__class__(**{**original.__dict__, "envelope": {}, "origin": {}})
    active = original.active_document()
    assert active["_id"] == "ntf_1" and isinstance(active["envelope"], str) and '"evt_1"' in active["envelope"]
    assert Delivery.from_document(active) == original


def test_a_failure_whose_event_could_not_be_parked_stays_active_until_parking_succeeds() -> None:
    failing = delivery(attempts=2, status=Status.RETRYING)
    waiting = failing.failed_unparked(NOW, NOW + timedelta(seconds=5), reason="gave up after 3 attempts: 451",
                                      kind="delivery_failed", permanent=False)
    assert (waiting.status, waiting.attempts, waiting.next_attempt_at) == (Status.FAILED, 3, NOW + timedelta(seconds=5))
    assert waiting.parking == {"reason": "gave up after 3 attempts: 451", "kind": "delivery_failed",
                               "permanent": False, "tries": 1}
    assert not waiting.claimable(NOW) and waiting.claimable(NOW + timedelta(seconds=5)), "recovered like a retry"
    assert Delivery.from_document(waiting.active_document()).parking == waiting.parking, "the store keeps it"

    again = waiting.park_again_later(NOW + timedelta(seconds=15))
    assert (again.attempts, again.parking["tries"]) == (3, 2), "trying to park is not an attempt to send"

    outcome = again.parked_now(NOW + timedelta(seconds=15))
    assert (outcome.status, outcome.parked, outcome.permanent, outcome.reason) == (
        Status.FAILED, True, False, "gave up after 3 attempts: 451")
    assert outcome.delivery.attempts == 3 and outcome.delivery.parking is None
    assert [entry["outcome"] for entry in outcome.to_document()["log"]] == ["transient", "parked"]
