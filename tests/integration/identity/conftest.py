"""An identity service on the real broker and store, driven over HTTP, its events read back from Kafka."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.identity.bootstrap import IdentityRuntime, build
from services.identity.settings import IdentitySettings
from shared.crypto import Keyring
from shared.events import Envelope, Event, event_class
from shared.events.registry import topic_for
from tests.conftest import Infrastructure, delete_topics, drop_database
from tests.integration.helpers import eventually, read_topic

pytestmark = pytest.mark.integration

STRONG = "Velvet-Harbour-Lantern-42"
OTHER_STRONG = "Quiet-Orchard-Compass-77"


class ShiftableClock:
    """Real time plus an offset that tests move forward: stamps stay distinct, expiry is testable."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, by: timedelta) -> None:
        self.offset += by


def identity_settings(infra: Infrastructure, **overrides: Any) -> IdentitySettings:
    unique = uuid.uuid4().hex[:10]
    values: dict[str, Any] = dict(
        kafka_bootstrap_servers=infra.kafka_bootstrap,
        mongodb_uri=infra.mongodb_uri,
        mongodb_database=f"t_id_{unique}",
        topic_namespace=f"t{unique}.",
        topic_partitions=1,
        http_port=0,
        consumer_backoff_initial_s=0.05,
        consumer_backoff_max_s=0.5,
        relay_idle_poll_s=0.05,
        event_secret_keys=Keyring.generate_spec("test"),
    )
    values.update(overrides)
    return IdentitySettings(**values)


@dataclass
class Harness:
    runtime: IdentityRuntime
    settings: IdentitySettings
    clock: ShiftableClock
    infra: Infrastructure
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def keyring(self) -> Keyring:
        return self.runtime.identity.keyring

    def http(self, address: str = "198.51.100.7") -> httpx.AsyncClient:
        """A client calling from ``address`` (rate limits count per address)."""
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.runtime.app, client=(address, 50000)),
            base_url="http://identity",
            headers={"user-agent": "Firefox on Linux (test)"},
        )
        self.clients.append(client)
        return client

    def topic(self, event_type: str) -> str:
        return topic_for(event_type, self.settings.topic_namespace)

    async def events(self, cls: type[Event], expected: int = 1, timeout: float = 20.0, **match: Any) -> list[Any]:
        """At least ``expected`` events of this type whose fields equal ``match``, read from Kafka."""

        async def found() -> list[Any] | None:
            records = await read_topic(self.infra.kafka_bootstrap, self.topic(cls.event_type), timeout_s=5)
            events = [cls.model_validate(json.loads(r.value)["data"]) for r in records]
            hits = [e for e in events if all(getattr(e, k) == v for k, v in match.items())]
            return hits if len(hits) >= expected else None

        return await eventually(found, timeout, f"{expected} {cls.event_type} matching {match}", every=0.2)

    async def raw_topic_bytes(self, event_type: str) -> list[bytes]:
        records = await read_topic(self.infra.kafka_bootstrap, self.topic(event_type), timeout_s=5)
        return [bytes(r.value) + b"|" + bytes(r.key or b"") for r in records]

    async def publish(self, event: Event) -> Envelope:
        """Publish an event as another service would (contracts is a later issue)."""
        envelope = Envelope.wrap(event, source="contracts", time=self.clock.now())
        producer = AIOKafkaProducer(bootstrap_servers=self.infra.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                self.topic(event.event_type), envelope.to_bytes(), key=event.subject.encode(),
                headers=[(k, v.encode()) for k, v in envelope.kafka_headers().items()],
            )
        finally:
            await producer.stop()
        return envelope

    async def account(self, email: str) -> dict[str, Any]:
        doc = await self.runtime.db["accounts"].find_one({"email": email})
        assert doc is not None, email
        return doc


async def start_harness(infra: Infrastructure, **overrides: Any) -> Harness:
    settings = identity_settings(infra, **overrides)
    clock = ShiftableClock()
    runtime = build(settings, clock=clock)
    await runtime.start()
    return Harness(runtime, settings, clock, infra)


async def stop_harness(harness: Harness, *, keep_data: bool = False) -> None:
    """Stop the service; its database and topics go with it unless a restart on them follows."""
    for client in harness.clients:
        await client.aclose()
    await harness.runtime.stop()
    if not keep_data:
        await drop_database(harness.infra.mongodb_uri, harness.settings.mongodb_database)
        await delete_topics(harness.infra.kafka_bootstrap, harness.settings.topic_namespace)


@pytest.fixture(scope="module")
async def identity(infra: Infrastructure) -> AsyncIterator[Harness]:
    """One identity service per test module (tests use distinct people); its own database and topics."""
    harness = await start_harness(infra)
    yield harness
    await stop_harness(harness)


def unseal(harness: Harness, event: Event, field_name: str) -> str:
    return event.unseal(harness.keyring, field_name)


def person(name: str) -> dict[str, Any]:
    first, last = name.split()
    return {
        "first_name": first,
        "last_name": last,
        "email": f"{first.lower()}.{last.lower()}.{uuid.uuid4().hex[:6]}@example.fr",
        "password": STRONG,
        "locale": "fr-FR",
        "terms_version": "FR-2026-09",
        "terms_accepted": True,
    }


async def register_and_activate(harness: Harness, name: str, client: httpx.AsyncClient | None = None,
                                **extra: Any) -> dict[str, Any]:
    """A registered, activated customer: returns the registration body plus its customer_id."""
    from shared.events import CustomerRegistered

    http = client or harness.http()
    body = person(name) | extra
    answer = await http.post("/v1/registrations", json=body)
    assert answer.status_code == 202, answer.text
    (registered,) = await harness.events(CustomerRegistered, email=body["email"])
    token = unseal(harness, registered, "activation_token")
    activated = await http.post("/v1/activations", json={"token": token})
    assert activated.status_code == 200, activated.text
    return body | {"customer_id": registered.customer_id}


async def login(harness: Harness, who: dict[str, Any], client: httpx.AsyncClient | None = None,
                **extra: Any) -> httpx.Response:
    http = client or harness.http()
    return await http.post("/v1/sessions", json={"email": who["email"], "password": who["password"]} | extra)


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


__all__ = ["event_class"]
