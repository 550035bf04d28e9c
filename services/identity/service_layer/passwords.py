"""Changing a password: knowing the current one, through a reset link, or when an administrator requires it."""

from __future__ import annotations

from typing import Any

from services.identity.domain import accounts as rules
from services.identity.domain import tokens
from services.identity.domain.errors import FieldProblem, Refusal
from services.identity.domain.lockout import LockState
from services.identity.service_layer import devices
from services.identity.service_layer.context import Caller, Identity, addressed, retrying
from services.identity.service_layer.links import reissue_link
from services.identity.service_layer.registration import check_password
from services.identity.service_layer.sessions import (
    end_all_sessions,
    mark_sessions_revoked,
    next_generation,
    open_session,
    record_failure,
)
from shared.events import AccountUnlocked, PasswordChanged, PasswordResetRequested


def _new_password_fields(state: dict[str, Any], password_hash: str, now: Any) -> dict[str, Any]:
    return {
        "password_hash": password_hash,
        "password_changed_at": now,
        "must_change_password": False,
        "compromise_reported_at": None,
        "change_ticket": None,
        **next_generation(state),
    }


def _refuse_while_locked(ctx: Identity, state: dict[str, Any]) -> None:
    """Refuse a signed-in caller while a lock holds, saying until when (a reset by email lifts timed
    locks only)."""
    lock = LockState.from_state(state)
    if not lock.holds(ctx.now()):
        return
    if lock.until is None:
        hint = "until the service desk lifts it"
    else:
        hint = f"until {lock.until.isoformat()}: try again then, or reset it by email (POST /v1/password-resets)"
    raise Refusal(
        "account_locked", f"the password is locked after repeated wrong guesses, {hint}", 403,
        details={"locked_until": lock.until.isoformat() if lock.until else None},
    )


async def change(ctx: Identity, caller: Caller, account_id: str, current: str, new: str, *,
                 session_id: str) -> dict[str, Any]:
    """Knowing the current password: every session ends, a fresh one is returned for this client,
    on the device of the session ``session_id`` it was changed from and proven as that one was (a
    device authorised stays authorised: only the password changed)."""
    await ctx.limit(caller, "change_password", "check", account_id)
    account = await ctx.stores.accounts.get(account_id)
    assert account is not None
    # Checked before the password, or a stolen session would keep guessing it past the lock.
    # The caller is signed in, so telling them of the lock confirms no guess.
    _refuse_while_locked(ctx, account.state)
    if not await ctx.hasher.verify(account.state.get("password_hash"), current):
        await record_failure(ctx, caller, account_id)
        raise Refusal("current_password_wrong", "the current password is wrong", 400)
    state = account.state
    check_password(ctx, new, state["first_name"], state["last_name"], state["email"], field="new_password")
    new_hash = await ctx.hasher.hash(new)

    async def attempt() -> Any:
        doc = await ctx.stores.accounts.get(account_id)
        assert doc is not None
        _refuse_while_locked(ctx, doc.state)  # a lock placed by guesses sent alongside, during the verify
        event = PasswordChanged(customer_id=doc.id, reason="changed", **addressed(doc.state))
        return await ctx.stores.accounts.update(
            doc, doc.state | _new_password_fields(doc.state, new_hash, ctx.now()), [ctx.envelope(event, caller)]
        )

    this_session = await ctx.stores.sessions.get(session_id)
    updated = await retrying(attempt)
    await mark_sessions_revoked(ctx, account_id, "password_changed")
    device_id = this_session.state.get("device_id") if this_session else None
    amr = list(this_session.state.get("amr") or ["pwd"]) if this_session else ["pwd"]
    return await open_session(ctx, caller, updated, device_id=device_id, amr=amr)


async def report_compromise(ctx: Identity, account_id: str) -> None:
    """Someone else may know the password (002, art. 2.8): every session ends, every device is
    forgotten, and from now on only the emailed reset link sets a new password (the password alone
    is what the other person may have)."""
    await end_all_sessions(ctx, account_id, "compromise_reported", extra={
        "must_change_password": True, "compromise_reported_at": ctx.now(), "change_ticket": None,
    })
    await devices.forget_all_devices(ctx, account_id)


