"""Notifications against the backbone it runs on, measured in one run.

- peak: emails per second from events published to Kafka until the SMTP server (the catcher, in
  a process of its own) accepted them, for a burst of events published as fast as possible;
- steady: p50/p99 of that same path (publish -> SMTP accepted) at half the peak rate;
- backbone: how fast the shared consumer alone reads the same events, with a handler doing nothing
  (the raw consume rate), and with the smallest idempotent handler (one store insert per event),
  so the figures can be compared on this machine.

The service runs in this process with its production code path: consumer, recording, delivery
worker, SMTP pool, outcome batches through the outbox relay. Logging is left at WARNING. The SMTP
server (the catcher) runs in a process of its own, as a mail server would (``bench.smtp_arrivals``),
and writes down when each message arrived; times on both sides are the machine's wall clock.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.backbone_bench import backbone
from bench.cleanup import remove_run
from services.notifications.bootstrap import build
from services.notifications.domain.planning import delivery_id
from services.notifications.settings import NotificationSettings
from shared.crypto import Keyring
from shared.events import Envelope, PasswordChanged
from shared.messaging import Delivery
from shared.runtime.service import ServiceRuntime
from shared.settings import ServiceSettings
from shared.storage import DocumentStore
from shared.storage.mongo import is_duplicate_key

PEAK_EVENTS = int(os.environ.get("NOTIFICATIONS_BENCH_EVENTS", "6000"))
STEADY_SECONDS = float(os.environ.get("NOTIFICATIONS_BENCH_STEADY_S", "15"))
TARGETS = {"emails_per_s": 500.0, "share_of_backbone": 0.5, "p99_ms": 250.0}


class Arrivals:
    """When each delivery reached the SMTP server (by the id in its header), read from the file
    the SMTP server process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.at: dict[str, float] = {}
        self._offset = 0
        self._partial = b""

    def refresh(self) -> None:
        with self.path.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            notification, _, at = line.decode().partition(" ")
            self.at[notification] = float(at)

    def count(self, ids: Any) -> int:
        self.refresh()
        return sum(1 for i in ids if i in self.at)


async def smtp_server(arrivals: Path) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.smtp_arrivals", str(arrivals), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    port = int((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
    return process, port


def changed(i: int, run: str) -> tuple[PasswordChanged, str]:
    email = f"c{i}.{run}@bench.example"
    locale = ("fr-FR", "nl-BE", "fr-CA", "nl-NL", "en", "fr-BE")[i % 6]
    return PasswordChanged(customer_id=f"cus_{run}_{i}", email=email, locale=locale, first_name="Camille",
                           reason="reset"), email


async def publish_burst(producer: AIOKafkaProducer, topic: str, envelopes: list[Envelope]) -> float:
    started = time.time()
    futures = [await producer.send(topic, e.to_bytes(), key=e.subject.encode()) for e in envelopes]
    await asyncio.gather(*futures)
    return started


