"""The consumer's sorting of messages, without a broker (delivery itself is proven in integration)."""

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from shared.events import CustomerActivated, Envelope
from shared.messaging import Delivery, EventConsumer, PermanentError, TransientError
from shared.messaging.consumer import BATCH_BUDGET_S, MAX_POLL_INTERVAL_MS, BatchAborted
from shared.logging import JsonFormatter
from shared.runtime.metrics import Metrics
from shared.settings import ServiceSettings
from shared.storage import ConcurrencyConflict

AT = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
TOPIC = "customer.activated"


def record(value: bytes | None, offset: int = 0, key: bytes = b"cus_1") -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, key, value, None, len(key), len(value or b""), [("ce_id", b"x")])


def activated(customer_id: str = "cus_1", **overrides: Any) -> bytes:
    envelope = Envelope.wrap(CustomerActivated(customer_id=customer_id), source="identity", time=AT)
    wire = json.loads(envelope.to_bytes()) | overrides
    return json.dumps(wire).encode()


class Harness:
    def __init__(self, max_attempts: int = 3, commit_interval_s: float = 0.25, handler_timeout_s: float = 10.0) -> None:
        settings = ServiceSettings(service_name="test", consumer_max_attempts=max_attempts,
                                   consumer_commit_interval_s=commit_interval_s,
                                   consumer_handler_timeout_s=handler_timeout_s)
        self.sleeps: list[float] = []
        self.parked: list[tuple[str, dict[str, str]]] = []
        self.parked_values: list[bytes | None] = []
        self.seen: list[str] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        async def sink(topic: str, key: bytes | None, value: bytes | None, headers: dict[str, str]) -> None:
            self.parked.append((topic, headers))
            self.parked_values.append(value)

        self.consumer = EventConsumer(group_id="g", settings=settings, metrics=Metrics("test"), sleep=sleep)
        self.consumer.attach_dead_letter_sink(sink)

    def reasons(self) -> list[str]:
        return [headers["dlq-reason-kind"] for _, headers in self.parked]


async def test_a_good_event_reaches_its_handler_with_its_envelope() -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        h.seen.append(f"{event.customer_id}@{delivery.offset}/{delivery.envelope.type}")

    await h.consumer.process([record(activated(), offset=7)])
    assert h.seen == ["cus_1@7/customer.activated"]
    assert h.parked == []


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"\x00\xff garbage", "undecodable"),
        (None, "undecodable"),
        (b'{"hello": "world"}', "invalid_envelope"),
        (activated(type="customer.teleported"), "unknown_type"),
        (activated(schemaversion=7), "unknown_type"),
        (activated(data={"customer_id": ""}), "schema"),
        (activated(type="customer.registered"), "unexpected_type"),
    ],
)
async def test_bad_messages_are_parked_with_a_reason_and_the_next_one_is_handled(value: bytes | None, kind: str) -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        h.seen.append(event.customer_id)

    await h.consumer.process([record(value, 0, b"k1"), record(activated("cus_2"), 1, b"k1")])
    assert h.reasons() == [kind]
    topic, headers = h.parked[0]
    assert topic == "customer.activated.dlq"
    assert headers["dlq-original-topic"] == TOPIC
    assert headers["dlq-original-offset"] == "0"
    assert headers["dlq-consumer-group"] == "g"
    assert headers["ce_id"] == "x", "original headers are kept"
    assert h.seen == ["cus_2"]


async def test_transient_failures_are_retried_with_growing_backoff_then_succeed() -> None:
    h = Harness(max_attempts=5)
    calls = 0

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise TransientError("store briefly unavailable")

    await h.consumer.process([record(activated())])
    assert calls == 4
    assert h.parked == []
    assert len(h.sleeps) == 3
    assert h.sleeps[0] <= 0.2 and h.sleeps[2] > h.sleeps[0]


async def test_a_handler_that_never_returns_is_cut_off_retried_then_parked_and_the_next_event_handled() -> None:
    h = Harness(max_attempts=3, handler_timeout_s=0.05)
    calls = 0

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        nonlocal calls
        calls += 1
        if event.customer_id == "cus_stuck":
            await asyncio.sleep(3600)
        h.seen.append(event.customer_id)

    await asyncio.wait_for(
        h.consumer.process([record(activated("cus_stuck"), 0, b"k1"), record(activated("cus_2"), 1, b"k1")]), 5
    )
    assert calls == 4, "three attempts of the stuck one, then the next event"
    assert h.reasons() == ["retries_exhausted"]
    assert "handler still running after 0.05s" in h.parked[0][1]["dlq-reason"]
    assert h.seen == ["cus_2"]


