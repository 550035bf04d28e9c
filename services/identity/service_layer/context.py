"""What every handler needs: the stores, the clock, the keys, the policies, and who is asking."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from services.identity.adapters.hashing import PasswordHasher
from services.identity.adapters.ratelimiter import counter_key
from services.identity.adapters.signing import AccessTokens, KeyWatch
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
    #: The SHA-256 of the client certificate the TLS proxy verified, when it forwards one.
    client_certificate: str | None = None
    #: When the request arrived (``time.perf_counter()``): answer floors start there, before the
    #: body is read and checked (see :class:`AnswerFloor`). None for callers that are not requests.
    received_at: float | None = None


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
    #: Set at start: learns the keys other instances sign with (see KeyWatch).
    key_watch: KeyWatch | None = None
    #: Rarely changing documents this process read, with when to read them again (see sessions).
    remembered: dict[str, tuple[float, Any]] = field(default_factory=dict)

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
        return await self.stores.accounts.get_by("email", email)

    def answer_floor(self, caller: Caller) -> "AnswerFloor":
        """Starts when the caller's request arrived (now, for a caller that is no request): see
        :class:`AnswerFloor`."""
        return AnswerFloor(self.answer_floor_s, since=caller.received_at)


class AnswerFloor:
    """The moment before which an answer that must not tell known from unknown emails may not leave.

    The work behind such answers differs with the answer's secret (a new account is inserted, an
    existing one is told by email; a wrong password is counted against a known account only), and
    so does its duration, by a millisecond or two on a local store: enough for a patient attacker to
    tell them apart. So the floor starts when the request arrives, before its body is read and
    checked (the email check remembers recent addresses, so an address someone just used checks
    faster), everything that depends on the email runs inside it, and the answer leaves when the
    floor ends. The answers are then as alike in time as they are in content, as long as the work
    fits in the floor (``ANSWER_FLOOR_MS``, well above its p99; under an overload that exceeds it
    they leave late, and differently late).
    """

    def __init__(self, seconds: float, *, since: float | None = None) -> None:
        self._until = (time.perf_counter() if since is None else since) + seconds

    async def reached(self) -> None:
        left = self._until - time.perf_counter()
        if left > 0:
            await asyncio.sleep(left)

    @contextlib.asynccontextmanager
    async def around(self) -> AsyncIterator[None]:
        """For answers that are the same either way: the block's result leaves at the floor, a
        refusal it raises (a rate limit, which counts an email whether it exists or not) at once."""
        yield
        await self.reached()


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
