"""How long a customer keeps access: until 18 months after their last running contract ended (002, art. 4.1)."""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

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


#: A contract we have not heard of, but that a closing said was still running: it keeps access open.
UNSEEN_PREFIX = "unseen-"


def after_closing(
    contracts: list[dict[str, Any]], none_running_since: datetime | None, *, number: str, closed_at: datetime,
    others_running: bool,
) -> tuple[list[dict[str, Any]], datetime | None]:
    """The contracts known once ``number`` closed at ``closed_at``, and the latest closing after which
    the customer had nothing running (``none_running_since``).

    A closing says whether the customer still had another running contract. Closings are keyed by
    contract, so two of one customer's may be handled in either order, and the later closing's word
    wins: a "yes" about a contract not heard of yet leaves a placeholder running (access stays open),
    unless a closing as late or later already said "no"; a "no" removes the placeholders of closings
    up to its own, never those of a later one. On the same day, "no" wins: for a "yes" to come
    after it, a contract would have to open and close within that day."""
    kept = [c for c in contracts if c["number"] != number]
    kept.append({"number": number, "running": False, "closed_on": closed_at})
    if others_running:
        outdated = none_running_since is not None and closed_at <= none_running_since
        if not outdated and not any(c["running"] for c in kept):
            kept.append({"number": UNSEEN_PREFIX + number, "running": True, "closed_on": None, "claimed_at": closed_at})
        return kept, none_running_since
    kept = [
        c for c in kept
        # placeholders written before they carried a date: any "no" removes them, as it did then
        if not (c["number"].startswith(UNSEEN_PREFIX) and (c.get("claimed_at") is None or c["claimed_at"] <= closed_at))
    ]
    return kept, closed_at if none_running_since is None else max(none_running_since, closed_at)