def test_settings_under_which_a_stuck_record_could_never_be_parked_are_refused() -> None:
    # Ten attempts of 60 s each outlast a batch's budget: the batch would be read again first, forever.
    settings = ServiceSettings(service_name="test", consumer_max_attempts=10, consumer_handler_timeout_s=60)
    with pytest.raises(ValueError, match="more than a batch's budget"):
        EventConsumer(group_id="g", settings=settings, metrics=Metrics("test"))


async def test_transient_failures_are_parked_once_retries_are_exhausted() -> None:
    h = Harness(max_attempts=3)

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        raise TransientError("still down")

    await h.consumer.process([record(activated())])
    assert h.reasons() == ["retries_exhausted"]
    assert h.parked[0][1]["dlq-attempts"] == "3"
    assert "still down" in h.parked[0][1]["dlq-reason"]


async def test_a_permanent_failure_is_parked_without_retrying() -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        raise PermanentError("customer unknown to this service")

    await h.consumer.process([record(activated())])
    assert h.reasons() == ["handler_rejected"]
    assert h.sleeps == []


async def test_one_aggregates_events_are_handled_in_order_while_others_interleave() -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        h.seen.append(f"{event.customer_id}:{delivery.offset}")

    records = [record(activated(f"cus_{i % 3}"), offset=i, key=f"cus_{i % 3}".encode()) for i in range(12)]
    await h.consumer.process(records)
    for customer in ("cus_0", "cus_1", "cus_2"):
        offsets = [int(s.split(":")[1]) for s in h.seen if s.startswith(customer + ":")]
        assert offsets == sorted(offsets) and len(offsets) == 4


async def test_when_parking_itself_fails_the_batch_fails_so_nothing_is_committed() -> None:
    h = Harness()

    async def broken_sink(*_: Any) -> None:
        raise ConnectionError("broker unreachable")

    h.consumer.attach_dead_letter_sink(broken_sink)
    with pytest.raises(ConnectionError):
        await h.consumer.process([record(b"garbage")])


async def test_a_decoder_failing_with_anything_but_a_validation_error_parks_the_record() -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        h.seen.append(event.customer_id)

    nested_too_deep = b"[" * 200_000 + b"]" * 200_000  # json.loads raises RecursionError
    await h.consumer.process([record(nested_too_deep, 0, b"k1"), record(activated("cus_2"), 1, b"k1")])
    assert h.reasons() == ["undecodable"]
    assert "RecursionError" in h.parked[0][1]["dlq-reason"]
    assert h.seen == ["cus_2"], "the record after it is handled"


async def test_a_record_too_large_to_park_whole_is_parked_as_a_truncated_copy_that_points_at_it() -> None:
    h = Harness()
    attempts: list[int] = []

    async def size_limited_sink(topic: str, key: bytes | None, value: bytes | None, headers: dict[str, str]) -> None:
        attempts.append(len(value or b""))
        if len(value or b"") > 100_000:
            raise MessageSizeTooLargeError("The message is 1048700 bytes when serialized")
        h.parked.append((topic, headers))
        h.parked_values.append(value)

    h.consumer.attach_dead_letter_sink(size_limited_sink)

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        h.seen.append(event.customer_id)

    huge = b"\x00" + b"x" * 1_000_000
    await h.consumer.process([record(huge, 41, b"k1"), record(activated("cus_2"), 42, b"k1")])
    assert attempts == [len(huge), 64 * 1024], "parked whole first, then cut short"
    topic, headers = h.parked[0]
    assert topic == "customer.activated.dlq"
    assert h.parked_values[0] == huge[: 64 * 1024]
    assert headers["dlq-original-topic"] == TOPIC and headers["dlq-original-offset"] == "41"
    assert headers["dlq-reason-kind"] == "undecodable"
    assert "1000001 bytes" in headers["dlq-truncated"] and "MessageSizeTooLargeError" in headers["dlq-truncated"]
    assert "ce_id" not in headers, "the original headers are dropped from a truncated copy"
    assert h.seen == ["cus_2"], "the batch goes on"


async def test_a_message_the_dead_letter_topic_refuses_even_truncated_fails_the_batch() -> None:
    h = Harness()

    async def refusing_sink(*_: Any) -> None:
        raise MessageSizeTooLargeError("refused whatever its size")

    h.consumer.attach_dead_letter_sink(refusing_sink)
    with pytest.raises(MessageSizeTooLargeError):
        await h.consumer.process([record(b"garbage")])


