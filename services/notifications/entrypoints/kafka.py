"""Kafka subscriptions: every event of the message table, and the events the projections need."""

from __future__ import annotations

from services.notifications.domain.messages import MessageTable
from services.notifications.service_layer.recording import Recorder
from shared.events import ConsentGiven, ConsentWithdrawn, CustomerDetailsChanged, event_class
from shared.messaging import EventConsumer


def subscribe(consumer: EventConsumer, recorder: Recorder, table: MessageTable) -> None:
    for event_type in table.event_types:
        consumer.add(event_class(event_type, 1), recorder.on_event)
    consumer.add(CustomerDetailsChanged, recorder.on_details_changed)
    consumer.add(ConsentGiven, recorder.on_consent_given)
    consumer.add(ConsentWithdrawn, recorder.on_consent_withdrawn)
