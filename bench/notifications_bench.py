"""Notifications against the backbone it runs on, measured in one run.

- peak: emails per second from events published to Kafka until the SMTP server (the catcher, in
  a process of its own) accepted them, for a burst of events published as fast as possible; three
  times, each next to the backbone's peak (outbox, relay, Kafka, idempotent consumer) measured
  seconds before or after it, and the share of the backbone is the median of those pairs;
- sustained: the same for one burst of 20,000 events (about forty seconds here): the rate the
  500-per-second target is judged on;
- steady: p50/p99 of that same path (publish -> SMTP accepted) at half the peak rate;
- one replica: the peak again, once all but one replica have stopped;
- backbone: how fast the shared consumer alone reads the same events, with a handler doing nothing
  (the raw consume rate), and with the smallest idempotent handler (one store insert per event),
  so the figures can be compared on this machine. The share of the backbone is reported against
  all three (``share_of_backbone`` against the whole backbone path, ``share_of_raw_consume``,
  ``share_of_idempotent_consume``); the 50 % target is judged on the first, the most favourable.

The service runs as it is deployed: its own command (``python -m services.notifications``),
configured by environment, one replica per core by default (``NOTIFICATIONS_BENCH_REPLICAS``),
all in one consumer group over topics of two partitions per replica. A Python process uses one
core: on two cores, one replica spent 86 % of its core and left the machine a third idle (about
400 emails/s where two replicas delivered 530 to 610 with the same CPU per email). Logging is
left at WARNING. The SMTP server (the catcher) runs in a process of its own, as a mail server
would (``bench.smtp_arrivals``), and writes down when each message arrived; times on both sides
are the machine's wall clock. Every notification must arrive exactly once: a run in which one
arrives twice or never fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bench.backbone_bench import backbone
from bench.cleanup import remove_run
from services.notifications.domain.planning import delivery_id
from shared.clock import SystemClock
from shared.crypto import Keyring
from shared.events import Envelope, PasswordChanged
from shared.messaging import Delivery
from shared.runtime.service import ServiceRuntime
from shared.settings import ServiceSettings
from shared.storage import DocumentStore
from shared.storage.mongo import is_duplicate_key

PEAK_EVENTS = int(os.environ.get("NOTIFICATIONS_BENCH_EVENTS", "6000"))
SUSTAINED_EVENTS = int(os.environ.get("NOTIFICATIONS_BENCH_SUSTAINED_EVENTS", "20000"))
STEADY_SECONDS = float(os.environ.get("NOTIFICATIONS_BENCH_STEADY_S", "15"))
REPLICAS = int(os.environ.get("NOTIFICATIONS_BENCH_REPLICAS", str(os.cpu_count() or 1)))
ROUNDS = int(os.environ.get("NOTIFICATIONS_BENCH_ROUNDS", "3"))  # peak and backbone pairs
TARGETS = {"emails_per_s": 500.0, "share_of_backbone": 0.5, "p99_ms": 250.0}
CONSUMER_BATCH_MAX = 500


class Arrivals:
    """When each delivery reached the SMTP server (by the id in its header), read from the file
    the SMTP server process appends to; and which arrived more than once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.at: dict[str, float] = {}
        self.twice: list[str] = []
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
            if notification in self.at:
                self.twice.append(notification)
            else:
                self.at[notification] = float(at)

    def count(self, ids: Iterable[str]) -> int:
        self.refresh()
        return sum(1 for i in ids if i in self.at)


async def smtp_server(arrivals: Path) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.smtp_arrivals", str(arrivals), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    port = int((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
    return process, port


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Replicas:
    """The service's processes, started with its own command and stopped with SIGTERM."""

    def __init__(self, environment: dict[str, str], count: int) -> None:
        self.environment = environment
        self.count = count
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        ports = [_free_port() for _ in range(self.count)]
        for port in ports:
            self.processes.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.notifications", env={**self.environment, "HTTP_PORT": str(port)},
                cwd=Path(__file__).resolve().parents[1],
            ))
        for process, port in zip(self.processes, ports, strict=True):
            await _until(lambda process=process, port=port: _ready(process, port), 120, every=0.25)

    async def settled(self, *, idle_share: float = 0.1, window_s: float = 0.5, timeout: float = 30.0) -> None:
        """Until the replicas use less than ``idle_share`` of a core each over ``window_s``: the
        work a burst leaves behind once its emails are accepted (outcomes written and published,
        finished deliveries archived) is done, and a measurement that follows starts from rest."""
        deadline = time.monotonic() + timeout
        before = _cpu_seconds(self.processes)
        while time.monotonic() < deadline:
            await asyncio.sleep(window_s)
            now = _cpu_seconds(self.processes)
            if now is None or before is None:  # no /proc here: a fixed pause instead
                await asyncio.sleep(5)
                return
            if all(b - a < idle_share * window_s for a, b in zip(before, now, strict=True)):
                return
            before = now

    async def stop(self, keep: int = 0) -> None:
        leaving, self.processes = self.processes[keep:], self.processes[:keep]
        for process in leaving:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in leaving:
            await process.wait()


