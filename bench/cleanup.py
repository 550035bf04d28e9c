"""What a benchmark run leaves behind goes with it: its database and its topics.

A broker that kept every run's topics carried 8,000 idle partitions after a few days on one
machine: it took 96 s to start, and its periodic housekeeping cost the next runs CPU in bursts,
which showed as rounds measured 70% slower than their neighbours."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from shared.messaging.topics import delete_namespace


async def remove_run(kafka_bootstrap: str, mongodb_uri: str, *, topic_namespace: str, database: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        await client.drop_database(database)
    finally:
        await client.close()
    await delete_namespace(kafka_bootstrap, topic_namespace)
