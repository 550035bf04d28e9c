"""Organisations: user administrators manage their colleagues, the service desk manages administrators."""

from __future__ import annotations

import getpass
import socket
import uuid

import httpx
import pytest

from services.identity.service_layer.administration import Person, create_staff_account, operator_here
from services.identity.service_layer.context import Caller
from services.identity.service_layer.sessions import open_session
from shared.events import AccountUnlocked, ActivationLinkReissued, OrganisationUserInvited, PasswordChanged
from tests.integration.identity.conftest import OTHER_STRONG, STRONG, Harness, bearer, login, register_and_activate, unseal

pytestmark = pytest.mark.integration

WRONG = "Wrong-Guess-Number-1"


async def staff(identity: Harness, role: str) -> tuple[str, dict]:
    email = f"{role}.{uuid.uuid4().hex[:6]}@leaseline.example"
    staff_id = await create_staff_account(identity.runtime.identity, Person("Sam", "Staff", email, "en"), [role], STRONG)
    return staff_id, (await login(identity, {"email": email, "password": STRONG})).json()


async def accept_invitation(identity: Harness, email: str) -> dict:
    (invited,) = await identity.events(OrganisationUserInvited, email=email)
    token = unseal(identity, invited, "activation_token")
    without = await identity.http().post("/v1/activations", json={"token": token})
    assert without.status_code == 422, "an invited user chooses a password when activating"
    done = await identity.http().post("/v1/activations", json={"token": token, "password": STRONG})
    assert done.status_code == 200, done.text
    return {"email": email, "password": STRONG, "user_id": invited.user_id}


def colleague(first: str, role: str) -> dict:
    return {"first_name": first, "last_name": "Visser", "email": f"{first.lower()}.{uuid.uuid4().hex[:6]}@garage.nl",
            "locale": "nl-NL", "mobile": "+31612345678", "role": role}


async def session_for(identity: Harness, user_id: str) -> dict:
    """A signed-in session for an organisation user (the device flow itself is proven elsewhere)."""
    ctx = identity.runtime.identity
    return await open_session(ctx, Caller("t"), await ctx.stores.accounts.get(user_id), device_id=None,
                              amr=["pwd", "otp"])


async def lock(identity: Harness, email: str) -> None:
    """Five wrong passwords, from an address of their own (the module's tests share one service)."""
    http = identity.http(f"203.0.113.{uuid.uuid4().int % 200 + 1}")
    for _ in range(5):
        assert (await http.post("/v1/sessions", json={"email": email, "password": WRONG})).status_code == 401
    right = await http.post("/v1/sessions", json={"email": email, "password": STRONG})
    assert right.json()["error"]["code"] == "invalid_credentials", "locked: even the right password is refused"


async def password_accepted(identity: Harness, email: str) -> bool:
    answer = await identity.http().post("/v1/sessions", json={"email": email, "password": STRONG})
    return answer.status_code == 200 and answer.json()["status"] == "device_authorisation_required"


