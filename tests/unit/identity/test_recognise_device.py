"""Recognising a remembered device: a concurrent refresh of its last use is expected, a store failure is not."""

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from services.identity.domain import tokens
from services.identity.service_layer.devices import recognise
from shared.storage import ConcurrencyConflict, StoredDocument

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SECRET = tokens.new_secret()


class Devices:
    def __init__(self, failure: Exception | None) -> None:
        self.failure = failure
        self.doc = StoredDocument("dev_1", {"account_id": "cus_1", "remembered": True, "revoked_at": None,
                                            "token_hash": tokens.hash_secret(SECRET),
                                            "last_used_at": NOON - timedelta(days=3)}, 1, [])

    async def get(self, doc_id: str) -> StoredDocument | None:
        return self.doc if doc_id == self.doc.id else None

    async def update(self, doc: StoredDocument, state: dict) -> StoredDocument:
        if self.failure is not None:
            raise self.failure
        self.doc = StoredDocument(doc.id, state, doc.version + 1, [])
        return self.doc


def recognised(failure: Exception | None = None) -> tuple[str | None, Devices]:
    devices = Devices(failure)
    ctx = SimpleNamespace(stores=SimpleNamespace(devices=devices), now=lambda: NOON)
    return asyncio.run(recognise(ctx, "cus_1", tokens.compound("dev_1", SECRET))), devices  # type: ignore[arg-type]


def test_a_remembered_device_is_recognised_and_its_last_use_refreshed() -> None:
    device_id, devices = recognised()
    assert device_id == "dev_1" and devices.doc.state["last_used_at"] == NOON


def test_a_concurrent_refresh_of_the_same_device_still_recognises_it() -> None:
    assert recognised(ConcurrencyConflict("devices/dev_1 changed"))[0] == "dev_1"


def test_a_store_failure_is_not_taken_for_a_concurrent_refresh() -> None:
    with pytest.raises(ConnectionError):
        recognised(ConnectionError("store unreachable"))
