"""What every handler needs: the stores, the clock, the keys, the policies, and who is asking."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from services.identity.adapters.hashing import PasswordHasher
from services.identity.adapters.ratelimiter import counter_key
from services.identity.adapters.signing import AccessTokens
from services.identity.adapters.stores import Stores
from services.identity.domain.errors import Refusal
from services.identity.domain.lockout import LockoutPolicy
from services.identity.domain.passwords import PasswordPolicy
from services.identity.domain.ratelimits import RateLimits
from shared.clock import Clock
from shared.crypto import Keyring
from shared.events import Envelope, Event
from shared.storage import ConcurrencyConflict, StoredDocument

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """Who is calling over HTTP: for rate limits, the session label, and the events' correlation id."""

    correlation_id: str
    address: str = "unknown"
    user_agent: str = ""


@dataclass
class Identity:
    stores: Stores
    clock: Clock
    keyring: Keyring
    hasher: PasswordHasher
    tokens: AccessTokens
    passwords: PasswordPolicy
    lockout: LockoutPolicy
    limits: RateLimits
    refresh_ttl: timedelta
    source: str = "identity"
    answer_floor_s: float = 0.2

    def now(self) -> datetime:
        return self.clock.now()

    def envelope(self, event: Event, caller: Caller | None = None, *, causation_id: str | None = None) -> Envelope:
        return Envelope.wrap(
            event,
            source=self.source,
            time=self.now(),
            correlation_id=caller.correlation_id if caller else None,
            causation_id=causation_id,
        )

    def seal(self, event_cls: type[Event], field: str, secret: str) -> str:
        return event_cls.seal(self.keyring, field, secret)

    async def limit(self, caller: Caller, action: str, kind: str, subject: str | None, *, address: bool = True) -> None:
        """Count this attempt per client address and per account; refuse (429) past either limit."""
        now = self.now()
        per_address, per_account = self.limits.for_action(kind)
        hits, limits = [], []
        if address:
            hits.append(self.stores.limiter.hit(counter_key(action, "address", caller.address), per_address, now))
            limits.append(per_address)
        if subject:
            hits.append(self.stores.limiter.hit(counter_key(action, "account", subject), per_account, now))
            limits.append(per_account)
        windows = await asyncio.gather(*hits)
        for window, limit in zip(windows, limits, strict=True):
            if window.exceeded(limit):
                retry = window.retry_after(limit, now)
                raise Refusal(
                    "rate_limited",
                    f"too many attempts: try again in {retry} seconds",
                    429,
                    details={"retry_after_s": retry},
                    headers={"Retry-After": str(retry)},
                )

    async def account_by_email(self, email: str) -> StoredDocument | None:
        return await self.stores.accounts.find_one({"email": email})

    async def pad(self, subject: str) -> None:
        """The write an unknown email would have caused had it been known (equal timing, see docs)."""
        await self.stores.limiter.pad(counter_key("pad", "email", subject), self.now())


@contextlib.asynccontextmanager
async def no_sooner_than(seconds: float) -> AsyncIterator[None]:
    """Answer after at least ``seconds``: the paths for known and unknown emails do different writes
    (an insert of a new account is slower on FerretDB than recording an attempt), so the answers
    that must not tell them apart all leave at the same moment. Errors leave at once."""
    started = time.perf_counter()
    yield
    left = seconds - (time.perf_counter() - started)
    if left > 0:
        await asyncio.sleep(left)


async def retrying(attempt: Callable[[], Awaitable[T]], tries: int = 4) -> T:
    """Run a load-decide-store ``attempt`` again when someone else wrote the document in between."""
    for n in range(tries):
        try:
            return await attempt()
        except ConcurrencyConflict:
            if n == tries - 1:
                raise Refusal("busy", "the account was being changed at the same moment: try again", 409) from None
            await asyncio.sleep(0.005 * (n + 1))
    raise AssertionError("unreachable")


def addressed(state: dict[str, Any]) -> dict[str, Any]:
    """The fields every addressed event carries: where and how to reach the person."""
    return {"email": state["email"], "locale": state["locale"], "first_name": state["first_name"]}
