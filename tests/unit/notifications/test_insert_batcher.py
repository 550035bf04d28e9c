"""Concurrent single inserts become one insert_many; duplicates are told apart from failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import BulkWriteError, OperationFailure

from services.notifications.adapters.store import InsertBatcher


class FakeCollection:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.ids: set[str] = set()
        self.busy: set[str] = set()

    async def insert_many(self, documents: list[dict[str, Any]], ordered: bool = True) -> None:
        self.calls.append([d["_id"] for d in documents])
        errors = []
        for index, doc in enumerate(documents):
            if doc["_id"] in self.busy:
                errors.append({"index": index, "code": 1, "errmsg": "database is locked (5) (SQLITE_BUSY)"})
            elif doc["_id"] in self.ids:
                errors.append({"index": index, "code": 11000, "errmsg": "E11000 duplicate key error"})
            else:
                self.ids.add(doc["_id"])
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": len(documents) - len(errors)})


async def test_concurrent_inserts_go_in_one_batch_and_duplicates_answer_false() -> None:
    collection = FakeCollection()
    collection.ids.add("ntf_2")
    batcher = InsertBatcher(collection)  # type: ignore[arg-type]
    results = await asyncio.gather(*(batcher.insert({"_id": f"ntf_{i}"}) for i in range(5)))
    assert results == [True, True, False, True, True]
    assert collection.calls == [["ntf_0", "ntf_1", "ntf_2", "ntf_3", "ntf_4"]]


async def test_a_full_batch_is_written_at_once_and_other_errors_reach_their_caller() -> None:
    collection = FakeCollection()
    collection.busy.add("ntf_1")
    batcher = InsertBatcher(collection, max_batch=2, max_wait_s=60)  # type: ignore[arg-type]
    first = asyncio.ensure_future(batcher.insert({"_id": "ntf_0"}))
    second = asyncio.ensure_future(batcher.insert({"_id": "ntf_1"}))
    assert await asyncio.wait_for(first, 1) is True
    with pytest.raises(OperationFailure, match="database is locked"):
        await asyncio.wait_for(second, 1)
