"""A service process: its store, its Kafka consumers and relay, its HTTP API, health and metrics.

A service's ``bootstrap`` module creates a ``ServiceRuntime``, attaches its stores, consumers,
indexes and (optionally) HTTP routes, then ``serve()`` runs it until SIGTERM or SIGINT:

    runtime = ServiceRuntime(Settings())
    store = runtime.store("customers")
    consumer = runtime.consumer("identity")
    ...
    asyncio.run(runtime.serve())

Every process serves ``/healthz`` (alive), ``/readyz`` (Kafka and store reachable) and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterable, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.clock import Clock, SystemClock
from shared.messaging.consumer import EventConsumer
from shared.messaging.kafka import make_broker
from shared.messaging.relay import OutboxRelay, faststream_publisher, publish_all
from shared.messaging.topics import TopicKeeper
from shared.runtime.metrics import Metrics
from shared.settings import ServiceSettings
from shared.events.envelope import Envelope
from shared.logging import configure_logging
from shared.storage.documents import DocumentStore, outbox_entry
from shared.storage.mongo import IndexSpec, connect, ensure_indexes

log = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """Take what start-up built (modules, models, routes, templates: some 90,000 objects) out of the
    garbage collector's sight, once per process. They live as long as it does, yet every full
    collection walked them all: 55 to 105 ms with the event loop stopped, measured in the backbone
    and notifications benchmarks, where it made the latency tail; after the freeze, 7 to 14 ms. The
    garbage left so far is collected first, so that none of it is kept for good."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


class ServiceRuntime:
    def __init__(self, settings: ServiceSettings, *, clock: Clock | None = None, app: FastAPI | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = Metrics(settings.service_name)
        self.mongo = connect(settings)
        self.db = self.mongo[settings.mongodb_database]
        self.broker = make_broker(settings)
        self.app = app or FastAPI(title=f"Leaseline {settings.service_name}")
        self._stores: list[DocumentStore] = []
        self._consumers: list[EventConsumer] = []
        self._indexes: list[IndexSpec] = []
        self.topics = TopicKeeper(
            settings.kafka_bootstrap_servers, settings.topic_partitions, settings.topic_replication_factor
        )
        self._publish = faststream_publisher(self.broker)
        self.relay = OutboxRelay(
            self.db,
            [],
            self._publish,
            topics=self.topics,
            metrics=self.metrics,
            batch_max=settings.relay_batch_max,
            idle_poll_s=settings.relay_idle_poll_s,
            sweep_s=settings.relay_sweep_s,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: uvicorn.Server | None = None
        self._started = False
        self._add_operations_routes()

    # --- wiring -----------------------------------------------------------------------------

    def store(self, collection: str, *, applied_window: int = 200) -> DocumentStore:
        """A document store whose outbox this process relays."""
        store = DocumentStore(
            self.db,
            collection,
            applied_window=applied_window,
            on_events=self.relay.wake,
            topic_namespace=self.settings.topic_namespace,
        )
        self._stores.append(store)
        self.relay.add_collection(collection)
        self._indexes += store.indexes
        return store

    async def publish_now(self, envelopes: Sequence[Envelope]) -> None:
        """Publish events directly, bypassing the outbox (``acks=all``, idempotent producer).

        Only for events whose durable record is elsewhere and which the caller publishes again
        after a crash, with the same event ids (so consumers drop the copies). Everything else goes
        through a ``DocumentStore`` write."""
        entries = [outbox_entry(envelope, self.settings.topic_namespace) for envelope in envelopes]
        await self.topics.ensure({entry["topic"] for entry in entries})
        await publish_all(self._publish, entries)
        for entry in entries:
            self.metrics.relayed.labels(self.metrics.service, entry["topic"]).inc()

    def consumer(self, name: str | None = None) -> EventConsumer:
        """A consumer group ``leaseline-<service>[-<name>]``; register handlers with ``.on``."""
        group = f"leaseline-{self.settings.service_name}" + (f"-{name}" if name else "")
        consumer = EventConsumer(group_id=group, settings=self.settings, metrics=self.metrics, clock=self.clock)
        self._consumers.append(consumer)
        return consumer

    def indexes(self, specs: Iterable[IndexSpec]) -> None:
        self._indexes += list(specs)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Ensure indexes and topics, then start consuming and relaying."""
        await self._wait_for_store()
        await ensure_indexes(self.db, self._indexes)
        await self.topics.ensure(topic for consumer in self._consumers for topic in consumer.topics)
        for consumer in self._consumers:
            consumer.subscribe(self.broker)
        await self.broker.start()
        # Read from the relay when scraped: the gauge costs no store read of its own (on FerretDB v1
        # a whole-collection read, every time).
        self.metrics.outbox_backlog.labels(self.metrics.service).set_function(self.relay.backlog)
        self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        self._started = True
        freeze_startup_objects()
        log.info("service started", extra={"consumers": [c.group_id for c in self._consumers]})

    async def stop(self) -> None:
        self._started = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        # FastStream waits for running handlers (graceful_timeout), then cancels them; a
        # cancelled batch is not committed (see shared.messaging.consumer). Commits run in the
        # background: the last ones land before the Kafka consumer closes.
        for consumer in self._consumers:
            consumer.stopping()
            await consumer.settle()
        await self.broker.stop()
        await self.mongo.close()
        log.info("service stopped")

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, with the HTTP API on ``HTTP_HOST:HTTP_PORT``."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        config = uvicorn.Config(
            self.app, host=self.settings.http_host, port=self.settings.http_port, log_config=None, access_log=False
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # ours above
        http = asyncio.create_task(self._server.serve(), name="http")
        await stop.wait()
        self._server.should_exit = True
        await http
        await self.stop()

    async def _wait_for_store(self, timeout_s: float = 60.0) -> None:
        deadline = loop_time() + timeout_s
        while True:
            try:
                await self.db.command("ping")
                return
            except Exception as error:
                if loop_time() > deadline:
                    raise RuntimeError(f"store at {self.settings.mongodb_uri} unreachable: {error}") from error
                log.warning("store not reachable yet; retrying", extra={"error": str(error)})
                await asyncio.sleep(1.0)

    # --- operations endpoints ---------------------------------------------------------------

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.db.command("ping"), timeout=2.0)
            checks["store"] = "ok"
        except Exception as error:
            checks["store"] = f"unreachable: {type(error).__name__}"
        try:
            ok = await self.broker.ping(timeout=2.0)
            checks["kafka"] = "ok" if ok else "unreachable"
        except Exception as error:
            checks["kafka"] = f"unreachable: {type(error).__name__}"
        if not self._started:
            checks["service"] = "starting"
        return checks

    def _add_operations_routes(self) -> None:
        @self.app.get("/healthz", tags=["operations"], include_in_schema=False)
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.settings.service_name}

        @self.app.get("/readyz", tags=["operations"], include_in_schema=False)
        async def readyz() -> JSONResponse:
            checks = await self.readiness()
            ready = all(v == "ok" for v in checks.values())
            return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

        @self.app.get("/metrics", tags=["operations"], include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def serve_process(settings: ServiceSettings, runtime: ServiceRuntime | None = None) -> None:
    """A service process's entry point: logs as configured, then serve until SIGTERM or SIGINT."""
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    asyncio.run((runtime or ServiceRuntime(settings)).serve())