async def request_reset(ctx: Identity, caller: Caller, email: str) -> None:
    """Email a single-use reset link (1 hour; older links stop working). Unknown emails answered the same."""
    async with ctx.answer_floor(caller).around():
        await ctx.limit(caller, "password_reset", "send", email)
        await reissue_link(ctx, caller, email, status=rules.ACTIVE, slot="reset", ttl=tokens.RESET_TTL,
                           event=PasswordResetRequested)


async def reset(ctx: Identity, caller: Caller, token: str, new: str) -> None:
    """Set a new password with a reset link: the link is spent, every session ends, the owner is told."""
    parts = tokens.split_compound(token)
    if parts is None:
        raise Refusal("reset_invalid", "this reset link is not valid", 400)
    account_id, secret = parts
    await ctx.limit(caller, "password_reset_confirm", "check", account_id)
    doc = await ctx.stores.accounts.get(account_id)
    if doc is None:
        raise Refusal("reset_invalid", "this reset link is not valid", 400)
    refusal = tokens.check_single_use_token(secret, doc.state.get("reset"), doc.state.get("reset_spent", []),
                                            ctx.now(), what="reset")
    if refusal is not None:
        raise refusal
    check_password(ctx, new, doc.state["first_name"], doc.state["last_name"], doc.state["email"], field="new_password")
    new_hash = await ctx.hasher.hash(new)

    async def attempt() -> None:
        current = await ctx.stores.accounts.get(account_id)
        assert current is not None
        again = tokens.check_single_use_token(secret, current.state.get("reset"), current.state.get("reset_spent", []),
                                              ctx.now(), what="reset")
        if again is not None:
            raise again  # used concurrently
        state = current.state | _new_password_fields(current.state, new_hash, ctx.now()) | {
            "reset": None,
            "reset_spent": tokens.spend(current.state["reset"], current.state.get("reset_spent", []), "used"),
        }
        # A reset proves the mailbox: it clears failures and timed locks, never a permanent lock.
        lock = LockState.from_state(current.state)
        events = [ctx.envelope(PasswordChanged(customer_id=current.id, reason="reset", **addressed(current.state)), caller)]
        if lock.until is not None or not lock.locked:
            state |= LockState(locks=lock.locks).to_state()
            if lock.locked:
                events.append(ctx.envelope(
                    AccountUnlocked(customer_id=current.id, unlocked_by="password-reset", **addressed(current.state)), caller
                ))
        await ctx.stores.accounts.update(current, state, events)

    await retrying(attempt)
    await mark_sessions_revoked(ctx, account_id, "password_reset")


async def forced_change(ctx: Identity, caller: Caller, ticket: str, new: str) -> None:
    """The change an administrator required, with the ticket handed out at sign-in."""
    parts = tokens.split_compound(ticket)
    if parts is None:
        raise Refusal("change_ticket_invalid", "this ticket is not valid: sign in again", 400)
    account_id, secret = parts
    await ctx.limit(caller, "forced_change", "check", account_id)
    doc = await ctx.stores.accounts.get(account_id)
    stored = doc.state.get("change_ticket") if doc else None
    if doc is None or stored is None or not tokens.same(tokens.hash_secret(secret), stored["hash"]):
        raise Refusal("change_ticket_invalid", "this ticket is not valid: sign in again", 400)
    if ctx.now() >= stored["expires_at"]:
        raise Refusal("change_ticket_expired", "this ticket has expired: sign in again", 400)
    state = doc.state
    reported = rules.refusal_after_compromise(state)  # never issued then; and a report clears tickets
    if reported is not None:
        raise reported
    check_password(ctx, new, state["first_name"], state["last_name"], state["email"], field="new_password")
    if await ctx.hasher.verify(state["password_hash"], new):
        raise Refusal("password_unchanged", "choose a password different from the current one", 422, fields=[
            FieldProblem(("body", "new_password"), "choose a password different from the current one", "password_unchanged")
        ])
    new_hash = await ctx.hasher.hash(new)
    event = PasswordChanged(customer_id=doc.id, reason="forced_change", **addressed(state))
    await end_all_sessions(ctx, account_id, "forced_password_change",
                           extra=_new_password_fields(state, new_hash, ctx.now()),
                           events=[ctx.envelope(event, caller)])