class FakeBatch:
    """A FastStream batch message (and its Kafka consumer): its records, and whether it was
    committed (with which offsets) or rewound."""

    def __init__(self, records: list[ConsumerRecord[Any, Any]], highwater: int = 0,
                 assigned: set[TopicPartition] | None = None) -> None:
        self.raw_message = tuple(records)
        self.calls: list[str] = []
        self.committed: dict[Any, int] = {}
        self.consumer = self
        self._highwater = highwater
        # The partitions the consumer holds: those of its records, unless a rebalance says otherwise.
        self._assigned = {TopicPartition(r.topic, r.partition) for r in records} if assigned is None else assigned

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.calls.append("commit")
        self.committed = offsets

    async def nack(self) -> None:
        self.calls.append("rewind")

    def highwater(self, tp: Any) -> int:
        return self._highwater

    def assignment(self) -> set[TopicPartition]:
        return self._assigned


@pytest.mark.parametrize(
    "outage",
    [
        ServerSelectionTimeoutError("127.0.0.1:27017: [Errno 111] Connection refused"),
        AutoReconnect("connection closed"),
        KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]"),
    ],
    ids=["store unreachable", "store connection lost", "broker unreachable"],
)
async def test_an_unreachable_dependency_gives_the_batch_up_without_parking_and_stops_the_other_lanes(
    outage: Exception,
) -> None:
    h = Harness(max_attempts=5)

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        if event.customer_id == "cus_down":
            raise outage
        await asyncio.sleep(0.2)  # in flight when the outage is found: allowed to finish
        h.seen.append(f"{event.customer_id}@{delivery.offset}")

    batch = FakeBatch([
        record(activated("cus_slow"), 0, b"cus_slow"),
        record(activated("cus_down"), 1, b"cus_down"),
        record(activated("cus_slow"), 2, b"cus_slow"),
    ])
    await asyncio.wait_for(h.consumer.handle_batch(batch), 5)
    assert h.parked == [], "an outage delays messages, it does not park them"
    assert h.seen == ["cus_slow@0"], "the other lane stops at its next record"
    assert batch.calls == ["rewind"], "nothing committed: the batch is read again"
    assert len(h.sleeps) == 1, "after a pause, not in a tight loop"


async def test_a_lane_in_a_transient_retry_stops_retrying_once_another_lane_found_an_outage() -> None:
    h = Harness(max_attempts=5)
    attempts: list[int] = []

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        if event.customer_id == "cus_down":
            await asyncio.sleep(0.05)
            raise ServerSelectionTimeoutError("no servers")
        attempts.append(delivery.attempt)
        await asyncio.sleep(0.1)
        raise TransientError("busy")

    batch = FakeBatch([record(activated("cus_busy"), 0, b"cus_busy"), record(activated("cus_down"), 1, b"cus_down")])
    await asyncio.wait_for(h.consumer.handle_batch(batch), 5)
    assert attempts == [1] and h.parked == [] and batch.calls == ["rewind"]


async def test_pauses_grow_while_the_outage_lasts_and_reset_once_a_batch_goes_through() -> None:
    h = Harness()
    down = True

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        if down:
            raise ServerSelectionTimeoutError("no servers")

    for _ in range(3):
        await h.consumer.handle_batch(FakeBatch([record(activated())]))
    assert h.sleeps == sorted(h.sleeps) and h.sleeps[2] > h.sleeps[0]
    down = False
    ok = FakeBatch([record(activated())])
    await h.consumer.handle_batch(ok)
    await h.consumer.settle()
    assert ok.calls == ["commit"]
    down = True
    await h.consumer.handle_batch(FakeBatch([record(activated())]))
    assert h.sleeps[-1] == h.sleeps[0], "a new outage starts with a short pause again"


async def test_other_transient_failures_are_still_retried_in_place_and_the_batch_committed() -> None:
    h = Harness(max_attempts=3)
    calls = 0

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConcurrencyConflict("cus_1 changed meanwhile")

    batch = FakeBatch([record(activated())])
    await h.consumer.handle_batch(batch)
    await h.consumer.settle()
    assert calls == 2 and batch.calls == ["commit"] and h.parked == []


