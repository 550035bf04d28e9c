"""The periodic sweep, driven by the injected clock (one pass per interval): access that ended,
rate-limit counters of windows long over."""

from __future__ import annotations

import asyncio
import logging

from services.identity.service_layer import contracts
from services.identity.service_layer.context import Identity

log = logging.getLogger(__name__)


async def sweep_forever(ctx: Identity, interval_s: float) -> None:
    while True:
        try:
            ended = await contracts.end_expired_access(ctx)
            if ended:
                log.info("access ended", extra={"accounts": ended})
            forgotten = await ctx.stores.limiter.purge(ctx.now() - ctx.limits.longest_window)
            if forgotten:
                log.info("rate-limit counters of past windows forgotten", extra={"counters": forgotten})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("access sweep failed; trying again at the next interval")
        await asyncio.sleep(interval_s)
