"""Prometheus metrics every service exposes on ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per process (tests may build several services in one interpreter)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["service", "topic"]
        self.consumed = Counter(
            "leaseline_messages_consumed_total", "Messages read from Kafka", labels, registry=self.registry
        )
        self.handled = Counter(
            "leaseline_messages_handled_total", "Messages whose handler succeeded", labels, registry=self.registry
        )
        self.duplicates = Counter(
            "leaseline_messages_duplicate_total",
            "Messages recognised as already applied and skipped",
            labels,
            registry=self.registry,
        )
        self.failed = Counter(
            "leaseline_handler_failures_total",
            "Handler attempts that raised (each retry counts)",
            [*labels, "kind"],
            registry=self.registry,
        )
        self.parked = Counter(
            "leaseline_messages_parked_total",
            "Messages sent to a dead-letter topic",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "leaseline_handler_seconds",
            "Time spent handling one message, retries included",
            labels,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.lag = Gauge(
            "leaseline_consumer_lag", "Messages not yet consumed, per partition", [*labels, "partition"],
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "leaseline_outbox_backlog", "Events stored but not yet relayed to Kafka: handed to the relay by this process's writes "
            "and not sent, plus what its last sweep found and could not send",
            ["service"],
            registry=self.registry,
        )
        self.relayed = Counter(
            "leaseline_outbox_relayed_total", "Events relayed from the outbox to Kafka", ["service", "topic"],
            registry=self.registry,
        )
        self.service = service
