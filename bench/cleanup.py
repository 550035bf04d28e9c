"""What a benchmark run leaves behind goes with it: its databases at once, its topics at the end.

A broker that kept every run's topics carried 8,000 idle partitions after a few days on one
machine: it took 96 s to start, and its periodic housekeeping cost the next runs CPU in bursts,
which showed as rounds measured 70% slower than their neighbours. Topics are deleted once every
suite has run (``delete_topics_left``, called by ``python -m bench``), not after each suite: the
broker removes a deleted topic's files a while later, and that work would land in the middle of
the next suite's measurements.
"""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from shared.messaging.topics import delete_namespace

_namespaces_left: list[tuple[str, str]] = []  # (bootstrap servers, topic namespace)


async def remove_run(kafka_bootstrap: str, mongodb_uri: str, *, topic_namespace: str, database: str) -> None:
    """Drop the run's database now; its topics go with ``delete_topics_left``."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        await client.drop_database(database)
    finally:
        await client.close()
    topics_to_delete_later(kafka_bootstrap, topic_namespace)


def topics_to_delete_later(kafka_bootstrap: str, topic_namespace: str) -> None:
    _namespaces_left.append((kafka_bootstrap, topic_namespace))


async def delete_topics_left() -> list[str]:
    deleted: list[str] = []
    while _namespaces_left:
        bootstrap, namespace = _namespaces_left.pop()
        deleted += await delete_namespace(bootstrap, namespace)
    return deleted
