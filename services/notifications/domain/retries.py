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


class PermanentFailure(DeliveryFailure):
    """No attempt will succeed for this recipient: SMTP 5xx, invalid or unsubscribed number."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    initial_s: float
    max_s: float

    def next_attempt_at(self, attempts: int, now: datetime, rng: random.Random | None = None) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None once they are exhausted.
        Exponential, capped, with full jitter in [50%, 100%] so retries of many messages spread."""
        if attempts >= self.max_attempts:
            return None
        delay = min(self.max_s, self.initial_s * 2 ** (attempts - 1))
        delay *= (rng or random).uniform(0.5, 1.0)
        return now + timedelta(seconds=delay)
