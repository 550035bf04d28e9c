"""Signing in and out: passwords checked at constant cost, sessions as rotating refresh-token families."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.identity.domain import accounts as rules
from services.identity.domain import tokens
from services.identity.domain.errors import Refusal
from services.identity.domain.lockout import LockState, after_failure
from services.identity.service_layer.context import Caller, Identity, addressed, retrying
from shared.events import AccountLocked, AccountUnlocked, Envelope
from shared.storage import ConcurrencyConflict, StoredDocument

log = logging.getLogger(__name__)

INVALID_CREDENTIALS = "invalid_credentials"
POLICY_DOC = "password-change"


@dataclass(frozen=True)
class Login:
    email: str  # normalised
    password: str
    device_token: str | None = None


def invalid_credentials() -> Refusal:
    return Refusal(
        INVALID_CREDENTIALS,
        "email or password is wrong, or the account is locked after repeated failures (its owner was emailed); "
        "forgot your password? POST /v1/password-resets",
        401,
    )


def session_claims(account: StoredDocument, session_id: str, device_id: str | None, amr: list[str]) -> dict[str, Any]:
    state = account.state
    claims: dict[str, Any] = {
        "sub": account.id,
        "sid": session_id,
        "kind": state["kind"],
        "roles": state.get("roles", []),
        "amr": amr,
        "linked": state.get("link", {}).get("status") == "verified",
    }
    if state.get("organisation_id"):
        claims["org"] = state["organisation_id"]
    if state.get("customer_number"):
        claims["customer_number"] = state["customer_number"]
    if device_id:
        claims["dev"] = device_id
    return claims


def token_response(ctx: Identity, account: StoredDocument, session_id: str, refresh_secret: str,
                   device_id: str | None, amr: list[str]) -> dict[str, Any]:
    return {
        "status": "authenticated",
        "token_type": "Bearer",
        "access_token": ctx.tokens.issue(session_claims(account, session_id, device_id, amr), ctx.now()),
        "expires_in": int(ctx.tokens.ttl.total_seconds()),
        "refresh_token": tokens.compound(session_id, refresh_secret),
        "session_id": session_id,
    }


async def open_session(ctx: Identity, caller: Caller, account: StoredDocument, *, device_id: str | None,
                       amr: list[str], events: list[Envelope] | None = None) -> dict[str, Any]:
    now = ctx.now()
    session_id = tokens.new_id("ses")
    secret = tokens.new_secret()
    await ctx.stores.sessions.create(
        session_id,
        {
            "account_id": account.id,
            "generation": account.state.get("session_generation", 0),
            "device_id": device_id,
            "label": caller.user_agent[:200] or "unknown client",
            "amr": amr,
            "created_at": now,
            "last_used_at": now,
            "expires_at": now + ctx.refresh_ttl,
            "refresh_hash": tokens.hash_secret(secret),
            "spent": [],
            "revoked_at": None,
            "revoked_reason": None,
        },
        events or [],
    )
    return token_response(ctx, account, session_id, secret, device_id, amr)


def session_is_live(session: dict[str, Any], account: dict[str, Any], now: datetime) -> bool:
    return (
        session["revoked_at"] is None
        and now < session["expires_at"]
        and session.get("generation", 0) == account.get("session_generation", 0)
        and account["status"] == rules.ACTIVE
    )


def next_generation(account: dict[str, Any]) -> dict[str, Any]:
    """Ending every session is one write: sessions of an older generation no longer count."""
    return {"session_generation": account.get("session_generation", 0) + 1}


#: How long a process trusts the password policy it read. Every sign-in consults it and it changes
#: once in a blue moon (an administrator requiring everyone to change): the process that changes it
#: forgets its copy at once, the other replicas within this many seconds.
POLICY_FRESH_S = 5.0


async def change_required_before(ctx: Identity) -> datetime | None:
    known = ctx.remembered.get(POLICY_DOC)
    if known is not None and known[0] > time.monotonic():
        return known[1]
    policy = await ctx.stores.policies.get(POLICY_DOC)
    value = policy.state.get("change_required_before") if policy else None
    ctx.remembered[POLICY_DOC] = (time.monotonic() + POLICY_FRESH_S, value)
    return value


def forget_password_policy(ctx: Identity) -> None:
    ctx.remembered.pop(POLICY_DOC, None)


async def login(ctx: Identity, caller: Caller, cmd: Login) -> dict[str, Any]:
    """Check the password (at the same cost for unknown emails), then say what comes next.

    Account status (not activated, locked, disabled) is told only to whoever proved the password:
    a wrong password always reads ``invalid_credentials``, whatever the account's state, and leaves
    at the answer floor, whether the email is known (its failure counted) or not.
    """
    floor = ctx.answer_floor(caller)
    _, found = await asyncio.gather(ctx.limit(caller, "login", "check", cmd.email), ctx.account_by_email(cmd.email))
    account: StoredDocument | None = found
    stored_hash = account.state.get("password_hash") if account else None
    proven = await ctx.hasher.verify(stored_hash, cmd.password)
    account_id = account.id if account else None
    if proven and account_id is not None:
        # The verify takes a while, and guesses sent alongside this one may have placed a lock
        # meanwhile: the copy read before it would let the right password through that lock.
        account = await ctx.stores.accounts.get(account_id)
    # While a lock holds, even the right password is refused like a wrong one: answering
    # "locked" would confirm a guess to whoever is guessing. The owner learns of the lock by
    # email (customer.account_locked), and the lock is told after it expires to nobody.
    if not proven or account is None or LockState.from_state(account.state).holds(ctx.now()):
        if account_id is not None:
            await record_failure(ctx, caller, account_id)
        await floor.reached()
        raise invalid_credentials()
    return await after_password(ctx, caller, account, cmd.password, cmd.device_token)


async def record_failure(ctx: Identity, caller: Caller, account_id: str) -> None:
    """Count a wrong password. Never refuses: a wrong password must read the same whatever
    happened to its count, or a ``busy`` answer would tell a known email from an unknown one
    (which is never counted)."""

    async def attempt() -> None:
        doc = await ctx.stores.accounts.get(account_id)
        if doc is None:
            return
        now = ctx.now()
        lock = LockState.from_state(doc.state)
        if lock.holds(now):
            return  # not counted during a lock (see lockout); a write would only hold up the others
        outcome = after_failure(lock, now, ctx.lockout)
        events = []
        if outcome.unlocked_by_expiry:
            events.append(ctx.envelope(AccountUnlocked(customer_id=doc.id, unlocked_by="lock-expiry", **addressed(doc.state)), caller))
        if outcome.newly_locked:
            events.append(ctx.envelope(AccountLocked(
                customer_id=doc.id, locked_until=outcome.state.until, failed_attempts=ctx.lockout.threshold,
                **addressed(doc.state)), caller))
        await ctx.stores.accounts.update(
            doc, doc.state | outcome.state.to_state() | {"last_failed_login_at": now}, events
        )

    # Enough tries for every failure of a burst to be counted: each conflict is another failure
    # counted, and once ``threshold`` of them placed a lock the others have nothing to write.
    try:
        await retrying(attempt, tries=ctx.lockout.threshold + 2)
    except Refusal:
        log.warning("a failed sign-in was not counted: the account kept changing", extra={"customer_id": account_id})


async def after_password(ctx: Identity, caller: Caller, account: StoredDocument, password: str,
                         device_token: str | None) -> dict[str, Any]:
    """What a proven password leads to: a refusal the owner can act on, a device challenge, the
    change an administrator required, or a session.

    A required change (the migration case) is handed a change ticket on the password alone only
    where a session would be: an account that authorises its devices proves the device first."""
    lock = LockState.from_state(account.state)
    refusal = rules.refusal_for_status(account.state) or rules.refusal_after_compromise(account.state)
    if refusal is not None:
        raise refusal
    change_required = rules.must_change_password(account.state, await change_required_before(ctx))
    account = await settle_after_success(ctx, caller, account, lock, password)
    device_id, amr = None, ["pwd"]
    if rules.needs_device_authorisation(account.state):
        from services.identity.service_layer import devices

        device_id, amr = await devices.recognise(ctx, account.id, device_token), ["pwd", "device"]
        if device_id is None:
            device_id = await devices.recognise_certificate(ctx, account.id, caller.client_certificate)
            amr = ["pwd", "x509"]
        if device_id is None:
            return await devices.start_challenge(ctx, caller, account,
                                                 purpose=devices.PASSWORD_CHANGE if change_required else "login")
    if change_required:
        raise await password_change_required(ctx, account.id)
    return await open_session(ctx, caller, account, device_id=device_id, amr=amr)


async def settle_after_success(ctx: Identity, caller: Caller, account: StoredDocument, lock: LockState,
                               password: str) -> StoredDocument:
    """Forget past failures (and an expired lock), upgrade an outdated hash; no write when nothing changed."""
    changes: dict[str, Any] = {}
    events = []
    if lock.locked:
        events.append(ctx.envelope(AccountUnlocked(customer_id=account.id, unlocked_by="lock-expiry", **addressed(account.state)), caller))
    if lock != LockState():
        changes |= LockState().to_state()
    if ctx.hasher.needs_rehash(account.state["password_hash"]):
        changes["password_hash"] = await ctx.hasher.hash(password)
    if not changes:
        return account
    try:
        return await ctx.stores.accounts.update(account, account.state | changes, events)
    except ConcurrencyConflict:
        return account  # a concurrent write: the bookkeeping can wait for the next sign-in


async def password_change_required(ctx: Identity, account_id: str, **details: Any) -> Refusal:
    """The refusal that hands out a change ticket (15 minutes) for the change an administrator required."""

    async def attempt() -> str:
        doc = await ctx.stores.accounts.get(account_id)
        assert doc is not None
        issued = tokens.issue_token(doc.id, ctx.now(), tokens.CHANGE_TICKET_TTL)
        await ctx.stores.accounts.update(doc, doc.state | LockState().to_state() | {"change_ticket": issued.stored})
        return issued.token

    ticket = await retrying(attempt)
    return Refusal(
        "password_change_required",
        "you must choose a new password before signing in (POST /v1/password-changes/forced with this ticket)",
        403,
        details={"change_ticket": ticket, **details},
    )


async def refresh(ctx: Identity, caller: Caller, refresh_token: str) -> dict[str, Any]:
    """Rotate: the presented token is spent and a new one issued. A spent token presented again means
    it was copied: the whole family (session) is revoked, for the thief and the owner alike."""
    parts = tokens.split_compound(refresh_token)
    if parts is None:
        raise Refusal("refresh_token_invalid", "this refresh token is not valid: sign in again", 401)
    session_id, secret = parts
    await ctx.limit(caller, "refresh", "check", session_id)
    now = ctx.now()
    session = await ctx.stores.sessions.get(session_id)
    if session is None:
        raise Refusal("refresh_token_invalid", "this refresh token is not valid: sign in again", 401)
    digest = tokens.hash_secret(secret)
    state = session.state
    if any(tokens.same(digest, spent) for spent in state.get("spent", [])):
        await revoke_session(ctx, session_id, "refresh_token_reused", owner=state["account_id"])
        raise Refusal("refresh_token_reused", "this refresh token was already used: the session is closed, sign in again", 401)
    if not tokens.same(digest, state["refresh_hash"]):
        raise Refusal("refresh_token_invalid", "this refresh token is not valid: sign in again", 401)
    account = await ctx.stores.accounts.get(state["account_id"])
    if account is None or not session_is_live(state, account.state, now):
        raise Refusal("session_ended", "this session has ended: sign in again", 401)
    if rules.must_change_password(account.state, await change_required_before(ctx)):
        # Carried on by refresh, a session would outlive the change it was asked for (the
        # sign-in is where the change ticket is handed out).
        raise Refusal("session_ended", "a new password is required: sign in again (POST /v1/sessions) to choose it",
                      401, details={"reason": "password_change_required"})
    new_secret = tokens.new_secret()
    try:
        await ctx.stores.sessions.update(
            session,
            state | {"refresh_hash": tokens.hash_secret(new_secret), "spent": [*state.get("spent", []), digest][-100:],
                     "last_used_at": now},
        )
    except ConcurrencyConflict:
        raise Refusal("refresh_token_invalid", "this refresh token was used at the same moment elsewhere", 401) from None
    return token_response(ctx, account, session_id, new_secret, state.get("device_id"), state.get("amr", ["pwd"]))


async def revoke_session(ctx: Identity, session_id: str, reason: str, *, owner: str) -> bool:
    """Close one session of ``owner``; False when it is not theirs (or does not exist)."""

    async def attempt() -> bool:
        session = await ctx.stores.sessions.get(session_id)
        if session is None or session.state["account_id"] != owner:
            return False
        if session.state["revoked_at"] is None:
            await ctx.stores.sessions.update(session, session.state | {"revoked_at": ctx.now(), "revoked_reason": reason})
        return True

    return await retrying(attempt)


async def end_all_sessions(ctx: Identity, account_id: str, reason: str, extra: dict[str, Any] | None = None,
                           events: list[Envelope] | None = None) -> StoredDocument:
    """One atomic write on the account makes every session opened before now unusable; the session
    documents are then marked one by one (for the list the customer sees)."""

    async def attempt() -> StoredDocument:
        doc = await ctx.stores.accounts.get(account_id)
        if doc is None:
            raise Refusal("not_found", "no such account", 404)
        return await ctx.stores.accounts.update(
            doc, doc.state | (extra or {}) | next_generation(doc.state), events or []
        )

    updated = await retrying(attempt)
    await mark_sessions_revoked(ctx, account_id, reason)
    return updated


async def mark_sessions_revoked(ctx: Identity, account_id: str, reason: str) -> None:
    cursor = ctx.stores.sessions.collection.find({"account_id": account_id, "revoked_at": None}, {"_id": 1})
    for raw in await cursor.to_list():
        await revoke_session(ctx, raw["_id"], reason, owner=account_id)


async def list_sessions(ctx: Identity, account_id: str, current_session: str) -> list[dict[str, Any]]:
    account = await ctx.stores.accounts.get(account_id)
    assert account is not None
    now = ctx.now()
    raws = await ctx.stores.sessions.collection.find({"account_id": account_id}).to_list()
    live = [r for r in raws if session_is_live(r, account.state, now)]
    return [
        {
            "session_id": r["_id"],
            "label": r["label"],
            "device_id": r.get("device_id"),
            "created_at": r["created_at"],
            "last_used_at": r["last_used_at"],
            "expires_at": r["expires_at"],
            "current": r["_id"] == current_session,
        }
        for r in sorted(live, key=lambda r: r["created_at"])
    ]