async def test_a_batch_over_its_time_budget_is_given_up_well_before_the_consumer_would_be_evicted() -> None:
    assert 2 * BATCH_BUDGET_S * 1000 < MAX_POLL_INTERVAL_MS, "even the hard limit comes before eviction"
    # One attempt, cut off after 0.19 s: within the budget, as the consumer requires.
    settings = ServiceSettings(service_name="test", consumer_max_attempts=1, consumer_handler_timeout_s=0.19)
    consumer = EventConsumer(group_id="g", settings=settings, metrics=Metrics("test"), batch_budget_s=0.2)
    handled: list[int] = []

    @consumer.on(CustomerActivated)
    async def slow(event: CustomerActivated, delivery: Delivery) -> None:
        await asyncio.sleep(0.15)
        handled.append(delivery.offset)

    with pytest.raises(BatchAborted, match="time budget"):
        await asyncio.wait_for(consumer.process([record(activated(), n) for n in range(5)]), 5)
    assert handled == [0, 1], "stopped at the first record after the budget"


async def test_a_handler_stuck_past_twice_the_budget_is_cancelled() -> None:
    settings = ServiceSettings(service_name="test", consumer_max_attempts=1, consumer_handler_timeout_s=0.05)
    consumer = EventConsumer(group_id="g", settings=settings, metrics=Metrics("test"), batch_budget_s=0.1)

    @consumer.on(CustomerActivated)
    async def stuck(event: CustomerActivated, delivery: Delivery) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # ignores its cut-off once, as a badly written library might
            await asyncio.sleep(3600)

    with pytest.raises(BatchAborted, match="cancelled"):
        await asyncio.wait_for(consumer.process([record(activated())]), 5)


async def test_a_record_parked_by_a_batch_given_up_is_not_parked_twice_when_the_batch_is_read_again() -> None:
    h = Harness()
    down = True

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        if down:
            raise ServerSelectionTimeoutError("no servers")
        h.seen.append(event.customer_id)

    records = [record(b"garbage", 0, b"k1"), record(activated("cus_2"), 1, b"k2")]
    await h.consumer.handle_batch(FakeBatch(records))
    assert h.reasons() == ["undecodable"]
    down = False
    again = FakeBatch(records)
    await h.consumer.handle_batch(again)
    await h.consumer.settle()
    assert h.reasons() == ["undecodable"], "parked once"
    assert h.seen == ["cus_2"] and again.calls == ["commit"]


async def test_lag_is_measured_when_a_batch_is_fetched_and_again_once_it_is_committed() -> None:
    h = Harness()
    lags: list[float] = []

    def lag() -> float | None:
        labels = {"service": "test", "topic": TOPIC, "partition": "0"}
        return h.consumer._metrics.registry.get_sample_value("leaseline_consumer_lag", labels)

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        lags.append(lag())

    await h.consumer.handle_batch(FakeBatch([record(activated(), 10), record(activated(), 11)], highwater=20))
    await h.consumer.settle()
    assert lags == [10, 10], "while the batch runs: from its first record to the end of the partition"
    assert lag() == 8, "once committed: after its last record"


async def test_a_handler_cancelled_while_its_library_turns_the_cancellation_into_an_error_parks_nothing() -> None:
    h = Harness()
    h.consumer._batch_budget_s = 0.1

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("Lock is not acquired") from None  # what pymongo 4.20 may do

    batch = FakeBatch([record(activated())])
    await asyncio.wait_for(h.consumer.handle_batch(batch), 5)
    assert h.parked == [] and batch.calls == ["rewind"]


async def test_handler_error_text_is_scrubbed_before_it_reaches_the_dead_letter_headers() -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        raise PermanentError("jeanne.martin@example.fr code=123456 is not a known customer")

    await h.consumer.process([record(activated())])
    reason = h.parked[0][1]["dlq-reason"]
    assert "jeanne.martin" not in reason and "123456" not in reason
    assert reason == "PermanentError: j***@example.fr code=[redacted] is not a known customer"


