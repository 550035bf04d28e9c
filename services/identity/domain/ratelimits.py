"""Rate limits: how many times a client address, or one account, may do a sensitive thing per window.

"send" actions cost someone a message (activation, reset, codes); "check" actions test a secret
(password, token, code). Each is counted per client address and per account (the email, customer
number or account id it targets), in fixed windows; the counting itself lives in an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Limit:
    count: int
    window: timedelta


@dataclass(frozen=True)
class RateLimits:
    address_sends: Limit = Limit(20, timedelta(hours=1))
    account_sends: Limit = Limit(5, timedelta(hours=1))
    address_checks: Limit = Limit(60, timedelta(minutes=5))
    account_checks: Limit = Limit(30, timedelta(minutes=15))

    @property
    def longest_window(self) -> timedelta:
        """A counter that started longer ago than this belongs to no current window."""
        return max(limit.window for limit in (self.address_sends, self.account_sends, self.address_checks,
                                              self.account_checks))

    def for_action(self, kind: str) -> tuple[Limit, Limit]:
        """(per address, per account) limits of a "send" or "check" action."""
        if kind == "send":
            return self.address_sends, self.account_sends
        return self.address_checks, self.account_checks


@dataclass(frozen=True)
class Window:
    started: datetime
    count: int

    def exceeded(self, limit: Limit) -> bool:
        return self.count > limit.count

    def retry_after(self, limit: Limit, now: datetime) -> int:
        return max(1, int((self.started + limit.window - now).total_seconds()) + 1)
