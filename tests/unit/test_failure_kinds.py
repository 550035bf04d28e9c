"""Which failures the consumer retries, and which it parks at once."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, RecordTooLargeError
from pymongo.errors import DuplicateKeyError, OperationFailure

from shared.messaging.errors import PermanentError, is_transient
from shared.storage.documents import ConcurrencyConflict


def test_a_busy_store_is_worth_retrying() -> None:
    # What FerretDB on SQLite answers when a write meets a lock.
    assert is_transient(OperationFailure("database is locked (5) (SQLITE_BUSY)", code=1))
    assert is_transient(OperationFailure("sqlite: step: SQLITE_BUSY", code=1))
    assert is_transient(OperationFailure("WriteConflict", code=112, details={"errorLabels": ["TransientTransactionError"]}))
    assert is_transient(ConcurrencyConflict("changed since version 3"))


def test_a_wrong_write_is_not_retried() -> None:
    assert not is_transient(DuplicateKeyError("E11000 duplicate key error"))
    assert not is_transient(OperationFailure("unknown operator: $frobnicate", code=2))
    assert not is_transient(PermanentError("bad payload"))
    assert not is_transient(ValueError("nope"))


def test_kafka_errors_are_retried_only_when_kafka_says_so() -> None:
    assert is_transient(KafkaConnectionError("broker went away"))
    assert is_transient(KafkaTimeoutError())  # aiokafka calls it non-retriable; a slow broker may answer later
    assert not is_transient(RecordTooLargeError("too big"))
