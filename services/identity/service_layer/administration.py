"""Organisations and their user administrators; service-desk and security staff. Every act is audited."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from typing import Any

from services.identity.domain import accounts as rules
from services.identity.domain import tokens
from services.identity.domain.errors import FieldProblem, Refusal
from services.identity.domain.lockout import LockState
from services.identity.service_layer.context import Caller, Identity, addressed, retrying
from services.identity.service_layer.registration import Registration, new_account_state
from services.identity.service_layer.sessions import POLICY_DOC, mark_sessions_revoked, next_generation
from services.identity.service_layer import sessions
from shared.events import AccountUnlocked, OrganisationUserInvited
from shared.storage import StoredDocument
from shared.storage.mongo import is_duplicate_key


@dataclass(frozen=True)
class Actor:
    """Who acts, from their verified access token and live session."""

    account_id: str
    kind: str
    roles: tuple[str, ...]
    organisation_id: str | None

    @property
    def is_service_desk(self) -> bool:
        return self.kind == rules.STAFF and "service_desk" in self.roles

    @property
    def is_security_administrator(self) -> bool:
        return self.kind == rules.STAFF and "security_administrator" in self.roles

    def administers(self, organisation_id: str) -> bool:
        return self.kind == rules.ORG_USER and "administrator" in self.roles and self.organisation_id == organisation_id


@dataclass(frozen=True)
class Person:
    first_name: str
    last_name: str
    email: str
    locale: str
    mobile: str | None = None


NOT_FOUND = Refusal("not_found", "no such organisation or user", 404)


async def audit(ctx: Identity, actor: Actor, action: str, target_type: str, target_id: str,
                organisation_id: str | None = None, **details: Any) -> str:
    """Record the act before doing it: an act never happens without its record (it may be recorded and
    then fail, which the record's later absence of effect shows)."""
    now = ctx.now()
    audit_id = tokens.time_ordered_id("aud", now)
    await ctx.stores.audit.create(
        audit_id,
        {
            "actor_id": actor.account_id,
            "actor_kind": actor.kind,
            "actor_roles": list(actor.roles),
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "organisation_id": organisation_id,
            "details": details,
            "at": now,
        },
    )
    return audit_id


async def create_organisation(ctx: Identity, caller: Caller, actor: Actor, name: str, kind: str,
                              administrator: Person) -> dict[str, str]:
    if not actor.is_service_desk:
        raise Refusal("forbidden", "only the service desk creates organisations", 403)
    await ctx.limit(caller, "organisation_create", "send", administrator.email)  # the invitation email
    organisation_id = tokens.new_id("org")
    await audit(ctx, actor, "organisation.create", "organisation", organisation_id, organisation_id, name=name, kind=kind)
    await ctx.stores.organisations.create(
        organisation_id, {"name": name, "kind": kind, "created_at": ctx.now(), "created_by": actor.account_id}
    )
    user_id = await _invite(ctx, caller, actor, organisation_id, name, administrator, "administrator")
    return {"organisation_id": organisation_id, "administrator_id": user_id}


async def _organisation(ctx: Identity, actor: Actor, organisation_id: str) -> StoredDocument:
    if not (actor.administers(organisation_id) or actor.is_service_desk):
        raise NOT_FOUND  # another organisation's users do not exist for this caller
    organisation = await ctx.stores.organisations.get(organisation_id)
    if organisation is None:
        raise NOT_FOUND
    return organisation


async def invite_user(ctx: Identity, caller: Caller, actor: Actor, organisation_id: str, person: Person,
                      role: str) -> str:
    organisation = await _organisation(ctx, actor, organisation_id)
    await ctx.limit(caller, "invite_user", "send", person.email)  # the invitation email
    return await _invite(ctx, caller, actor, organisation_id, organisation.state["name"], person, role)


async def _invite(ctx: Identity, caller: Caller, actor: Actor, organisation_id: str, organisation_name: str,
                  person: Person, role: str) -> str:
    user_id = tokens.new_id("usr")
    await audit(ctx, actor, "user.create", "account", user_id, organisation_id, role=role)
    issued = tokens.issue_token(user_id, ctx.now(), tokens.ACTIVATION_TTL)
    reg = Registration(person.first_name, person.last_name, person.email, "", person.locale, "", person.mobile)
    state = new_account_state(ctx, reg, None, kind=rules.ORG_USER, roles=[role], organisation_id=organisation_id) | {
        "activation": issued.stored,
        "created_by": actor.account_id,
    }
    event = OrganisationUserInvited(
        user_id=user_id,
        **addressed(state),
        organisation_id=organisation_id,
        organisation_name=organisation_name,
        role=role,  # type: ignore[arg-type]
        activation_token=ctx.seal(OrganisationUserInvited, "activation_token", issued.token),
        activation_expires_at=issued.stored["expires_at"],
    )
    try:
        await ctx.stores.accounts.create(user_id, state, [ctx.envelope(event, caller)])
    except Exception as error:
        if is_duplicate_key(error):
            # Administrators are trusted with this answer: they need it to fix a typo or a duplicate.
            raise Refusal("email_taken", "an account with this email already exists", 409) from None
        raise
    return user_id


async def list_users(ctx: Identity, actor: Actor, organisation_id: str) -> list[dict[str, Any]]:
    await _organisation(ctx, actor, organisation_id)
    raws = await ctx.stores.accounts.collection.find({"organisation_id": organisation_id}).to_list()
    return [
        {
            "user_id": r["_id"],
            "email": r["email"],
            "first_name": r["first_name"],
            "last_name": r["last_name"],
            "role": r["roles"][0],
            "status": r["status"],
            "locked": bool(r.get("lock")),
        }
        for r in sorted(raws, key=lambda r: r["created_at"])
    ]


async def _member(ctx: Identity, actor: Actor, organisation_id: str, user_id: str) -> StoredDocument:
    await _organisation(ctx, actor, organisation_id)
    user = await ctx.stores.accounts.get(user_id)
    if user is None or user.state.get("organisation_id") != organisation_id:
        raise NOT_FOUND
    return user


async def set_enabled(ctx: Identity, actor: Actor, organisation_id: str, user_id: str, enabled: bool) -> None:
    await _member(ctx, actor, organisation_id, user_id)
    if user_id == actor.account_id:
        raise Refusal("not_on_yourself", "you cannot disable or enable your own account", 400)
    await audit(ctx, actor, "user.enable" if enabled else "user.disable", "account", user_id, organisation_id)

    async def attempt() -> None:
        user = await ctx.stores.accounts.get(user_id)
        assert user is not None
        status = user.state["status"]
        if enabled and status == rules.DISABLED:
            status = rules.ACTIVE if user.state.get("activated_at") else rules.PENDING
        elif not enabled and status in (rules.ACTIVE, rules.PENDING):
            status = rules.DISABLED
        changes: dict[str, Any] = {"status": status}
        if not enabled:
            # Disabling revokes what the user holds: sessions, and the invitation link of a user who
            # has not activated yet (re-enabled, they ask for a new one: POST /v1/activations/resend).
            changes |= next_generation(user.state) | {"activation": None}
        await ctx.stores.accounts.update(user, user.state | changes)

    await retrying(attempt)
    if not enabled:
        await mark_sessions_revoked(ctx, user_id, "disabled_by_administrator")


async def unblock_member(ctx: Identity, caller: Caller, actor: Actor, organisation_id: str, user_id: str) -> None:
    """An organisation's administrator unblocks colleagues; a blocked administrator needs the service desk."""
    user = await _member(ctx, actor, organisation_id, user_id)
    if "administrator" in user.state.get("roles", []) and not actor.is_service_desk:
        raise Refusal("service_desk_only", "a user administrator is unblocked by the service desk", 403)
    await _unblock(ctx, caller, actor, user_id, organisation_id)


async def staff_unblock(ctx: Identity, caller: Caller, actor: Actor, account_id: str) -> None:
    if not actor.is_service_desk:
        raise Refusal("forbidden", "only the service desk unblocks accounts here", 403)
    if await ctx.stores.accounts.get(account_id) is None:
        raise NOT_FOUND
    await _unblock(ctx, caller, actor, account_id, None)


async def _unblock(ctx: Identity, caller: Caller, actor: Actor, account_id: str, organisation_id: str | None) -> None:
    # The owner of a locked account is emailed: counted per account whoever unblocks it.
    await ctx.limit(caller, "unblock", "send", account_id)
    await audit(ctx, actor, "account.unblock", "account", account_id, organisation_id)

    async def attempt() -> None:
        doc = await ctx.stores.accounts.get(account_id)
        assert doc is not None
        events = []
        if doc.state.get("lock"):
            events.append(ctx.envelope(
                AccountUnlocked(customer_id=doc.id, unlocked_by=actor.account_id, **addressed(doc.state)), caller
            ))
        await ctx.stores.accounts.update(doc, doc.state | LockState().to_state(), events)

    await retrying(attempt)


async def require_password_change(ctx: Identity, caller: Caller, actor: Actor, *, everyone: bool,
                                  account_ids: list[str]) -> int:
    """Everyone: one policy write (passwords set before now must change). A set: a flag on each account."""
    if not actor.is_security_administrator:
        raise Refusal("forbidden", "only security administrators require password changes", 403)
    if everyone:
        await audit(ctx, actor, "password_change.require_all", "policy", POLICY_DOC)

        async def set_policy() -> None:
            policy = await ctx.stores.policies.get(POLICY_DOC)
            state = {"change_required_before": ctx.now(), "set_by": actor.account_id}
            if policy is None:
                await ctx.stores.policies.create(POLICY_DOC, state)
            else:
                await ctx.stores.policies.update(policy, state)

        await retrying(set_policy)
        sessions.forget_password_policy(ctx)
        return await ctx.stores.accounts.collection.count_documents({})
    changed = 0
    for account_id in dict.fromkeys(account_ids):
        if await ctx.stores.accounts.get(account_id) is None:
            continue
        await audit(ctx, actor, "password_change.require", "account", account_id)

        async def flag(account_id: str = account_id) -> None:
            doc = await ctx.stores.accounts.get(account_id)
            assert doc is not None
            await ctx.stores.accounts.update(doc, doc.state | {"must_change_password": True})

        await retrying(flag)
        changed += 1
    return changed


AUDIT_PAGE_MAX = 500


async def audit_trail(ctx: Identity, actor: Actor, *, organisation_id: str | None, target_id: str | None,
                      limit: int = AUDIT_PAGE_MAX, before: str | None = None) -> list[dict[str, Any]]:
    """The newest records first, at most ``limit``; ``before`` (a record's id) pages on to older ones."""
    if organisation_id is not None:
        await _organisation(ctx, actor, organisation_id)
        query: dict[str, Any] = {"organisation_id": organisation_id}
    elif actor.kind == rules.STAFF:
        query = {"target_id": target_id} if target_id else {}
    else:
        raise NOT_FOUND
    if before is not None:
        cursor = await ctx.stores.audit.collection.find_one(query | {"_id": before}, {"at": 1})
        if cursor is None:
            raise Refusal("validation_failed", "no such audit record here to page on from", 422, fields=[
                FieldProblem(("query", "before"), "not the id of an audit record of this trail", "audit_record_unknown")])
        # Records of the same instant are ordered by id, so a page never skips or repeats one.
        query = {"$and": [query, {"$or": [{"at": {"$lt": cursor["at"]}}, {"at": cursor["at"], "_id": {"$lt": before}}]}]}
    found = ctx.stores.audit.collection.find(query).sort([("at", -1), ("_id", -1)]).limit(min(limit, AUDIT_PAGE_MAX))
    keep = ("actor_id", "action", "target_type", "target_id", "organisation_id", "details", "at")
    return [{"audit_id": r["_id"], **{k: r.get(k) for k in keep}} for r in await found.to_list()]


def operator_here() -> Actor:
    """Whoever runs the command line, on this machine: staff accounts are made there, not over HTTP,
    so the audit names the operator's login and host."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        login = f"uid-{os.getuid()}"
    return Actor(f"operator:{login}@{socket.gethostname()}", "operator", ("command_line",), None)


async def create_staff_account(ctx: Identity, person: Person, roles: list[str], password: str,
                               actor: Actor | None = None) -> str:
    """Staff accounts are made by operators (``python -m services.identity staff-add``), active at once,
    and audited like every administrative act (by default, as the operator running this process)."""
    from services.identity.service_layer.registration import check_password

    unknown = set(roles) - set(rules.STAFF_ROLES)
    if unknown or not roles:
        raise Refusal("unknown_role", f"staff roles are {', '.join(rules.STAFF_ROLES)}", 422)
    check_password(ctx, password, person.first_name, person.last_name, person.email)
    staff_id = tokens.new_id("stf")
    await audit(ctx, actor or operator_here(), "staff.create", "account", staff_id, roles=list(roles))
    reg = Registration(person.first_name, person.last_name, person.email, password, person.locale, "", person.mobile)
    state = new_account_state(ctx, reg, await ctx.hasher.hash(password), kind=rules.STAFF, roles=roles) | {
        "status": rules.ACTIVE,
        "activated_at": ctx.now(),
    }
    await ctx.stores.accounts.create(staff_id, state)
    return staff_id
