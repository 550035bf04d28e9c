"""Linking a login to a finance contract, and what identity learns from the contracts service."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from services.identity.domain import accounts as rules
from services.identity.domain import tokens
from services.identity.domain.access import UNSEEN_PREFIX, KnownContract, access_ends_on, after_closing
from services.identity.domain.errors import Refusal
from services.identity.service_layer.context import Caller, Identity, addressed, retrying
from services.identity.service_layer.sessions import mark_sessions_revoked, next_generation
from shared.events import (
    ContractClosed,
    ContractLinkRejected,
    ContractLinkRequested,
    ContractLinkVerified,
    ContractOpened,
    CustomerAccessEnded,
    CustomerAccessRestored,
)
from shared.messaging import Delivery
from shared.storage import StoredDocument

log = logging.getLogger(__name__)


async def request_link(ctx: Identity, caller: Caller, account_id: str, *, method: str, first_name: str | None = None,
                       last_name: str | None = None, vin: str | None = None,
                       last_payment_amount: Decimal | None = None, customer_number: str | None = None) -> str:
    """Ask contracts to verify the details; the answer arrives as contract.link_verified or _rejected."""
    await ctx.limit(caller, "contract_link", "check", account_id)

    async def attempt() -> str:
        doc = await ctx.stores.accounts.get(account_id)
        assert doc is not None
        if doc.state["kind"] != rules.CUSTOMER:
            raise Refusal("not_a_customer", "only customer accounts link contracts", 403)
        if doc.state.get("link", {}).get("status") == "verified":
            raise Refusal("already_linked", "this login is already linked to your contracts", 409)
        request_id = tokens.new_id("lnk")
        event = ContractLinkRequested(
            customer_id=doc.id, method=method,  # type: ignore[arg-type]
            first_name=first_name, last_name=last_name, vin=vin, last_payment_amount=last_payment_amount,
            customer_number=customer_number,
        )
        link = {"status": "pending", "request_id": request_id, "method": method, "requested_at": ctx.now()}
        await ctx.stores.accounts.update(doc, doc.state | {"link": link}, [ctx.envelope(event, caller)])
        return request_id

    return await retrying(attempt)


async def _account_of_verdict(ctx: Identity, event: ContractLinkVerified | ContractLinkRejected,
                              delivery: Delivery) -> StoredDocument | None:
    """The account a verdict is about; None when it was applied already or the account is unknown here.

    Contracts only answers link requests identity sent, so a verdict for an account identity does
    not have is not routine (a wrong topic namespace, an account id mangled on the way, a store
    restored from an old backup): it is dropped, since no retry would make the account appear,
    and logged for an operator to look at."""
    doc = await ctx.stores.accounts.get(event.customer_id)
    if doc is None:
        log.warning(
            "link verdict for an account unknown here: dropped",
            extra={"event_id": delivery.event_id, "event_type": event.event_type, "customer_id": event.customer_id},
        )
        return None
    return None if doc.has_applied(delivery.event_id) else doc


async def on_link_verified(ctx: Identity, event: ContractLinkVerified, delivery: Delivery) -> None:
    """Mark the login linked. From the link on, every device must be authorised: the sessions opened
    before it (on devices nobody authorised) end, in the same write, so that neither they nor their
    refresh tokens carry over and the next sign-in asks for the device. A later verdict for a login
    already linked (more contracts) ends nothing: its sessions were opened on authorised devices."""
    doc = await _account_of_verdict(ctx, event, delivery)
    if doc is None:
        return
    newly_linked = doc.state.get("link", {}).get("status") != "verified"
    if not await claim_customer_number(ctx, event.customer_number, doc.id):
        log.warning(
            "link verdict for a customer number another login holds: not linked",
            extra={"event_id": delivery.event_id, "customer_id": doc.id},
        )
        state = doc.state
        if newly_linked:
            state = state | {"link": doc.state.get("link", {}) | {
                "status": "rejected", "reason": CUSTOMER_NUMBER_TAKEN, "rejected_at": ctx.now()}}
        await ctx.stores.accounts.update(doc, state, applied=delivery.event_id)
        return
    link = doc.state.get("link", {}) | {"status": "verified", "reason": None}
    if newly_linked:
        link["verified_at"] = ctx.now()
    numbers = sorted(set(doc.state.get("contract_numbers", [])) | set(event.contract_numbers))
    changes: dict[str, Any] = {"link": link, "customer_number": event.customer_number, "contract_numbers": numbers}
    if newly_linked:
        changes |= next_generation(doc.state)
    await ctx.stores.accounts.update(doc, doc.state | changes, applied=delivery.event_id)
    if newly_linked:
        # The generation already ended them; this marks them for the list the customer sees.
        await mark_sessions_revoked(ctx, doc.id, "contract_linked")


CUSTOMER_NUMBER_TAKEN = "customer_number_taken"


def _new_customer_state() -> dict[str, Any]:
    return {"contracts": [], "registration_code": None, "access_ended_at": None, "access_ends_at": None}


async def claim_customer_number(ctx: Identity, customer_number: str, account_id: str) -> bool:
    """One login per customer number: True when ``account_id`` holds it (now, or already).

    The customer number's document records the account holding it (``account_id``), set by one
    version-guarded write: of two accounts claiming at once, one wins and the other's write
    conflicts, is retried, and finds it taken. Accounts that carry the number without a claim
    (linked before claims existed, or registered Belgian-style) also hold it. A conflicting write
    escapes as ``ConcurrencyConflict`` (the consumer retries the verdict)."""
    doc = await ctx.stores.customers.get(customer_number)
    holder = doc.state.get("account_id") if doc else None
    if holder == account_id:
        return True
    if holder is not None and await ctx.stores.accounts.get(holder) is not None:
        return False  # (a claim whose account was never created holds nothing)
    unclaimed_holder = await ctx.stores.accounts.collection.find_one(
        {"customer_number": customer_number, "_id": {"$ne": account_id}}, {"_id": 1}
    )
    if unclaimed_holder is not None:
        return False
    if doc is None:
        await ctx.stores.customers.create(customer_number, _new_customer_state() | {"account_id": account_id})
    else:
        await ctx.stores.customers.update(doc, doc.state | {"account_id": account_id})
    return True


async def on_link_rejected(ctx: Identity, event: ContractLinkRejected, delivery: Delivery) -> None:
    doc = await _account_of_verdict(ctx, event, delivery)
    if doc is None:
        return
    if doc.state.get("link", {}).get("status") == "verified":
        await ctx.stores.accounts.update(doc, doc.state, applied=delivery.event_id)  # a stale answer
        return
    link = doc.state.get("link", {}) | {"status": "rejected", "reason": event.reason, "rejected_at": ctx.now()}
    await ctx.stores.accounts.update(doc, doc.state | {"link": link}, applied=delivery.event_id)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _known(contracts: list[dict[str, Any]]) -> list[KnownContract]:
    return [
        KnownContract(c["number"], c["running"], c["closed_on"].date() if c.get("closed_on") else None)
        for c in contracts
    ]


def _with_access_end(state: dict[str, Any]) -> dict[str, Any]:
    ends = access_ends_on(_known(state["contracts"]))
    return state | {"access_ends_at": _midnight(ends) if ends else None}


def _has_running_contract(state: dict[str, Any]) -> bool:
    return any(c["running"] for c in state["contracts"])


async def _record_customer(ctx: Identity, doc: StoredDocument | None, customer_number: str, state: dict[str, Any],
                           delivery: Delivery) -> None:
    state = _with_access_end(state)
    if doc is None:
        await ctx.stores.customers.create(customer_number, state, applied=delivery.event_id)
    else:
        await ctx.stores.customers.update(doc, state, applied=delivery.event_id)
    if _has_running_contract(state):
        await restore_access(ctx, customer_number)


async def on_contract_opened(ctx: Identity, event: ContractOpened, delivery: Delivery) -> None:
    """Learn the customer number, the mobile and email on file; a running contract keeps access open,
    and gives it back to a customer whose access had ended."""
    doc = await ctx.stores.customers.get(event.customer_number)
    if doc is not None and doc.has_applied(delivery.event_id):
        if _has_running_contract(doc.state):
            await restore_access(ctx, event.customer_number)  # a crash may have come between the two writes
        return
    state = doc.state if doc else _new_customer_state()
    contracts = [c for c in state["contracts"] if c["number"] != event.contract_number]
    previous = next((c for c in state["contracts"] if c["number"] == event.contract_number), None)
    # Closed already (the close overtook the opening: they travel on different topics): stays closed.
    contracts.append(previous or {"number": event.contract_number, "running": True, "closed_on": None})
    state = state | {
        "contracts": contracts,
        "mobile_on_file": event.mobile_on_file or state.get("mobile_on_file"),
        "email_on_file": str(event.email_on_file) if event.email_on_file else state.get("email_on_file"),
        "market": event.market,
        "holder_first_name": event.holder_first_name,
        "holder_last_name": event.holder_last_name,
    }
    await _record_customer(ctx, doc, event.customer_number, state, delivery)


async def on_contract_closed(ctx: Identity, event: ContractClosed, delivery: Delivery) -> None:
    """Note the end; the sweep ends access 18 months after the last running contract ended."""
    doc = await ctx.stores.customers.get(event.customer_number)
    if doc is not None and doc.has_applied(delivery.event_id):
        if _has_running_contract(doc.state):
            await restore_access(ctx, event.customer_number)
        return
    state = doc.state if doc else _new_customer_state()
    contracts, none_running_since = after_closing(
        state["contracts"], state.get("none_running_since"), number=event.contract_number,
        closed_at=_midnight(event.closed_on), others_running=event.customer_has_running_contract,
    )
    await _record_customer(ctx, doc, event.customer_number,
                           state | {"contracts": contracts, "none_running_since": none_running_since}, delivery)


async def restore_access(ctx: Identity, customer_number: str) -> int:
    """Access depends on a running contract (002, art. 4.1): a customer whose access ended and who
    signs a new one gets it back. The account returns to the status it had (active, nearly always);
    its sessions stay ended, so the customer signs in again. Idempotent: only ended accounts change.

    A conflicting write escapes (the consumer retries the event; the sweep wraps this in ``retrying``)."""
    ended = ctx.stores.accounts.collection.find(
        {"customer_number": customer_number, "status": rules.ACCESS_ENDED}, {"_id": 1}
    )
    restored = 0
    for raw in await ended.to_list():
        doc = await ctx.stores.accounts.get(raw["_id"])
        if doc is None or doc.state["status"] != rules.ACCESS_ENDED:
            continue
        status = doc.state.get("access_ended_from") or rules.ACTIVE
        event = CustomerAccessRestored(customer_id=doc.id, contract_number=await _a_running_contract(ctx, customer_number),
                                       **addressed(doc.state))
        await ctx.stores.accounts.update(
            doc, doc.state | {"status": status, "access_ended_at": None, "access_restored_at": ctx.now()},
            [ctx.envelope(event)],
        )
        log.info("access restored by a running contract", extra={"customer_id": doc.id})
        restored += 1
    return restored


async def _a_running_contract(ctx: Identity, customer_number: str) -> str | None:
    customer = await ctx.stores.customers.get(customer_number)
    running = [c["number"] for c in (customer.state.get("contracts", []) if customer else []) if c.get("running")]
    return next((number for number in running if not number.startswith(UNSEEN_PREFIX)), None)


async def _access_has_ended(ctx: Identity, customer_number: str) -> bool:
    """Decided from the contracts themselves, as they are now (not from the sweep's earlier query)."""
    customer = await ctx.stores.customers.get(customer_number)
    if customer is None:
        return False
    ends = access_ends_on(_known(customer.state["contracts"]))
    return ends is not None and _midnight(ends) <= ctx.now()


async def end_expired_access(ctx: Identity) -> int:
    """The periodic sweep: end the access of every account whose customer's access end has passed.

    Idempotent: an account already ended is skipped, so a sweep interrupted halfway is simply run again.
    """
    ended = 0
    due = ctx.stores.customers.collection.find({"access_ends_at": {"$lte": ctx.now()}}, {"_id": 1})
    for customer in await due.to_list():
        accounts = ctx.stores.accounts.collection.find(
            {"customer_number": customer["_id"], "status": {"$ne": rules.ACCESS_ENDED}}, {"_id": 1}
        )
        for raw in await accounts.to_list():
            if await _end_access(ctx, raw["_id"], customer["_id"]):
                ended += 1
    return ended


async def _end_access(ctx: Identity, account_id: str, customer_number: str) -> bool:
    async def attempt() -> bool:
        doc = await ctx.stores.accounts.get(account_id)
        if doc is None or doc.state["status"] == rules.ACCESS_ENDED:
            return False
        if not await _access_has_ended(ctx, customer_number):
            return False  # a contract opened since the sweep's query
        event = CustomerAccessEnded(customer_id=doc.id, reason="no_running_contract", **addressed(doc.state))
        now = ctx.now()
        await ctx.stores.accounts.update(
            doc,
            doc.state | {"status": rules.ACCESS_ENDED, "access_ended_at": now, "access_ended_from": doc.state["status"],
                         **next_generation(doc.state)},
            [ctx.envelope(event)],
        )
        return True

    done = await retrying(attempt)
    if done:
        await mark_sessions_revoked(ctx, account_id, "access_ended")
        # A contract opened between the check above and the write found this account still open and
        # restored nothing; now that the end is written, look once more (the opening, written before
        # its restore, is visible by now) and give access back.
        if not await _access_has_ended(ctx, customer_number):
            await retrying(lambda: restore_access(ctx, customer_number))
    return done
