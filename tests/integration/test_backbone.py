"""The event backbone on a real broker and a real store: delivery, crashes, poison, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, UnknownTopicOrPartitionError
from aiokafka.consumer import fetcher as aiokafka_fetcher
from bson import ObjectId
from bson.int64 import Int64
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from shared.events import CustomerActivated, Envelope
from shared.events.registry import dead_letter_topic, topic_for
from shared.messaging import Delivery, PermanentError
from shared.messaging.dead_letters import read_parked, replay
from shared.messaging.topics import (
    TopicCreationRefused,
    TopicSpec,
    declared_topics,
    delete_namespace,
    ensure_topics,
    specs_for,
)
from shared.runtime.service import ServiceRuntime
from shared.settings import ServiceSettings
from shared.storage import ConcurrencyConflict
from shared.storage.documents import PENDING, DocumentStore
from shared.storage.mongo import ensure_indexes
from tests.conftest import Infrastructure
from tests.integration.helpers import ROOT, Child, eventually, read_topic
from tests.integration.probe import ACCOUNTS, DUPLICATES, TALLIES, activation, wire_consumer, write_customers

pytestmark = pytest.mark.integration


async def tallies_of(settings: ServiceSettings, mongo: Any) -> dict[str, int]:
    docs = await mongo[settings.mongodb_database][TALLIES].find({}, {"count": 1}).to_list()
    return {d["_id"]: d["count"] for d in docs}


async def writer(settings: ServiceSettings, runtimes: list[ServiceRuntime], *, relay: bool) -> tuple[ServiceRuntime, Any]:
    runtime = ServiceRuntime(settings)
    store = runtime.store(ACCOUNTS)
    if relay:
        await runtime.start()
    else:
        await runtime.db.command("ping")
        await runtime.broker.connect()
        await runtime.topics.ensure([topic_for("customer.activated", settings.topic_namespace)])
    runtimes.append(runtime)
    return runtime, store


async def test_an_event_stored_in_one_process_is_applied_by_a_consumer_in_another(
    settings: ServiceSettings, mongo: Any, runtimes: list[ServiceRuntime], children: Callable[..., Child]
) -> None:
    runtime, accounts = await writer(settings, runtimes, relay=True)
    consumer = children("consume", settings)
    await consumer.wait_ready()

    await write_customers(runtime, accounts, ["cus_amelie"])

    assert await eventually(lambda: tallies_of(settings, mongo), 30, "the tally") == {"cus_amelie": 1}
    pending = await mongo[settings.mongodb_database][ACCOUNTS].find_one({"_id": "cus_amelie"})
    assert pending[PENDING] == 0 and pending["_outbox"] == [], "the relay marked the event sent"


async def test_a_relay_killed_between_publishing_and_marking_resends_and_the_event_is_applied_once(
    settings: ServiceSettings, mongo: Any, runtimes: list[ServiceRuntime], children: Callable[..., Child],
    infra: Infrastructure,
) -> None:
    runtime, accounts = await writer(settings, runtimes, relay=False)
    await write_customers(runtime, accounts, ["cus_bruno"])
    doomed = children("relay", settings, PROBE_CRASH_AFTER_PUBLISH="1")
    await eventually(lambda: doomed.proc.poll() is not None, 60, "the relay to kill itself")
    assert doomed.proc.returncode == -9
    doc = await mongo[settings.mongodb_database][ACCOUNTS].find_one({"_id": "cus_bruno"})
    assert doc[PENDING] == 1, "the event was published but not marked sent"

    children("relay", settings)  # a healthy relay re-sends it
    consumer = children("consume", settings)
    await consumer.wait_ready()

    topic = topic_for("customer.activated", settings.topic_namespace)
    on_topic = await eventually(lambda: _count(infra, topic, 2), 30, "both copies on the topic")
    assert on_topic == 2, "published twice"
    # Once the consumer has committed past both copies, it has seen both: applied once all the same.
    await eventually(lambda: _committed(settings, "leaseline-probe-tally", topic, 2), 30, "both copies consumed")
    assert await tallies_of(settings, mongo) == {"cus_bruno": 1}
    duplicates = await mongo[settings.mongodb_database][DUPLICATES].count_documents({})
    assert duplicates >= 1, "the second copy was recognised as applied"


async def _count(infra: Infrastructure, topic: str, expected: int) -> int | None:
    n = len(await read_topic(infra.kafka_bootstrap, topic))
    return n if n >= expected else None


async def test_a_consumer_killed_in_the_middle_of_1000_events_applies_each_exactly_once(
    settings: ServiceSettings, mongo: Any, runtimes: list[ServiceRuntime], children: Callable[..., Child]
) -> None:
    settings = settings.model_copy(update={"consumer_batch_max": 25})
    runtime, accounts = await writer(settings, runtimes, relay=True)
    customers = [f"cus_{i:04d}" for i in range(1000)]
    await write_customers(runtime, accounts, customers)

    # SIGKILLed right after applying its 300th event: that event's batch is applied, not committed.
    first = children("consume", settings, PROBE_CRASH_AFTER_APPLIED="300")
    await eventually(lambda: first.proc.poll() is not None, 120, "the consumer to be killed mid-stream")
    assert first.proc.returncode == -9
    applied_before_restart = len(await tallies_of(settings, mongo))
    assert 300 <= applied_before_restart < 1000, "the kill landed mid-stream"

    children("consume", settings)
    tallies = await eventually(lambda: _at_least(settings, mongo, 1000), 120, "all 1000 tallies")
    assert sorted(tallies) == customers
    assert set(tallies.values()) == {1}, "no event applied twice"
    redelivered = await mongo[settings.mongodb_database][DUPLICATES].count_documents({})
    assert redelivered > 0, "the uncommitted batch was delivered again, and its applied events recognised"


async def _at_least(settings: ServiceSettings, mongo: Any, n: int) -> dict[str, int] | None:
    tallies = await tallies_of(settings, mongo)
    return tallies if len(tallies) >= n else None


async def publish_raw(
    settings: ServiceSettings, topic: str, items: list[tuple[bytes, bytes]],
    headers: list[tuple[str, bytes | None]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


def wire(envelope: Envelope, **overrides: Any) -> bytes:
    return json.dumps(json.loads(envelope.to_bytes()) | overrides).encode()


async def tallying(settings: ServiceSettings, runtimes: list[ServiceRuntime]) -> tuple[ServiceRuntime, str]:
    """A started runtime whose consumer tallies customer.activated events, and that topic."""
    runtime = ServiceRuntime(settings)
    wire_consumer(runtime)
    await runtime.start()
    runtimes.append(runtime)
    return runtime, topic_for("customer.activated", settings.topic_namespace)


async def test_poison_messages_are_parked_with_their_reasons_while_good_ones_are_handled(
    settings: ServiceSettings, mongo: Any, runtimes: list[ServiceRuntime]
) -> None:
    runtime, topic = await tallying(settings, runtimes)
    key = b"cus_poison"  # one key: the good events come after the poison on the same partition
    good = [activation(runtime, "cus_poison") for _ in range(2)]
    await publish_raw(
        settings,
        topic,
        [
            (key, wire(good[0])),
            (key, b"\x00\x01 not json at all"),
            (key, json.dumps({"type": "customer.activated", "data": {}}).encode()),
            (key, wire(good[1], schemaversion=42)),
            (key, wire(activation(runtime, "cus_poison"), data={"customer_id": ""})),
            (key, wire(activation(runtime, "cus_poison"))),
        ],
    )

    tallies = await eventually(
        lambda: _at_least_count(settings, mongo, "cus_poison", 2), 30, "the two good events handled"
    )
    assert tallies == 2
    parked = await eventually(lambda: _parked(settings, topic, 4), 30, "four parked messages")
    kinds = [p.headers["dlq-reason-kind"] for p in parked]
    assert kinds == ["undecodable", "invalid_envelope", "unknown_type", "schema"]
    assert all(p.original_topic == topic and p.reason for p in parked)
    assert parked[0].value == b"\x00\x01 not json at all", "parked bytes are the original bytes"
    assert "no schema version 42" in parked[2].reason


async def test_records_with_binary_or_null_header_values_are_handled_or_parked_like_any_other(
    settings: ServiceSettings, mongo: Any, runtimes: list[ServiceRuntime]
) -> None:
    # Kafka header values are bytes, or null: another team's producer (or a tracing agent) may
    # well send either. Neither may make a batch, its good events with it, vanish unhandled.
    runtime, topic = await tallying(settings, runtimes)
    key = b"cus_headers"
    odd = [("trace-bin", b"\xff\xfe\x00"), ("trace-null", None)]
    await publish_raw(settings, topic, [(key, wire(activation(runtime, "cus_headers"))) for _ in range(2)], odd)
    await publish_raw(settings, topic, [(key, b"\x00 not json")], odd)
    await publish_raw(settings, topic, [(key, wire(activation(runtime, "cus_headers")))])

    assert await eventually(lambda: _at_least_count(settings, mongo, "cus_headers", 3), 30, "three events") == 3
    parked = await eventually(lambda: _parked(settings, topic, 1), 30, "the undecodable one parked")
    assert parked[0].value == b"\x00 not json"
    assert parked[0].headers["dlq-reason-kind"] == "undecodable"
    assert "trace-bin" in parked[0].headers and "trace-null" in parked[0].headers


async def test_a_record_too_large_to_park_with_its_reasons_is_parked_truncated_and_the_stream_goes_on(
    settings: ServiceSettings, mongo: Any, runtimes: list[ServiceRuntime]
) -> None:
    runtime, topic = await tallying(settings, runtimes)
    key = b"cus_jumbo"
    near_the_limit = b"\x00" * (1024 * 1024 - 150)  # fits as it is; not with the dead-letter headers
    await publish_raw(settings, topic, [(key, near_the_limit), (key, wire(activation(runtime, "cus_jumbo")))])

    assert await eventually(lambda: _at_least_count(settings, mongo, "cus_jumbo", 1), 60, "the next event") == 1
    parked = await eventually(lambda: _parked(settings, topic, 1), 30, "the truncated copy")
    assert len(parked) == 1
    assert parked[0].value == near_the_limit[: 64 * 1024]
    assert parked[0].headers["dlq-original-offset"] == "0" and parked[0].original_topic == topic
    assert "MessageSizeTooLargeError" in parked[0].headers["dlq-truncated"]


async def _at_least_count(settings: ServiceSettings, mongo: Any, customer: str, n: int) -> int | None:
    count = (await tallies_of(settings, mongo)).get(customer, 0)
    return count if count >= n else None


async def _committed(settings: ServiceSettings, group: str, topic: str, at_least: int) -> int | None:
    """The offsets ``group`` committed on ``topic``, added up over its partitions, once >= at_least."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    total = sum(max(0, meta.offset) for tp, meta in offsets.items() if tp.topic == topic)
    return total if total >= at_least else None


