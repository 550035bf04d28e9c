"""Tokens and codes: how they are made, how long they live, how they are kept (hashed, never in clear).

A token handed to a person reads ``<record id>.<secret>``: the record id finds the stored hash
in one read, the secret (256 random bits) is what proves possession. High-entropy secrets are
stored as SHA-256; 6-digit codes (low entropy) are stored as salted SHA-256 and are protected by
their short life and their try limit rather than by the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.identity.domain.errors import Refusal

ACTIVATION_TTL = timedelta(hours=72)
RESET_TTL = timedelta(hours=1)
CHANGE_TICKET_TTL = timedelta(minutes=15)
DEVICE_CODE_TTL = timedelta(minutes=10)
REGISTRATION_CODE_TTL = timedelta(minutes=10)
CHALLENGE_TTL = timedelta(minutes=30)
CODE_MAX_TRIES = 5
CODE_MAX_SENDS = 3
REMEMBERED_DEVICE_IDLE_LIMIT = timedelta(days=180)
TOKEN_BYTES = 32


def new_id(prefix: str) -> str:
    return f"{prefix}_{_random.token_hex(12)}"


def time_ordered_id(prefix: str, now: datetime) -> str:
    """An id that sorts after those made before it (to the microsecond): the store keeps times to
    the millisecond only, and records read newest first need an order within one millisecond."""
    return f"{prefix}_{int(now.timestamp() * 1_000_000):014x}{_random.token_hex(6)}"


def new_secret() -> str:
    return _random.token_urlsafe(TOKEN_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def compound(record_id: str, secret: str) -> str:
    return f"{record_id}.{secret}"


def split_compound(token: str) -> tuple[str, str] | None:
    """``(record id, secret)``, or None when the token is not even shaped like one of ours."""
    record_id, sep, secret = token.strip().partition(".")
    if not sep or not record_id or len(secret) < 32 or len(record_id) > 64 or len(secret) > 128:
        return None
    return record_id, secret


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_code() -> str:
    """Six digits from the operating system's CSPRNG, leading zeros kept."""
    return f"{_random.randbelow(10**6):06d}"


def new_salt() -> str:
    return _random.token_hex(16)


def hash_code(code: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{code}".encode()).hexdigest()


@dataclass(frozen=True)
class IssuedSecret:
    """A secret just made: what goes to the person (``token``), what is stored (``stored``)."""

    token: str
    stored: dict[str, object]


def issue_token(record_id: str, now: datetime, ttl: timedelta) -> IssuedSecret:
    secret = new_secret()
    return IssuedSecret(compound(record_id, secret), {"hash": hash_secret(secret), "expires_at": now + ttl})


SPENT_KEPT = 10


def check_single_use_token(
    secret: str, current: dict | None, spent: list[dict], now: datetime, *, what: str
) -> Refusal | None:
    """Why ``secret`` is refused for a single-use token slot (None: it is the valid current one).

    ``current`` is ``{"hash", "expires_at"}``; ``spent`` remembers the hashes of tokens already used
    or replaced by a newer one, so that each failure says which it is.
    """
    digest = hash_secret(secret)
    if current is not None and same(digest, current["hash"]):
        if now >= current["expires_at"]:
            return Refusal(f"{what}_expired", f"this {what.replace('_', ' ')} link has expired: ask for a new one", 400)
        return None
    for old in spent:
        if same(digest, old["hash"]):
            if old.get("why") == "used":
                return Refusal(f"{what}_already_used", f"this {what.replace('_', ' ')} link was already used", 400)
            return Refusal(
                f"{what}_superseded",
                f"a newer {what.replace('_', ' ')} link was sent since this one: use the latest email",
                400,
            )
    return Refusal(f"{what}_invalid", f"this {what.replace('_', ' ')} link is not valid", 400)


def spend(current: dict | None, spent: list[dict], why: str) -> list[dict]:
    """The spent list after the current token was used (``used``) or replaced (``superseded``)."""
    if current is None:
        return spent
    return ([*spent, {"hash": current["hash"], "why": why}])[-SPENT_KEPT:]
