"""How long the broker may hold a consumer's fetch: briefly while events flow, long while none do.

While events flow, a fetch asks for 64 KiB or 25 ms (``CONSUMER_FETCH_MIN_BYTES`` /
``CONSUMER_FETCH_MAX_WAIT_MS``), so that a steady trickle arrives in batches instead of one record
per fetch, which cost the broker and the consumer more CPU than the records themselves. But an idle
consumer asking that way sends forty empty fetches a second: measured, an idle identity service
spent 4.6 % of a core on it and the broker 7.8 %, against 1.0 % and 2.7 % when each fetch may wait
500 ms (docs/assumptions.md). So a consumer starts idle (one byte or 500 ms, aiokafka's defaults:
two fetches a second, and the first record to come is answered at once), turns busy with its first
batch, and turns idle again after ``IDLE_AFTER_S`` without one.

aiokafka has no public way to change these on a running consumer. Its fetcher reads
``_fetch_min_bytes`` and ``_fetch_max_wait_ms`` each time it builds a fetch request (aiokafka 0.14,
``consumer/fetcher.py``); a test against the real client fails if that changes. Should the
attributes be missing, pacing is switched off with a warning and the consumer keeps its idle
settings: slower to batch, never wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

#: aiokafka's defaults: one byte is enough, and the broker holds an empty fetch for up to 500 ms.
IDLE_MIN_BYTES = 1
IDLE_MAX_WAIT_MS = 500
#: A consumer with no batch for this long is idle again.
IDLE_AFTER_S = 1.0


class FetchPacing:
    """Switches one consumer's fetch parameters between busy and idle."""

    def __init__(self, busy_min_bytes: int, busy_max_wait_ms: int, *, idle_after_s: float = IDLE_AFTER_S) -> None:
        self._busy = (busy_min_bytes, busy_max_wait_ms)
        self._idle_after_s = idle_after_s
        self._fetcher: Any = None
        self._last_batch = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._disabled = False

    @property
    def busy(self) -> bool:
        return self._timer is not None

    def batch_arrived(self, consumer: Any) -> None:
        """A batch was fetched by ``consumer`` (an ``AIOKafkaConsumer``): fetch as a busy consumer."""
        if self._disabled:
            return
        fetcher = getattr(consumer, "_fetcher", None)
        new = fetcher is None or fetcher is not self._fetcher  # the first batch, or a consumer started again
        if new:
            if fetcher is None or not all(hasattr(fetcher, a) for a in ("_fetch_min_bytes", "_fetch_max_wait_ms")):
                self._disabled = True
                log.warning("aiokafka's fetcher no longer has the fetch parameters this version set: "
                            "consumers keep fetching as idle ones (one byte or 500 ms)")
                return
            self._fetcher = fetcher
        self._last_batch = time.monotonic()
        if new or self._timer is None:
            self._set(*self._busy)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._idle_after_s, self._check)

    def _check(self) -> None:
        quiet_for = time.monotonic() - self._last_batch
        if quiet_for >= self._idle_after_s:
            self._timer = None
            self._set(IDLE_MIN_BYTES, IDLE_MAX_WAIT_MS)
        else:
            self._timer = asyncio.get_running_loop().call_later(self._idle_after_s - quiet_for, self._check)

    def _set(self, min_bytes: int, max_wait_ms: int) -> None:
        self._fetcher._fetch_min_bytes = min_bytes
        self._fetcher._fetch_max_wait_ms = max_wait_ms

    def stop(self) -> None:
        """No more switching (the consumer is closing)."""
        self._disabled = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
