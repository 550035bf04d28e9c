"""A minimal service built only from ``shared``, used to prove the backbone on real infrastructure.

- ``write``: stores customers through the outbox (one event each), without relaying;
- ``relay``: relays outboxes to Kafka until stopped (``PROBE_CRASH_AFTER_PUBLISH=1``: SIGKILLs
  itself after publishing and before marking the events sent);
- ``consume``: applies ``customer.activated`` events to per-customer tallies, idempotently, and
  records each copy it recognises as already applied in ``duplicates`` (``PROBE_HANDLER_DELAY_S``
  slows each event down; ``PROBE_CRASH_AFTER_APPLIED=N`` SIGKILLs itself right after applying its
  N-th event, before the batch is committed, so that a redelivery is certain).

Run as ``python -m tests.integration.probe <role>`` with the usual settings in the environment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from shared.events import CustomerActivated, Envelope
from shared.logging import configure_logging
from shared.messaging import Delivery
from shared.runtime.service import ServiceRuntime
from shared.settings import ServiceSettings
from shared.storage import DocumentStore

ACCOUNTS = "accounts"
TALLIES = "tallies"
DUPLICATES = "duplicates"


def activation(runtime: ServiceRuntime, customer_id: str) -> Envelope:
    return Envelope.wrap(CustomerActivated(customer_id=customer_id), source="probe", time=runtime.clock.now())


async def write_customers(runtime: ServiceRuntime, store: DocumentStore, customer_ids: list[str]) -> None:
    for customer_id in customer_ids:
        await store.create(customer_id, {"status": "active"}, [activation(runtime, customer_id)])


def wire_consumer(runtime: ServiceRuntime, delay_s: float = 0.0, crash_after_applied: int = 0) -> DocumentStore:
    tallies = runtime.store(TALLIES)
    duplicates = runtime.db[DUPLICATES]
    consumer = runtime.consumer("tally")
    applied = 0

    async def applied_one() -> None:
        nonlocal applied
        applied += 1
        if applied == crash_after_applied:
            os.kill(os.getpid(), signal.SIGKILL)

    @consumer.on(CustomerActivated)
    async def count_activation(event: CustomerActivated, delivery: Delivery) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        tally = await tallies.get(event.customer_id)
        if tally is None:
            await tallies.create(event.customer_id, {"count": 1, "offsets": [delivery.offset]}, applied=delivery.event_id)
            await applied_one()
            return
        if tally.has_applied(delivery.event_id):
            runtime.metrics.duplicates.labels(runtime.metrics.service, delivery.topic).inc()
            await duplicates.insert_one({"event_id": delivery.event_id, "offset": delivery.offset})
            return
        state: dict[str, Any] = tally.state
        await tallies.update(
            tally,
            {"count": state["count"] + 1, "offsets": [*state["offsets"], delivery.offset]},
            applied=delivery.event_id,
        )
        await applied_one()

    return tallies


async def _run(role: str) -> None:
    settings = ServiceSettings()
    configure_logging(settings.service_name, settings.log_level)
    runtime = ServiceRuntime(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if role == "consume":
        wire_consumer(
            runtime,
            float(os.environ.get("PROBE_HANDLER_DELAY_S", "0")),
            int(os.environ.get("PROBE_CRASH_AFTER_APPLIED", "0")),
        )
    elif role == "relay":
        runtime.store(ACCOUNTS)
        if os.environ.get("PROBE_CRASH_AFTER_PUBLISH") == "1":

            async def crash() -> None:
                os.kill(os.getpid(), signal.SIGKILL)

            runtime.relay.after_publish = crash
    else:
        raise SystemExit(f"unknown role {role!r}: consume or relay")
    await runtime.start()
    print("probe ready", flush=True)
    await stop.wait()
    await runtime.stop()


if __name__ == "__main__":
    asyncio.run(_run(sys.argv[1]))
