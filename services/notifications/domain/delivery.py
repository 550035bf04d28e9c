"""A delivery: one message, to one recipient, on one channel, for one event; and its life.

    queued ──claim──▶ sending ──▶ sent
      ▲                 │ transient failure, attempts left
      └── retrying ◀────┤
                        ├─ transient failure, attempts exhausted ──▶ failed (source event parked)
                        └─ permanent failure ──▶ failed (+ a new delivery on the fallback channel)

Before each attempt the rules that depend on the moment are asked again: a marketing message
whose consent was withdrawn meanwhile fails without being sent; an SMS that fell due in the
recipient's quiet hours (a retry, a fallback) is held back to their end, which is not an attempt.

A failure whose source event cannot be parked yet (the broker refused it) stays active, failed
with ``parking`` set, and parking is tried again later: the event must reach the dead-letter
topic, or the failure could never be replayed.

"sending" is a lease: whoever claimed the delivery may send it until ``lease_until``; after that,
anyone may claim it again (the previous sender crashed). A message can therefore go out twice in
that case, never zero times: at least once, with the same Message-ID.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any


class Status(str, Enum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    id: str
    source_event_id: str
    source_event_type: str
    channel: str
    recipient: str
    template: str
    locale: str
    category: str
    urgency: str
    created_at: datetime
    envelope: dict[str, Any]  # the source event as received (secrets still sealed)
    origin: dict[str, Any]  # where it was read: topic, partition, offset, consumer group
    customer_id: str | None = None
    # The customer's number, when the event knows the customer by it and by no account id (the
    # registration code, texted before any account exists): what support can look the message up by.
    customer_number: str | None = None
    first_name: str | None = None
    not_before: datetime | None = None
    expires_at: datetime | None = None
    fallback_channel: str | None = None
    fallback_of: str | None = None
    note: str | None = None
    status: Status = Status.QUEUED
    attempts: int = 0
    next_attempt_at: datetime | None = None
    lease_until: datetime | None = None
    last_error: str | None = None
    log: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    parking: dict[str, Any] | None = None  # {reason, kind, permanent, tries}: failed, not parked yet
    # The source event, already validated, when the delivery was handed over in this process
    # (never stored: it holds secrets in their sealed form only, but rendering needs types).
    event: Any = field(default=None, compare=False, repr=False)

    def current_status(self, now: datetime) -> Status:
        if self.lease_until is not None and self.lease_until > now:
            return Status.SENDING
        return self.status

    def claimable(self, now: datetime) -> bool:
        due = self.next_attempt_at is None or self.next_attempt_at <= now
        return due and (self.lease_until is None or self.lease_until <= now)

    def leased(self, now: datetime, lease: timedelta) -> "Delivery":
        return replace(self, lease_until=now + lease)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def retry_later(self, now: datetime, at: datetime, reason: str) -> "Delivery":
        return replace(
            self,
            status=Status.RETRYING,
            attempts=self.attempts + 1,
            next_attempt_at=at,
            lease_until=None,
            last_error=reason,
            log=(*self.log, {"at": now, "outcome": "transient", "reason": reason}),
        )

    def held_back(self, now: datetime, until: datetime, reason: str) -> "Delivery":
        """Not sent now (quiet hours at the recipient's): due again at ``until``. Not an attempt."""
        return replace(
            self,
            next_attempt_at=until,
            lease_until=None,
            log=(*self.log, {"at": now, "outcome": "deferred", "reason": reason}),
        )

    def finish(
        self,
        status: Status,
        now: datetime,
        *,
        provider_id: str | None = None,
        reason: str | None = None,
        permanent: bool = False,
        parked: bool = False,
        fallback_id: str | None = None,
    ) -> "FinalOutcome":
        entry = {"at": now, "outcome": status.value if status is Status.SENT else ("permanent" if permanent else "transient")}
        if reason:
            entry["reason"] = reason
        return FinalOutcome(
            delivery=replace(
                self,
                status=status,
                attempts=self.attempts + 1,
                lease_until=None,
                next_attempt_at=None,
                last_error=reason or self.last_error,
                log=(*self.log, entry),
            ),
            finished_at=now,
            provider_id=provider_id,
            reason=reason,
            permanent=permanent,
            parked=parked,
            fallback_id=fallback_id,
        )

    def failed_unparked(
        self, now: datetime, park_again_at: datetime, *, reason: str, kind: str, permanent: bool
    ) -> "Delivery":
        """The attempt failed for good but its source event could not be parked: still active,
        parking to be tried again at ``park_again_at``."""
        return replace(
            self,
            status=Status.FAILED,
            attempts=self.attempts + 1,
            next_attempt_at=park_again_at,
            lease_until=None,
            last_error=reason,
            parking={"reason": reason, "kind": kind, "permanent": permanent, "tries": 1},
            log=(*self.log, {"at": now, "outcome": "permanent" if permanent else "transient", "reason": reason}),
        )

    def park_again_later(self, at: datetime) -> "Delivery":
        """Parking failed once more (no attempt to send: it is not one)."""
        parking = dict(self.parking or {})
        parking["tries"] = int(parking.get("tries", 0)) + 1
        return replace(self, next_attempt_at=at, lease_until=None, parking=parking)

    def parked_now(self, now: datetime) -> "FinalOutcome":
        """The source event is parked at last: the failure recorded earlier becomes final."""
        parking = self.parking or {}
        return FinalOutcome(
            delivery=replace(self, lease_until=None, next_attempt_at=None, parking=None,
                             log=(*self.log, {"at": now, "outcome": "parked"})),
            finished_at=now,
            provider_id=None,
            reason=parking.get("reason"),
            permanent=bool(parking.get("permanent")),
            parked=True,
            fallback_id=None,
        )

    def to_document(self) -> dict[str, Any]:
        """The delivery's state, without the source event (what the history keeps for good)."""
        doc = {f.name: getattr(self, f.name) for f in _STORED}
        doc["_id"] = doc.pop("id")
        doc["status"] = self.status.value
        doc["log"] = list(self.log)
        return doc

    def active_document(self) -> dict[str, Any]:
        """The state and the source event it is rendered (or parked) from, while it is being sent.
        The event goes as JSON text: a store like FerretDB turns a nested document into SQL JSON
        field by field, and nothing queries inside it."""
        return {**self.to_document(), "envelope": json.dumps(self.envelope, separators=(",", ":")),
                "origin": self.origin}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> "Delivery":
        known = {f.name for f in _STORED}
        values = {k: v for k, v in doc.items() if k in known}
        values["id"] = doc["_id"]
        values["status"] = Status(doc.get("status", "queued"))
        values["log"] = tuple(doc.get("log", ()))
        envelope = doc.get("envelope") or {}
        values["envelope"] = json.loads(envelope) if isinstance(envelope, str) else envelope
        values["origin"] = doc.get("origin") or {}
        return cls(**values)


_STORED = tuple(f for f in fields(Delivery) if f.name not in ("event", "envelope", "origin"))


@dataclass(frozen=True)
class FinalOutcome:
    """How a delivery ended; archived for good (without the source event, which holds secrets)."""

    delivery: Delivery
    finished_at: datetime
    provider_id: str | None
    reason: str | None
    permanent: bool
    parked: bool
    fallback_id: str | None

    @property
    def status(self) -> Status:
        return self.delivery.status

    def to_document(self) -> dict[str, Any]:
        doc = self.delivery.to_document()
        doc.update(
            finished_at=self.finished_at,
            provider_id=self.provider_id,
            reason=self.reason,
            permanent=self.permanent,
            parked=self.parked,
            fallback_id=self.fallback_id,
        )
        return doc
