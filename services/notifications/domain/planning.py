"""From one event to the deliveries it calls for: who, on which channel, in which language, when.

Pure: given the event's data, what the projections know about the person, and the time, it
returns the plan; the service layer stores it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from services.notifications.domain.consent import Consents, may_send
from services.notifications.domain.locales import LOCALES, recipient_zone
from services.notifications.domain.messages import CHOSEN, Category, MessageSpec, MessageTable, Urgency
from services.notifications.domain.quiet_hours import quiet_until


@dataclass(frozen=True)
class Contact:
    """What the projections know about a customer (``customer.details_changed``)."""

    email: str | None = None
    mobile: str | None = None
    locale: str | None = None
    first_name: str | None = None


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    default_zone: str


@dataclass(frozen=True)
class PlannedDelivery:
    spec: MessageSpec
    channel: str
    recipient: str
    locale: str
    not_before: datetime | None
    expires_at: datetime | None
    fallback: str | None
    note: str | None = None

    def delivery_id(self, event_id: str) -> str:
        return delivery_id(event_id, self.channel, self.recipient)


@dataclass(frozen=True)
class Skipped:
    template: str
    channel: str
    reason: str


def delivery_id(event_id: str, channel: str, recipient: str) -> str:
    """Stable per (event, channel, recipient): the same message always has the same id (and
    Message-ID), however many times its event arrives."""
    digest = hashlib.sha256(f"{event_id}\x1f{channel}\x1f{recipient.lower()}".encode()).hexdigest()
    return f"ntf_{digest[:32]}"


def address(channel: str, data: Mapping[str, Any], contact: Contact | None) -> str | None:
    if channel == "email":
        value = data.get("email") or (contact.email if contact else None)
        return value.lower() if value else None
    return data.get("mobile") or (contact.mobile if contact else None)


def locale_of(data: Mapping[str, Any], contact: Contact | None) -> str:
    locale = data.get("locale") or (contact.locale if contact else None)
    return locale if locale in LOCALES else "en"


def held_back_until(
    channel: str,
    category: Category,
    urgency: Urgency,
    now: datetime,
    quiet: QuietHours,
    *,
    time_zone: str | None,
    locale: str,
    expires_at: datetime | None,
) -> datetime | None:
    """The end of the recipient's quiet hours when ``now`` falls in them and the message must
    wait: an SMS that can wait (a reminder) or that nobody is waiting for (marketing); codes and
    security notices never wait. None: it may go now. The zone is the event's own (a dealer's),
    else the market's of the locale. Asked when a delivery is planned and again before each
    attempt, since a retry or a fallback can fall due at night."""
    if not (channel == "sms" and (urgency is Urgency.DEFERRABLE or category is Category.MARKETING)):
        return None
    zone = recipient_zone(time_zone, locale, quiet.default_zone)
    until = quiet_until(now, zone, quiet.start, quiet.end)
    if until is not None and expires_at is not None and until >= expires_at:
        return None  # waiting would make it pointless: better at night than never
    return until


def plan(
    event_type: str,
    data: Mapping[str, Any],
    table: MessageTable,
    *,
    contact: Contact | None,
    consents: Consents,
    now: datetime,
    quiet: QuietHours,
) -> tuple[list[PlannedDelivery], list[Skipped]]:
    planned: list[PlannedDelivery] = []
    skipped: list[Skipped] = []
    locale = locale_of(data, contact)
    for spec in table.for_event(event_type, data):
        for wanted in spec.channels:
            channel = data.get("channel") if wanted == CHOSEN else wanted
            if channel not in ("email", "sms"):
                skipped.append(Skipped(spec.template, str(channel), "the event names no usable channel"))
                continue
            note = None
            recipient = address(channel, data, contact)
            fallback = spec.fallback if spec.fallback != channel else None
            if recipient is None and fallback is not None:
                note = f"no {'mobile number' if channel == 'sms' else 'email address'} known: sent by {fallback}"
                channel, fallback = fallback, None
                recipient = address(channel, data, contact)
            if recipient is None:
                skipped.append(Skipped(spec.template, channel, f"no {channel} address known"))
                continue
            if not may_send(spec.category, channel, consents):
                skipped.append(Skipped(spec.template, channel, f"no marketing consent for {channel}"))
                continue
            expires_at = data.get(spec.expires) if spec.expires else None
            not_before = held_back_until(channel, spec.category, spec.urgency, now, quiet,
                                         time_zone=data.get("time_zone"), locale=locale, expires_at=expires_at)
            if any(p.channel == channel and p.recipient == recipient for p in planned):
                raise ValueError(f"{event_type}: two messages for one recipient on {channel}; fix the table")
            planned.append(PlannedDelivery(spec, channel, recipient, locale, not_before, expires_at, fallback, note))
    return planned, skipped

