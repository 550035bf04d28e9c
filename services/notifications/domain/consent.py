"""Consent: transactional messages always go; marketing only with recorded consent for the channel."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from services.notifications.domain.messages import Category

# consents[purpose][channel] = {"given": bool, "at": datetime}: the latest statement wins, by the
# time it was made, because consent.given and consent.withdrawn travel on two topics (no order).
Consents = Mapping[str, Mapping[str, Mapping[str, Any]]]


def may_send(category: Category, channel: str, consents: Consents) -> bool:
    if category is Category.TRANSACTIONAL:
        return True
    marketing = consents.get("marketing", {})
    statements = [marketing[c] for c in (channel, "any") if c in marketing]
    if not statements:
        return False
    return bool(max(statements, key=lambda s: s["at"])["given"])


def record(consents: Consents, purpose: str, channel: str, given: bool, at: datetime) -> dict[str, Any] | None:
    """The consents after a statement, or None when a later statement for that channel is known."""
    current = consents.get(purpose, {}).get(channel)
    if current is not None and current["at"] >= at:
        return None
    updated = {p: dict(channels) for p, channels in consents.items()}
    updated.setdefault(purpose, {})[channel] = {"given": given, "at": at}
    return updated
