"""The backbone against its physical limits, measured in one run.

- raw aiokafka produce and consume throughput for 1 KiB messages (acks=all, idempotent producer);
- raw single-document insert rate of the store (one insert per round trip, 16 concurrent writers);
- the backbone: outbox write -> relay -> Kafka -> idempotent consumer, peak rate, then p50/p99
  end-to-end latency at a steady load of half that peak.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

from bench.cleanup import remove_run, topics_to_delete_later
from shared.events import CustomerActivated, Envelope
from shared.messaging import Delivery
from shared.messaging.topics import TopicKeeper
from shared.runtime.service import ServiceRuntime
from shared.settings import ServiceSettings

WRITERS = 16
TARGETS = {"backbone_vs_store_insert": 0.25, "backbone_p99_ms": 200.0}


async def kafka_raw(bootstrap: str, messages: int = 20_000) -> dict[str, float]:
    namespace = f"bench{uuid.uuid4().hex[:8]}."
    topic = f"{namespace}raw"
    await TopicKeeper(bootstrap, 3, 1).ensure([topic])
    payload = os.urandom(1024)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    futures = [await producer.send(topic, payload, key=str(i % 64).encode()) for i in range(messages)]
    await asyncio.gather(*futures)
    produce_s = time.perf_counter() - started
    await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest"
    )
    await consumer.start()
    started, seen = time.perf_counter(), 0
    while seen < messages:
        for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
            seen += len(records)
    consume_s = time.perf_counter() - started
    await consumer.stop()
    topics_to_delete_later(bootstrap, namespace)
    return {"kafka_produce_msgs_per_s": messages / produce_s, "kafka_consume_msgs_per_s": messages / consume_s}


async def store_raw(mongodb_uri: str, documents: int = 3000) -> dict[str, float]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    db = client[f"bench_{uuid.uuid4().hex[:6]}"]
    body = "x" * 400
    counter = iter(range(documents))

    async def writer() -> None:
        for i in counter:
            await db.raw.insert_one({"_id": i, "body": body})

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    elapsed = time.perf_counter() - started
    await client.drop_database(db.name)
    await client.close()
    return {"store_insert_docs_per_s": documents / elapsed}


class Backbone:
    """A writer and a consumer in one process, so send and apply times share a clock."""

    def __init__(self, bootstrap: str, mongodb_uri: str) -> None:
        unique = uuid.uuid4().hex[:8]
        self.settings = ServiceSettings(
            service_name="bench", kafka_bootstrap_servers=bootstrap, mongodb_uri=mongodb_uri,
            mongodb_database=f"bench_{unique}", topic_namespace=f"bench{unique}.", relay_idle_poll_s=0.05,
        )
        self.runtime = ServiceRuntime(self.settings)
        self.accounts = self.runtime.store("accounts")
        tallies = self.runtime.store("tallies")
        consumer = self.runtime.consumer("tally")
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.applied = 0
        self.all_applied = asyncio.Event()
        self.expected = 0

        @consumer.on(CustomerActivated)
        async def apply(event: CustomerActivated, delivery: Delivery) -> None:
            tally = await tallies.get(event.customer_id)
            if tally is None:
                await tallies.create(event.customer_id, {"count": 1}, applied=delivery.event_id)
            elif not tally.has_applied(delivery.event_id):
                await tallies.update(tally, {"count": tally.state["count"] + 1}, applied=delivery.event_id)
            else:
                return
            self.latencies.append(time.perf_counter() - self.sent_at.pop(event.customer_id))
            self.applied += 1
            if self.applied >= self.expected:
                self.all_applied.set()

    async def write(self, customer_id: str) -> None:
        envelope = Envelope.wrap(CustomerActivated(customer_id=customer_id), source="bench", time=self.runtime.clock.now())
        self.sent_at[customer_id] = time.perf_counter()
        await self.accounts.create(customer_id, {"status": "active"}, [envelope])

    async def peak(self, events: int, prefix: str = "p") -> float:
        self.expected += events
        ids = iter(f"{prefix}{i}" for i in range(events))

        async def writer() -> None:
            for customer_id in ids:
                await self.write(customer_id)

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(WRITERS)))
        await asyncio.wait_for(self.all_applied.wait(), 600)
        return events / (time.perf_counter() - started)

    async def steady(self, rate: float, seconds: float) -> list[float]:
        self.latencies.clear()
        self.all_applied.clear()
        events = int(rate * seconds)
        self.expected += events
        started = time.perf_counter()
        tasks = []
        for i in range(events):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.write(f"s{i}")))
        await asyncio.gather(*tasks)
        await asyncio.wait_for(self.all_applied.wait(), 600)
        return list(self.latencies)


async def backbone(
    bootstrap: str, mongodb_uri: str, events: int = 3000, steady_s: float | None = 15.0, warm_up: int = 3000
) -> dict[str, float]:
    """Peak events per second through the backbone, then (unless ``steady_s`` is None) p50/p99 at
    half that rate, after ``warm_up`` events that are not measured: a broker just started runs
    JIT-cold code for a while (its first suite measured a p99 twice as high as the next ones)."""
    bench = Backbone(bootstrap, mongodb_uri)
    await bench.runtime.start()
    latencies: list[float] = []
    try:
        await bench.runtime.topics.ensure([f"{bench.settings.topic_namespace}customer.activated"])
        if warm_up:
            await bench.peak(warm_up, prefix="w")
        peak = await bench.peak(events)
        if steady_s is not None:
            latencies = sorted(await bench.steady(peak / 2, steady_s))
    finally:
        await bench.runtime.stop()
        await remove_run(bootstrap, mongodb_uri, topic_namespace=bench.settings.topic_namespace,
                         database=bench.settings.mongodb_database)
    if not latencies:
        return {"backbone_peak_events_per_s": peak}
    return {
        "backbone_peak_events_per_s": peak,
        "backbone_steady_events_per_s": peak / 2,
        "backbone_p50_ms": statistics.median(latencies) * 1000,
        "backbone_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def measure(kafka_bootstrap: str, mongodb_uri: str) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    figures |= await kafka_raw(kafka_bootstrap)
    figures |= await store_raw(mongodb_uri)
    figures |= await backbone(kafka_bootstrap, mongodb_uri)
    figures["backbone_vs_store_insert"] = figures["backbone_peak_events_per_s"] / figures["store_insert_docs_per_s"]
    figures["backbone_vs_kafka_consume"] = figures["backbone_peak_events_per_s"] / figures["kafka_consume_msgs_per_s"]
    # The steady phase holds half the peak for 15 s: what the backbone sustains, at the least.
    figures["backbone_steady_vs_store_insert"] = (
        figures["backbone_steady_events_per_s"] / figures["store_insert_docs_per_s"]
    )
    figures["target_store_share_met"] = figures["backbone_vs_store_insert"] >= TARGETS["backbone_vs_store_insert"]
    figures["target_p99_met"] = figures["backbone_p99_ms"] < TARGETS["backbone_p99_ms"]
    return figures
