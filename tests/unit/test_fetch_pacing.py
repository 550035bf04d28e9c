"""Fetch pacing: busy while batches come, idle once they stop (see shared.messaging.fetch_pacing)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from shared.messaging.fetch_pacing import IDLE_MAX_WAIT_MS, IDLE_MIN_BYTES, FetchPacing


def consumer() -> SimpleNamespace:
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=IDLE_MIN_BYTES, _fetch_max_wait_ms=IDLE_MAX_WAIT_MS))


def asked(c: SimpleNamespace) -> tuple[int, int]:
    return c._fetcher._fetch_min_bytes, c._fetcher._fetch_max_wait_ms


async def test_a_batch_makes_the_consumer_busy_and_a_quiet_spell_idle_again() -> None:
    c, pacing = consumer(), FetchPacing(65536, 25, idle_after_s=0.1)
    pacing.batch_arrived(c)
    assert asked(c) == (65536, 25) and pacing.busy
    for _ in range(4):  # batches keep coming, closer together than the quiet spell: stays busy
        await asyncio.sleep(0.05)
        pacing.batch_arrived(c)
        assert asked(c) == (65536, 25)
    await asyncio.sleep(0.07)
    assert asked(c) == (65536, 25), "0.07 s after the last batch is not yet quiet"
    await asyncio.sleep(0.06)
    assert asked(c) == (IDLE_MIN_BYTES, IDLE_MAX_WAIT_MS) and not pacing.busy
    pacing.batch_arrived(c)
    assert asked(c) == (65536, 25), "busy again with the next batch"
    pacing.stop()


async def test_a_consumer_started_again_while_busy_fetches_as_a_busy_one_too() -> None:
    first, again, pacing = consumer(), consumer(), FetchPacing(65536, 25, idle_after_s=0.1)
    pacing.batch_arrived(first)
    pacing.batch_arrived(again)
    assert asked(again) == (65536, 25)
    await asyncio.sleep(0.15)
    assert asked(again) == (IDLE_MIN_BYTES, IDLE_MAX_WAIT_MS), "and idle again with the one it now has"
    pacing.stop()


async def test_after_stop_nothing_changes_any_more() -> None:
    c, pacing = consumer(), FetchPacing(65536, 25, idle_after_s=0.05)
    pacing.batch_arrived(c)
    pacing.stop()
    await asyncio.sleep(0.1)
    pacing.batch_arrived(c)
    assert asked(c) == (65536, 25) and not pacing.busy


async def test_a_client_without_those_parameters_is_left_alone_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    other = SimpleNamespace(_fetcher=SimpleNamespace(min_bytes=1))
    pacing = FetchPacing(65536, 25, idle_after_s=0.05)
    with caplog.at_level(logging.WARNING):
        pacing.batch_arrived(other)
        pacing.batch_arrived(other)
    assert vars(other._fetcher) == {"min_bytes": 1} and not pacing.busy
    assert [r.levelname for r in caplog.records] == ["WARNING"]