async def test_an_organisation_administrator_creates_disables_and_unblocks_colleagues(identity: Harness) -> None:
    desk_id, desk = await staff(identity, "service_desk")
    http = identity.http()
    admin_email = f"anna.{uuid.uuid4().hex[:6]}@garage.nl"
    created = await http.post("/v1/organisations", headers=bearer(desk), json={
        "name": "Garage West", "kind": "garage",
        "administrator": {"first_name": "Anna", "last_name": "Bakker", "email": admin_email, "locale": "nl-NL"},
    })
    assert created.status_code == 201, created.text
    org = created.json()["organisation_id"]
    admin = await accept_invitation(identity, admin_email)
    admin_login = (await login(identity, admin)).json()
    assert admin_login["status"] == "device_authorisation_required", "organisation users authorise devices"
    admin_tokens = await session_for(identity, admin["user_id"])

    bram = colleague("Bram", "adviser")
    invited = await http.post(f"/v1/organisations/{org}/users", headers=bearer(admin_tokens), json=bram)
    assert invited.status_code == 201, invited.text
    bram_id = invited.json()["user_id"]
    duplicate = await http.post(f"/v1/organisations/{org}/users", headers=bearer(admin_tokens),
                                json=colleague("Bram", "adviser") | {"email": admin_email})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "email_taken"
    users = (await http.get(f"/v1/organisations/{org}/users", headers=bearer(admin_tokens))).json()
    assert sorted(u["role"] for u in users) == ["administrator", "adviser"]
    await accept_invitation(identity, bram["email"])
    bram_tokens = await session_for(identity, bram_id)
    assert (await http.get("/v1/me", headers=bearer(bram_tokens))).status_code == 200

    # Disabling ends Bram's sessions and refuses his sign-in; enabling lets him sign in again.
    assert (await http.post(f"/v1/organisations/{org}/users/{bram_id}/disable", headers=bearer(admin_tokens))).status_code == 200
    assert (await http.get("/v1/me", headers=bearer(bram_tokens))).json()["error"]["code"] == "session_ended"
    refused = await login(identity, {"email": bram["email"], "password": STRONG})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "account_disabled"
    assert (await http.post(f"/v1/organisations/{org}/users/{bram_id}/enable", headers=bearer(admin_tokens))).status_code == 200
    assert await password_accepted(identity, bram["email"])
    assert (await http.get("/v1/me", headers=bearer(bram_tokens))).status_code == 401, "old sessions stay ended"

    # A locked colleague is unblocked by the administrator.
    await lock(identity, bram["email"])
    assert [u["locked"] for u in (await http.get(f"/v1/organisations/{org}/users", headers=bearer(admin_tokens))).json()
            if u["user_id"] == bram_id] == [True]
    assert (await http.post(f"/v1/organisations/{org}/users/{bram_id}/unblock", headers=bearer(admin_tokens))).status_code == 200
    await identity.events(AccountUnlocked, customer_id=bram_id, unlocked_by=admin["user_id"])
    assert await password_accepted(identity, bram["email"])

    # A locked administrator is not unblocked by themselves (a live session is not enough): the service desk is.
    await lock(identity, admin_email)
    self_unblock = await http.post(f"/v1/organisations/{org}/users/{admin['user_id']}/unblock", headers=bearer(admin_tokens))
    assert self_unblock.status_code == 403 and self_unblock.json()["error"]["code"] == "service_desk_only"
    assert not await password_accepted(identity, admin_email), "still locked"
    by_desk = await http.post(f"/v1/organisations/{org}/users/{admin['user_id']}/unblock", headers=bearer(desk))
    assert by_desk.status_code == 200
    await identity.events(AccountUnlocked, customer_id=admin["user_id"], unlocked_by=desk_id)
    assert await password_accepted(identity, admin_email)

    trail = (await http.get(f"/v1/organisations/{org}/audit", headers=bearer(admin_tokens))).json()
    assert [(a["actor_id"], a["action"]) for a in trail] == [  # newest first
        (desk_id, "account.unblock"), (admin["user_id"], "account.unblock"),
        (admin["user_id"], "user.enable"), (admin["user_id"], "user.disable"),
        (admin["user_id"], "user.create"),  # the refused duplicate: recorded before it was tried
        (admin["user_id"], "user.create"),
        (desk_id, "user.create"), (desk_id, "organisation.create"),
    ]
    pages, before = [], None
    while True:  # three at a time, each page going on from the last record of the one before
        page = (await http.get(f"/v1/organisations/{org}/audit", headers=bearer(admin_tokens),
                               params={"limit": 3} | ({"before": before} if before else {}))).json()
        if not page:
            break
        pages.append(page)
        before = page[-1]["audit_id"]
    assert [len(p) for p in pages] == [3, 3, 2] and [a for p in pages for a in p] == trail
    foreign = await http.get(f"/v1/organisations/{org}/audit", headers=bearer(admin_tokens), params={"before": "aud_x"})
    assert foreign.status_code == 422 and foreign.json()["error"]["fields"][0]["loc"] == ["query", "before"]


