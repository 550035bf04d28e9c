"""Registering (by email, or Belgian-style from a customer number), activating, resending the link."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.identity.adapters.ratelimiter import counter_key
from services.identity.domain import accounts as rules
from services.identity.domain import codes, tokens
from services.identity.domain.errors import FieldProblem, Refusal
from services.identity.domain.ratelimits import Limit
from services.identity.service_layer.context import Caller, Identity, addressed, retrying
from services.identity.service_layer.links import reissue_link
from shared.events import (
    ActivationLinkReissued,
    CustomerActivated,
    CustomerAlreadyRegistered,
    CustomerDetailsChanged,
    CustomerRegistered,
    RegistrationCodeIssued,
)
from shared.storage import StoredDocument
from shared.storage.mongo import is_duplicate_key


@dataclass(frozen=True)
class Registration:
    first_name: str
    last_name: str
    email: str  # normalised
    password: str
    locale: str
    terms_version: str
    mobile: str | None = None  # E.164


def check_password(ctx: Identity, password: str, *personal: str | None, field: str = "password") -> None:
    problems = ctx.passwords.problems(password, [p for p in personal if p], field=field, today=ctx.now().date())
    if problems:
        raise Refusal("validation_failed", problems[0].msg, 422, fields=problems)


def new_account_state(ctx: Identity, reg: Registration, password_hash: str | None, *, kind: str = rules.CUSTOMER,
                      roles: list[str] | None = None, organisation_id: str | None = None) -> dict[str, Any]:
    now = ctx.now()
    return {
        "kind": kind,
        "email": reg.email,
        "first_name": reg.first_name,
        "last_name": reg.last_name,
        "locale": reg.locale,
        "mobile": reg.mobile,
        "roles": roles or ["customer"],
        "organisation_id": organisation_id,
        "status": rules.PENDING,
        "password_hash": password_hash,
        "password_changed_at": now if password_hash else None,
        "created_at": now,
        "activated_at": None,
        "terms": {"version": reg.terms_version, "accepted_at": now, "how": "registration"} if reg.terms_version else None,
        "activation": None,
        "activation_spent": [],
        "reset": None,
        "reset_spent": [],
        "failed_logins": 0,
        "locks_so_far": 0,
        "lock": None,
        "must_change_password": False,
        "change_ticket": None,
        "link": {"status": "none"},
        "customer_number": None,
        "contract_numbers": [],
        "session_generation": 0,
    }


async def register(ctx: Identity, caller: Caller, reg: Registration) -> None:
    """Create a pending account and send its activation link; for a taken email, tell its owner instead.

    Both answer the same, at the same moment (see ``AnswerFloor``).
    """
    async with ctx.answer_floor(caller).around():
        # The strength check costs milliseconds of CPU: counted per address before it runs.
        await ctx.limit(caller, "register_form", "check", None)
        check_password(ctx, reg.password, reg.first_name, reg.last_name, reg.email)
        await ctx.limit(caller, "register", "send", reg.email)
        await _register(ctx, caller, reg)


async def _register(ctx: Identity, caller: Caller, reg: Registration) -> None:
    existing = await ctx.account_by_email(reg.email)
    password_hash = await ctx.hasher.hash(reg.password)
    if existing is None:
        try:
            await _create_pending(ctx, caller, reg, password_hash)
            return
        except Exception as error:
            if not is_duplicate_key(error):
                raise
            existing = await ctx.account_by_email(reg.email)  # registered concurrently
            if existing is None:
                raise
    await _tell_owner(ctx, caller, existing)


async def _create_pending(ctx: Identity, caller: Caller, reg: Registration, password_hash: str) -> None:
    account_id = tokens.new_id("cus")
    issued = tokens.issue_token(account_id, ctx.now(), tokens.ACTIVATION_TTL)
    state = new_account_state(ctx, reg, password_hash) | {"activation": issued.stored}
    await ctx.stores.accounts.create(account_id, state, [ctx.envelope(_registered(ctx, account_id, state, issued), caller)])


def _registered(ctx: Identity, account_id: str, state: dict[str, Any], issued: tokens.IssuedSecret) -> CustomerRegistered:
    """What notifications needs to email the activation link of a new account (the link sealed)."""
    return CustomerRegistered(
        customer_id=account_id,
        **addressed(state),
        last_name=state["last_name"],
        mobile=state["mobile"],
        terms_version=state["terms"]["version"],
        activation_token=ctx.seal(CustomerRegistered, "activation_token", issued.token),
        activation_expires_at=issued.stored["expires_at"],
    )


async def _tell_owner(ctx: Identity, caller: Caller, account: StoredDocument) -> None:
    """Recorded as a document of its own, not an update of the account: a registration never
    changes an account it does not own (nor conflicts with its owner's writes)."""
    event = CustomerAlreadyRegistered(customer_id=account.id, **addressed(account.state))
    await ctx.stores.registration_attempts.create(
        tokens.new_id("rat"),
        {"account_id": account.id, "at": ctx.now(), "email": account.state["email"], "kind": "already_registered"},
        [ctx.envelope(event, caller)],
    )


def _spent_and_check(doc: StoredDocument, secret: str, ctx: Identity) -> None:
    refusal = tokens.check_single_use_token(
        secret, doc.state.get("activation"), doc.state.get("activation_spent", []), ctx.now(), what="activation"
    )
    if refusal is not None:
        raise refusal


async def activate(ctx: Identity, caller: Caller, token: str, password: str | None = None) -> None:
    """Use an activation link once. Invited organisation users choose their password here."""
    parts = tokens.split_compound(token)
    if parts is None:
        raise Refusal("activation_invalid", "this activation link is not valid", 400)
    account_id, secret = parts
    await ctx.limit(caller, "activate", "check", account_id)

    async def attempt() -> None:
        doc = await ctx.stores.accounts.get(account_id)
        if doc is None:
            raise Refusal("activation_invalid", "this activation link is not valid", 400)
        _spent_and_check(doc, secret, ctx)
        if doc.state["status"] != rules.PENDING:  # disabled (or ended) since the link was sent
            raise rules.refusal_for_status(doc.state) or Refusal(
                "activation_invalid", "this account is already active: sign in", 400
            )
        state = dict(doc.state)
        if not state.get("password_hash"):
            if not password:
                raise Refusal(
                    "validation_failed", "choose a password to activate your account", 422,
                    fields=[FieldProblem(("body", "password"), "choose a password", "missing")],
                )
            check_password(ctx, password, state["first_name"], state["last_name"], state["email"])
            state |= {"password_hash": await ctx.hasher.hash(password), "password_changed_at": ctx.now()}
        state |= {
            "status": rules.ACTIVE,
            "activated_at": ctx.now(),
            "activation": None,
            "activation_spent": tokens.spend(state["activation"], state.get("activation_spent", []), "used"),
        }
        await ctx.stores.accounts.update(doc, state, [ctx.envelope(CustomerActivated(customer_id=doc.id), caller)])

    await retrying(attempt)


async def resend_activation(ctx: Identity, caller: Caller, email: str) -> None:
    """A new link for a pending account (the old one stops working); otherwise nothing, answered the same."""
    async with ctx.answer_floor(caller).around():
        await ctx.limit(caller, "resend_activation", "send", email)
        await reissue_link(ctx, caller, email, status=rules.PENDING, slot="activation", ttl=tokens.ACTIVATION_TTL,
                           event=ActivationLinkReissued)


# --- Belgian-style start: customer number, SMS code to the mobile on file, then the details ---------


#: One attempt at a Belgian registration: the 10 minutes from its first code, at most 3 codes.
REGISTRATION_ATTEMPT = Limit(tokens.CODE_MAX_SENDS, tokens.REGISTRATION_CODE_TTL)


@dataclass(frozen=True)
class CodeAttempt:
    sends_so_far: int
    ends_at: datetime


async def request_registration_code(ctx: Identity, caller: Caller, customer_number: str, locale: str) -> None:
    """Text a code to the mobile on file for this customer number; an unknown number is answered the
    same, also past the limit of codes per attempt."""
    async with ctx.answer_floor(caller).around():
        await ctx.limit(caller, "registration_code", "send", customer_number)
        attempt = await _count_code_of_attempt(ctx, customer_number)
        await _text_code(ctx, caller, customer_number, locale, attempt)


async def _count_code_of_attempt(ctx: Identity, customer_number: str) -> CodeAttempt:
    """Counted per customer number before looking it up, known or not: refusing the fourth code of
    known numbers only would tell which numbers are known. The refusal says when to ask again."""
    now = ctx.now()
    key = counter_key("registration_code_attempt", "customer_number", customer_number)
    window = await ctx.stores.limiter.hit(key, REGISTRATION_ATTEMPT, now)
    sends_so_far = window.count - 1
    codes.allow_another_code(sends_so_far, retry_after_s=window.retry_after(REGISTRATION_ATTEMPT, now))
    return CodeAttempt(sends_so_far, window.started + REGISTRATION_ATTEMPT.window)


async def _text_code(ctx: Identity, caller: Caller, customer_number: str, locale: str, code_attempt: CodeAttempt) -> None:
    async def attempt() -> None:
        doc = await ctx.stores.customers.get(customer_number)
        mobile = doc.state.get("mobile_on_file") if doc else None
        if doc is None or not mobile or await _has_login(ctx, doc):
            # Nothing to text (the login's owner signs in or resets), answered the same.
            await _record_untexted_code(ctx, customer_number, code_attempt)
            return
        issued = _next_code(doc.state.get("registration_code"), code_attempt, ctx.now())
        if issued is None:
            return
        event = RegistrationCodeIssued(
            customer_number=customer_number,
            mobile=mobile,
            locale=locale,
            code=ctx.seal(RegistrationCodeIssued, "code", issued.code),
            code_expires_at=issued.stored["expires_at"],
        )
        state = doc.state | {"registration_code": issued.stored | {"attempt_ends_at": code_attempt.ends_at}}
        await ctx.stores.customers.update(doc, state, [ctx.envelope(event, caller)])

    await retrying(attempt)


def _next_code(previous: dict[str, Any] | None, code_attempt: CodeAttempt, now: datetime) -> codes.IssuedCode | None:
    """Five wrong tries end the attempt, however many codes it was sent: then None, a code now would be
    dead on arrival (the fifth wrong try said when to ask again)."""
    previous = previous or {}
    wrong_so_far = previous.get("tries", 0) if _attempt_runs(previous, now) else 0
    if wrong_so_far >= tokens.CODE_MAX_TRIES:
        return None
    return codes.issue_code(now, code_attempt.sends_so_far, tokens.REGISTRATION_CODE_TTL,
                            wrong_tries_so_far=wrong_so_far)


def _untexted_id(customer_number: str) -> str:
    """Hashed, like the counters: the numbers anyone typed are kept in no readable form."""
    return counter_key("untexted_registration_code", "customer_number", customer_number)


async def _record_untexted_code(ctx: Identity, customer_number: str, code_attempt: CodeAttempt) -> None:
    """A number texted no code (unknown, no mobile on file, or a login) still gets its attempt recorded,
    with a code nobody has, kept apart from what contracts told us: its wrong tries then answer
    ``code_wrong``, then ``code_dead``, as those of a texted number do, not ``code_not_requested``."""
    untexted = await ctx.stores.untexted_codes.get(_untexted_id(customer_number))
    issued = _next_code(untexted.state.get("registration_code") if untexted else None, code_attempt, ctx.now())
    if issued is None:
        return
    state = {"registration_code": codes.code_nobody_has(issued) | {"attempt_ends_at": code_attempt.ends_at}}
    if untexted is None:
        await ctx.stores.untexted_codes.create(_untexted_id(customer_number), state)
    else:
        await ctx.stores.untexted_codes.update(untexted, state)


def _issued_later(code: dict[str, Any], other: dict[str, Any] | None) -> bool:
    """Whether ``code`` was issued after ``other`` (every code lives as long: the later expiry)."""
    return other is None or code["expires_at"] >= other["expires_at"]


def _attempt_ends_at(code: dict[str, Any]) -> datetime | None:
    """When the attempt this code was sent in ends (a code stored before attempts were recorded:
    when it expires)."""
    return code.get("attempt_ends_at") or code.get("expires_at")


def _attempt_runs(code: dict[str, Any], now: datetime) -> bool:
    ends_at = _attempt_ends_at(code)
    return ends_at is not None and now < ends_at


def _when_to_ask_again(stored: dict[str, Any] | None, refusal: Refusal, now: datetime) -> Refusal:
    """The code is dead and its attempt still runs: a code asked for now would not be sent, so say when."""
    ends_at = _attempt_ends_at(stored) if stored is not None and refusal.code == "code_dead" else None
    if ends_at is None or now >= ends_at:
        return refusal
    wait_s = int((ends_at - now).total_seconds()) + 1
    return Refusal("code_dead", f"too many wrong attempts: ask for a new code in {wait_s} seconds", 400,
                   details={"retry_after_s": wait_s})


async def register_with_customer_number(ctx: Identity, caller: Caller, customer_number: str, code: str,
                                        contract_number: str, reg: Registration) -> None:
    """The code proves the mobile on file, the contract number is the security detail (002, art. 2.4):
    the account is linked to its contract from the start. Like every account, it is usable only after
    activation by the link emailed to the address given: nothing proved that mailbox yet, and it is
    where reset links and device codes go. One login per customer number: the number is claimed for
    the new account in the write that spends the code.

    A taken email answers like a new one, at the same moment, and its owner is told (see ``register``).
    """
    async with ctx.answer_floor(caller).around():
        # The strength check costs milliseconds of CPU: counted before it runs.
        await ctx.limit(caller, "registration_code_check", "check", customer_number)
        check_password(ctx, reg.password, reg.first_name, reg.last_name, reg.email)
        await _register_with_customer_number(ctx, caller, customer_number, code, contract_number, reg)


async def _register_with_customer_number(ctx: Identity, caller: Caller, customer_number: str, code: str,
                                         contract_number: str, reg: Registration) -> None:
    account_id = tokens.new_id("cus")

    async def check() -> StoredDocument:
        doc = await ctx.stores.customers.get(customer_number)
        untexted = await ctx.stores.untexted_codes.get(_untexted_id(customer_number))
        texted = doc.state.get("registration_code") if doc else None
        # The code of the latest request decides, wherever it was kept: a number texted a code
        # once and given a login since keeps that old code, but is now answered from a code
        # nobody has, like an unknown number. Both records are read whichever answers, so that
        # a texted number is not a store round trip quicker than one texted nothing.
        if untexted is not None and _issued_later(untexted.state["registration_code"], texted):
            stored = untexted.state["registration_code"]
        else:
            untexted, stored = None, texted
        outcome = codes.check_code(stored, code, ctx.now())
        if outcome.ok and stored is not None and not _is_contract_of(doc, contract_number):
            outcome = codes.wrong_detail(stored, Refusal(
                "contract_number_wrong", "this is not the number of one of your contracts", 400,
                fields=[FieldProblem(("body", "contract_number"), "not the number of one of your contracts",
                                     "contract_number_wrong")],
            ))
        if outcome.ok:
            assert doc is not None
            await _refuse_if_taken(ctx, doc)
        if untexted is not None:
            await ctx.stores.untexted_codes.update(untexted, {"registration_code": outcome.stored})
        elif doc is not None and stored is not None:
            claim = {"account_id": account_id} if outcome.ok else {}
            await ctx.stores.customers.update(doc, doc.state | {"registration_code": outcome.stored} | claim)
        if not outcome.ok:
            assert outcome.refusal is not None
            raise _when_to_ask_again(outcome.stored, outcome.refusal, ctx.now())
        assert doc is not None
        return doc

    customer = await retrying(check)
    password_hash = await ctx.hasher.hash(reg.password)
    running = [c["number"] for c in customer.state.get("contracts", []) if c.get("running")]
    reg = Registration(**{**reg.__dict__, "mobile": reg.mobile or customer.state.get("mobile_on_file")})
    issued = tokens.issue_token(account_id, ctx.now(), tokens.ACTIVATION_TTL)
    state = new_account_state(ctx, reg, password_hash) | {
        "activation": issued.stored,
        "link": {"status": "verified", "method": "customer_number", "verified_at": ctx.now()},
        "customer_number": customer_number,
        "contract_numbers": running,
    }
    details = CustomerDetailsChanged(
        customer_id=account_id, email=reg.email, first_name=reg.first_name, last_name=reg.last_name,
        locale=reg.locale, mobile=reg.mobile,  # type: ignore[arg-type]
    )
    try:
        await ctx.stores.accounts.create(
            account_id, state,
            [ctx.envelope(details, caller), ctx.envelope(_registered(ctx, account_id, state, issued), caller)],
        )
    except Exception as error:
        await _release_claim(ctx, customer_number, account_id)
        if not is_duplicate_key(error):
            raise
        existing = await ctx.account_by_email(reg.email)
        if existing is not None:
            await _tell_owner(ctx, caller, existing)


def _is_contract_of(customer: StoredDocument | None, contract_number: str) -> bool:
    wanted = contract_number.strip().upper()
    return customer is not None and any(
        c.get("number", "").upper() == wanted for c in customer.state.get("contracts", [])
    )


async def _has_login(ctx: Identity, customer: StoredDocument) -> bool:
    """A login holds this customer number: by its claim (of an account that exists), or, linked
    before claims were recorded, by carrying it."""
    holder = customer.state.get("account_id")
    if holder is not None and await ctx.stores.accounts.get(holder) is not None:
        return True
    return await ctx.stores.accounts.collection.find_one({"customer_number": customer.id}, {"_id": 1}) is not None


async def _refuse_if_taken(ctx: Identity, customer: StoredDocument) -> None:
    if await _has_login(ctx, customer):
        raise Refusal(
            "customer_number_taken",
            "this customer number already has a login: sign in with it, activate it with the link we emailed "
            "(a new one: POST /v1/activations/resend), or ask for a new password (POST /v1/password-resets)",
            409,
        )


async def _release_claim(ctx: Identity, customer_number: str, account_id: str) -> None:
    """The account was not created after all: the number is free again for the next attempt."""

    async def attempt() -> None:
        doc = await ctx.stores.customers.get(customer_number)
        if doc is not None and doc.state.get("account_id") == account_id:
            await ctx.stores.customers.update(doc, doc.state | {"account_id": None})

    await retrying(attempt)
