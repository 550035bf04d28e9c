"""Topics are declared, then created explicitly (the broker does not auto-create them).

A deployment creates the whole catalogue up front (``python -m shared.messaging.topics``); each
service process also makes sure of the topics it uses, as it first needs them: the ones it consumes
at start, the ones it publishes to before the relay's first send. Each comes with its dead-letter
topic. Creating waits until every partition has a leader, so the first send does not bounce.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.events.catalogue import EVENT_CLASSES
from shared.events.registry import DLQ_SUFFIX, dead_letter_topic, topic_for

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
EVENT_RETENTION_MS = 14 * DAY_MS
DEAD_LETTER_RETENTION_MS = 30 * DAY_MS


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int

    def new_topic(self, replication_factor: int) -> NewTopic:
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=replication_factor,
            topic_configs={
                "retention.ms": str(self.retention_ms),
                "min.insync.replicas": str(min_insync_replicas(replication_factor)),
            },
        )


def min_insync_replicas(replication_factor: int) -> int:
    """A majority of the replicas (1 of 1, 2 of 3, 3 of 5). Producers send with ``acks=all``, so an
    acknowledged event is on a majority: it survives the loss of any minority of brokers, and
    writes go on while only a minority is down. With 1 replica there is nothing else to ask."""
    if replication_factor < 1:
        raise ValueError(f"replication factor must be at least 1, not {replication_factor}")
    return replication_factor // 2 + 1


def specs_for(topic: str, partitions: int) -> list[TopicSpec]:
    """An event topic (kept 14 days) and its dead-letter topic (kept 30 days, one partition:
    parked messages are few and are read back in the order they were parked)."""
    main = topic.removesuffix(DLQ_SUFFIX)
    return [
        TopicSpec(main, partitions, EVENT_RETENTION_MS),
        TopicSpec(dead_letter_topic(main), 1, DEAD_LETTER_RETENTION_MS),
    ]


def declared_topics(partitions: int = 3, namespace: str = "") -> list[TopicSpec]:
    """Every catalogue topic with its dead-letter topic."""
    topics = sorted({topic_for(cls.event_type, namespace) for cls in EVENT_CLASSES})
    return [spec for topic in topics for spec in specs_for(topic, partitions)]


async def ensure_topics(
    bootstrap_servers: str, specs: Iterable[TopicSpec], replication_factor: int = 1, *, timeout_s: float = 60.0
) -> list[str]:
    """Create the topics that do not exist yet and wait for their leaders; returns those created."""
    wanted = {spec.name: spec for spec in specs}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for name, spec in wanted.items() if name not in existing]
        if missing:
            try:
                response = await admin.create_topics([s.new_topic(replication_factor) for s in missing])
            except TopicAlreadyExistsError:
                pass  # another process created them first
            else:
                _raise_refusals(response)
            log.info("created topics", extra={"topics": [s.name for s in missing]})
        await _wait_for_leaders(admin, list(wanted), timeout_s)
        return [s.name for s in missing]
    finally:
        await admin.close()


async def delete_namespace(bootstrap_servers: str, namespace: str) -> list[str]:
    """Delete every topic whose name starts with ``namespace``; returns those deleted.

    For whatever lives in a namespace of its own for a while (a test, a benchmark run): a broker
    that keeps them all carries thousands of idle partitions, and pays for them in heap, in start
    time and in periodic housekeeping that steals CPU from whatever runs next."""
    if not namespace:
        raise ValueError("refusing to delete every topic: give the namespace to delete")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=30_000)
    await admin.start()
    try:
        mine = [topic for topic in await admin.list_topics() if topic.startswith(namespace)]
        if mine:
            await admin.delete_topics(mine)
        return mine
    finally:
        await admin.close()


class TopicCreationRefused(RuntimeError):
    """The broker refused to create topics (bad name, too many partitions, policy, ...)."""


_TOPIC_ALREADY_EXISTS = 36


def _raise_refusals(response: Any) -> None:
    """CreateTopics answers 200 and puts each topic's error inside: look at them. A topic another
    process created in the meantime is fine; anything else is a refusal to report."""
    refusals = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 and isinstance(entry[2], str) else ""
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            refusals.append(f"{name}: error {code} {message}".rstrip())
    if refusals:
        raise TopicCreationRefused("the broker refused to create " + "; ".join(refusals))


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(topics)
        pending = [
            t["topic"]
            for t in described
            if t.get("error_code") or not t["partitions"] or any(p["leader"] < 0 for p in t["partitions"])
        ]
        if not pending:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_s}s: {pending[:5]}")
        await asyncio.sleep(0.1)


class TopicKeeper:
    """Remembers which topics exist, so a process asks the broker once per topic."""

    def __init__(self, bootstrap_servers: str, partitions: int, replication_factor: int) -> None:
        self._bootstrap = bootstrap_servers
        self._partitions = partitions
        self._replication = replication_factor
        self._known: set[str] = set()
        self._lock = asyncio.Lock()

    async def ensure(self, topics: Iterable[str]) -> None:
        unknown = {t for t in topics if t not in self._known}
        if not unknown:
            return
        async with self._lock:
            specs = [s for t in sorted(unknown) for s in specs_for(t, self._partitions)]
            await ensure_topics(self._bootstrap, specs, self._replication)
            self._known |= {s.name for s in specs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create every catalogue topic and its dead-letter topic.")
    parser.add_argument("--bootstrap", default=None, help="default: $KAFKA_BOOTSTRAP_SERVERS")
    args = parser.parse_args(argv)
    from shared.settings import ServiceSettings

    settings = ServiceSettings()
    created = asyncio.run(
        ensure_topics(
            args.bootstrap or settings.kafka_bootstrap_servers,
            declared_topics(settings.topic_partitions, settings.topic_namespace),
            settings.topic_replication_factor,
        )
    )
    print(f"{len(created)} topic(s) created; the catalogue's {len(declared_topics())} topics exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