async def test_a_disabled_invitee_cannot_activate_with_the_link_sent_before(identity: Harness) -> None:
    _, desk = await staff(identity, "service_desk")
    http = identity.http()
    admin_email = f"joost.{uuid.uuid4().hex[:6]}@garage.nl"
    org = (await http.post("/v1/organisations", headers=bearer(desk), json={
        "name": "Garage Oost", "kind": "garage",
        "administrator": {"first_name": "Joost", "last_name": "Smit", "email": admin_email, "locale": "nl-NL"},
    })).json()["organisation_id"]
    admin = await accept_invitation(identity, admin_email)
    admin_tokens = await session_for(identity, admin["user_id"])
    sanne = colleague("Sanne", "salesperson")
    sanne_id = (await http.post(f"/v1/organisations/{org}/users", headers=bearer(admin_tokens), json=sanne)).json()["user_id"]
    (invited,) = await identity.events(OrganisationUserInvited, email=sanne["email"])
    link = unseal(identity, invited, "activation_token")

    assert (await http.post(f"/v1/organisations/{org}/users/{sanne_id}/disable", headers=bearer(admin_tokens))).status_code == 200
    disabled = await http.post("/v1/activations", json={"token": link, "password": STRONG})
    assert disabled.status_code in (400, 403), disabled.text
    assert (await identity.account(sanne["email"]))["activation"] is None, "the link itself was revoked"

    assert (await http.post(f"/v1/organisations/{org}/users/{sanne_id}/enable", headers=bearer(admin_tokens))).status_code == 200
    revived = await http.post("/v1/activations", json={"token": link, "password": STRONG})
    assert revived.status_code == 400 and revived.json()["error"]["code"] == "activation_invalid", \
        "re-enabling does not bring the old link back"
    assert (await identity.account(sanne["email"]))["status"] == "pending_activation"
    assert (await http.post("/v1/activations/resend", json={"email": sanne["email"]})).status_code == 202
    (reissued,) = await identity.events(ActivationLinkReissued, customer_id=sanne_id)
    fresh = await http.post("/v1/activations", json={"token": unseal(identity, reissued, "activation_token"),
                                                     "password": STRONG})
    assert fresh.status_code == 200, fresh.text


async def test_nobody_reaches_into_another_organisation_or_acts_above_their_role(identity: Harness) -> None:
    _, desk = await staff(identity, "service_desk")
    http = identity.http()
    orgs = []
    for name in ("Garage Noord", "Garage Zuid"):
        email = f"admin.{uuid.uuid4().hex[:6]}@garage.nl"
        created = (await http.post("/v1/organisations", headers=bearer(desk), json={
            "name": name, "kind": "garage",
            "administrator": {"first_name": "Admin", "last_name": "Beheer", "email": email, "locale": "nl-NL"}})).json()
        admin = await accept_invitation(identity, email)
        from services.identity.service_layer.context import Caller
        from services.identity.service_layer.sessions import open_session

        ctx = identity.runtime.identity
        tokens = await open_session(ctx, Caller("t"), await ctx.stores.accounts.get(admin["user_id"]), device_id=None,
                                    amr=["pwd", "otp"])
        orgs.append((created["organisation_id"], admin, tokens))
    (north, north_admin, north_tokens), (south, south_admin, _) = orgs

    for method, path in [
        ("GET", f"/v1/organisations/{south}/users"),
        ("POST", f"/v1/organisations/{south}/users/{south_admin['user_id']}/disable"),
        ("POST", f"/v1/organisations/{south}/users/{south_admin['user_id']}/unblock"),
        ("GET", f"/v1/organisations/{south}/audit"),
        ("POST", f"/v1/organisations/{north}/users/{south_admin['user_id']}/disable"),
    ]:
        answer = await http.request(method, path, headers=bearer(north_tokens))
        assert answer.status_code == 404, (path, answer.text)
    invite = await http.post(f"/v1/organisations/{south}/users", headers=bearer(north_tokens), json=colleague("Eva", "garage"))
    assert invite.status_code == 404
    customer = await register_and_activate(identity, "Carla Customer")
    customer_tokens = (await login(identity, customer)).json()
    for path in (f"/v1/organisations/{north}/users", "/v1/staff/audit"):
        assert (await http.get(path, headers=bearer(customer_tokens))).status_code in (403, 404)
    assert (await http.post(f"/v1/staff/accounts/{customer['customer_id']}/unblock",
                            headers=bearer(north_tokens))).status_code == 403
    assert (await http.post("/v1/organisations", headers=bearer(north_tokens), json={
        "name": "Rogue", "kind": "garage",
        "administrator": {"first_name": "R", "last_name": "R", "email": "r@r.example", "locale": "en"}})).status_code == 403
    assert (await http.post("/v1/staff/password-change-requirements", headers=bearer(desk),
                            json={"everyone": True})).status_code == 403, "the service desk is not a security admin"


