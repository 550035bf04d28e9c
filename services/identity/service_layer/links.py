"""Single-use links sent by email (activation, password reset): a new one replaces the one before."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from services.identity.domain import tokens
from services.identity.service_layer.context import Caller, Identity, retrying
from shared.events import Event
from shared.storage import StoredDocument


async def reissue_link(ctx: Identity, caller: Caller, email: str, *, status: str, slot: str, ttl: timedelta,
                       event: Callable[[StoredDocument, tokens.IssuedSecret], Event]) -> None:
    """A new link in ``slot`` for the account of ``email`` if it is in ``status``, the previous one
    spent as superseded, and ``event`` (which carries the link to the owner) in the same write.
    Nothing happens for an unknown email or an account in another status: the caller answers the
    same either way."""

    async def attempt() -> None:
        doc = await ctx.account_by_email(email)
        if doc is None or doc.state["status"] != status:
            return
        issued = tokens.issue_token(doc.id, ctx.now(), ttl)
        state = doc.state | {
            slot: issued.stored,
            f"{slot}_spent": tokens.spend(doc.state.get(slot), doc.state.get(f"{slot}_spent", []), "superseded"),
        }
        await ctx.stores.accounts.update(doc, state, [ctx.envelope(event(doc, issued), caller)])

    await retrying(attempt)