async def _parked(settings: ServiceSettings, topic: str, n: int) -> list[Any] | None:
    parked = await read_parked(settings.kafka_bootstrap_servers, topic)
    return parked if len(parked) >= n else None


async def test_parked_messages_are_replayed_once_the_cause_is_fixed(
    settings: ServiceSettings, mongo: Any, runtimes: list[ServiceRuntime]
) -> None:
    runtime = ServiceRuntime(settings)
    accounts = runtime.store(ACCOUNTS)
    consumer = runtime.consumer("welcome")
    known = runtime.db["known_customers"]
    handled: list[str] = []

    @consumer.on(CustomerActivated)
    async def welcome(event: CustomerActivated, delivery: Delivery) -> None:
        if await known.find_one({"_id": event.customer_id}) is None:
            raise PermanentError(f"{event.customer_id} is not known yet")
        handled.append(event.customer_id)

    await runtime.start()
    runtimes.append(runtime)
    await write_customers(runtime, accounts, ["cus_chloe"])
    topic = topic_for("customer.activated", settings.topic_namespace)
    parked = await eventually(lambda: _parked(settings, topic, 1), 30, "the event parked")
    assert "cus_chloe is not known yet" in parked[0].reason

    await known.insert_one({"_id": "cus_chloe"})  # the cause is fixed
    assert await replay(settings.kafka_bootstrap_servers, topic) == 1
    await eventually(lambda: handled == ["cus_chloe"], 30, "the replayed event handled")
    assert await replay(settings.kafka_bootstrap_servers, topic) == 0, "a second replay sends nothing again"


