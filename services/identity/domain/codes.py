"""One-time codes (device authorisation, Belgian registration): 6 digits, 10 minutes, 5 tries, 3 sends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.identity.domain import tokens
from services.identity.domain.errors import Refusal


@dataclass(frozen=True)
class IssuedCode:
    code: str
    stored: dict


def allow_another_code(sends_so_far: int, *, retry_after_s: int | None = None) -> None:
    """At most 3 codes per attempt. ``retry_after_s``: the attempt ends by itself that much later
    (else the customer starts again: signs in again, for a device)."""
    if sends_so_far < tokens.CODE_MAX_SENDS:
        return
    limit = f"at most {tokens.CODE_MAX_SENDS} codes can be sent for one attempt"
    if retry_after_s is None:
        raise Refusal("too_many_codes", f"{limit}: start again", 429)
    raise Refusal("too_many_codes", f"{limit}: ask again in {retry_after_s} seconds", 429,
                  details={"retry_after_s": retry_after_s}, headers={"Retry-After": str(retry_after_s)})


def issue_code(now: datetime, sends_so_far: int, ttl=tokens.DEVICE_CODE_TTL, *, wrong_tries_so_far: int = 0) -> IssuedCode:
    """A new code. One sent again for the same attempt takes over the wrong tries of the codes before
    it (``wrong_tries_so_far``): asking for another code must not buy five more guesses."""
    allow_another_code(sends_so_far)
    code = tokens.new_code()
    salt = tokens.new_salt()
    return IssuedCode(code, {"hash": tokens.hash_code(code, salt), "salt": salt, "expires_at": now + ttl,
                             "tries": wrong_tries_so_far})


def code_nobody_has(issued: IssuedCode) -> dict:
    """The stored form of ``issued`` with its code thrown away: the hash of another code under another
    salt, which no guess matches. Checked like a sent code (wrong, dead, expired alike), it stands in
    for one where nothing was sent and the answers must not say so."""
    return {**issued.stored, "hash": tokens.hash_code(tokens.new_code(), tokens.new_salt())}


@dataclass(frozen=True)
class CodeCheck:
    ok: bool
    stored: dict | None  # the code slot after this try (None: the code is spent or dead)
    refusal: Refusal | None = None


def check_code(stored: dict | None, code: str, now: datetime) -> CodeCheck:
    if stored is None:
        return CodeCheck(False, None, Refusal("code_not_requested", "ask for a code first", 400))
    if stored["tries"] >= tokens.CODE_MAX_TRIES:
        return CodeCheck(False, stored, Refusal("code_dead", "too many wrong codes: ask for a new one", 400))
    if now >= stored["expires_at"]:
        return CodeCheck(False, stored, Refusal("code_expired", "this code has expired: ask for a new one", 400))
    if tokens.same(tokens.hash_code(code, stored["salt"]), stored["hash"]):
        return CodeCheck(True, None)
    tries = stored["tries"] + 1
    left = tokens.CODE_MAX_TRIES - tries
    after = {**stored, "tries": tries}
    if left <= 0:
        return CodeCheck(False, after, Refusal("code_dead", "too many wrong codes: ask for a new one", 400))
    return CodeCheck(
        False, after, Refusal("code_wrong", f"wrong code: {left} tries left", 400, details={"tries_left": left})
    )


def wrong_detail(stored: dict, refusal: Refusal) -> CodeCheck:
    """The code was right but a security detail sent with it was not: one try of the code is used
    up (the code alone does not open the door), and ``refusal`` says what was wrong."""
    tries = stored["tries"] + 1
    if tries >= tokens.CODE_MAX_TRIES:
        return CodeCheck(False, {**stored, "tries": tries},
                         Refusal("code_dead", "too many wrong attempts: ask for a new code", 400))
    left = tokens.CODE_MAX_TRIES - tries
    return CodeCheck(False, {**stored, "tries": tries},
                     Refusal(refusal.code, f"{refusal.message}: {left} tries left", refusal.status,
                             fields=refusal.fields, details={"tries_left": left}))


def remembered_device_usable(device: dict, now: datetime) -> bool:
    """A remembered device stays trusted while it is used at least once every 180 days."""
    return (
        device.get("remembered", False)
        and device.get("revoked_at") is None
        and now - device["last_used_at"] < tokens.REMEMBERED_DEVICE_IDLE_LIMIT
    )
