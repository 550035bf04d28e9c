"""Parking messages that cannot be handled, and re-publishing them once the cause is fixed.

A parked message keeps its exact bytes, key and headers, and gains headers that say why and where
it came from. ``python -m shared.messaging.dead_letters --help`` lists and replays them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from shared.events.registry import DLQ_SUFFIX, dead_letter_topic
from shared.messaging.kafka import read_topic

REASON = "dlq-reason"
REASON_KIND = "dlq-reason-kind"
ORIGINAL_TOPIC = "dlq-original-topic"
ORIGINAL_PARTITION = "dlq-original-partition"
ORIGINAL_OFFSET = "dlq-original-offset"
CONSUMER_GROUP = "dlq-consumer-group"
PARKED_AT = "dlq-parked-at"
ATTEMPTS = "dlq-attempts"
REPLAYED_FROM = "dlq-replayed-from"
_OURS = {REASON, REASON_KIND, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, CONSUMER_GROUP, PARKED_AT, ATTEMPTS}


def record_headers(record: ConsumerRecord[Any, Any]) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (record.headers or ())}


@dataclass(frozen=True)
class ParkedMessage:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    dlq_offset: int

    @property
    def reason(self) -> str:
        return self.headers.get(REASON, "")

    @property
    def original_topic(self) -> str:
        return self.headers.get(ORIGINAL_TOPIC, "")


def park_headers(
    record: ConsumerRecord[Any, Any], *, reason: str, kind: str, group_id: str, attempts: int, at: datetime
) -> dict[str, str]:
    headers = {k: v for k, v in record_headers(record).items() if k not in _OURS}
    headers.update(
        {
            REASON: reason[:2000],
            REASON_KIND: kind,
            ORIGINAL_TOPIC: record.topic,
            ORIGINAL_PARTITION: str(record.partition),
            ORIGINAL_OFFSET: str(record.offset),
            CONSUMER_GROUP: group_id,
            PARKED_AT: at.isoformat(),
            ATTEMPTS: str(attempts),
        }
    )
    return headers


async def read_parked(bootstrap: str, topic: str, *, timeout_s: float = 5.0) -> list[ParkedMessage]:
    """Everything currently in ``topic``'s dead-letter topic, oldest first (reads, commits nothing)."""
    dlq = topic if topic.endswith(DLQ_SUFFIX) else dead_letter_topic(topic)
    records = await read_topic(bootstrap, dlq, timeout_s=timeout_s)
    return [ParkedMessage(r.key, r.value, record_headers(r), r.offset) for r in records]


async def replay(bootstrap: str, topic: str, *, group_id: str = "leaseline-dlq-replay", limit: int | None = None) -> int:
    """Re-publish parked messages of ``topic`` to their original topic, once each.

    Progress is committed under ``group_id``, so a second run only sends what was parked since.
    Consumers are idempotent, so a message replayed twice after a crash has one effect.
    """
    dlq = dead_letter_topic(topic) if not topic.endswith(DLQ_SUFFIX) else topic
    consumer = AIOKafkaConsumer(
        dlq, bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    replayed = 0
    try:
        while limit is None or replayed < limit:
            batches = await consumer.getmany(timeout_ms=2000, max_records=100)
            if not batches:
                break
            for tp, records in batches.items():
                for record in records:
                    if limit is not None and replayed >= limit:
                        break
                    headers = record_headers(record)
                    original = headers.get(ORIGINAL_TOPIC) or dlq.removesuffix(DLQ_SUFFIX)
                    kept = [(k, v.encode()) for k, v in headers.items() if k not in _OURS]
                    kept.append((REPLAYED_FROM, f"{dlq}:{record.partition}:{record.offset}".encode()))
                    await producer.send_and_wait(original, record.value, key=record.key, headers=kept)
                    await consumer.commit({tp: record.offset + 1})
                    replayed += 1
        return replayed
    finally:
        await producer.stop()
        await consumer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List or replay parked (dead-lettered) messages.")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("list", help="print the parked messages of a topic with their reasons")
    show.add_argument("topic")
    again = sub.add_parser("replay", help="re-publish parked messages to their original topic")
    again.add_argument("topic")
    again.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    from shared.settings import ServiceSettings

    bootstrap = args.bootstrap or ServiceSettings().kafka_bootstrap_servers
    if args.command == "list":
        for message in asyncio.run(read_parked(bootstrap, args.topic)):
            print(
                f"#{message.dlq_offset} from {message.original_topic}"
                f"[{message.headers.get(ORIGINAL_PARTITION)}]@{message.headers.get(ORIGINAL_OFFSET)}"
                f" group={message.headers.get(CONSUMER_GROUP)}: {message.reason}"
            )
        return 0
    count = asyncio.run(replay(bootstrap, args.topic, limit=args.limit))
    print(f"replayed {count} message(s) from {dead_letter_topic(args.topic.removesuffix(DLQ_SUFFIX))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
