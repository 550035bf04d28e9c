"""Notifications on the real broker and store, with the local SMTP catcher and Twilio sink in-process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from deploy.sinks import SmtpCatcher, TwilioSink
from services.notifications.bootstrap import Notifications, build
from services.notifications.settings import NotificationSettings
from shared.events import Envelope, Event
from shared.events.registry import dead_letter_topic, topic_for
from shared.messaging.dead_letters import ParkedMessage, read_parked
from shared.settings import ServiceSettings
from tests.integration.helpers import eventually, read_topic
from tests.unit.examples import RING

pytestmark = pytest.mark.integration

KEYS = "examples:" + "A" * 43  # the ring tests/unit/examples.py seals with
PORTAL = "https://portal.leaseline.example"
STAFF_TOKEN = "staff-token-of-the-tests"


@dataclass
class Sinks:
    mail: SmtpCatcher
    sms: TwilioSink
    directory: Path


@pytest.fixture
async def sinks(tmp_path: Path) -> AsyncIterator[Sinks]:
    mail = await SmtpCatcher(tmp_path / "mail", port=0).start()
    sms = await TwilioSink(tmp_path / "sms").start()
    yield Sinks(mail, sms, tmp_path)
    await mail.stop()
    await sms.stop()


@dataclass
class Harness:
    """A running notifications service and what a test needs around it."""

    service: Notifications
    settings: NotificationSettings
    sinks: Sinks
    unique: str
    _producer: AIOKafkaProducer | None = field(default=None, repr=False)

    def topic(self, event_type: str) -> str:
        return topic_for(event_type, self.settings.topic_namespace)

    async def publish(self, *items: Event | Envelope | tuple[str, bytes, bytes]) -> list[Envelope]:
        """Events (wrapped now), envelopes (sent as they are: the same one twice is a duplicate),
        or raw (event type, key, bytes) for poison."""
        if self._producer is None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all")
            await self._producer.start()
        sent = []
        for item in items:
            if isinstance(item, tuple):
                event_type, key, value = item
                await self._producer.send_and_wait(self.topic(event_type), value, key=key)
                continue
            envelope = item if isinstance(item, Envelope) else self.wrap(item)
            await self._producer.send_and_wait(self.topic(envelope.type), envelope.to_bytes(),
                                               key=envelope.subject.encode(), headers=[
                                                   (k, v.encode()) for k, v in envelope.kafka_headers().items()])
            sent.append(envelope)
        return sent

    def wrap(self, event: Event) -> Envelope:
        return Envelope.wrap(event, source="test", time=self.service.runtime.clock.now())

    def handled(self, event_type: str) -> float:
        metrics = self.service.runtime.metrics
        consumed = metrics.handled.labels(metrics.service, self.topic(event_type))._value.get()
        parked = sum(
            sample.value
            for metric in metrics.parked.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("topic") == self.topic(event_type)
        )
        return consumed + parked

    async def wait_handled(self, event_type: str, count: int, timeout: float = 30) -> None:
        await eventually(lambda: self.handled(event_type) >= count, timeout, f"{count} {event_type} handled")

    def http(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.service.runtime.app)
        return httpx.AsyncClient(transport=transport, base_url="http://notifications",
                                 headers={"Authorization": f"Bearer {STAFF_TOKEN}"})

    async def deliveries_of(self, customer_id: str) -> list[dict[str, Any]]:
        async with self.http() as http:
            answer = await http.get(f"/v1/customers/{customer_id}/deliveries")
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def events_on(self, event_type: str) -> list[dict[str, Any]]:
        import json

        records = await read_topic(self.settings.kafka_bootstrap_servers, self.topic(event_type))
        return [json.loads(r.value) for r in records]

    async def parked(self, event_type: str, at_least: int = 1, timeout: float = 30) -> list[ParkedMessage]:
        async def found() -> list[ParkedMessage] | None:
            parked = await read_parked(self.settings.kafka_bootstrap_servers, dead_letter_topic(self.topic(event_type)))
            return parked if len(parked) >= at_least else None

        return await eventually(found, timeout, f"{at_least} parked from {event_type}", every=0.5)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


def notification_settings(base: ServiceSettings, sinks: Sinks, **overrides: Any) -> NotificationSettings:
    values = base.model_dump()
    values.update(
        service_name="notifications",
        event_secret_keys=KEYS,
        portal_base_url=PORTAL,
        staff_api_token=STAFF_TOKEN,
        smtp_port=sinks.mail.port,
        twilio_base_url=sinks.sms.base_url,
        delivery_backoff_initial_s=0.3,
        delivery_backoff_max_s=2.0,
        delivery_max_attempts=6,
        delivery_poll_s=0.1,
        outcome_flush_s=0.02,
        relay_batch_max=50,
    )
    values.update(overrides)
    return NotificationSettings(**values)


StartNotifications = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def notifications(settings: ServiceSettings, sinks: Sinks, unique: str) -> AsyncIterator[StartNotifications]:
    """``await notifications(**setting_overrides, clock=..., messages=...)``: a started service."""
    started: list[Harness] = []

    async def start(*, clock: Any = None, messages: Any = None, email: Any = None, **overrides: Any) -> Harness:
        config = notification_settings(settings, sinks, **overrides)
        extra = {"messages": messages} if messages is not None else {}
        service = build(config, clock=clock, email=email, **extra)
        await service.runtime.start()
        harness = Harness(service, config, sinks, unique)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.close()
        await harness.service.runtime.stop()


def person(unique: str, name: str = "jeanne") -> dict[str, Any]:
    """A customer of this test only: its own id and address, so tests never see each other's mail."""
    tag = uuid.uuid4().hex[:6]
    return {"customer_id": f"cus_{name}_{unique}_{tag}", "email": f"{name}.{unique}.{tag}@example.fr",
            "first_name": name.capitalize(), "locale": "fr-FR"}


def keyring() -> Any:
    return RING
