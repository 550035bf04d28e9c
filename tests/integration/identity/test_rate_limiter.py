"""The rate limiter's counters on the real store: concurrent hits share commands, each counted once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.identity.adapters.ratelimiter import RateLimiter
from services.identity.domain.ratelimits import Limit

pytestmark = pytest.mark.integration

HOURLY = Limit(5, timedelta(hours=1))


@pytest.fixture
async def limiter(mongo: Any) -> Any:
    db = mongo[f"t_rl_{uuid.uuid4().hex[:8]}"]
    yield RateLimiter(db["rate_limits"], sync_s=3600), db  # synced when a test says so
    await mongo.drop_database(db.name)


async def test_concurrent_hits_each_get_their_own_count(limiter: Any) -> None:
    counters, _ = limiter
    now = datetime.now(UTC)
    windows = await asyncio.gather(*(counters.hit(key, HOURLY, now) for key in ["a"] * 12 + ["b"] * 3 + ["a"] * 3))
    assert sorted(w.count for w in windows[:12] + windows[15:]) == list(range(1, 16))
    assert sorted(w.count for w in windows[12:15]) == [1, 2, 3]
    assert (await counters.hit("a", HOURLY, now)).count == 16, "nothing was counted twice or lost"


async def test_uses_counted_in_memory_reach_the_store_and_the_other_replicas(limiter: Any) -> None:
    counters, db = limiter
    replica = RateLimiter(db["rate_limits"], sync_s=3600)
    now = datetime.now(UTC)
    assert [(await counters.hit("d", HOURLY, now)).count for _ in range(4)] == [1, 2, 3, 4]
    assert (await db["rate_limits"].find_one({"_id": "d"}))["count"] == 1, "after the first, counted in memory"
    await counters.sync()
    assert (await db["rate_limits"].find_one({"_id": "d"}))["count"] == 4
    assert (await replica.hit("d", HOURLY, now)).count == 5, "another replica starts from what was counted"
    await replica.hit("d", HOURLY, now)  # 6, in the replica's memory
    await replica.sync()
    assert (await counters.hit("d", HOURLY, now)).count == 5, "not seen before the next sync"
    await counters.sync()
    assert (await counters.hit("d", HOURLY, now)).count == 8, "what the replica counted is seen after a sync"


async def test_a_use_while_a_sync_reads_the_counts_back_sees_every_use_before_it(limiter: Any) -> None:
    """Between writing its increments and reading the counts back, a sync must not leave the
    counter short of what it wrote: a use then would slip one past the limit."""
    counters, db = limiter
    now = datetime.now(UTC)
    for _ in range(3):
        await counters.hit("g", HOURLY, now)
    seen_meanwhile = []
    read_back = db["rate_limits"].find

    def find(*args: Any, **kwargs: Any) -> Any:
        seen_meanwhile.append(asyncio.get_running_loop().create_task(counters.hit("g", HOURLY, now)))
        return read_back(*args, **kwargs)

    counters._counters.find = find  # the moment the increments are written, before the read-back
    await counters.sync()
    assert (await seen_meanwhile[0]).count == 4


async def test_uses_are_synced_by_themselves_and_at_close(limiter: Any) -> None:
    counters, db = limiter
    fast = RateLimiter(db["rate_limits"], sync_s=0.05)
    now = datetime.now(UTC)
    for _ in range(3):
        await fast.hit("e", HOURLY, now)
    await asyncio.sleep(0.5)
    assert (await db["rate_limits"].find_one({"_id": "e"}))["count"] == 3
    await counters.hit("f", HOURLY, now)
    await counters.hit("f", HOURLY, now)
    await counters.close()
    assert (await db["rate_limits"].find_one({"_id": "f"}))["count"] == 2


async def test_a_window_that_is_over_starts_again_at_one(limiter: Any) -> None:
    counters, _ = limiter
    start = datetime.now(UTC).replace(microsecond=0)  # the store keeps milliseconds
    for _ in range(7):
        last = await counters.hit("c", HOURLY, start)
    assert last.count == 7 and last.exceeded(HOURLY)
    later = await counters.hit("c", HOURLY, start + timedelta(hours=1, seconds=1))
    assert later.count == 1 and not later.exceeded(HOURLY) and later.started == start + timedelta(hours=1, seconds=1)


async def test_counters_of_windows_long_over_are_purged(limiter: Any) -> None:
    counters, db = limiter
    now = datetime.now(UTC)
    await counters.hit("old", HOURLY, now - timedelta(hours=3))
    await counters.hit("new", HOURLY, now)
    assert await counters.purge(now - timedelta(hours=1)) == 1
    assert [d["_id"] for d in await db["rate_limits"].find({}).to_list()] == ["new"]
