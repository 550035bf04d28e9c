"""Changing, resetting and being required to change a password."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from shared.events import AccountLocked, DeviceCodeIssued, PasswordChanged, PasswordResetRequested
from tests.conftest import Infrastructure
from tests.integration.identity.conftest import (
    OTHER_STRONG,
    STRONG,
    Harness,
    bearer,
    login,
    register_and_activate,
    start_harness,
    stop_harness,
    unseal,
)
from tests.integration.identity.test_contracts_and_devices import authorise_by_email, linked
from tests.integration.identity.test_organisations import staff

pytestmark = pytest.mark.integration


async def test_changing_the_password_needs_the_current_one_and_ends_the_other_sessions(identity: Harness) -> None:
    who = await register_and_activate(identity, "Nadia Simon")
    http = identity.http()
    here = (await login(identity, who)).json()
    elsewhere = (await login(identity, who)).json()

    wrong = await http.put("/v1/me/password", headers=bearer(here),
                           json={"current_password": "Not-The-Password-9", "new_password": OTHER_STRONG})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "current_password_wrong"
    weak = await http.put("/v1/me/password", headers=bearer(here),
                          json={"current_password": STRONG, "new_password": "aaaaaaaaaaaa"})
    assert weak.status_code == 422 and weak.json()["error"]["fields"][0]["loc"] == ["body", "new_password"]

    changed = await http.put("/v1/me/password", headers=bearer(here),
                             json={"current_password": STRONG, "new_password": OTHER_STRONG})
    assert changed.status_code == 200
    assert (await http.get("/v1/me", headers=bearer(changed.json()))).status_code == 200
    assert (await http.get("/v1/me", headers=bearer(elsewhere))).status_code == 401
    assert (await login(identity, who)).status_code == 401
    assert (await login(identity, who | {"password": OTHER_STRONG})).status_code == 200
    (event,) = await identity.events(PasswordChanged, customer_id=who["customer_id"])
    assert event.reason == "changed"


async def test_a_session_cannot_keep_guessing_the_current_password_past_the_lock(identity: Harness) -> None:
    who = await register_and_activate(identity, "Maelle Dupuis")
    http = identity.http("198.51.100.42")
    stolen = bearer((await login(identity, who, http)).json())
    hash_before = (await identity.account(who["email"]))["password_hash"]

    async def change(current: str) -> httpx.Response:
        return await http.put("/v1/me/password", headers=stolen,
                              json={"current_password": current, "new_password": OTHER_STRONG})

    for _ in range(5):
        wrong = await change("Not-The-Password-9")
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "current_password_wrong"
    (locked,) = await identity.events(AccountLocked, customer_id=who["customer_id"])
    assert locked.failed_attempts == 5

    right = await change(STRONG)
    assert right.status_code == 403 and right.json()["error"]["code"] == "account_locked", right.text
    assert right.json()["error"]["details"]["locked_until"], "a timed lock: the caller is told until when"
    assert (await identity.account(who["email"]))["password_hash"] == hash_before, "the password is unchanged"
    assert (await login(identity, who | {"password": OTHER_STRONG}, http)).status_code == 401


async def test_the_session_a_password_is_changed_from_stays_on_its_authorised_device(identity: Harness) -> None:
    who, _ = await linked(identity, "Laure Chevalier")
    http = identity.http()
    authorised = await authorise_by_email(identity, who, http, remember=False)
    sessions = identity.runtime.db["sessions"]
    before = await sessions.find_one({"_id": authorised["session_id"]})
    assert before["device_id"] and before["amr"] == ["pwd", "otp"]

    changed = await http.put("/v1/me/password", headers=bearer(authorised),
                             json={"current_password": STRONG, "new_password": OTHER_STRONG})
    assert changed.status_code == 200, changed.text
    after = await sessions.find_one({"_id": changed.json()["session_id"]})
    assert (after["device_id"], after["amr"]) == (before["device_id"], ["pwd", "otp"])
    (listed,) = (await http.get("/v1/me/sessions", headers=bearer(changed.json()))).json()
    assert listed["device_id"] == before["device_id"] and listed["current"]
    needs_a_proven_device = await http.post("/v1/me/client-certificates", headers=bearer(changed.json()),
                                            json={"certificate_pem": "not a certificate"})
    assert needs_a_proven_device.json()["error"]["code"] == "validation_failed", "the device is still authorised"


async def test_a_forgotten_password_is_reset_once_with_the_latest_link_within_the_hour(identity: Harness) -> None:
    who = await register_and_activate(identity, "Olivier Bonnet")
    http = identity.http()
    session = (await login(identity, who)).json()

    first = await http.post("/v1/password-resets", json={"email": who["email"]})
    unknown = await http.post("/v1/password-resets", json={"email": "olivier.nobody@example.fr"})
    assert first.status_code == unknown.status_code == 202 and first.json() == unknown.json()
    (older,) = await identity.events(PasswordResetRequested, customer_id=who["customer_id"])
    await http.post("/v1/password-resets", json={"email": who["email"]})
    requests = await identity.events(PasswordResetRequested, expected=2, customer_id=who["customer_id"])
    latest = next(r for r in requests if r.reset_token != older.reset_token)
    assert latest.reset_expires_at - older.reset_expires_at < timedelta(minutes=5)

    superseded = await http.post("/v1/password-resets/confirm",
                                 json={"token": unseal(identity, older, "reset_token"), "new_password": OTHER_STRONG})
    assert superseded.json()["error"]["code"] == "reset_superseded"
    assert timedelta(minutes=59) < latest.reset_expires_at - identity.clock.now() <= timedelta(hours=1)
    identity.clock.advance(timedelta(minutes=61))
    try:
        late = await http.post("/v1/password-resets/confirm",
                               json={"token": unseal(identity, latest, "reset_token"), "new_password": OTHER_STRONG})
    finally:
        identity.clock.advance(-timedelta(minutes=61))
    assert late.json()["error"]["code"] == "reset_expired"

    identity.clock.advance(timedelta(minutes=59))
    try:
        done = await http.post("/v1/password-resets/confirm",
                               json={"token": unseal(identity, latest, "reset_token"), "new_password": OTHER_STRONG})
    finally:
        identity.clock.advance(-timedelta(minutes=59))
    assert done.status_code == 200, f"59 minutes after it was sent the link still works: {done.text}"
    replay = await http.post("/v1/password-resets/confirm",
                             json={"token": unseal(identity, latest, "reset_token"), "new_password": STRONG + "x"})
    assert replay.json()["error"]["code"] == "reset_already_used"
    assert (await http.get("/v1/me", headers=bearer(session))).status_code == 401, "a reset ends every session"
    assert (await login(identity, who | {"password": OTHER_STRONG})).status_code == 200
    (changed,) = await identity.events(PasswordChanged, customer_id=who["customer_id"], reason="reset")
    assert changed.email == who["email"]


async def test_after_a_compromise_report_the_password_alone_opens_nothing_until_the_emailed_reset(
    identity: Harness,
) -> None:
    unlinked = await register_and_activate(identity, "Quentin Morel")
    linked_customer, _ = await linked(identity, "Romane Gilbert")
    http = identity.http()
    for who in (unlinked, linked_customer):
        signed_in = (await login(identity, who)).json()
        if signed_in["status"] != "authenticated":
            signed_in = await authorise_by_email(identity, who, http, remember=False)
        assert (await http.post("/v1/me/compromise-reports", headers=bearer(signed_in))).status_code == 200

        refused = await login(identity, who)
        error = refused.json()["error"]
        assert refused.status_code == 403 and error["code"] == "password_reset_required", refused.text
        assert "POST /v1/password-resets" in error["message"], "the refusal says what to do"
        assert "change_ticket" not in error["details"], "whoever knows the password gets no way to change it"
        assert (await identity.account(who["email"]))["change_ticket"] is None

        await http.post("/v1/password-resets", json={"email": who["email"]})
        (link,) = await identity.events(PasswordResetRequested, customer_id=who["customer_id"])
        done = await http.post("/v1/password-resets/confirm",
                               json={"token": unseal(identity, link, "reset_token"), "new_password": OTHER_STRONG})
        assert done.status_code == 200, done.text
        after = (await login(identity, who | {"password": OTHER_STRONG})).json()
        assert after["status"] in ("authenticated", "device_authorisation_required"), after
    assert (await login(identity, unlinked | {"password": OTHER_STRONG})).json()["status"] == "authenticated"


async def test_a_linked_customer_required_to_change_the_password_proves_the_device_before_getting_a_ticket(
    identity: Harness,
) -> None:
    _, security = await staff(identity, "security_administrator")
    who, _ = await linked(identity, "Sacha Lefevre")
    http = identity.http()
    require = {"account_ids": [who["customer_id"]]}
    assert (await http.post("/v1/staff/password-change-requirements", headers=bearer(security), json=require)).status_code == 200

    asked = (await login(identity, who)).json()
    assert asked["status"] == "device_authorisation_required" and "change_ticket" not in str(asked), asked
    assert (await identity.account(who["email"]))["change_ticket"] is None, "no ticket on the password alone"
    assert (await http.post("/v1/device-challenges/code",
                            json={"challenge": asked["challenge"], "channel": "email"})).status_code == 202
    (issued,) = await identity.events(DeviceCodeIssued, customer_id=who["customer_id"])
    proven = await http.post("/v1/device-challenges/verify", json={
        "challenge": asked["challenge"], "code": unseal(identity, issued, "code"), "remember": True})
    error = proven.json()["error"]
    assert proven.status_code == 403 and error["code"] == "password_change_required", proven.text
    changed = await http.post("/v1/password-changes/forced",
                              json={"change_ticket": error["details"]["change_ticket"], "new_password": OTHER_STRONG})
    assert changed.status_code == 200, changed.text
    device_token = error["details"]["device_token"]
    again = (await login(identity, who | {"password": OTHER_STRONG}, device_token=device_token)).json()
    assert again["status"] == "authenticated", "the device proven for the change is remembered"

    assert (await http.post("/v1/staff/password-change-requirements", headers=bearer(security), json=require)).status_code == 200
    remembered = await login(identity, who | {"password": OTHER_STRONG}, device_token=device_token)
    assert remembered.json()["error"]["code"] == "password_change_required", "a remembered device proves it too"
    assert remembered.json()["error"]["details"]["change_ticket"]


async def test_the_stored_password_is_an_argon2id_hash_with_the_owasp_parameters(identity: Harness) -> None:
    who = await register_and_activate(identity, "Quentin Marchal")
    stored = (await identity.account(who["email"]))["password_hash"]
    variant, version, parameters, salt, digest = stored.split("$")[1:]
    assert (variant, version, parameters) == ("argon2id", "v=19", "m=19456,t=2,p=1"), stored
    assert len(salt) >= 22 and len(digest) >= 43, "at least 16 bytes of salt and 32 of hash (base64)"
    assert STRONG not in stored
    other = await register_and_activate(identity, "Rachel Marchal")
    assert (await identity.account(other["email"]))["password_hash"] != stored, "the same password, its own salt"


async def test_a_hash_of_another_configuration_is_replaced_at_the_next_sign_in(infra: Infrastructure) -> None:
    before = await start_harness(infra)
    try:
        who = await register_and_activate(before, "Sacha Marchal")
        assert "$m=19456,t=2,p=1$" in (await before.account(who["email"]))["password_hash"]
    finally:
        await stop_harness(before, keep_data=True)
    # The operator moves to another of OWASP's equivalent configurations; the stored hash still verifies.
    after = await start_harness(infra, mongodb_database=before.settings.mongodb_database,
                                topic_namespace=before.settings.topic_namespace,
                                event_secret_keys=before.settings.event_secret_keys,
                                argon2_memory_kib=7168, argon2_time_cost=5)
    try:
        assert (await login(after, who)).status_code == 200
        upgraded = (await after.account(who["email"]))["password_hash"]
        assert "$m=7168,t=5,p=1$" in upgraded
        assert (await login(after, who)).status_code == 200, "the new hash is of the same password"
        assert (await after.account(who["email"]))["password_hash"] == upgraded, "hashed again only once"
    finally:
        await stop_harness(after)
