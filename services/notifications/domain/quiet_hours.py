"""Quiet hours: an SMS that can wait is not sent at night in the recipient's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


def parse_clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def quiet_until(now: datetime, zone: ZoneInfo, start: time, end: time) -> datetime | None:
    """The end of the quiet period ``now`` falls in (UTC), or None when it is not quiet there."""
    local = now.astimezone(zone)
    at = local.time()
    overnight = start > end
    quiet = (at >= start or at < end) if overnight else (start <= at < end)
    if not quiet:
        return None
    release_day = local.date() + timedelta(days=1) if overnight and at >= start else local.date()
    return datetime.combine(release_day, end, tzinfo=zone).astimezone(UTC)
