"""The Kafka connection every service uses: FastStream's broker over aiokafka, configured so that
publishing is idempotent and acknowledged by all in-sync replicas."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from shared.settings import ServiceSettings


def make_broker(settings: ServiceSettings, *, graceful_timeout: float = 15.0) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"leaseline-{settings.service_name}",
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        request_timeout_ms=30_000,
        # Topics come from their declared spec (shared.messaging.topics), never from a first publish
        # or subscription: the broker refuses that too, where we run it, but not every broker does.
        allow_auto_create_topics=False,
        graceful_timeout=graceful_timeout,
        logger=None,
        apply_types=False,
    )


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop an aiokafka consumer that has no group.

    aiokafka 0.14 cancels an internal task of group-less consumers on stop; stopped right after
    start, that task was never run and the cancellation escapes ``stop()``. Swallow only that one,
    never a cancellation aimed at us.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def partitions_of(bootstrap_servers: str, topic: str) -> list[int]:
    """The partition ids of ``topic`` ([] when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if not described or described[0].get("error_code"):
        return []
    return sorted(p["partition"] for p in described[0]["partitions"])


async def read_topic(bootstrap_servers: str, topic: str, *, timeout_s: float = 10.0) -> list[Any]:
    """Every record currently in ``topic``, oldest first per partition; commits nothing.

    Reads up to the end offsets seen at the start (or until ``timeout_s``): what is appended
    meanwhile is not waited for."""
    partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap_servers, topic)]
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if all([await consumer.position(tp) >= end[tp] for tp in partitions]):
                break
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records += batch
        return records
    finally:
        await stop_consumer(consumer)
