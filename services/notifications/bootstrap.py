"""Wiring of the notifications service: stores, consumer, delivery worker, providers, staff API."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import Counter

from services.notifications.adapters.dead_letters import DeadLetterPublisher
from services.notifications.adapters.email_message import Sender
from services.notifications.adapters.smtp import SmtpPool
from services.notifications.adapters.store import INDEXES, RECIPIENTS, DeliveryStore
from services.notifications.adapters.templates import TemplateRenderer
from services.notifications.adapters.twilio_sms import TwilioSms
from services.notifications.domain.messages import MESSAGES, MessageSpec, MessageTable
from services.notifications.domain.planning import QuietHours
from services.notifications.domain.quiet_hours import parse_clock
from services.notifications.domain.retries import RetryPolicy
from services.notifications.entrypoints import http, kafka
from services.notifications.service_layer.delivering import DeliveryWorker, EmailTransport, SmsTransport, WorkerSettings
from services.notifications.service_layer.outcomes import OutcomeLog
from services.notifications.service_layer.recording import Recorder
from services.notifications.settings import NotificationSettings
from shared.clock import Clock
from shared.crypto import Keyring
from shared.runtime.service import ServiceRuntime
from shared.storage import DocumentStore


class NotificationsRuntime(ServiceRuntime):
    """The shared runtime, plus the delivery worker and the provider connections it owns."""

    service: "Notifications"
    _running = False

    async def start(self) -> None:
        self._running = True
        start = getattr(self.service.sms, "start", None)
        if start is not None:
            await start()
        self.service.worker_task = asyncio.create_task(self.service.worker.run(), name="delivery-worker")
        await super().start()

    async def stop(self) -> None:
        """Stop sending (attempts in flight are abandoned: their lease ends and they are sent
        again), record what was sent, then stop consuming. Calling it twice is harmless."""
        if not self._running:
            return
        self._running = False
        task = self.service.worker_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self.service.worker_task = None
        with contextlib.suppress(Exception):
            await self.service.outcomes.flush()  # what was sent is recorded before the store closes
        for provider in (self.service.sms, self.service.email):
            close = getattr(provider, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        await super().stop()


@dataclass
class Notifications:
    runtime: NotificationsRuntime
    settings: NotificationSettings
    store: DeliveryStore
    outcomes: OutcomeLog
    worker: DeliveryWorker
    recorder: Recorder
    email: EmailTransport
    sms: SmsTransport
    worker_task: asyncio.Task[None] | None = None


def build(
    settings: NotificationSettings,
    *,
    clock: Clock | None = None,
    messages: tuple[MessageSpec, ...] = MESSAGES,
    email: EmailTransport | None = None,
    sms: SmsTransport | None = None,
) -> Notifications:
    runtime = NotificationsRuntime(settings, clock=clock)
    clock = runtime.clock
    table = MessageTable(messages)
    keyring = Keyring.parse(settings.event_secret_keys.get_secret_value())
    sender = Sender.parse(settings.smtp_from)

    recipients = DocumentStore(runtime.db, RECIPIENTS)  # a projection: no events, not relayed
    quiet = QuietHours(parse_clock(settings.quiet_hours_start), parse_clock(settings.quiet_hours_end),
                       settings.default_time_zone)
    runtime.indexes(INDEXES)
    store = DeliveryStore(runtime.db)
    outcomes = OutcomeLog(store, clock, runtime.publish_now, source=settings.service_name,
                          batch_max=settings.outcome_batch_max, flush_s=settings.outcome_flush_s)

    email = email or SmtpPool(
        settings.smtp_host, settings.smtp_port, size=settings.smtp_pool_size, timeout_s=settings.smtp_timeout_s,
        username=settings.smtp_username, password=settings.smtp_password.get_secret_value(),
        starttls=settings.smtp_starttls, local_hostname=sender.domain,
    )
    sms = sms or TwilioSms(
        account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token.get_secret_value(),
        from_number=settings.twilio_from_number, base_url=settings.twilio_base_url, timeout_s=settings.twilio_timeout_s,
    )
    sent = Counter("leaseline_notifications_total", "Delivery attempts by channel and outcome",
                   ["channel", "outcome"], registry=runtime.metrics.registry)
    worker = DeliveryWorker(
        store=store,
        outcomes=outcomes,
        renderer=TemplateRenderer(portal_base_url=settings.portal_base_url,
                                  default_time_zone=settings.default_time_zone),
        table=table,
        email=email,
        sms=sms,
        dead_letters=DeadLetterPublisher(runtime.broker),
        recipients=recipients,
        keyring=keyring,
        clock=clock,
        policy=RetryPolicy(settings.delivery_max_attempts, settings.delivery_backoff_initial_s,
                           settings.delivery_backoff_max_s,
                           fallback_after_attempts=settings.delivery_fallback_after_attempts,
                           fallback_margin_s=settings.delivery_fallback_margin_s),
        settings=WorkerSettings(concurrency=settings.delivery_concurrency, queue_max=settings.delivery_queue_max,
                                poll_s=settings.delivery_poll_s, lease=timedelta(seconds=settings.delivery_lease_s),
                                sweep_s=settings.delivery_sweep_s),
        quiet=quiet,
        sender=sender,
        portal_base_url=settings.portal_base_url,
        observe=lambda channel, outcome: sent.labels(channel, outcome).inc(),
    )
    consumer = runtime.consumer()
    recorder = Recorder(
        table=table,
        deliveries=store,
        recipients=recipients,
        keyring=keyring,
        clock=clock,
        quiet=quiet,
        lease=timedelta(seconds=settings.delivery_lease_s),
        group_id=consumer.group_id,
        hand_over=worker.hand_over,
        expect=worker.expect,
        on_duplicate=lambda topic: runtime.metrics.duplicates.labels(runtime.metrics.service, topic).inc(),
    )
    kafka.subscribe(consumer, recorder, table)
    http.add_routes(runtime.app, store, clock, settings.staff_api_token.get_secret_value())

    service = Notifications(runtime, settings, store, outcomes, worker, recorder, email, sms)
    runtime.service = service
    return service