async def test_a_replay_with_nothing_parked_reports_zero_at_once(settings: ServiceSettings) -> None:
    topic = topic_for("customer.activated", settings.topic_namespace)
    await ensure_topics(settings.kafka_bootstrap_servers, specs_for(topic, 3))
    started = time.monotonic()
    assert await replay(settings.kafka_bootstrap_servers, topic) == 0
    # No group to join, no empty poll to wait out: the end offsets say at once there is nothing.
    assert time.monotonic() - started < 1.5


async def test_a_replay_sends_exactly_what_was_parked_when_it_started_once_even_if_it_is_parked_again(
    settings: ServiceSettings, runtimes: list[ServiceRuntime], infra: Infrastructure
) -> None:
    runtime = ServiceRuntime(settings)
    consumer = runtime.consumer("stubborn")

    @consumer.on(CustomerActivated)
    async def refuse(event: CustomerActivated, delivery: Delivery) -> None:
        raise PermanentError(f"{event.customer_id} is still unknown")  # the cause is not fixed

    await runtime.start()
    runtimes.append(runtime)
    topic = topic_for("customer.activated", settings.topic_namespace)
    await publish_raw(settings, topic, [(f"cus_{n}".encode(), wire(activation(runtime, f"cus_{n}"))) for n in "xyz"])
    await eventually(lambda: _parked(settings, topic, 3), 30, "three parked")

    # Before the fix, replay re-read the copies it had just caused to be parked again, and looped.
    assert await asyncio.wait_for(replay(settings.kafka_bootstrap_servers, topic), 30) == 3
    await eventually(lambda: _parked(settings, topic, 6), 30, "the three replayed copies parked again")
    assert len(await read_topic(infra.kafka_bootstrap, topic)) == 6, "each parked message sent back once"
    assert await asyncio.wait_for(replay(settings.kafka_bootstrap_servers, topic), 30) == 3, "only the new ones"


async def test_a_replayed_message_is_handled_again_only_by_the_group_that_parked_it(
    settings: ServiceSettings, runtimes: list[ServiceRuntime]
) -> None:
    runtime = ServiceRuntime(settings)
    picky, easy = runtime.consumer("picky"), runtime.consumer("easy")
    fixed = asyncio.Event()
    seen: dict[str, list[str]] = {"picky": [], "easy": []}

    @picky.on(CustomerActivated)
    async def picky_handler(event: CustomerActivated, delivery: Delivery) -> None:
        seen["picky"].append(event.customer_id)
        if not fixed.is_set():
            raise PermanentError("not yet")

    @easy.on(CustomerActivated)
    async def easy_handler(event: CustomerActivated, delivery: Delivery) -> None:
        seen["easy"].append(event.customer_id)

    await runtime.start()
    runtimes.append(runtime)
    topic = topic_for("customer.activated", settings.topic_namespace)
    await publish_raw(settings, topic, [(b"cus_gaspard", wire(activation(runtime, "cus_gaspard")))])
    parked = await eventually(lambda: _parked(settings, topic, 1), 30, "picky parks it")
    assert parked[0].consumer_group == picky.group_id
    await eventually(lambda: seen["easy"] == ["cus_gaspard"], 30, "easy handles it")

    fixed.set()
    assert await replay(settings.kafka_bootstrap_servers, topic) == 1
    await eventually(lambda: seen["picky"] == ["cus_gaspard", "cus_gaspard"], 30, "picky handles the replay")
    # easy reads the copy too: once its group has committed past it, it must have skipped it.
    await eventually(lambda: _committed(settings, easy.group_id, topic, 2), 30, "easy past the replayed copy")
    assert seen["easy"] == ["cus_gaspard"], "the other group does not handle the replayed copy again"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_store_outage_delays_messages_and_parks_none(
    settings: ServiceSettings, mongo: Any, runtimes: list[ServiceRuntime]
) -> None:
    runtime = ServiceRuntime(settings)
    consumer = runtime.consumer("outage")
    down = AsyncMongoClient(f"mongodb://127.0.0.1:{closed_port()}/", serverSelectionTimeoutMS=300)
    store = {"client": down}
    attempts: dict[str, int] = {}

    @consumer.on(CustomerActivated)
    async def record_activation(event: CustomerActivated, delivery: Delivery) -> None:
        attempts[event.customer_id] = attempts.get(event.customer_id, 0) + 1
        db = store["client"][settings.mongodb_database]
        await db["activations"].update_one({"_id": event.customer_id}, {"$set": {"at": "now"}}, upsert=True)

    await runtime.start()
    runtimes.append(runtime)
    topic = topic_for("customer.activated", settings.topic_namespace)
    customers = ["cus_hugo", "cus_ines", "cus_jules"]
    await publish_raw(settings, topic, [(c.encode(), wire(activation(runtime, c))) for c in customers])

    # More attempts than the in-place retries allow (5): before the fix they would all be parked.
    await eventually(
        lambda: all(attempts.get(c, 0) > settings.consumer_max_attempts for c in customers), 60, "batches read again"
    )
    assert await read_parked(settings.kafka_bootstrap_servers, topic) == []
    assert await _committed(settings, consumer.group_id, topic, 0) == 0, "nothing committed during the outage"

    store["client"] = mongo  # the store is back
    await eventually(lambda: _committed(settings, consumer.group_id, topic, 3), 60, "all three committed")
    applied = await mongo[settings.mongodb_database]["activations"].distinct("_id")
    assert sorted(applied) == customers
    assert await read_parked(settings.kafka_bootstrap_servers, topic) == []
    await down.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Any:
    """A broker of this test's own (its restart must not disturb other tests), same store: free
    ports, a state directory under the test's tmp dir, the test profile's download cache."""
    from deploy.localinfra import LocalKafka, Profile

    kafka_port, controller_port, unused_port = free_ports(3)
    profile = Profile(name="restart", kafka_port=kafka_port, kafka_controller_port=controller_port,
                      ferretdb_port=unused_port, root=tmp_path / "local", cache=Profile.test().cache_dir)
    node = LocalKafka(profile)
    node.provision()
    node.start()
    node.wait_ready()
    yield node
    node.stop()
    shutil.rmtree(node.profile.dir, ignore_errors=True)


