"""What a failed attempt means for a delivery: retry later, give up, or fall back."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


class DeliveryFailure(Exception):
    """A provider could not take the message."""

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransientFailure(DeliveryFailure):
    """Worth another attempt later: 4xx from SMTP, connection refused, timeout, Twilio 429/5xx."""


class ProviderMisconfigured(TransientFailure):
    """Our side is wrong at the provider (credentials, account, sender number, permissions): no
    recipient is to blame, an operator must act, and the message must still go once they have."""


class PermanentFailure(DeliveryFailure):
    """No attempt will succeed for this recipient: SMTP 5xx, invalid or unsubscribed number."""


@dataclass(frozen=True)
class RetryAt:
    """Try the same channel again then."""

    at: datetime


@dataclass(frozen=True)
class FallBack:
    """Stop trying this channel: send the message on the line's fallback channel now."""

    why: str


@dataclass(frozen=True)
class GiveUp:
    """Attempts exhausted and nowhere else to go: the delivery fails (and its event is parked)."""


AfterFailure = RetryAt | FallBack | GiveUp


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    initial_s: float
    max_s: float
    # A message that stops being worth sending (a code valid 10 minutes) cannot wait for the
    # provider to recover: after this many transient failures, or once the next attempt would
    # come within ``fallback_margin_s`` of the deadline, it goes by its fallback channel.
    fallback_after_attempts: int = 3
    fallback_margin_s: float = 120.0

    def delay_s(self, attempts: int, rng: random.Random | None = None) -> float:
        """The pause after ``attempts`` failures: exponential, capped, with jitter in [50%, 100%]
        so that the retries of many messages spread."""
        delay = min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1))
        return delay * (rng or random).uniform(0.5, 1.0)

    def next_attempt_at(self, attempts: int, now: datetime, rng: random.Random | None = None) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None once they are exhausted."""
        if attempts >= self.max_attempts:
            return None
        return now + timedelta(seconds=self.delay_s(attempts, rng))

    def after_transient_failure(
        self,
        attempts: int,
        now: datetime,
        *,
        expires_at: datetime | None,
        can_fall_back: bool,
        rng: random.Random | None = None,
    ) -> AfterFailure:
        """What to do after the ``attempts``-th failed attempt, each of them worth another try.

        Without a fallback, or without a deadline, a delivery is retried until its attempts run
        out. With both (device codes, appointment reminders), waiting for the provider is a bet
        against the clock that the customer loses: the fallback channel takes over after
        ``fallback_after_attempts`` failures, or as soon as the next attempt would come too close
        to the deadline for the fallback to be of use, whichever is first."""
        next_at = self.next_attempt_at(attempts, now, rng)
        if can_fall_back and expires_at is not None:
            if attempts >= self.fallback_after_attempts:
                return FallBack(f"{attempts} attempts failed")
            if next_at is None or next_at >= expires_at - timedelta(seconds=self.fallback_margin_s):
                return FallBack("the next attempt would come too close to its expiry")
        return GiveUp() if next_at is None else RetryAt(next_at)