def assert_refresh_refused_until_changed(refreshed: httpx.Response) -> None:
    """A session cannot be carried on by refresh while its account must choose a new password."""
    error = refreshed.json()["error"]
    assert refreshed.status_code == 401 and error["code"] == "session_ended", refreshed.text
    assert error["details"] == {"reason": "password_change_required"} and "sign in again" in error["message"]


async def test_a_security_administrator_requires_everyone_to_change_password_at_next_sign_in(identity: Harness) -> None:
    _, security = await staff(identity, "security_administrator")
    who = await register_and_activate(identity, "Denise Petit")
    http = identity.http()
    before = await login(identity, who)
    assert before.status_code == 200

    required = await http.post("/v1/staff/password-change-requirements", headers=bearer(security), json={"everyone": True})
    assert required.status_code == 200 and required.json()["accounts"] >= 2

    assert_refresh_refused_until_changed(
        await http.post("/v1/sessions/refresh", json={"refresh_token": before.json()["refresh_token"]}))
    refused = await login(identity, who)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "password_change_required"
    ticket = refused.json()["error"]["details"]["change_ticket"]
    same = await http.post("/v1/password-changes/forced", json={"change_ticket": ticket, "new_password": STRONG})
    assert same.status_code == 422 and same.json()["error"]["code"] == "password_unchanged"
    assert [f["loc"] for f in same.json()["error"]["fields"]] == [["body", "new_password"]]
    changed = await http.post("/v1/password-changes/forced", json={"change_ticket": ticket, "new_password": OTHER_STRONG})
    assert changed.status_code == 200, changed.text
    assert (await login(identity, who | {"password": OTHER_STRONG})).status_code == 200
    (event,) = await identity.events(PasswordChanged, customer_id=who["customer_id"], reason="forced_change")
    assert event.email == who["email"]
    replay = await http.post("/v1/password-changes/forced", json={"change_ticket": ticket, "new_password": "Third-Pass-Word-55"})
    assert replay.json()["error"]["code"] == "change_ticket_invalid"


async def test_an_organisation_user_required_to_change_the_password_authorises_the_device_first(
    identity: Harness,
) -> None:
    _, desk = await staff(identity, "service_desk")
    _, security = await staff(identity, "security_administrator")
    http = identity.http()
    admin_email = f"greet.{uuid.uuid4().hex[:6]}@dealer.nl"
    created = await http.post("/v1/organisations", headers=bearer(desk), json={
        "name": "Dealer Oost", "kind": "dealership",
        "administrator": {"first_name": "Greet", "last_name": "Smit", "email": admin_email, "locale": "nl-NL"},
    })
    admin = await accept_invitation(identity, admin_email)
    assert (await http.post("/v1/staff/password-change-requirements", headers=bearer(security),
                            json={"account_ids": [admin["user_id"]]})).json()["accounts"] == 1
    assert created.status_code == 201

    asked = await login(identity, admin)
    assert asked.status_code == 200 and asked.json()["status"] == "device_authorisation_required", asked.text
    assert (await identity.account(admin_email))["change_ticket"] is None, "no ticket on the password alone"


