"""The periodic access sweep, driven by the injected clock (one pass per interval)."""

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
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("access sweep failed; trying again at the next interval")
        await asyncio.sleep(interval_s)