async def measure(kafka_bootstrap: str, mongodb_uri: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    arrivals = Arrivals(Path(tempfile.mkdtemp(prefix="leaseline-bench-")) / "arrivals")
    arrivals.path.touch()
    smtp, smtp_port = await smtp_server(arrivals.path)
    settings = NotificationSettings(
        kafka_bootstrap_servers=kafka_bootstrap, mongodb_uri=mongodb_uri, mongodb_database=f"bench_ntf_{run}",
        topic_namespace=f"benchn{run}.", http_port=0, smtp_port=smtp_port, smtp_pool_size=8,
        event_secret_keys=Keyring.generate_spec("bench"), portal_base_url="https://portal.leaseline.example",
        delivery_concurrency=int(os.environ.get("NB_CONCURRENCY", "32")),
        delivery_queue_max=int(os.environ.get("NB_QUEUE", "300")),
        consumer_batch_max=500, log_level="WARNING",
    )
    service = build(settings)
    await service.runtime.start()
    topic = f"{settings.topic_namespace}customer.password_changed"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
    await producer.start()
    results: dict[str, Any] = {}
    try:
        # Warm-up: connections open, templates compiled, consumer assigned.
        warm, warm_ids = [], []
        for i in range(200):
            event, email = changed(i, run + "w")
            warm.append(Envelope.wrap(event, source="bench", time=service.runtime.clock.now()))
            warm_ids.append(delivery_id(warm[-1].id, "email", email))
        await publish_burst(producer, topic, warm)
        await _until(lambda: arrivals.count(warm_ids) == len(warm_ids), 120)

        # Peak: a burst published as fast as possible, until every email is accepted.
        burst, ids = [], []
        for i in range(PEAK_EVENTS):
            event, email = changed(i, run)
            envelope = Envelope.wrap(event, source="bench", time=service.runtime.clock.now())
            burst.append(envelope)
            ids.append(delivery_id(envelope.id, "email", email))
        started = await publish_burst(producer, topic, burst)
        await _until(lambda: arrivals.count(ids) == len(ids), 600)
        peak_s = max(arrivals.at[i] for i in ids) - started
        peak = PEAK_EVENTS / peak_s
        results["peak_emails_per_s"] = peak

        # Steady: half the peak, paced every 20 ms; latency from publish to SMTP accepted.
        rate = peak / 2
        sent_at: dict[str, float] = {}
        ticks = int(STEADY_SECONDS / 0.02)
        begin = time.perf_counter()
        n = 0
        for tick in range(ticks):
            for _ in range(int(rate * 0.02 * (tick + 1)) - n):  # exactly ``rate`` per second over time
                event, email = changed(n, run + "s")
                envelope = Envelope.wrap(event, source="bench", time=service.runtime.clock.now())
                await producer.send(topic, envelope.to_bytes(), key=envelope.subject.encode())
                sent_at[delivery_id(envelope.id, "email", email)] = time.time()
                n += 1
            await asyncio.sleep(max(0.0, begin + (tick + 1) * 0.02 - time.perf_counter()))
        await producer.flush()
        await _until(lambda: arrivals.count(sent_at) == len(sent_at), 600)
        latencies = sorted((arrivals.at[i] - t) * 1000 for i, t in sent_at.items())
        results["steady_rate_per_s"] = n / (time.perf_counter() - begin)
        results["steady_p50_ms"] = statistics.median(latencies)
        results["steady_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1]
        results["steady_messages"] = n
    finally:
        await producer.stop()
        await service.runtime.stop()
        smtp.terminate()
        await smtp.wait()

    backbone_rate = (await backbone(kafka_bootstrap, mongodb_uri, steady_s=None))["backbone_peak_events_per_s"]
    results["backbone_events_per_s"] = backbone_rate
    results["share_of_backbone"] = results["peak_emails_per_s"] / backbone_rate
    raw = await backbone_consume_rate(kafka_bootstrap, mongodb_uri, settings, topic, PEAK_EVENTS)
    results["raw_consume_per_s"] = raw
    results["share_of_raw_consume"] = results["peak_emails_per_s"] / raw
    idempotent = await backbone_consume_rate(kafka_bootstrap, mongodb_uri, settings, topic, PEAK_EVENTS, store=True)
    results["idempotent_consume_per_s"] = idempotent
    results["share_of_idempotent_consume"] = results["peak_emails_per_s"] / idempotent
    results["events"] = PEAK_EVENTS
    await remove_run(kafka_bootstrap, mongodb_uri, topic_namespace=settings.topic_namespace,
                     database=settings.mongodb_database)
    results["target_emails_per_s_met"] = results["peak_emails_per_s"] >= TARGETS["emails_per_s"]
    results["target_share_met"] = results["share_of_backbone"] >= TARGETS["share_of_backbone"]
    results["target_p99_met"] = results["steady_p99_ms"] < TARGETS["p99_ms"]
    return results


async def backbone_consume_rate(bootstrap: str, mongodb_uri: str, base: NotificationSettings, topic: str,
                                count: int, *, store: bool = False) -> float:
    """The shared consumer alone over the events already published: a handler that does nothing
    (the raw rate), or, with ``store``, the smallest idempotent handler the architecture allows
    (one DocumentStore insert that records the event as applied)."""
    settings = ServiceSettings(
        service_name=f"bench-backbone-{uuid.uuid4().hex[:6]}", kafka_bootstrap_servers=bootstrap,
        mongodb_uri=mongodb_uri, mongodb_database=base.mongodb_database, topic_namespace=base.topic_namespace,
        http_port=0, consumer_batch_max=base.consumer_batch_max,
    )
    runtime = ServiceRuntime(settings)
    consumer = runtime.consumer()
    applied = DocumentStore(runtime.db, f"applied_{uuid.uuid4().hex[:6]}")
    seen: list[float] = []

    async def handle(event: PasswordChanged, delivery: Delivery) -> None:
        if store:
            try:
                await applied.create(delivery.event_id, {"customer_id": event.customer_id}, applied=delivery.event_id)
            except Exception as error:
                if not is_duplicate_key(error):
                    raise
        seen.append(time.perf_counter())

    consumer.add(PasswordChanged, handle)
    await runtime.start()
    try:
        await _until(lambda: len(seen) >= count + 200, 600)
    finally:
        await runtime.stop()
    window = seen[: count + 200]
    return (len(window) - 1) / (window[-1] - window[0])


async def _until(condition: Any, timeout: float) -> None:
    # Every figure comes from the arrival times the SMTP server wrote down, not from when this
    # loop notices: it looks every 0.2 s, so as not to take CPU from the service it measures.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not complete in time")
        await asyncio.sleep(0.2)

