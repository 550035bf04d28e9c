"""Parking a source event whose delivery could not be completed, next to the consumer's own parked
messages: same dead-letter topic, same headers, so ``python -m shared.messaging.dead_letters``
lists and replays it like any other."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.events.envelope import Envelope
from shared.events.registry import dead_letter_topic
from shared.messaging.dead_letters import (
    ATTEMPTS,
    CONSUMER_GROUP,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    PARKED_AT,
    REASON,
    REASON_KIND,
)


class DeadLetterPublisher:
    def __init__(self, broker: Any) -> None:
        self._broker = broker

    async def park(
        self, envelope: dict[str, Any], origin: dict[str, Any], *, reason: str, kind: str, attempts: int, at: datetime
    ) -> str:
        event = Envelope.model_validate(envelope)
        topic = dead_letter_topic(origin["topic"])
        headers = {
            **event.kafka_headers(),
            REASON: reason[:2000],
            REASON_KIND: kind,
            ORIGINAL_TOPIC: origin["topic"],
            ORIGINAL_PARTITION: str(origin.get("partition", "")),
            ORIGINAL_OFFSET: str(origin.get("offset", "")),
            CONSUMER_GROUP: origin.get("group", ""),
            PARKED_AT: at.isoformat(),
            ATTEMPTS: str(attempts),
        }
        await self._broker.publish(event.to_bytes(), topic, key=event.subject.encode(), headers=headers)
        return topic
