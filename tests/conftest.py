"""Test fixtures: the real broker and store every integration test talks to.

Which infrastructure, in order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``MONGODB_URI`` when both are set (an existing environment);
2. testcontainers (Kafka in KRaft mode, MongoDB) when a Docker engine answers;
3. otherwise the project's own local infrastructure (``deploy/localinfra``, test profile: Kafka
   from Maven Central jars, FerretDB on SQLite), started once per session and stopped at the end.

Tests are isolated by a topic namespace, database names and consumer groups unique to each test.
"""

from __future__ import annotations

import os
import warnings
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from shared.settings import ServiceSettings


@dataclass
class Infrastructure:
    kafka_bootstrap: str
    mongodb_uri: str
    kind: str
    kafka_node: Any = None  # a LocalKafka when the tests own the broker (restart tests need it)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def infra() -> Iterator[Infrastructure]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("MONGODB_URI"):
        yield Infrastructure(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["MONGODB_URI"], "environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.mongodb import MongoDbContainer

        with KafkaContainer().with_kraft() as kafka, MongoDbContainer("mongo:7") as mongo:
            yield Infrastructure(kafka.get_bootstrap_server(), mongo.get_connection_url(), "testcontainers")
        return
    from deploy.localinfra import LocalFerretDB, LocalKafka, Profile, ensure_running

    profile = Profile.test()
    kafka, store = LocalKafka(profile), LocalFerretDB(profile)
    # Infrastructure someone already started (`python -m deploy.localinfra up --profile test`)
    # is used and left running, unless it runs an outdated build; what this session starts, it stops.
    started_here = ensure_running([kafka, store])
    try:
        yield Infrastructure(kafka.bootstrap_servers, store.uri, "local", kafka_node=kafka)
    finally:
        for component in started_here:
            component.stop()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def settings(infra: Infrastructure, unique: str) -> AsyncIterator[ServiceSettings]:
    """Settings for a service under test: its own database and topic namespace.

    The namespace's topics are deleted at the end: a single-node broker keeping every test's few
    dozen topics (and their dead-letter twins) runs out of heap after a few hundred tests."""
    yield ServiceSettings(
        service_name="probe",
        kafka_bootstrap_servers=infra.kafka_bootstrap,
        mongodb_uri=infra.mongodb_uri,
        mongodb_database=f"t_{unique}",
        topic_namespace=f"t{unique}.",
        topic_partitions=3,
        http_port=0,
        consumer_backoff_initial_s=0.05,
        consumer_backoff_max_s=0.5,
        relay_idle_poll_s=0.05,
    )
    await _delete_topics(infra.kafka_bootstrap, f"t{unique}.")


async def _delete_topics(bootstrap: str, namespace: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        mine = [topic for topic in await admin.list_topics() if topic.startswith(namespace)]
        if mine:
            await admin.delete_topics(mine)
    except Exception as error:  # cleanup only: a test does not fail for it, but it is not silent
        warnings.warn(f"could not delete the topics of {namespace}: {error!r}", stacklevel=1)
    finally:
        await admin.close()


@pytest.fixture
async def mongo(infra: Infrastructure) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_uri, tz_aware=True)
    yield client
    await client.close()