async def test_a_security_administrator_requires_chosen_accounts_only_to_change_password(identity: Harness) -> None:
    _, security = await staff(identity, "security_administrator")
    chosen = await register_and_activate(identity, "Emile Roussel")
    spared = await register_and_activate(identity, "Fanny Caron")
    http = identity.http()
    sessions = {"chosen": (await login(identity, chosen)).json(), "spared": (await login(identity, spared)).json()}

    required = await http.post("/v1/staff/password-change-requirements", headers=bearer(security),
                               json={"account_ids": [chosen["customer_id"], chosen["customer_id"], "cus_nobody"]})
    assert required.status_code == 200 and required.json()["accounts"] == 1, "unknown and repeated ids do not count"
    refresh = {who: await http.post("/v1/sessions/refresh", json={"refresh_token": tokens["refresh_token"]})
               for who, tokens in sessions.items()}
    assert_refresh_refused_until_changed(refresh["chosen"])
    assert refresh["spared"].status_code == 200, refresh["spared"].text

    refused = await login(identity, chosen)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "password_change_required"
    assert (await login(identity, spared)).status_code == 200, "an account not chosen signs in as before"
    ticket = refused.json()["error"]["details"]["change_ticket"]
    changed = await http.post("/v1/password-changes/forced", json={"change_ticket": ticket, "new_password": OTHER_STRONG})
    assert changed.status_code == 200, changed.text
    assert (await login(identity, chosen | {"password": OTHER_STRONG})).status_code == 200, "asked once only"
    await identity.events(PasswordChanged, customer_id=chosen["customer_id"], reason="forced_change")
    assert (await login(identity, chosen)).status_code == 401, "the old password is gone"


async def test_names_of_whitespace_alone_are_refused_field_by_field_when_inviting(identity: Harness) -> None:
    _, desk = await staff(identity, "service_desk")
    http = identity.http()
    admin = {"first_name": "Kees", "last_name": "   ", "email": f"kees.{uuid.uuid4().hex[:6]}@garage.nl", "locale": "nl-NL"}
    refused = await http.post("/v1/organisations", headers=bearer(desk),
                              json={"name": "Garage Midden", "kind": "garage", "administrator": admin})
    assert refused.status_code == 422, refused.text
    assert [f["loc"] for f in refused.json()["error"]["fields"]] == [["body", "administrator", "last_name"]]
    assert await identity.runtime.db["accounts"].find_one({"email": admin["email"]}) is None

    created = await http.post("/v1/organisations", headers=bearer(desk), json={
        "name": "Garage Midden", "kind": "garage", "administrator": admin | {"last_name": "de Vries"}})
    org = created.json()["organisation_id"]
    blank = await http.post(f"/v1/organisations/{org}/users", headers=bearer(desk),
                            json=colleague("Lieke", "adviser") | {"first_name": "\t \u00a0"})
    assert blank.status_code == 422, blank.text
    assert blank.json()["error"]["fields"] == [{"loc": ["body", "first_name"], "msg": "must not be blank",
                                                "code": "value_error"}]


async def test_a_staff_account_made_on_the_command_line_is_audited_with_the_operator_and_host(identity: Harness) -> None:
    staff_id, desk = await staff(identity, "service_desk")
    operator = operator_here()
    assert operator.account_id == f"operator:{getpass.getuser()}@{socket.gethostname()}"
    trail = (await identity.http().get("/v1/staff/audit", params={"target_id": staff_id}, headers=bearer(desk))).json()
    assert [(a["actor_id"], a["action"], a["details"]) for a in trail] == [
        (operator.account_id, "staff.create", {"roles": ["service_desk"]})]
    assert trail[0]["target_type"] == "account" and trail[0]["organisation_id"] is None