async def test_a_broker_killed_and_restarted_in_the_middle_of_a_stream_loses_nothing(
    settings: ServiceSettings, mongo: Any, own_broker: Any, runtimes: list[ServiceRuntime]  # services stop first
) -> None:
    settings = settings.model_copy(update={"kafka_bootstrap_servers": own_broker.bootstrap_servers})
    runtime, accounts = await writer(settings, runtimes, relay=True)
    reader = ServiceRuntime(settings.model_copy(update={"service_name": "probe-reader"}))
    wire_consumer(reader)
    await reader.start()
    runtimes.append(reader)
    customers = [f"cus_r{i:03d}" for i in range(300)]

    async def stream() -> None:
        for i in range(0, len(customers), 10):
            await write_customers(runtime, accounts, customers[i : i + 10])
            await asyncio.sleep(0.2)

    writing = asyncio.create_task(stream())
    await eventually(lambda: _at_least(settings, mongo, 30), 60, "some events through before the crash")
    await asyncio.to_thread(own_broker.kill)  # kill -9: no controlled shutdown, no flush
    applied_at_crash = len(await tallies_of(settings, mongo))
    assert not writing.done() and applied_at_crash < len(customers), "the crash landed mid-stream"
    await asyncio.sleep(2)
    await asyncio.to_thread(own_broker.start)
    await asyncio.to_thread(own_broker.wait_ready)
    await writing

    tallies = await eventually(lambda: _at_least(settings, mongo, 300), 180, "all 300 after the restart")
    assert sorted(tallies) == customers
    assert set(tallies.values()) == {1}


async def test_shutdown_does_not_commit_the_offset_of_a_handler_it_cancelled(
    settings: ServiceSettings, runtimes: list[ServiceRuntime]
) -> None:
    topic = topic_for("customer.activated", settings.topic_namespace)
    slow = ServiceRuntime(settings)
    slow.broker.config.broker_config.graceful_timeout = 1.0  # give up on the handler quickly
    consumer = slow.consumer("slow")
    entered = asyncio.Event()

    @consumer.on(CustomerActivated)
    async def never_finishes(event: CustomerActivated, delivery: Delivery) -> None:
        entered.set()
        await asyncio.sleep(3600)

    await slow.start()
    await publish_raw(settings, topic, [(b"cus_dora", wire(activation(slow, "cus_dora")))])
    await asyncio.wait_for(entered.wait(), 30)
    await slow.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(consumer.group_id)
    finally:
        await admin.close()
    committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    assert all(offset <= 0 for offset in committed.values()), f"nothing may be committed, got {committed}"

    again = ServiceRuntime(settings)
    handled: list[str] = []
    retry = again.consumer("slow")

    @retry.on(CustomerActivated)
    async def finishes(event: CustomerActivated, delivery: Delivery) -> None:
        handled.append(event.customer_id)

    await again.start()
    runtimes.append(again)
    await eventually(lambda: handled == ["cus_dora"], 30, "the cancelled event delivered again")


async def test_the_whole_catalogue_is_created_explicitly_with_dead_letter_topics(settings: ServiceSettings) -> None:
    await ensure_topics(settings.kafka_bootstrap_servers, declared_topics(3, settings.topic_namespace))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
        described = await admin.describe_topics([topic_for("invoice.issued", settings.topic_namespace)])
    finally:
        await admin.close()
    for event_type in ("customer.registered", "device.authorised", "contract.nearing_end", "inspection.completed", "invoice.issued"):
        topic = topic_for(event_type, settings.topic_namespace)
        assert topic in topics and dead_letter_topic(topic) in topics
    assert len(described[0]["partitions"]) == settings.topic_partitions


async def test_deleting_a_namespace_deletes_its_topics_and_no_other(settings: ServiceSettings) -> None:
    mine = [f"{settings.topic_namespace}a.one", f"{settings.topic_namespace}b.two"]
    neighbour = f"{settings.topic_namespace.rstrip('.')}x.three"  # shares the prefix up to the dot
    await ensure_topics(settings.kafka_bootstrap_servers, [TopicSpec(t, 1, 60_000) for t in [*mine, neighbour]])
    try:
        deleted = await delete_namespace(settings.kafka_bootstrap_servers, settings.topic_namespace)
        assert sorted(deleted) == sorted(mine)

        async def remaining() -> set[str]:
            admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
            await admin.start()
            try:
                return {t for t in await admin.list_topics() if t.startswith(settings.topic_namespace.rstrip("."))}
            finally:
                await admin.close()

        left: set[str] = set()
        for _ in range(50):  # deletion is asynchronous on the broker's side
            left = await remaining()
            if left == {neighbour}:
                break
            await asyncio.sleep(0.2)
        assert left == {neighbour}
    finally:
        await delete_namespace(settings.kafka_bootstrap_servers, neighbour)


