"""Parking messages that cannot be handled, and re-publishing them once the cause is fixed.

A parked message keeps its exact bytes, key and headers, and gains headers that say why and where
it came from, and which consumer group parked it. (Header values travel as text: the publisher
takes no other kind, so a binary value is kept as its UTF-8 reading, with replacement characters
where it is not UTF-8, and a null one as empty.) ``python -m shared.messaging.dead_letters --help``
lists and replays them.

A replayed copy is meant for the group that parked it, and for no other: it carries that group in
``dlq-replay-for-group``, and consumers of other groups skip it (they handled the original, or
parked their own copy, which is replayed to them). Several groups read one topic, so without this
every group would receive again what one of them could not handle, once per group that parked it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from shared.events.registry import DLQ_SUFFIX, dead_letter_topic
from shared.logging import scrub
from shared.messaging.kafka import partitions_of, read_topic, stop_consumer

REASON = "dlq-reason"
REASON_KIND = "dlq-reason-kind"
ORIGINAL_TOPIC = "dlq-original-topic"
ORIGINAL_PARTITION = "dlq-original-partition"
ORIGINAL_OFFSET = "dlq-original-offset"
CONSUMER_GROUP = "dlq-consumer-group"
PARKED_AT = "dlq-parked-at"
ATTEMPTS = "dlq-attempts"
REPLAYED_FROM = "dlq-replayed-from"
#: On a copy cut short because the message could not be parked whole: why, and its original sizes.
TRUNCATED = "dlq-truncated"
#: On a replayed copy: the one consumer group that is to handle it (the group that parked it).
REPLAY_FOR_GROUP = "dlq-replay-for-group"
_OURS = {
    REASON, REASON_KIND, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, CONSUMER_GROUP, PARKED_AT, ATTEMPTS,
    TRUNCATED,
}
#: The most a truncated copy keeps of a message that could not be parked whole.
TRUNCATED_VALUE_BYTES = 64 * 1024
TRUNCATED_KEY_BYTES = 1024
#: What a replay sets afresh on each copy (a message may be parked and replayed more than once).
_REPLAY = {REPLAYED_FROM, REPLAY_FOR_GROUP}


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

    @property
    def consumer_group(self) -> str:
        return self.headers.get(CONSUMER_GROUP, "")


def park_headers(
    record: ConsumerRecord[Any, Any], *, reason: str, kind: str, group_id: str, attempts: int, at: datetime
) -> dict[str, str]:
    headers = {k: v for k, v in record_headers(record).items() if k not in _OURS and k != REPLAY_FOR_GROUP}
    headers.update(
        {
            # Handler errors may quote what they were given: no secret or address in clear here.
            REASON: scrub(reason)[:2000],
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


def truncated_copy(
    key: bytes | None, value: bytes | None, headers: dict[str, str], why: str
) -> tuple[bytes | None, bytes, dict[str, str]]:
    """What to park when a message cannot be parked whole (too large once the dead-letter headers
    are added, say): its first bytes, and the dead-letter headers, which point at the original by
    topic, partition and offset (it is still there, for the topic's retention), plus why."""
    value = value or b""
    kept = {k: v for k, v in headers.items() if k in _OURS}
    kept[TRUNCATED] = (
        f"parked cut short: value {len(value)} bytes (kept {min(len(value), TRUNCATED_VALUE_BYTES)}), "
        f"key {len(key or b'')} bytes, original headers dropped; parking it whole failed: {scrub(why)}"
    )[:2000]
    return (key[:TRUNCATED_KEY_BYTES] if key else key), value[:TRUNCATED_VALUE_BYTES], kept


def replay_target(record: ConsumerRecord[Any, Any]) -> str | None:
    """The consumer group a replayed copy is meant for (None: an original message, for everyone)."""
    for key, value in record.headers or ():
        if key == REPLAY_FOR_GROUP:
            return (value or b"").decode("utf-8", "replace")
    return None


async def replay(
    bootstrap: str,
    topic: str,
    *,
    group: str | None = None,
    progress_group: str | None = None,
    limit: int | None = None,
    stall_timeout_s: float = 30.0,
) -> int:
    """Re-publish what is parked in ``topic``'s dead-letter topic to the original topic, once each;
    returns how many were sent.

    Reads up to the end offsets seen at the start and stops there: a message that fails again is
    parked again after that end, and waits for the next replay instead of going round in a loop.
    ``group`` replays only what that consumer group parked. Partitions are assigned, not joined
    as a group member (no rebalance to wait for); progress is committed under ``progress_group``
    (``leaseline-dlq-replay[-<group>]``), so a second run sends only what was parked since.
    Consumers are idempotent, so a message replayed twice after a crash has one effect.
    """
    dlq = dead_letter_topic(topic) if not topic.endswith(DLQ_SUFFIX) else topic
    partitions = [TopicPartition(dlq, p) for p in await partitions_of(bootstrap, dlq)]
    if not partitions:
        return 0
    progress = progress_group or "leaseline-dlq-replay" + (f"-{group}" if group else "")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=progress, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await consumer.start()
    try:
        await producer.start()
        try:
            consumer.assign(partitions)
            end = await consumer.end_offsets(partitions)
            return await _replay_until(consumer, producer, dlq, end, group, limit, stall_timeout_s)
        finally:
            await producer.stop()
    finally:
        await stop_consumer(consumer)


async def _replay_until(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    dlq: str,
    end: dict[TopicPartition, int],
    group: str | None,
    limit: int | None,
    stall_timeout_s: float,
) -> int:
    loop = asyncio.get_running_loop()
    replayed = 0
    last_progress = loop.time()
    while limit is None or replayed < limit:
        # The position starts at the committed progress (or the beginning) and moves on with reads.
        pending = [tp for tp, stop in end.items() if await consumer.position(tp) < stop]
        if not pending:
            break
        if loop.time() - last_progress > stall_timeout_s:
            raise TimeoutError(f"replay of {dlq} made no progress for {stall_timeout_s}s (broker unreachable?)")
        batches = await consumer.getmany(*pending, timeout_ms=500, max_records=100)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= end[tp] or (limit is not None and replayed >= limit):
                    break  # parked after the start: the next replay's
                last_progress = loop.time()
                headers = record_headers(record)
                parked_by = headers.get(CONSUMER_GROUP, "")
                if group is None or parked_by == group:
                    original = headers.get(ORIGINAL_TOPIC) or dlq.removesuffix(DLQ_SUFFIX)
                    kept = [(k, v.encode()) for k, v in headers.items() if k not in _OURS and k not in _REPLAY]
                    kept.append((REPLAYED_FROM, f"{dlq}:{record.partition}:{record.offset}".encode()))
                    if parked_by:
                        kept.append((REPLAY_FOR_GROUP, parked_by.encode()))
                    await producer.send_and_wait(original, record.value, key=record.key, headers=kept)
                    replayed += 1
                await consumer.commit({tp: record.offset + 1})
    return replayed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List or replay parked (dead-lettered) messages.")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("list", help="print the parked messages of a topic with their reasons")
    show.add_argument("topic")
    again = sub.add_parser("replay", help="re-publish parked messages to their original topic")
    again.add_argument("topic")
    again.add_argument("--group", default=None, help="only the messages this consumer group parked")
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
    count = asyncio.run(replay(bootstrap, args.topic, group=args.group, limit=args.limit))
    print(f"replayed {count} message(s) from {dead_letter_topic(args.topic.removesuffix(DLQ_SUFFIX))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
