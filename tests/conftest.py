"""Test fixtures: the real broker and store every integration test talks to.

Which infrastructure, in order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``MONGODB_URI`` when both are set (an existing environment;
   only one of them set is a mistake, reported as such);
2. testcontainers (Kafka in KRaft mode, MongoDB 7) when a Docker engine answers;
3. otherwise the project's own local infrastructure (``deploy/localinfra``, test profile: Kafka
   from Maven Central jars, FerretDB on SQLite), started once per session; what this session
   started is stopped at the end, what was already running is left running.

Tests are isolated by a topic namespace and a database unique to each test (``settings``). The
consumer groups are not unique (``leaseline-probe-...``): they never meet, because a group only
ever reads its own test's topics.
"""

from __future__ import annotations

import os
import warnings
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from shared.messaging.topics import delete_namespace
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


#: testcontainers-python's KafkaContainer (4.15) drives the Confluent image's start scripts, so it
#: cannot run apache/kafka; Confluent Platform 8.1 ships Apache Kafka 4.1, what runs locally and in
#: docker-compose (apache/kafka:4.1.1).
KAFKA_IMAGE = "confluentinc/cp-kafka:8.1.0"
MONGODB_IMAGE = "mongo:7"


def external_infrastructure(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(bootstrap servers, MongoDB URI) from the environment when both are set; None when neither."""
    kafka, mongodb = environ.get("KAFKA_BOOTSTRAP_SERVERS", ""), environ.get("MONGODB_URI", "")
    if kafka and mongodb:
        return kafka, mongodb
    if kafka or mongodb:
        given, missing = ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI") if kafka else ("MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS")
        raise ValueError(
            f"{given} is set but {missing} is not: set both to test against existing infrastructure, "
            "or neither to let the tests start their own"
        )
    return None


def infrastructure_kind(environ: Mapping[str, str], docker_answers: Callable[[], bool]) -> str:
    """Which infrastructure the tests use, in this order: what the environment names, else
    containers when a Docker engine answers, else the local infrastructure (deploy.localinfra)."""
    if external_infrastructure(environ) is not None:
        return "environment"
    return "testcontainers" if docker_answers() else "local"


@pytest.fixture(scope="session")
def infra() -> Iterator[Infrastructure]:
    try:
        kind = infrastructure_kind(os.environ, _docker_answers)
    except ValueError as error:
        pytest.fail(str(error), pytrace=False)
    if kind == "environment":
        yield Infrastructure(*external_infrastructure(os.environ), kind)  # type: ignore[misc]
        return
    if kind == "testcontainers":
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.mongodb import MongoDbContainer

        # As locally and in docker-compose: topics exist only once declared, never on first use.
        broker = KafkaContainer(KAFKA_IMAGE).with_kraft().with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        with broker as kafka, MongoDbContainer(MONGODB_IMAGE) as mongo:
            yield Infrastructure(kafka.get_bootstrap_server(), mongo.get_connection_url(), kind)
        return
    from deploy.localinfra import LocalFerretDB, LocalKafka, Profile, ensure_running

    profile = Profile.test()
    kafka, store = LocalKafka(profile), LocalFerretDB(profile)
    # Infrastructure someone already started (`python -m deploy.localinfra up --profile test`)
    # is used and left running, unless it runs an outdated build; what this session starts, it stops.
    # When starting fails half-way, ensure_running stops what it had started itself.
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
    await delete_topics(infra.kafka_bootstrap, f"t{unique}.")
    await drop_database(infra.mongodb_uri, f"t_{unique}")


async def drop_database(mongodb_uri: str, name: str) -> None:
    """A test's database goes with it: FerretDB keeps one SQLite file per database, and a store
    holding hundreds answers every command more slowly (a ping read them all: 4 ms at 300)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(name)
    except Exception as error:  # cleanup only: a test does not fail for it, but it is not silent
        warnings.warn(f"could not drop the database {name}: {error!r}", stacklevel=1)
    finally:
        await client.close()


async def delete_topics(bootstrap: str, namespace: str) -> None:
    try:
        await delete_namespace(bootstrap, namespace)
    except Exception as error:  # cleanup only: a test does not fail for it, but it is not silent
        warnings.warn(f"could not delete the topics of {namespace}: {error!r}", stacklevel=1)


@pytest.fixture
async def mongo(infra: Infrastructure) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_uri, tz_aware=True)
    yield client
    await client.close()
