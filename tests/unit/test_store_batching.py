"""Group commit: concurrent single inserts and reads by _id become one command; duplicates are told
apart from failures; a lone call is not held back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import BulkWriteError, OperationFailure

from shared.storage.batching import InsertBatcher, ReadBatcher


class FakeCollection:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.ids: set[str] = set()
        self.busy: set[str] = set()

    async def insert_many(self, documents: list[dict[str, Any]], ordered: bool = True) -> None:
        self.calls.append([d["_id"] for d in documents])
        await asyncio.sleep(0.01)  # a round trip
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


async def test_calls_made_while_a_batch_is_in_flight_go_together_and_other_errors_reach_their_caller() -> None:
    collection = FakeCollection()
    collection.busy.add("ntf_2")
    batcher = InsertBatcher(collection, max_batch=2)  # type: ignore[arg-type]
    first = asyncio.ensure_future(batcher.insert({"_id": "ntf_0"}))
    await asyncio.sleep(0.005)  # the first is in flight
    later = [asyncio.ensure_future(batcher.insert({"_id": f"ntf_{i}"})) for i in (1, 2, 3)]
    assert await asyncio.wait_for(first, 1) is True
    assert await asyncio.wait_for(later[0], 1) is True
    with pytest.raises(OperationFailure, match="database is locked"):
        await asyncio.wait_for(later[1], 1)
    assert await asyncio.wait_for(later[2], 1) is True
    assert collection.calls == [["ntf_0"], ["ntf_1", "ntf_2"], ["ntf_3"]], "at most max_batch per command"


async def test_a_caller_that_gave_up_is_not_written() -> None:
    collection = FakeCollection()
    batcher = InsertBatcher(collection)  # type: ignore[arg-type]
    kept = asyncio.ensure_future(batcher.insert({"_id": "ntf_0"}))
    dropped = asyncio.ensure_future(batcher.insert({"_id": "ntf_1"}))
    dropped.cancel()
    assert await kept is True
    assert collection.calls == [["ntf_0"]]


class FakeReads:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = {d["_id"]: d for d in docs}
        self.queries: list[Any] = []
        self.fail: Exception | None = None

    def find(self, query: dict[str, Any], projection: Any = None) -> "FakeReads":
        self.queries.append(query)
        self._last = query
        return self

    async def to_list(self) -> list[dict[str, Any]]:
        if self.fail:
            raise self.fail
        return [self.docs[i] for i in self._last["_id"]["$in"] if i in self.docs]


async def test_concurrent_reads_by_id_share_one_query_and_each_gets_its_own_answer() -> None:
    collection = FakeReads([{"_id": "a", "n": 1}, {"_id": "b", "n": 2}])
    reads = ReadBatcher(collection)  # type: ignore[arg-type]
    found = await asyncio.gather(reads.get("a"), reads.get("zz"), reads.get("b"), reads.get("a"))
    assert found == [{"_id": "a", "n": 1}, None, {"_id": "b", "n": 2}, {"_id": "a", "n": 1}]
    assert found[0] is not found[3], "two callers of one id never share a mutable document"
    assert collection.queries == [{"_id": {"$in": ["a", "zz", "b"]}}]


async def test_a_failed_read_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs() -> None:
    collection = FakeReads([{"_id": "a"}])
    collection.fail = ConnectionError("store unreachable")
    reads = ReadBatcher(collection)  # type: ignore[arg-type]
    results = await asyncio.gather(reads.get("a"), reads.get("b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    collection.fail = None
    assert await reads.get("a") == {"_id": "a"}
