"""Single-use links sent by email (activation, password reset): a new one replaces the one before."""

from __future__ import annotations

from datetime import timedelta

from services.identity.domain import tokens
from services.identity.service_layer.context import Caller, Identity, addressed, retrying
from shared.events import AddressedEvent


async def reissue_link(ctx: Identity, caller: Caller, email: str, *, status: str, slot: str, ttl: timedelta,
                       event: type[AddressedEvent]) -> None:
    """A new link in ``slot`` for the account of ``email`` if it is in ``status``, the previous one
    spent as superseded, and an ``event`` telling its owner, in the same write. The event carries the
    link sealed in ``<slot>_token`` and its expiry in ``<slot>_expires_at``. Nothing happens for an
    unknown email or an account in another status: the caller answers the same either way."""

    async def attempt() -> None:
        doc = await ctx.account_by_email(email)
        if doc is None or doc.state["status"] != status:
            return
        issued = tokens.issue_token(doc.id, ctx.now(), ttl)
        state = doc.state | {
            slot: issued.stored,
            f"{slot}_spent": tokens.spend(doc.state.get(slot), doc.state.get(f"{slot}_spent", []), "superseded"),
        }
        told = event(
            customer_id=doc.id,
            **addressed(doc.state),
            **{f"{slot}_token": ctx.seal(event, f"{slot}_token", issued.token),
               f"{slot}_expires_at": issued.stored["expires_at"]},
        )
        await ctx.stores.accounts.update(doc, state, [ctx.envelope(told, caller)])

    await retrying(attempt)