def _cpu_seconds(processes: list[asyncio.subprocess.Process]) -> list[float] | None:
    """CPU time (user + system) each process used so far, from Linux's /proc; None elsewhere."""
    try:
        fields = [Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split() for p in processes]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return [(int(f[11]) + int(f[12])) / ticks for f in fields]


def _ready(process: asyncio.subprocess.Process, port: int) -> bool:
    if process.returncode is not None:
        raise RuntimeError(f"a notifications replica exited with status {process.returncode} before it was ready")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


async def group_settled(kafka_bootstrap: str, group: str, members: int, timeout: float = 120) -> None:
    """Until the consumer group is stable with ``members`` members: a replica joining later would
    pause everyone's consumption (a rebalance) in the middle of a measurement."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            (response,) = await admin.describe_consumer_groups([group])
            _, _, state, _, _, current = response.groups[0][:6]
            if state == "Stable" and len(current) == members:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group} is {state} with {len(current)} members, not {members}")
            await asyncio.sleep(0.25)
    finally:
        await admin.close()


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
    namespace, database, service_name = f"benchn{run}.", f"bench_ntf_{run}", f"notifications-bench-{run}"
    environment = {
        **os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "MONGODB_URI": mongodb_uri,
        "MONGODB_DATABASE": database, "TOPIC_NAMESPACE": namespace, "SERVICE_NAME": service_name,
        "TOPIC_PARTITIONS": str(2 * REPLICAS), "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_port),
        "SMTP_POOL_SIZE": "8", "EVENT_SECRET_KEYS": Keyring.generate_spec("bench"),
        "PORTAL_BASE_URL": "https://portal.leaseline.example", "DELIVERY_CONCURRENCY": "32",
        "DELIVERY_QUEUE_MAX": "300", "CONSUMER_BATCH_MAX": str(CONSUMER_BATCH_MAX), "LOG_LEVEL": "WARNING",
    }
    replicas = Replicas(environment, REPLICAS)
    topic = f"{namespace}customer.password_changed"
    clock = SystemClock()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
    results: dict[str, Any] = {"replicas": REPLICAS, "partitions": 2 * REPLICAS}
    sent: list[str] = []  # every notification the run asked for

    def notification(i: int, tag: str) -> tuple[Envelope, str]:
        """The ``i``-th event of a phase and the id of the email it must lead to."""
        event, email = changed(i, run + tag)
        envelope = Envelope.wrap(event, source="bench", time=clock.now())
        return envelope, delivery_id(envelope.id, "email", email)

    def burst_of(count: int, tag: str) -> tuple[list[Envelope], list[str]]:
        pairs = [notification(i, tag) for i in range(count)]
        ids = [notification_id for _, notification_id in pairs]
        sent.extend(ids)
        return [envelope for envelope, _ in pairs], ids

    async def peak(tag: str, events: int = PEAK_EVENTS) -> float:
        """A burst published as fast as possible, until every email is accepted."""
        burst, ids = burst_of(events, tag)
        started = await publish_burst(producer, topic, burst)
        await _until(lambda: arrivals.count(ids) == len(ids), 600)
        return events / (max(arrivals.at[i] for i in ids) - started)

    async def warm_up(tag: str) -> None:
        """Connections open, templates compiled, every replica with its partitions."""
        await group_settled(kafka_bootstrap, f"leaseline-{service_name}", len(replicas.processes))
        warm, warm_ids = burst_of(200, tag)
        await publish_burst(producer, topic, warm)
        await _until(lambda: arrivals.count(warm_ids) == len(warm_ids), 120)
        await replicas.settled()

    try:  # the run's database and topics go, whatever happens
        await producer.start()
        try:
            await replicas.start()
            await warm_up("w")
            # Peak and backbone side by side, in alternating order: this machine's speed drifts by
            # tens of percent from one minute to the next, so each peak is compared with a backbone
            # measured within seconds of it, and the headline is the median of the rounds.
            peaks, backbones = [], []
            for round_ in range(ROUNDS):
                if round_ % 2:
                    backbones.append(await backbone_peak(kafka_bootstrap, mongodb_uri))
                peaks.append(await peak(f"r{round_}"))
                await replicas.settled()
                if not round_ % 2:
                    backbones.append(await backbone_peak(kafka_bootstrap, mongodb_uri))
            shares = [p / b for p, b in zip(peaks, backbones, strict=True)]
            results["peak_emails_per_s"] = statistics.median(peaks)
            results["backbone_events_per_s"] = statistics.median(backbones)
            results["share_of_backbone"] = statistics.median(shares)
            results["peak_per_round"] = [round(p, 1) for p in peaks]
            results["backbone_per_round"] = [round(b, 1) for b in backbones]
            results["share_per_round"] = [round(share, 3) for share in shares]

            # Steady: half the peak, paced every 20 ms; latency from publish to SMTP accepted.
            rate = results["peak_emails_per_s"] / 2
            sent_at: dict[str, float] = {}
            ticks = int(STEADY_SECONDS / 0.02)
            begin = time.perf_counter()
            n = 0
            for tick in range(ticks):
                for _ in range(int(rate * 0.02 * (tick + 1)) - n):  # exactly ``rate`` per second over time
                    envelope, notification_id = notification(n, "s")
                    await producer.send(topic, envelope.to_bytes(), key=envelope.subject.encode())
                    sent_at[notification_id] = time.time()
                    n += 1
                await asyncio.sleep(max(0.0, begin + (tick + 1) * 0.02 - time.perf_counter()))
            await producer.flush()
            sent.extend(sent_at)
            await _until(lambda: arrivals.count(sent_at) == len(sent_at), 600)
            latencies = sorted((arrivals.at[i] - t) * 1000 for i, t in sent_at.items())
            results["steady_rate_per_s"] = n / (time.perf_counter() - begin)
            results["steady_p50_ms"] = statistics.median(latencies)
            results["steady_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1]
            results["steady_messages"] = n

            # Sustained: one long burst (about forty seconds here), so that the rate is not that of
            # a few seconds the broker, the store and the catcher happened to leave free. After the
            # steady phase: the store's and the broker's work after 20,000 messages (checkpoints,
            # segment flushes) lasts well beyond them, and would land on the steady phase's latencies.
            await replicas.settled()
            results["sustained_emails_per_s"] = await peak("long", SUSTAINED_EVENTS)
            results["sustained_events"] = SUSTAINED_EVENTS

            if REPLICAS > 1:  # what one process alone does, on the same machine, in the same run
                await replicas.stop(keep=1)
                await warm_up("w1")
                results["peak_one_replica_emails_per_s"] = await peak("p1")
            await asyncio.sleep(1)  # anything sent twice would arrive now
            arrivals.refresh()
            results["emails_sent_twice"] = len(arrivals.twice)
            results["emails_never_sent"] = sum(1 for i in sent if i not in arrivals.at)
        finally:
            await producer.stop()
            await replicas.stop()
            smtp.terminate()
            await smtp.wait()
        if results["emails_sent_twice"] or results["emails_never_sent"]:
            raise AssertionError(f"every email must arrive exactly once: {results}")

        raw = await backbone_consume_rate(kafka_bootstrap, mongodb_uri, namespace, database, topic, len(sent))
        results["raw_consume_per_s"] = raw
        results["share_of_raw_consume"] = results["peak_emails_per_s"] / raw
        idempotent = await backbone_consume_rate(kafka_bootstrap, mongodb_uri, namespace, database, topic, len(sent),
                                                 store=True)
        results["idempotent_consume_per_s"] = idempotent
        results["share_of_idempotent_consume"] = results["peak_emails_per_s"] / idempotent
        results["events"] = PEAK_EVENTS
    finally:
        await remove_run(kafka_bootstrap, mongodb_uri, topic_namespace=namespace, database=database)
    results["target_emails_per_s_met"] = results["sustained_emails_per_s"] >= TARGETS["emails_per_s"]
    results["target_share_met"] = results["share_of_backbone"] >= TARGETS["share_of_backbone"]
    results["target_p99_met"] = results["steady_p99_ms"] < TARGETS["p99_ms"]
    return results


async def backbone_peak(kafka_bootstrap: str, mongodb_uri: str) -> float:
    """The backbone's peak (outbox, relay, Kafka, idempotent consumer: bench/backbone_bench.py),
    in this process, while the replicas wait idle for the next burst."""
    return (await backbone(kafka_bootstrap, mongodb_uri, steady_s=None))["backbone_peak_events_per_s"]


async def backbone_consume_rate(bootstrap: str, mongodb_uri: str, namespace: str, database: str, topic: str,
                                count: int, *, store: bool = False) -> float:
    """The shared consumer alone over the events already published (``count`` of them, on
    ``topic``): a handler that does nothing (the raw rate), or, with ``store``, the smallest
    idempotent handler the architecture allows (one DocumentStore insert that records the event as
    applied)."""
    settings = ServiceSettings(
        service_name=f"bench-backbone-{uuid.uuid4().hex[:6]}", kafka_bootstrap_servers=bootstrap,
        mongodb_uri=mongodb_uri, mongodb_database=database, topic_namespace=namespace,
        http_port=0, consumer_batch_max=CONSUMER_BATCH_MAX,
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
        await _until(lambda: len(seen) >= count, 600)
    finally:
        await runtime.stop()
    window = seen[:count]
    return (len(window) - 1) / (window[-1] - window[0])


async def _until(condition: Any, timeout: float, *, every: float = 0.2) -> None:
    # Every figure comes from the arrival times the SMTP server wrote down, not from when this
    # loop notices: it looks every 0.2 s, so as not to take CPU from the service it measures.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not complete in time")
        await asyncio.sleep(every)

