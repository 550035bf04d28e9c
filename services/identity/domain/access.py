"""How long a customer keeps access: until 18 months after their last running contract ended (002, art. 4.1)."""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

ACCESS_AFTER_LAST_CONTRACT_MONTHS = 18


def add_months(day: date, months: int) -> date:
    """Same day of the month ``months`` later, clamped to the month's last day (31 Aug + 6 = 28/29 Feb)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class KnownContract:
    number: str
    running: bool
    closed_on: date | None = None


def access_ends_on(contracts: Iterable[KnownContract]) -> date | None:
    """None while any contract runs (or none is known); else 18 months after the last one ended."""
    contracts = list(contracts)
    if not contracts or any(c.running for c in contracts):
        return None
    last = max(c.closed_on for c in contracts if c.closed_on is not None)
    return add_months(last, ACCESS_AFTER_LAST_CONTRACT_MONTHS)