class JsonLines(logging.Handler):
    """Formats each record as it is emitted, as the real handler does (the ids live in the context)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_the_parked_line_carries_the_event_and_correlation_ids() -> None:
    h = Harness()
    lines = JsonLines()
    logger = logging.getLogger("shared.messaging.consumer")
    logger.addHandler(lines)

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        raise PermanentError("no")

    envelope = Envelope.wrap(CustomerActivated(customer_id="cus_1"), source="identity", time=AT, correlation_id="req_7")
    try:
        await h.consumer.process([record(envelope.to_bytes()), record(b"garbage", 1)])
    finally:
        logger.removeHandler(lines)
    parked = [line for line in lines.lines if line["message"] == "message parked"]
    assert [(p.get("event_id"), p.get("correlation_id")) for p in parked] == [(envelope.id, "req_7"), ("x", None)]


class SlowCommits(FakeBatch):
    """A batch whose commit takes ``delay`` seconds; every commit is logged, in the order it lands."""

    def __init__(self, records: list[ConsumerRecord[Any, Any]], delay: float, landed: list[dict[Any, int]]) -> None:
        super().__init__(records)
        self._delay = delay
        self._landed = landed

    async def commit(self, offsets: dict[Any, int]) -> None:
        await asyncio.sleep(self._delay)
        self._landed.append(offsets)


async def test_the_next_batch_is_handled_while_the_commit_of_the_one_before_is_under_way_and_commits_land_in_order(
) -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        h.seen.append(event.customer_id)

    landed: list[dict[Any, int]] = []
    slow = SlowCommits([record(activated("cus_1"), 10), record(activated("cus_2"), 12)], 0.3, landed)
    fast = SlowCommits([record(activated("cus_3"), 13)], 0.0, landed)
    await asyncio.wait_for(h.consumer.handle_batch(slow), 0.2)  # does not wait for its commit
    await asyncio.wait_for(h.consumer.handle_batch(fast), 0.2)
    assert h.seen == ["cus_1", "cus_2", "cus_3"] and landed == []
    await h.consumer.settle()
    partition = TopicPartition(TOPIC, 0)
    assert landed == [{partition: 13}, {partition: 14}], "the offsets after each batch, the older first"


async def test_once_stopping_a_batch_is_done_only_when_its_commit_has_landed() -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        pass

    landed: list[dict[Any, int]] = []
    h.consumer.stopping()
    await h.consumer.handle_batch(SlowCommits([record(activated(), 5)], 0.1, landed))
    assert landed == [{TopicPartition(TOPIC, 0): 6}]


async def test_batches_handled_within_the_commit_interval_are_committed_together_and_settle_commits_at_once() -> None:
    h = Harness(commit_interval_s=0.3)

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        pass

    first, second, third = (FakeBatch([record(activated(), offset)]) for offset in (0, 1, 2))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await h.consumer.handle_batch(first)
    await asyncio.sleep(0.05)
    assert first.committed == {TopicPartition(TOPIC, 0): 1}, "the first batch after a quiet spell: at once"
    await h.consumer.handle_batch(second)
    await h.consumer.handle_batch(third)
    await asyncio.sleep(0.1)
    assert second.calls == [] and third.calls == [], "not before the interval is over"
    await asyncio.wait_for(h.consumer._committer, 1)  # type: ignore[arg-type]
    assert loop.time() - started >= 0.3
    assert second.calls == [] and third.committed == {TopicPartition(TOPIC, 0): 3}, "one commit for both"

    fourth = FakeBatch([record(activated(), 3)])
    await h.consumer.handle_batch(fourth)
    before = loop.time()
    await h.consumer.settle()
    assert fourth.committed == {TopicPartition(TOPIC, 0): 4} and loop.time() - before < 0.1, "settle does not wait"


async def test_a_stop_does_not_wait_forever_for_a_commit_the_broker_never_answers(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        pass

    class Unanswered(FakeBatch):
        async def commit(self, offsets: dict[Any, int]) -> None:
            self.calls.append("commit")
            await asyncio.Event().wait()  # aiokafka retries until a broker answers

    batch = Unanswered([record(activated(), 0)])
    await h.consumer.handle_batch(batch)
    h.consumer.stopping()
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(h.consumer.settle(timeout_s=0.2), 2)
    assert batch.calls == ["commit"] and batch.committed == {}
    assert any("delivered again" in r.getMessage() for r in caplog.records)


async def test_offsets_of_partitions_a_rebalance_took_away_are_left_to_their_new_owner() -> None:
    h = Harness(commit_interval_s=0.3)

    @h.consumer.on(CustomerActivated)
    async def handle(event: CustomerActivated, delivery: Delivery) -> None:
        pass

    kept, lost = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    moved = ConsumerRecord(TOPIC, 1, 7, 0, 0, b"cus_2", activated("cus_2"), None, 5, 0, [("ce_id", b"y")])
    await h.consumer.handle_batch(FakeBatch([record(activated(), 0)]))  # committed at once; the interval starts
    both = FakeBatch([record(activated(), 1), moved], assigned={kept})  # partition 1 went during the interval
    await h.consumer.handle_batch(both)
    await h.consumer.settle()
    assert both.committed == {kept: 2}, "partition 1's offset is its new owner's to commit"
