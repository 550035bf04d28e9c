"""Handlers of incoming events: record the deliveries an event calls for, keep the projections.

Recording is all the Kafka handler does: one insert per delivery (a duplicate means the event was
already handled), then the delivery is handed to the worker in this process. Sending happens
elsewhere, so a slow or absent provider never holds the consumer up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import WithJsonSchema

from services.notifications.adapters.store import DeliveryStore, store_busy
from services.notifications.domain import consent as consent_rules
from services.notifications.domain.delivery import Delivery
from services.notifications.domain.messages import MessageTable
from services.notifications.domain.planning import Contact, PlannedDelivery, QuietHours, plan
from shared.clock import Clock
from shared.crypto import Keyring, SealError
from shared.events import ConsentGiven, ConsentWithdrawn, CustomerDetailsChanged, Event
from shared.messaging import Delivery as Received
from shared.messaging import PermanentError, TransientError
from shared.storage import DocumentStore
from shared.storage.mongo import is_duplicate_key

log = logging.getLogger(__name__)


def sealed_fields(cls: type[Event]) -> list[str]:
    return [
        name
        for name, info in cls.model_fields.items()
        if any(isinstance(m, WithJsonSchema) and (m.json_schema or {}).get("x-sealed") for m in info.metadata)
    ]


def opened(event: Event, keyring: Keyring) -> dict[str, Any]:
    """The event's fields with its secrets unsealed (for rendering only: never stored)."""
    data = event.model_dump()
    for name in sealed_fields(type(event)):
        if data.get(name):
            data[name] = event.unseal(keyring, name)
    return data


@dataclass
class Recorder:
    table: MessageTable
    deliveries: DeliveryStore
    recipients: DocumentStore
    keyring: Keyring
    clock: Clock
    quiet: QuietHours
    lease: timedelta
    group_id: str
    hand_over: Callable[[Delivery], Awaitable[bool]]
    expect: Callable[[datetime], None]  # a deferred delivery falls due then (quiet hours)
    on_duplicate: Callable[[str], None] = lambda topic: None

    async def on_event(self, event: Event, received: Received) -> None:
        """Any event of the table: plan its deliveries and record them."""
        try:
            for name in sealed_fields(type(event)):  # a secret we cannot open makes a poison event
                event.unseal(self.keyring, name)
        except SealError as error:
            raise PermanentError(f"cannot open a sealed field of {event.event_type}: {error}") from None
        data = event.model_dump()
        contact, consents = await self._what_we_know(event.event_type, data)
        now = self.clock.now()
        planned, skipped = plan(
            event.event_type, data, self.table, contact=contact, consents=consents, now=now, quiet=self.quiet
        )
        for skip in skipped:
            log.info("message not sent", extra={"template": skip.template, "channel": skip.channel, "why": skip.reason})
        for item in planned:
            delivery = replace(self._delivery(item, data, received, now), event=event)
            try:
                recorded = await self.deliveries.record(delivery)
            except Exception as error:
                _retry_if_transient(error)
                raise
            if not recorded:
                self.on_duplicate(received.topic)
                continue
            if delivery.lease_until is not None:
                await self.hand_over(delivery)
            elif delivery.next_attempt_at is not None:
                self.expect(delivery.next_attempt_at)

    def _delivery(self, item: PlannedDelivery, data: dict[str, Any], received: Received, now: Any) -> Delivery:
        envelope = received.envelope
        due_now = item.not_before is None
        return Delivery(
            id=item.delivery_id(envelope.id),
            source_event_id=envelope.id,
            source_event_type=envelope.type,
            channel=item.channel,
            recipient=item.recipient,
            template=item.spec.template,
            locale=item.locale,
            category=item.spec.category.value,
            urgency=item.spec.urgency.value,
            created_at=now,
            envelope=envelope.model_dump(mode="json"),
            origin={"topic": received.topic, "partition": received.partition, "offset": received.offset,
                    "group": self.group_id},
            customer_id=data.get("customer_id") or data.get("user_id"),
            customer_number=data.get("customer_number"),
            first_name=data.get("first_name"),
            not_before=item.not_before,
            expires_at=item.expires_at,
            fallback_channel=item.fallback,
            note=item.note,
            next_attempt_at=item.not_before or now,
            lease_until=now + self.lease if due_now else None,  # leased to this process's worker
        )

    async def _what_we_know(self, event_type: str, data: dict[str, Any]) -> tuple[Contact | None, dict[str, Any]]:
        """The projection, only when the event itself may not be enough: a text message (events
        rarely carry the mobile number), a marketing message (consent), or no email address."""
        customer_id = data.get("customer_id")
        if not customer_id:
            return None, {}
        specs = self.table.for_event(event_type, data)
        needed = not data.get("email") or any(
            s.category.value == "marketing" or s.fallback == "sms" or "sms" in s.channels
            or (data.get("channel") == "sms" and not data.get("mobile"))
            for s in specs
        )
        if not needed:
            return None, {}
        try:
            doc = await self.recipients.get(customer_id)
        except Exception as error:
            _retry_if_transient(error)
            raise
        if doc is None:
            return None, {}
        known = doc.state.get("contact") or {}
        contact = Contact(known.get("email"), known.get("mobile"), known.get("locale"), known.get("first_name"))
        return contact, doc.state.get("consents") or {}

    # --- projections ---------------------------------------------------------------------------

    async def on_details_changed(self, event: CustomerDetailsChanged, received: Received) -> None:
        at = received.envelope.time
        contact = {
            "email": event.email, "mobile": event.mobile, "locale": event.locale,
            "first_name": event.first_name, "last_name": event.last_name, "as_of": at,
        }

        def change(state: dict[str, Any]) -> dict[str, Any] | None:
            current = state.get("contact")
            if current is not None and current["as_of"] >= at:
                return None  # a newer snapshot is already known
            return {**state, "contact": contact}

        await self._update(event.customer_id, received, change)

    async def on_consent_given(self, event: ConsentGiven, received: Received) -> None:
        await self._consent(event.customer_id, event.purpose, event.channel, True, event.given_at, received)

    async def on_consent_withdrawn(self, event: ConsentWithdrawn, received: Received) -> None:
        await self._consent(event.customer_id, event.purpose, event.channel, False, event.withdrawn_at, received)

    async def _consent(self, customer_id: str, purpose: str, channel: str, given: bool, at: Any, received: Received) -> None:
        def change(state: dict[str, Any]) -> dict[str, Any] | None:
            consents = consent_rules.record(state.get("consents") or {}, purpose, channel, given, at)
            return None if consents is None else {**state, "consents": consents}

        await self._update(customer_id, received, change)

    async def _update(
        self, customer_id: str, received: Received, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> None:
        try:
            doc = await self.recipients.get(customer_id)
            if doc is None:
                state = change({})
                if state is not None:
                    await self.recipients.create(customer_id, state, applied=received.event_id)
                return
            if doc.has_applied(received.event_id):
                return
            state = change(doc.state)
            if state is not None:
                await self.recipients.update(doc, state, applied=received.event_id)
        except Exception as error:
            _retry_if_transient(error)
            raise


def _retry_if_transient(error: Exception) -> None:
    """Store errors that another attempt will likely not meet (a concurrent insert of the same
    projection, a busy SQLite file) become TransientError, which the consumer retries."""
    if is_duplicate_key(error) or store_busy(error):
        raise TransientError(f"{type(error).__name__}: {error}") from error
