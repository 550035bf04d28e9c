"""Final outcomes are archived, announced and released in batches; a store error loses none."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from services.notifications.domain.delivery import Delivery, Status
from services.notifications.service_layer.outcomes import OutcomeLog, outcome_event_id
from shared.clock import FixedClock
from shared.messaging.errors import is_transient

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def sent(n: int) -> Any:
    delivery = Delivery(
        id=f"ntf_{n}", source_event_id=f"evt_{n}", source_event_type="customer.password_changed", channel="email",
        recipient="jeanne.martin@example.fr", template="password_changed", locale="fr-FR", category="transactional",
        urgency="immediate", created_at=NOW, envelope={"id": f"evt_{n}"}, origin={}, customer_id="cus_jeanne",
    )
    return delivery.finish(Status.SENT, NOW, provider_id=f"<ntf_{n}@leaseline.example>")


class RefusingStore:
    """A store whose first ``refusals`` archive commands fail with an error no retry is meant for."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.archived: list[str] = []
        self.released: list[str] = []

    async def archive(self, documents: list[dict[str, Any]]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise OperationFailure("disk I/O error", code=1)
        self.archived += [d["_id"] for d in documents]

    async def release(self, ids: list[str]) -> None:
        self.released += ids


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_store_error_keeps_the_batch_and_the_writer_retries_it_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not is_transient(OperationFailure("disk I/O error", code=1)), "the case the writer used to die of"
    store, published = RefusingStore(refusals=3), []

    async def publish(envelopes: Any) -> None:
        published.extend(e.data["notification_id"] for e in envelopes)

    outcomes = OutcomeLog(store, FixedClock(NOW), publish, source="notifications", batch_max=10, flush_s=0.01,
                          retry_initial_s=0.01, retry_max_s=0.05)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="services.notifications.service_layer.outcomes"):
        for n in range(3):
            outcomes.add(sent(n))
        await until(lambda: len(store.archived) == 3)

    assert store.archived == ["ntf_0", "ntf_1", "ntf_2"], "each outcome archived once, none lost"
    assert published == store.archived and store.released == store.archived
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "archiving" in r.getMessage()]
    assert len(errors) == 3 and errors[-1].failures == 3  # type: ignore[attr-defined]

    outcomes.add(sent(3))  # the same writer goes on
    await until(lambda: "ntf_3" in store.archived)
    await outcomes.flush()


async def test_flush_writes_what_a_failed_batch_left_pending() -> None:
    store = RefusingStore(refusals=1)

    async def publish(envelopes: Any) -> None:
        return None

    outcomes = OutcomeLog(store, FixedClock(NOW), publish, source="notifications", batch_max=10, flush_s=0.01,
                          retry_initial_s=10, retry_max_s=10)  # type: ignore[arg-type]
    outcomes.add(sent(7))
    await until(lambda: store.refusals == 0)  # refused once; the writer now waits 5 to 10 s
    await outcomes.flush()
    assert store.archived == ["ntf_7"]


async def test_an_outcome_is_held_until_the_history_has_it_whatever_the_store_refuses_meanwhile() -> None:
    store = RefusingStore(refusals=2)

    async def publish(envelopes: Any) -> None:
        return None

    outcomes = OutcomeLog(store, FixedClock(NOW), publish, source="notifications", batch_max=10, flush_s=0.01,
                          retry_initial_s=0.05, retry_max_s=0.05)  # type: ignore[arg-type]
    outcomes.add(sent(1))
    await until(lambda: store.refusals == 0)
    assert outcomes.holds("ntf_1"), "refused by the store: still only here"
    await until(lambda: store.archived == ["ntf_1"])
    assert not outcomes.holds("ntf_1"), "in the history: recovery would find it there"
    await outcomes.flush()


def test_an_outcome_keeps_its_event_id_when_announced_again_but_a_later_recording_gets_another() -> None:
    first = sent(1)
    assert outcome_event_id(first) == outcome_event_id(sent(1)), "announced again after a crash: one event"
    assert outcome_event_id(first) == "ntf_1.1795339800000.sent.1"  # recorded at NOW, in ms
    reopened = replace(first, delivery=replace(first.delivery, created_at=NOW + timedelta(hours=2)))
    assert outcome_event_id(reopened) != outcome_event_id(first), "same id and attempts, recorded again"