async def test_deleting_every_topic_at_once_is_refused() -> None:
    with pytest.raises(ValueError, match="namespace"):
        await delete_namespace("127.0.0.1:1", "")


def samples(metrics_text: str, name: str, **labels: str) -> list[float]:
    """The values of the samples called ``name`` whose labels include ``labels``."""
    return [
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


async def test_every_process_serves_health_readiness_and_metrics(
    settings: ServiceSettings, runtimes: list[ServiceRuntime]
) -> None:
    earlier, earlier_accounts = await writer(settings, runtimes, relay=False)
    await write_customers(earlier, earlier_accounts, ["cus_left_1", "cus_left_2"])  # left in an outbox
    runtime = ServiceRuntime(settings)
    runtime.store(ACCOUNTS)
    consumer = runtime.consumer("metrics")

    @consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        if event.customer_id == "cus_poison":
            raise PermanentError("not this one")

    transport = httpx.ASGITransport(app=runtime.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        assert (await http.get("/readyz")).status_code == 503, "not ready before it started"
        await runtime.start()
        runtimes.append(runtime)
        assert (await http.get("/healthz")).json()["status"] == "ok"
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"store": "ok", "kafka": "ok"}

        topic = topic_for("customer.activated", settings.topic_namespace)
        await publish_raw(settings, topic, [(b"cus_good", wire(activation(runtime, "cus_good"))),
                                            (b"cus_poison", wire(activation(runtime, "cus_poison")))])
        # The two relayed from the outbox, the good one and the poison one, all committed.
        await eventually(lambda: _committed(settings, consumer.group_id, topic, 4), 60, "four committed")

        async def metrics_once_committed() -> str | None:
            text = (await http.get("/metrics")).text
            lag = samples(text, "leaseline_consumer_lag", topic=topic)
            return text if lag and sum(lag) == 0 else None

        metrics = await eventually(metrics_once_committed, 10, "lag back to 0 after the commit")

    labels = {"service": "probe", "topic": topic}
    assert samples(metrics, "leaseline_messages_consumed_total", **labels) == [4.0]
    assert samples(metrics, "leaseline_messages_handled_total", **labels) == [3.0]
    assert samples(metrics, "leaseline_messages_parked_total", **labels, reason="handler_rejected") == [1.0]
    assert samples(metrics, "leaseline_handler_failures_total", **labels, kind="permanent") == [1.0]
    assert samples(metrics, "leaseline_handler_seconds_count", **labels) == [4.0]
    assert samples(metrics, "leaseline_outbox_backlog", service="probe") == [0.0], "both relayed"
    assert samples(metrics, "leaseline_outbox_relayed_total", **labels) == [2.0]


async def test_the_outbox_backlog_counts_what_waits_until_kafka_takes_it_then_returns_to_zero(
    settings: ServiceSettings, runtimes: list[ServiceRuntime]
) -> None:
    earlier, earlier_accounts = await writer(settings, runtimes, relay=False)
    await write_customers(earlier, earlier_accounts, ["cus_wait_1", "cus_wait_2"])  # left for the sweep
    runtime = ServiceRuntime(settings)
    accounts = runtime.store(ACCOUNTS)
    publish = runtime.relay._publish

    async def broker_refuses(*args: Any, **kwargs: Any) -> None:
        raise KafkaConnectionError("the broker is away")

    runtime.relay._publish = broker_refuses
    await runtime.start()
    runtimes.append(runtime)

    def backlog() -> float | None:
        return runtime.metrics.registry.get_sample_value("leaseline_outbox_backlog", {"service": "probe"})

    assert await eventually(lambda: backlog() == 2, 10, "the sweep's two counted"), backlog()
    await write_customers(runtime, accounts, ["cus_wait_3", "cus_wait_4", "cus_wait_5"])
    assert await eventually(lambda: backlog() == 5, 10, "and the three handed over"), backlog()
    runtime.relay._publish = publish
    assert await eventually(lambda: backlog() == 0, 30, "all relayed"), backlog()


async def test_a_topic_nobody_declared_is_not_created_by_publishing_to_it(settings: ServiceSettings) -> None:
    from shared.messaging.kafka import partitions_of

    topic = f"{settings.topic_namespace}never.declared"
    # A client that asks for automatic creation (aiokafka's default; ours do not): the broker refuses.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises((UnknownTopicOrPartitionError, KafkaTimeoutError)):
            await producer.send_and_wait(topic, b"{}")
    finally:
        await producer.stop()
    assert await partitions_of(settings.kafka_bootstrap_servers, topic) == [], "no topic was created"


async def test_readiness_answers_503_when_the_store_is_unreachable(
    settings: ServiceSettings, runtimes: list[ServiceRuntime]
) -> None:
    runtime = ServiceRuntime(settings)
    wire_consumer(runtime)
    await runtime.start()
    runtimes.append(runtime)
    # The store goes away under a running service: its client now points at a closed port.
    lost = AsyncMongoClient(f"mongodb://127.0.0.1:{closed_port()}/", serverSelectionTimeoutMS=500)
    runtime.db = lost[settings.mongodb_database]
    transport = httpx.ASGITransport(app=runtime.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        answer = await http.get("/readyz")
    await lost.close()
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert checks["store"].startswith("unreachable") and checks["kafka"] == "ok" and "service" not in checks


async def test_concurrent_writers_of_one_document_never_lose_an_update(settings: ServiceSettings) -> None:
    """The store contract the outbox rests on: a version-guarded update is atomic (on FerretDB this
    holds only through the serialising proxy in deploy/ferretdb)."""
    runtime = ServiceRuntime(settings)
    store = runtime.store("counters")
    await store.create("shared", {"n": 0})

    async def add_one_fifty_times() -> None:
        for _ in range(50):
            while True:
                doc = await store.get("shared")
                try:
                    await store.update(doc, {"n": doc.state["n"] + 1})
                    break
                except ConcurrencyConflict:
                    continue

    await asyncio.gather(*(add_one_fifty_times() for _ in range(4)))
    final = await store.get("shared")
    assert final.state["n"] == 200 and final.version == 201
    await runtime.mongo.close()


@pytest.mark.parametrize(
    "lookup",
    [{"_id": "cus_a"}, {"_id": "cus_a", "_v": 3}, {"_id": {"$in": ["cus_a", "cus_b"]}}],
    ids=["by id", "version-guarded", "id in"],
)
async def test_lookups_by_id_use_the_id_index(settings: ServiceSettings, mongo: Any, lookup: dict[str, Any]) -> None:
    """Every write by the stores and every relay read names documents by _id; a store that scanned
    the collection for them would slow down as it grows (FerretDB v1 did, before the patches in
    deploy/ferretdb/patches)."""
    collection = mongo[settings.mongodb_database]["accounts"]
    await collection.insert_many([{"_id": f"cus_{n}", "_v": 3} for n in "abc"])
    plan = await mongo[settings.mongodb_database].command({"explain": {"find": "accounts", "filter": lookup}})
    if "ferretdbVersion" in plan.get("serverInfo", {}):
        assert any("USING INDEX" in step and "__id_" in step for step in plan["queryPlanner"]["Plan"]), plan
    else:
        assert any(stage in str(plan["queryPlanner"]["winningPlan"]) for stage in ("IDHACK", "IXSCAN", "EXPRESS")), plan


async def test_deletes_by_id_remove_exactly_what_mongodb_would(settings: ServiceSettings, mongo: Any) -> None:
    """Finished deliveries leave their collection by ``{_id: {$in: [...]}}`` (DeliveryStore.release),
    and FerretDB's patch 0006 deletes such filters by the ids without reading the documents. So its
    answers are checked against MongoDB's rules: missing ids, one of several for delete_one, repeated
    ids, and a string that spells an ObjectID's hex, which is another value (the JSON the index
    holds is the same text for both)."""
    documents = mongo[settings.mongodb_database]["deliveries"]
    oid = ObjectId()
    await documents.insert_many([{"_id": name, "n": 1} for name in ("a", "b", "c", "d", "e")] + [{"_id": oid}])

    assert (await documents.delete_many({"_id": {"$in": ["a", "b", "missing", "a"]}})).deleted_count == 2
    assert (await documents.delete_one({"_id": "missing"})).deleted_count == 0
    assert (await documents.delete_one({"_id": {"$in": ["c", "d"]}})).deleted_count == 1
    assert (await documents.delete_many({"_id": str(oid)})).deleted_count == 0
    assert (await documents.delete_many({"_id": {"$in": [str(oid)]}})).deleted_count == 0
    assert (await documents.delete_many({"_id": {"$in": ["e", oid]}})).deleted_count == 2
    left = sorted(doc["_id"] for doc in await documents.find().to_list())
    assert len(left) == 1 and left[0] in ("c", "d"), left
    assert (await mongo[settings.mongodb_database]["never_created"].delete_many({"_id": {"$in": ["a"]}})).deleted_count == 0


async def test_the_relay_sweep_finds_waiting_outboxes_through_the_index_with_mongodbs_answer(
    settings: ServiceSettings, mongo: Any
) -> None:
    """The relay sweeps every collection for ``{_outbox_n: {$gt: 0}}`` (see OutboxRelay). A sweep that
    scans held FerretDB v1 for 0.1 ms a document while every other command waited (a second at
    10,000 deliveries); with patch 0004 SQLite answers it from the ``outbox_pending`` index. The
    pushed-down condition compares JSON text, so the answer is checked against MongoDB's own rules
    for every kind of value the field could hold."""
    db = mongo[settings.mongodb_database]
    await ensure_indexes(db, DocumentStore(db, "accounts").indexes)
    values: dict[str, Any] = {
        "zero": 0, "one": 1, "many": 12, "half": 0.5, "tiny": 1e-7, "big": Int64(2**40), "negative": -1,
        "negative_half": -0.5, "text": "3", "some_positive": [0, 5], "none_positive": [0, -1], "null": None,
        "true": True, "object": {"a": 1},
    }
    await db["accounts"].insert_many([{"_id": name, PENDING: value} for name, value in values.items()] + [{"_id": "absent"}])
    found = await db["accounts"].find({PENDING: {"$gt": 0}}).to_list()
    assert sorted(doc["_id"] for doc in found) == ["big", "half", "many", "one", "some_positive", "tiny"]
    plan = await db.command({"explain": {"find": "accounts", "filter": {PENDING: {"$gt": 0}}}})
    if "ferretdbVersion" in plan.get("serverInfo", {}):
        assert any("USING INDEX" in step and "outbox_pending" in step for step in plan["queryPlanner"]["Plan"]), plan
    else:
        assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"]), plan


async def test_lookups_by_a_string_field_use_its_index_with_mongodbs_answer(settings: ServiceSettings, mongo: Any) -> None:
    """A sign-in finds its account by email, a Belgian registration by customer number: lookups by a
    string field other than _id. FerretDB v1 read and decoded the whole collection for them (a
    sign-in among 200 accounts cost the store 8.7 ms); with patch 0007 SQLite answers them from the
    field's index. The pushed-down condition compares JSON text and keeps arrays for FerretDB to
    judge, so the answers are checked against MongoDB's rules for every kind of value the field
    could hold."""
    db = mongo[settings.mongodb_database]
    accounts = db["accounts"]
    await accounts.create_index("email", name="by_email")  # not unique: FerretDB holds an ObjectId and its hex as one key
    hex_id = "5f1d7a3b9c2e4f6a8b0c1d2e"
    values: dict[str, Any] = {
        "same": "ana@example.fr", "other": "bob@example.fr", "upper": "ANA@example.fr", "in_array": ["x", "ana@example.fr"],
        "not_in_array": ["x", "y"], "object_id": ObjectId(hex_id), "number": 5,
        "null": None, "document": {"address": "ana@example.fr"}, "accented": "zoë@example.fr", "hex_text": hex_id,
        "five_text": "5",
    }
    await accounts.insert_many([{"_id": name, "email": value} for name, value in values.items()] + [{"_id": "absent"}])

    async def found(query: dict[str, Any]) -> list[str]:
        return sorted(doc["_id"] for doc in await accounts.find(query).to_list())

    assert await found({"email": "ana@example.fr"}) == ["in_array", "same"]
    assert await found({"email": "ana@example.fr", "_id": {"$ne": "same"}}) == ["in_array"]
    assert await found({"email": {"$in": ["ana@example.fr", "bob@example.fr"]}}) == ["in_array", "other", "same"]
    assert await found({"email": hex_id}) == ["hex_text"]
    assert await found({"email": "5"}) == ["five_text"]
    assert await found({"email": "zoë@example.fr"}) == ["accented"]
    assert await found({"email": {"$in": ["zoë@example.fr", "bob@example.fr"]}}) == ["accented", "other"]
    assert await found({"email": "nobody@example.fr"}) == []
    assert (await accounts.update_one({"email": "bob@example.fr"}, {"$set": {"seen": True}})).modified_count == 1
    assert (await accounts.delete_many({"email": "ana@example.fr"})).deleted_count == 2

    for lookup in ({"email": "bob@example.fr"}, {"email": {"$in": ["bob@example.fr", "x@example.fr"]}}):
        plan = await db.command({"explain": {"find": "accounts", "filter": lookup}})
        if "ferretdbVersion" in plan.get("serverInfo", {}):
            assert any("USING INDEX" in step and "by_email" in step for step in plan["queryPlanner"]["Plan"]), plan
            assert not any(step.split("detail=")[-1].startswith("SCAN") for step in plan["queryPlanner"]["Plan"]), plan
        else:
            assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"]), plan


async def test_a_topic_the_broker_refuses_is_an_error_not_a_silence(settings: ServiceSettings) -> None:
    refused = TopicSpec(f"{settings.topic_namespace}{'x' * 260}", 1, 60_000)  # longer than Kafka allows
    with pytest.raises(TopicCreationRefused, match="error"):
        await ensure_topics(settings.kafka_bootstrap_servers, [refused], timeout_s=5)


async def test_a_handler_that_loses_the_race_to_create_a_document_is_retried_and_updates_it(
    settings: ServiceSettings, runtimes: list[ServiceRuntime]
) -> None:
    """Events with different keys are handled concurrently, and two of them may write one document
    (a contract's events and its customer's record, say): both may find it missing. The loser of
    the race to create it is retried (it then updates), never parked."""
    runtime = ServiceRuntime(settings)
    tallies = runtime.store("tallies")
    consumer = runtime.consumer("race")
    attempts: list[int] = []

    @consumer.on(CustomerActivated)
    async def count(event: CustomerActivated, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        doc = await tallies.get("shared")
        if doc is not None and doc.has_applied(delivery.event_id):
            return
        if doc is None:
            if delivery.attempt == 1:  # the other handler creates it between our load and our create
                await tallies.create("shared", {"n": 1}, applied="the-other-event")
            await tallies.create("shared", {"n": 1}, applied=delivery.event_id)
        else:
            await tallies.update(doc, {"n": doc.state["n"] + 1}, applied=delivery.event_id)

    await runtime.start()
    runtimes.append(runtime)
    await publish_raw(settings, topic_for("customer.activated", settings.topic_namespace),
                      [(b"cus_ann", wire(activation(runtime, "cus_ann")))])

    async def both_counted() -> bool:
        doc = await tallies.get("shared")
        return doc is not None and doc.state["n"] == 2

    await eventually(both_counted, 30, "both creations counted")
    assert attempts == [1, 2], "the lost race was retried once"
    assert await read_parked(settings.kafka_bootstrap_servers, topic_for("customer.activated", settings.topic_namespace)) == []


# --- `make run`: Ctrl-C leaves nothing behind ---------------------------------------------------


def free_ports(n: int) -> list[int]:
    """n distinct local ports free right now (held together while picked, so never twice the same)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


SERVICES = ("identity", "contracts", "restitution", "notifications", "consent")


class MakeRun:
    """``python -m deploy.run`` on a profile of its own: its own ports and state directory, the
    download cache of the test profile (no second download or FerretDB build)."""

    def __init__(self, tmp_path: Path) -> None:
        from deploy.localinfra import Profile

        tmp_path.mkdir(parents=True, exist_ok=True)
        self.local = tmp_path / "local"
        kafka, controller, ferretdb, smtp, sms, *services = free_ports(5 + len(SERVICES))
        self.ports = {"kafka": kafka, "controller": controller, "ferretdb": ferretdb, "smtp": smtp, "sms": sms,
                      **dict(zip(SERVICES, services, strict=True))}
        env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI")}
        env.update(
            LEASELINE_LOCAL_DIR=str(self.local),
            LEASELINE_CACHE_DIR=str(Profile.test().cache_dir),
            KAFKA_PORT=str(kafka), KAFKA_CONTROLLER_PORT=str(controller), FERRETDB_PORT=str(ferretdb),
            **{f"{name.upper()}_HTTP_PORT": str(self.ports[name]) for name in SERVICES},
            SMTP_PORT=str(smtp), TWILIO_SINK_PORT=str(sms), SINKS_DIR=str(tmp_path / "sinks"),
            PYTHONPATH=str(ROOT),
        )
        self.log = tmp_path / "make-run.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "deploy.run"], cwd=ROOT, env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def descendants(self) -> set[int]:
        """Every process below deploy.run, and any process whose command line names its state
        directory (Kafka and FerretDB, even once reparented)."""
        parents: dict[int, int] = {}
        found: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if str(self.local) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
        frontier = {self.proc.pid}
        while frontier:
            children = {pid for pid, parent in parents.items() if parent in frontier} - found
            found |= children
            frontier = children
        return found - {self.proc.pid}

    def interrupt_and_wait(self, within_s: float) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(within_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"deploy.run still running {within_s}s after Ctrl-C:\n{self.output()}") from None

    def close(self) -> None:
        """Whatever a failed test left: kill it all, so nothing outlives the test."""
        for pid in self.descendants() | ({self.proc.pid} if self.proc.poll() is None else set()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def make_run(tmp_path: Path) -> Any:
    from deploy.localinfra import Profile

    if not Profile.test().cache_dir.exists():
        pytest.fail("the make-run tests reuse the local infrastructure's download cache: provision it first "
                    "(python -m deploy.localinfra provision --profile test)")
    started: list[MakeRun] = []

    def start() -> MakeRun:
        run = MakeRun(tmp_path / f"run{len(started)}")
        started.append(run)
        return run

    yield start
    for run in started:
        run.close()


def assert_nothing_left(run: MakeRun, before: set[int]) -> None:
    from deploy.localinfra._base import pid_alive, port_is_free

    alive = sorted(pid for pid in before | run.descendants() if pid_alive(pid))
    assert alive == [], f"processes left behind: {alive}\n{run.output()}"
    busy = {name: port for name, port in run.ports.items() if not port_is_free("127.0.0.1", port)}
    assert busy == {}, f"ports still listened on: {busy}"


async def _serving(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_make_run_stops_everything_it_started_on_ctrl_c(make_run: Callable[[], MakeRun]) -> None:
    run = make_run()

    async def up() -> bool:
        if run.proc.poll() is not None:
            raise AssertionError(f"deploy.run exited early:\n{run.output()}")
        return all([await _serving(run.ports[name]) for name in SERVICES])

    await eventually(up, 240, "the five services ready", every=1.0)
    before = run.descendants()
    assert len(before) >= 9, f"Kafka, FerretDB, two sinks, five services: {before}"

    assert await asyncio.to_thread(run.interrupt_and_wait, 90) == 0, run.output()
    assert_nothing_left(run, before)


async def test_make_run_interrupted_during_start_up_stops_what_it_had_started(
    make_run: Callable[[], MakeRun],
) -> None:
    run = make_run()
    kafka_pid_file = run.local / "run" / "kafka.pid"
    # Kafka started, and deploy.run waits for it to be ready: the slowest stage of start-up.
    await eventually(lambda: kafka_pid_file.exists() or run.proc.poll() is not None, 120, "Kafka started", every=0.1)
    assert run.proc.poll() is None, run.output()
    before = run.descendants()
    assert before, "something was started"

    assert await asyncio.to_thread(run.interrupt_and_wait, 60) == 0, run.output()
    assert_nothing_left(run, before)
    assert "Leaseline is starting" not in run.output(), "interrupted before the services, as intended"


async def test_an_idle_consumer_lets_the_broker_hold_its_fetches_and_a_busy_one_gathers_batches(
    settings: ServiceSettings, runtimes: list[ServiceRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the real client asks the real broker for, idle, busy and idle again (shared.messaging.fetch_pacing)."""
    asked: list[tuple[float, int, int]] = []  # when, max wait (ms), min bytes: every fetch request built
    real_request = aiokafka_fetcher.FetchRequest

    def spy(max_wait_ms: int, min_bytes: int, *rest: Any, **named: Any) -> Any:
        asked.append((time.monotonic(), max_wait_ms, min_bytes))
        return real_request(max_wait_ms, min_bytes, *rest, **named)

    monkeypatch.setattr(aiokafka_fetcher, "FetchRequest", spy)
    runtime = ServiceRuntime(settings)
    consumer = runtime.consumer("paced")
    handled: list[float] = []

    @consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        handled.append(time.monotonic())

    await runtime.start()
    runtimes.append(runtime)
    await eventually(lambda: len(asked) > 0 or None, 30, "the first fetch")

    def asked_between(start: float, end: float) -> list[tuple[int, int]]:
        return [(wait, least) for at, wait, least in asked if start <= at < end]

    start = time.monotonic()
    await asyncio.sleep(2)
    idle = asked_between(start, start + 2)
    assert set(idle) == {(500, 1)} and len(idle) <= 8, f"idle: {len(idle)} fetches in 2 s, {set(idle)}"

    topic = topic_for("customer.activated", settings.topic_namespace)
    await publish_raw(settings, topic, [(f"cus_{i}".encode(), wire(activation(runtime, f"cus_{i}"))) for i in range(300)])
    await eventually(lambda: len(handled) == 300 or None, 30, "every event handled")
    busy = asked_between(handled[0], handled[-1] + 0.5)
    assert (25, 65536) in busy, f"busy: {busy}"

    quiet_from = handled[-1] + 1.5  # a second without a batch, and the fetch in flight then answered
    await asyncio.sleep(max(0.0, quiet_from + 2 - time.monotonic()))
    idle_again = asked_between(quiet_from, quiet_from + 2)
    assert set(idle_again) == {(500, 1)} and len(idle_again) <= 8, f"idle again: {idle_again}"
