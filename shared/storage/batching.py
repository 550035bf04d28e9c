"""Group commit for a store: concurrent single-document inserts and reads by ``_id`` become one
command each, without making anyone wait when nothing else is going on.

A consumer handles up to ``consumer_concurrency`` events at once, and an HTTP service many requests;
each loads or creates a document or two. Sent one by one, every load and every insert is a round
trip and (on FerretDB, which serves commands one at a time) a turn in the store's queue. Here the
first call goes out at once; calls made while it is in flight wait for it and then go out together,
up to ``max_batch`` per command. Under no load that is the plain single call; under load, batches
grow by themselves to what the store can take.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure

from shared.storage.mongo import is_duplicate_write_error

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Calls made while one command is in flight go out together in the next (see the module)."""

    def __init__(self, *, max_batch: int) -> None:
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def _submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # Yield once, so that the calls made in the same turn of the loop go with the first one.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            live = [(item, future) for item, future in batch if not future.done()]  # skip cancelled callers
            if not live:
                continue
            try:
                outcomes = await self._run([item for item, _ in live])
            except asyncio.CancelledError:
                for _, future in live + self._pending:
                    future.cancel()
                self._pending = []
                raise
            except Exception as error:  # the store is unreachable: every caller gets the error
                outcomes = [error] * len(live)
            for (_, future), outcome in zip(live, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def _run(self, items: list[Item]) -> Sequence[Result | BaseException]:
        raise NotImplementedError


class InsertBatcher(GroupCommit[dict[str, Any], bool]):
    """Concurrent single-document inserts into ``insert_many(ordered=False)`` calls."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]], *, max_batch: int = 200) -> None:
        super().__init__(max_batch=max_batch)
        self._collection = collection

    async def insert(self, document: dict[str, Any]) -> bool:
        """True when inserted, False when a document with the same ``_id`` or unique key exists.
        Any other refusal is raised to this caller only."""
        return await self._submit(document)

    async def _run(self, documents: list[dict[str, Any]]) -> Sequence[bool | BaseException]:
        outcomes: list[bool | BaseException] = [True] * len(documents)
        try:
            await self._collection.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            for write_error in error.details.get("writeErrors", []):
                outcomes[write_error["index"]] = (
                    False if is_duplicate_write_error(write_error)
                    else OperationFailure(str(write_error.get("errmsg", "")), write_error.get("code"))
                )
        return outcomes


class ReadBatcher(GroupCommit[str, "dict[str, Any] | None"]):
    """Concurrent ``find_one({field: x})`` into ``find({field: {$in: [...]}})`` calls (string values;
    ``field`` is ``_id`` unless told otherwise, and should be unique: each caller gets one match)."""

    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        *,
        field: str = "_id",
        projection: Mapping[str, Any] | None = None,
        max_batch: int = 200,
    ) -> None:
        super().__init__(max_batch=max_batch)
        self._collection = collection
        self._field = field
        self._projection = dict(projection) if projection else None

    async def get(self, value: str) -> dict[str, Any] | None:
        return await self._submit(value)

    async def _run(self, values: list[str]) -> Sequence[dict[str, Any] | None]:
        wanted = list(dict.fromkeys(values))
        found = await self._collection.find({self._field: {"$in": wanted}}, projection=self._projection).to_list()
        by_value: dict[Any, dict[str, Any]] = {}
        for doc in found:
            by_value.setdefault(doc.get(self._field), doc)
        # Each caller gets a copy of its own: two callers of the same value may change theirs.
        return [dict(by_value[v]) if v in by_value else None for v in values]
