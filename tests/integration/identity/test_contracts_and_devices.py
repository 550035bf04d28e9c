"""Linking a contract, authorising devices, Belgian-style registration, and access ending after contracts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.identity.entrypoints.http_api import SENT_IF_KNOWN
from services.identity.service_layer.contracts import end_expired_access
from shared.events import (
    CustomerAccessRestored,
    ContractClosed,
    ContractLinkRejected,
    ContractLinkRequested,
    ContractLinkVerified,
    ContractOpened,
    CustomerAccessEnded,
    CustomerActivated,
    CustomerAlreadyRegistered,
    CustomerRegistered,
    DeviceAuthorised,
    DeviceCodeIssued,
    RegistrationCodeIssued,
)
from tests.integration.helpers import eventually
from tests.integration.identity.conftest import STRONG, Harness, bearer, login, person, register_and_activate, unseal

pytestmark = pytest.mark.integration


def contract_opened(customer_number: str, contract_number: str, **extra: object) -> ContractOpened:
    return ContractOpened(
        contract_number=contract_number, customer_number=customer_number, holder_first_name="Jeanne",
        holder_last_name="Martin", product="lease", market="BE", currency="EUR", start_date=date(2024, 1, 15),
        end_date=date(2028, 1, 14), vin="WBA8E9G50GNT12345", vehicle_model="BMW 320d", **extra,
    )


async def linked(identity: Harness, name: str, **extra: object) -> tuple[dict, str]:
    """A customer whose vehicle details contracts verified; returns them and their customer number."""
    who = await register_and_activate(identity, name, **extra)
    http = identity.http()
    tokens = (await login(identity, who)).json()
    asked = await http.post("/v1/me/contract-links", headers=bearer(tokens), json={
        "method": "vehicle", "first_name": who["first_name"], "last_name": who["last_name"],
        "vin": "wba8e9g50gnt12345", "last_payment_amount": "389.90",
    })
    assert asked.status_code == 202, asked.text
    (request,) = await identity.events(ContractLinkRequested, customer_id=who["customer_id"])
    assert request.vin == "WBA8E9G50GNT12345" and request.last_payment_amount == Decimal("389.90")
    customer_number = f"BE-{uuid.uuid4().hex[:6]}"
    await identity.publish(ContractLinkVerified(customer_id=who["customer_id"], customer_number=customer_number,
                                                contract_numbers=[f"{customer_number}-L1"]))

    await eventually(lambda: link_status_is(identity, who, "verified"), 20, "the link verified")
    return who, customer_number


async def link_status_is(identity: Harness, who: dict, status: str) -> bool:
    return (await identity.account(who["email"]))["link"]["status"] == status


async def test_a_vin_with_i_o_or_q_is_refused_with_a_hint(identity: Harness) -> None:
    who = await register_and_activate(identity, "Xavier Morel")
    tokens = (await login(identity, who)).json()
    answer = await identity.http().post("/v1/me/contract-links", headers=bearer(tokens), json={
        "method": "vehicle", "first_name": "Xavier", "last_name": "Morel", "vin": "WBA8E9G50GNTI2345",
        "last_payment_amount": "389.90",
    })
    assert answer.status_code == 422
    (field,) = answer.json()["error"]["fields"]
    assert field["loc"] == ["body", "vehicle", "vin"] and "I, O or Q" in field["msg"]


async def test_a_rejected_link_is_shown_with_its_reason(identity: Harness) -> None:
    who = await register_and_activate(identity, "Yasmine Roche")
    http = identity.http()
    tokens = (await login(identity, who)).json()
    await http.post("/v1/me/contract-links", headers=bearer(tokens), json={"method": "customer_number",
                                                                           "customer_number": "BE-999999"})
    await identity.publish(ContractLinkRejected(customer_id=who["customer_id"], reason="no_match"))

    async def rejected() -> dict | None:
        link = (await http.get("/v1/me", headers=bearer(tokens))).json()["link"]
        return link if link["status"] == "rejected" else None

    assert (await eventually(rejected, 20, "the rejection"))["reason"] == "no_match"


async def test_a_verdict_for_an_account_unknown_here_is_dropped_and_logged_for_an_operator(
    identity: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.identity.service_layer.contracts")
    verdicts = [
        await identity.publish(ContractLinkVerified(customer_id="cus_unknown_here", customer_number="BE-404404",
                                                    contract_numbers=["BE-404404-L1"])),
        await identity.publish(ContractLinkRejected(customer_id="cus_unknown_either", reason="no_match")),
    ]

    def warned() -> set[str]:
        return {getattr(r, "event_id", None) for r in caplog.records if r.levelno == logging.WARNING}

    await eventually(lambda: {v.id for v in verdicts} <= warned(), 20, "a warning naming each verdict's event id")
    assert await identity.runtime.db["accounts"].count_documents({"_id": {"$in": ["cus_unknown_here",
                                                                                  "cus_unknown_either"]}}) == 0


async def test_sessions_opened_before_the_link_end_so_that_the_next_sign_in_authorises_the_device(
    identity: Harness,
) -> None:
    who = await register_and_activate(identity, "Gilles Perrot")
    http = identity.http()
    before = (await login(identity, who)).json()
    assert before["status"] == "authenticated", "not linked yet: no device authorisation"
    customer_number = f"BE-{uuid.uuid4().hex[:6]}"
    verdict = ContractLinkVerified(customer_id=who["customer_id"], customer_number=customer_number,
                                   contract_numbers=[f"{customer_number}-L1"])
    await identity.publish(verdict)
    await eventually(lambda: link_status_is(identity, who, "verified"), 20, "the link verified")

    refreshed = await http.post("/v1/sessions/refresh", json={"refresh_token": before["refresh_token"]})
    assert refreshed.status_code == 401 and refreshed.json()["error"]["code"] == "session_ended"
    assert (await http.get("/v1/me", headers=bearer(before))).json()["error"]["code"] == "session_ended"
    challenge = (await login(identity, who)).json()
    assert challenge["status"] == "device_authorisation_required"

    await http.post("/v1/device-challenges/code", json={"challenge": challenge["challenge"], "channel": "email"})
    (issued,) = await identity.events(DeviceCodeIssued, customer_id=who["customer_id"])
    after = (await http.post("/v1/device-challenges/verify", json={
        "challenge": challenge["challenge"], "code": unseal(identity, issued, "code")})).json()
    more = verdict.model_copy(update={"contract_numbers": [f"{customer_number}-L2"]})
    await identity.publish(more)

    async def both_contracts_known() -> bool:
        return len((await identity.account(who["email"]))["contract_numbers"]) == 2

    await eventually(both_contracts_known, 20, "the second verdict applied")
    assert (await http.get("/v1/me", headers=bearer(after))).status_code == 200, \
        "a verdict for a login already linked ends no session opened on an authorised device"
    listed = (await http.get("/v1/me/sessions", headers=bearer(after))).json()
    assert [s["session_id"] for s in listed] == [after["session_id"]]


async def test_after_linking_a_new_device_is_authorised_by_code_and_remembered(identity: Harness) -> None:
    who, _ = await linked(identity, "Zoe Mercier", mobile="+33612345678")
    http = identity.http()

    challenge = (await login(identity, who)).json()
    assert challenge["status"] == "device_authorisation_required" and "access_token" not in challenge
    assert challenge["channels"] == ["email", "sms"]
    sent = await http.post("/v1/device-challenges/code", json={"challenge": challenge["challenge"], "channel": "sms"})
    assert sent.status_code == 202, sent.text
    (issued,) = await identity.events(DeviceCodeIssued, customer_id=who["customer_id"])
    assert issued.channel == "sms" and issued.mobile == "+33612345678"
    code = unseal(identity, issued, "code")
    assert len(code) == 6 and code.isdigit()

    wrong = "000000" if code != "000000" else "111111"
    miss = await http.post("/v1/device-challenges/verify", json={"challenge": challenge["challenge"], "code": wrong})
    assert miss.json()["error"] == miss.json()["error"] | {"code": "code_wrong", "details": {"tries_left": 4}}
    done = await http.post("/v1/device-challenges/verify", json={
        "challenge": challenge["challenge"], "code": code, "remember": True, "device_label": "Zoe's laptop"})
    assert done.status_code == 200, done.text
    tokens = done.json()
    assert tokens["device_token"]
    (authorised,) = await identity.events(DeviceAuthorised, customer_id=who["customer_id"])
    assert authorised.remembered and authorised.device_label == "Zoe's laptop"
    replay = await http.post("/v1/device-challenges/verify", json={"challenge": challenge["challenge"], "code": code})
    assert replay.json()["error"]["code"] == "challenge_closed"

    again = (await login(identity, who, device_token=tokens["device_token"])).json()
    assert again["status"] == "authenticated", "a remembered device goes straight in"
    try:
        identity.clock.advance(timedelta(days=179))
        assert (await login(identity, who, device_token=tokens["device_token"])).json()["status"] == "authenticated"
        identity.clock.advance(timedelta(days=179))
        used = (await login(identity, who, device_token=tokens["device_token"])).json()
        assert used["status"] == "authenticated", "358 days after authorisation, but used 179 days ago: remembered"
        identity.clock.advance(timedelta(days=181))
        stale = (await login(identity, who, device_token=tokens["device_token"])).json()
        assert stale["status"] == "device_authorisation_required", "181 days without use: authorise again"
    finally:
        identity.clock.advance(-timedelta(days=179 + 179 + 181))

    devices = (await http.get("/v1/me/devices", headers=bearer(again))).json()
    assert [d["label"] for d in devices] == ["Zoe's laptop"]
    forgot = await http.delete(f"/v1/me/devices/{devices[0]['device_id']}", headers=bearer(again))
    assert forgot.status_code == 204
    assert (await login(identity, who, device_token=tokens["device_token"])).json()["status"] != "authenticated"


async def test_five_wrong_codes_kill_the_code_and_sending_is_limited(identity: Harness) -> None:
    who, _ = await linked(identity, "Adele Perrin")
    http = identity.http()
    challenge = (await login(identity, who)).json()["challenge"]
    assert (await http.post("/v1/device-challenges/code", json={"challenge": challenge, "channel": "sms"})).json()[
        "error"]["code"] == "channel_unavailable", "no mobile on file"
    await http.post("/v1/device-challenges/code", json={"challenge": challenge, "channel": "email"})
    (issued,) = await identity.events(DeviceCodeIssued, customer_id=who["customer_id"])
    code = unseal(identity, issued, "code")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    codes = [
        (await http.post("/v1/device-challenges/verify", json={"challenge": challenge, "code": wrong})).json()["error"]["code"]
        for _ in range(5)
    ]
    assert codes == ["code_wrong"] * 4 + ["code_dead"]
    late = await http.post("/v1/device-challenges/verify", json={"challenge": challenge, "code": code})
    assert late.json()["error"]["code"] == "challenge_closed", "the right code no longer helps"

    fresh = (await login(identity, who)).json()["challenge"]
    for _ in range(3):
        assert (await http.post("/v1/device-challenges/code", json={"challenge": fresh, "channel": "email"})).status_code == 202
    fourth = await http.post("/v1/device-challenges/code", json={"challenge": fresh, "channel": "email"})
    assert fourth.status_code == 429 and fourth.json()["error"]["code"] == "too_many_codes"


async def test_codes_sent_again_within_one_challenge_give_five_wrong_tries_in_all(identity: Harness) -> None:
    who, _ = await linked(identity, "Agathe Renard")
    http = identity.http()
    challenge = (await login(identity, who)).json()["challenge"]
    answers = []
    for sends in (1, 2, 3):  # the most one challenge may be sent
        assert (await http.post("/v1/device-challenges/code", json={"challenge": challenge, "channel": "email"})).status_code == 202
        latest = max(await identity.events(DeviceCodeIssued, expected=sends, customer_id=who["customer_id"]),
                     key=lambda e: e.code_expires_at)
        code = unseal(identity, latest, "code")
        for _ in range(2 if sends < 3 else 1):
            miss = await http.post("/v1/device-challenges/verify",
                                   json={"challenge": challenge, "code": f"{(int(code) + 1) % 10**6:06d}"})
            answers.append((miss.json()["error"]["code"], miss.json()["error"]["details"].get("tries_left")))
    assert answers == [("code_wrong", 4), ("code_wrong", 3), ("code_wrong", 2), ("code_wrong", 1), ("code_dead", None)]
    right = await http.post("/v1/device-challenges/verify", json={"challenge": challenge, "code": code})
    assert right.json()["error"]["code"] == "challenge_closed", "the fifth wrong try ended the challenge"
    another = await http.post("/v1/device-challenges/code", json={"challenge": challenge, "channel": "email"})
    assert another.json()["error"]["code"] == "challenge_closed"


async def test_a_device_code_works_until_ten_minutes_and_not_a_moment_later(identity: Harness) -> None:
    who, _ = await linked(identity, "Benoit Carre")
    http = identity.http()
    challenge = (await login(identity, who)).json()["challenge"]
    await http.post("/v1/device-challenges/code", json={"challenge": challenge, "channel": "email"})
    (issued,) = await identity.events(DeviceCodeIssued, customer_id=who["customer_id"])
    assert timedelta(minutes=9, seconds=50) < issued.code_expires_at - identity.clock.now() <= timedelta(minutes=10)
    verify = {"challenge": challenge, "code": unseal(identity, issued, "code")}

    async def verify_at(moment: timedelta) -> dict:
        """Verify when the clock reads ``code_expires_at + moment`` (set just before the call)."""
        saved = identity.clock.offset
        identity.clock.offset = issued.code_expires_at + moment - datetime.now(UTC)
        try:
            return (await http.post("/v1/device-challenges/verify", json=verify)).json()
        finally:
            identity.clock.offset = saved

    assert (await verify_at(timedelta(seconds=1)))["error"]["code"] == "code_expired"
    assert (await verify_at(-timedelta(seconds=2)))["status"] == "authenticated", "just before: still good"


async def authorise_by_email(identity: Harness, who: dict, http, *, remember: bool) -> dict:  # type: ignore[no-untyped-def]
    """Sign in on a new device and authorise it with the emailed code; returns the verify answer."""
    challenge = (await login(identity, who, client=http)).json()
    assert challenge["status"] == "device_authorisation_required", challenge
    sent = await http.post("/v1/device-challenges/code", json={"challenge": challenge["challenge"], "channel": "email"})
    assert sent.status_code == 202, sent.text
    expires = sent.json()["code_expires_at"]

    async def this_code() -> list:
        codes = await identity.events(DeviceCodeIssued, customer_id=who["customer_id"])
        return [c for c in codes if c.code_expires_at == datetime.fromisoformat(expires)]

    (issued,) = await eventually(this_code, 20, "the code just sent")
    done = await http.post("/v1/device-challenges/verify", json={
        "challenge": challenge["challenge"], "code": unseal(identity, issued, "code"), "remember": remember})
    assert done.status_code == 200, done.text
    return done.json()


async def test_a_device_authorised_without_remember_is_asked_again_at_every_sign_in(identity: Harness) -> None:
    who, _ = await linked(identity, "Coralie Vidal")
    http = identity.http()
    first = await authorise_by_email(identity, who, http, remember=False)
    assert first["status"] == "authenticated" and first.get("device_token") is None, "nothing to remember it by"
    (authorised,) = await identity.events(DeviceAuthorised, customer_id=who["customer_id"])
    assert authorised.remembered is False
    (device,) = (await http.get("/v1/me/devices", headers=bearer(first))).json()
    assert device["remembered"] is False
    forged = f"{device['device_id']}.{'A' * 43}"
    for extra in ({}, {"device_token": forged}):
        assert (await login(identity, who, **extra)).json()["status"] == "device_authorisation_required", extra
    second = await authorise_by_email(identity, who, http, remember=False)
    assert second["status"] == "authenticated"


async def test_codes_sent_for_one_account_are_limited_across_its_attempts_and_addresses(identity: Harness) -> None:
    who, _ = await linked(identity, "Maxime Texier")  # the limit: 5 codes an hour per account
    sent = []
    for address in ("192.0.2.10", "192.0.2.11"):
        http = identity.http(address)
        challenge = (await login(identity, who, client=http)).json()["challenge"]
        for _ in range(3):
            answer = await http.post("/v1/device-challenges/code", json={"challenge": challenge, "channel": "email"})
            sent.append((answer.status_code, answer.json().get("error", {}).get("code")))
    assert sent == [(202, None)] * 5 + [(429, "rate_limited")], "the sixth code of the hour, from another address too"
    third = identity.http("192.0.2.12")
    challenge = (await login(identity, who, client=third)).json()["challenge"]
    again = await third.post("/v1/device-challenges/code", json={"challenge": challenge, "channel": "email"})
    assert again.status_code == 429 and int(again.headers["Retry-After"]) > 0


async def test_access_ends_18_months_after_the_last_running_contract_ended(identity: Harness) -> None:
    who, customer_number = await linked(identity, "Camille Renaud")
    first, second = f"{customer_number}-L1", f"{customer_number}-L2"
    for number in (first, second):
        await identity.publish(contract_opened(customer_number, number))
    await identity.publish(ContractClosed(contract_number=first, customer_number=customer_number,
                                          closed_on=date(2026, 1, 31), reason="ended", customer_has_running_contract=True))
    last_end = identity.clock.now().date()
    closing = await identity.publish(ContractClosed(contract_number=second, customer_number=customer_number,
                                                    closed_on=last_end, reason="ended",
                                                    customer_has_running_contract=False))
    await identity.publish(ContractClosed(contract_number=second, customer_number=customer_number, closed_on=last_end,
                                          reason="ended", customer_has_running_contract=False))  # a re-send

    async def recorded() -> dict | None:
        doc = await identity.runtime.db["customer_numbers"].find_one({"_id": customer_number})
        return doc if doc and doc.get("access_ends_at") and closing.id in doc["_applied"] else None

    customer = await eventually(recorded, 20, "the closing recorded")
    ends = customer["access_ends_at"].date()
    assert (ends.year * 12 + ends.month) - (last_end.year * 12 + last_end.month) == 18

    ctx = identity.runtime.identity
    identity.clock.advance(timedelta(days=540))  # a little under 18 months
    try:
        assert await end_expired_access(ctx) == 0 or (await identity.account(who["email"]))["status"] == "active"
        identity.clock.advance(timedelta(days=10))
        assert await end_expired_access(ctx) == 1
        assert await end_expired_access(ctx) == 0, "a second sweep changes nothing"
    finally:
        identity.clock.advance(-timedelta(days=550))
    (ended,) = await identity.events(CustomerAccessEnded, customer_id=who["customer_id"])
    assert ended.reason == "no_running_contract"
    refused = await login(identity, who)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "access_ended"


async def test_an_older_closing_handled_late_does_not_keep_access_open(identity: Harness) -> None:
    """Closings are keyed by contract: the last one may be handled before an older one that still saw
    the other contract running. The older one's word is outdated."""
    who, customer_number = await linked(identity, "Lucas Martin")
    first, second = f"{customer_number}-L1", f"{customer_number}-L2"
    opened = [await identity.publish(contract_opened(customer_number, number)) for number in (first, second)]

    async def customer_after(*events: Any) -> dict | None:
        doc = await identity.runtime.db["customer_numbers"].find_one({"_id": customer_number})
        return doc if doc and all(e.id in doc["_applied"] for e in events) else None

    await eventually(lambda: customer_after(*opened), 20, "both contracts known")
    last_end = identity.clock.now().date()
    last = await identity.publish(ContractClosed(contract_number=second, customer_number=customer_number,
                                                 closed_on=last_end, reason="ended", customer_has_running_contract=False))
    await eventually(lambda: customer_after(last), 20, "the last closing recorded")
    older = await identity.publish(ContractClosed(contract_number=first, customer_number=customer_number,
                                                  closed_on=date(2026, 1, 31), reason="ended",
                                                  customer_has_running_contract=True))
    customer = await eventually(lambda: customer_after(older), 20, "the older closing recorded")
    assert customer["access_ends_at"] is not None, "access must still end: nothing runs"
    ends = customer["access_ends_at"].date()
    assert (ends.year * 12 + ends.month) - (last_end.year * 12 + last_end.month) == 18


async def test_a_customer_number_already_held_by_a_login_is_not_linked_to_a_second_one(identity: Harness) -> None:
    holder, customer_number = await linked(identity, "Ines Lambert")
    second = await register_and_activate(identity, "Ines Lambert")  # the same person, or someone with her card
    await identity.publish(ContractLinkVerified(customer_id=second["customer_id"], customer_number=customer_number,
                                                contract_numbers=[f"{customer_number}-L1"]))

    await eventually(lambda: link_status_is(identity, second, "rejected"), 20, "the second link refused")
    account = await identity.account(second["email"])
    assert account["link"]["reason"] == "customer_number_taken" and account["customer_number"] is None
    assert (await login(identity, second)).json()["status"] == "authenticated", "still an unlinked login"
    assert (await identity.account(holder["email"]))["customer_number"] == customer_number
    assert await identity.runtime.db["accounts"].count_documents({"customer_number": customer_number}) == 1


async def belgian_customer_texted_a_code(identity: Harness, mobile: str) -> tuple[str, RegistrationCodeIssued]:
    """A new Belgian customer number with a lease and a mobile on file, and the code texted to it."""
    customer_number = f"BE-{uuid.uuid4().hex[:6]}"
    await identity.publish(contract_opened(customer_number, f"{customer_number}-L1", mobile_on_file=mobile))
    await eventually(lambda: identity.runtime.db["customer_numbers"].find_one({"_id": customer_number}), 20,
                     "contract.opened consumed")
    await identity.http().post("/v1/registrations/customer-number-codes",
                               json={"customer_number": customer_number, "locale": "nl-BE"})
    (texted,) = await identity.events(RegistrationCodeIssued, customer_number=customer_number)
    return customer_number, texted


async def test_a_customer_number_registered_belgian_style_is_not_linked_to_another_login(identity: Harness) -> None:
    customer_number, issued = await belgian_customer_texted_a_code(identity, "+32470123457")
    http = identity.http()
    lotte = {"first_name": "Lotte", "last_name": "Peeters", "email": f"lotte.{customer_number.lower()}@example.be",
             "password": STRONG, "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
             "customer_number": customer_number, "code": unseal(identity, issued, "code"),
             "contract_number": f"{customer_number}-L1"}
    assert (await http.post("/v1/registrations/by-customer-number", json=lotte)).status_code == 202

    other = await register_and_activate(identity, "Kobe Maes")
    await identity.publish(ContractLinkVerified(customer_id=other["customer_id"], customer_number=customer_number,
                                                contract_numbers=[f"{customer_number}-L1"]))
    await eventually(lambda: link_status_is(identity, other, "rejected"), 20, "the link refused")
    assert (await identity.account(other["email"]))["link"]["reason"] == "customer_number_taken"


async def test_a_new_running_contract_gives_access_back_to_a_customer_whose_access_had_ended(
    identity: Harness,
) -> None:
    who, customer_number = await linked(identity, "Helene Vasseur")
    await identity.publish(contract_opened(customer_number, f"{customer_number}-L1"))
    closing = await identity.publish(ContractClosed(
        contract_number=f"{customer_number}-L1", customer_number=customer_number,
        closed_on=identity.clock.now().date(), reason="ended", customer_has_running_contract=False))
    customers = identity.runtime.db["customer_numbers"]

    async def closing_recorded() -> bool:
        doc = await customers.find_one({"_id": customer_number})
        return bool(doc and closing.id in doc["_applied"])

    await eventually(closing_recorded, 20, "the closing recorded")
    ctx = identity.runtime.identity
    identity.clock.advance(timedelta(days=560))
    try:
        await end_expired_access(ctx)
    finally:
        identity.clock.advance(-timedelta(days=560))
    assert (await identity.account(who["email"]))["status"] == "access_ended"
    assert (await login(identity, who)).json()["error"]["code"] == "access_ended"

    await identity.publish(contract_opened(customer_number, f"{customer_number}-L2"))

    async def restored() -> bool:
        return (await identity.account(who["email"]))["status"] == "active"

    await eventually(restored, 20, "access given back by the new lease")
    (told,) = await identity.events(CustomerAccessRestored, customer_id=who["customer_id"])
    assert told.contract_number == f"{customer_number}-L2" and told.email == who["email"], "the customer is told"
    again = await login(identity, who)
    assert again.status_code == 200 and again.json()["status"] == "device_authorisation_required"

    # The sweep decides from the contracts as they are, not from an access end it queried earlier.
    await customers.update_one({"_id": customer_number}, {"$set": {"access_ends_at": identity.clock.now()}})
    identity.clock.advance(timedelta(days=1))
    try:
        await end_expired_access(ctx)
    finally:
        identity.clock.advance(-timedelta(days=1))
    assert (await identity.account(who["email"]))["status"] == "active", "a running contract keeps access open"


async def test_belgian_registration_starts_from_the_customer_number_and_a_texted_code(identity: Harness) -> None:
    customer_number = f"BE-{uuid.uuid4().hex[:6]}"
    await identity.publish(contract_opened(customer_number, f"{customer_number}-L1", mobile_on_file="+32470123456"))
    http = identity.http()

    await eventually(lambda: identity.runtime.db["customer_numbers"].find_one({"_id": customer_number}), 20,
                     "contract.opened consumed")
    asked = await http.post("/v1/registrations/customer-number-codes",
                            json={"customer_number": customer_number, "locale": "nl-BE"})
    (issued,) = await identity.events(RegistrationCodeIssued, customer_number=customer_number)
    unknown = await http.post("/v1/registrations/customer-number-codes",
                              json={"customer_number": "BE-000000", "locale": "nl-BE"})
    assert unknown.status_code == asked.status_code == 202 and unknown.json() == asked.json()
    assert issued.mobile == "+32470123456" and issued.locale == "nl-BE"
    pieter = {"first_name": "Pieter", "last_name": "Janssens", "email": f"pieter.{customer_number.lower()}@example.be",
              "password": STRONG, "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
              "customer_number": customer_number, "contract_number": f"{customer_number}-L1"}
    without_contract = await http.post("/v1/registrations/by-customer-number",
                                       json={k: v for k, v in pieter.items() if k != "contract_number"} | {"code": "000000"})
    assert without_contract.status_code == 422, "the contract number is a required security detail"
    wrong = await http.post("/v1/registrations/by-customer-number", json=pieter | {"code": "000000"})
    if unseal(identity, issued, "code") != "000000":
        assert wrong.json()["error"]["code"] in ("code_wrong", "code_dead"), wrong.text

    latest = max(await identity.events(RegistrationCodeIssued, customer_number=customer_number),
                 key=lambda e: e.code_expires_at)
    right_code = unseal(identity, latest, "code")
    other_contract = await http.post("/v1/registrations/by-customer-number",
                                     json=pieter | {"code": right_code, "contract_number": "BE-999999-L1"})
    assert other_contract.status_code == 400 and other_contract.json()["error"]["code"] == "contract_number_wrong"
    assert other_contract.json()["error"]["details"]["tries_left"] == 3, "a wrong detail uses up a try of the code"
    done = await http.post("/v1/registrations/by-customer-number", json=pieter | {"code": right_code})
    assert done.status_code == 202, done.text
    ordinary = await http.post("/v1/registrations", json=person("Ordinary Newcomer"))
    assert done.json() == ordinary.json(), "it ends like any registration: check your email"
    account = await identity.account(pieter["email"])
    assert account["customer_number"] == customer_number and account["mobile"] == "+32470123456"
    assert account["status"] == "pending_activation" and account["link"]["status"] == "verified"
    assert json.dumps(account, default=str).count(unseal(identity, latest, "code")) == 0

    # Nobody proved the email yet: no sign-in, and no reset link or device code goes to it.
    early = await login(identity, pieter)
    assert early.status_code == 403 and early.json()["error"]["code"] == "account_not_activated"
    assert "/v1/activations/resend" in early.json()["error"]["message"], "the refusal says what to do"
    for email in (pieter["email"], f"nobody.{customer_number.lower()}@example.be"):
        reset = await http.post("/v1/password-resets", json={"email": email})
        assert reset.status_code == 202 and reset.json()["message"] == SENT_IF_KNOWN
    (registered,) = await identity.events(CustomerRegistered, email=pieter["email"])
    assert registered.customer_id == account["_id"] and registered.locale == "nl-BE"
    assert registered.mobile == "+32470123456" and registered.terms_version == "BE-2026-01"
    assert registered.activation_token.startswith("sealed:v1:"), "the link travels sealed"

    activated = await http.post("/v1/activations", json={"token": unseal(identity, registered, "activation_token")})
    assert activated.json() == {"status": "activated"}
    await identity.events(CustomerActivated, customer_id=registered.customer_id)
    signed_in = (await login(identity, pieter)).json()
    assert signed_in["status"] == "device_authorisation_required", "linked from the start: the device is authorised next"
    assert (await identity.account(pieter["email"]))["link"]["status"] == "verified"
    assert await identity.runtime.db["accounts"].count_documents(
        {"_id": account["_id"], "reset": None, "reset_spent": []}) == 1, "no reset link was issued before activation"

    # One login per customer number: no code is texted for it any more (answered the same).
    texted = len(await identity.events(RegistrationCodeIssued, customer_number=customer_number))
    again = await http.post("/v1/registrations/customer-number-codes",
                            json={"customer_number": customer_number, "locale": "nl-BE"})
    assert again.status_code == 202 and again.json() == asked.json()
    await asyncio.sleep(1.0)  # the relay is quick: a code texted now would be on the topic by then
    assert len(await identity.events(RegistrationCodeIssued, customer_number=customer_number)) == texted


async def known_and_unknown_numbers(identity: Harness, mobile_on_file: str) -> tuple[str, str]:
    """A customer number identity learnt from contract.opened (with a mobile on file), and one it never heard of."""
    known, unknown = f"BE-{uuid.uuid4().hex[:6]}", f"BE-{uuid.uuid4().hex[:6]}"
    await identity.publish(contract_opened(known, f"{known}-L1", mobile_on_file=mobile_on_file))
    await eventually(lambda: identity.runtime.db["customer_numbers"].find_one({"_id": known}), 20,
                     "contract.opened consumed")
    return known, unknown


@contextlib.contextmanager
def pinned_clock(identity: Harness) -> Iterator[Callable[[float], None]]:
    """``set_clock(s)`` puts identity's clock ``s`` seconds after the moment the block began, so that
    both numbers are asked at the same instants and a retry delay reads the same for both; the clock
    is given back afterwards."""
    saved, start = identity.clock.offset, identity.clock.now()

    def set_clock(after_s: float) -> None:
        identity.clock.offset = start + timedelta(seconds=after_s) - datetime.now(UTC)

    try:
        yield set_clock
    finally:
        identity.clock.offset = saved


async def test_a_fourth_registration_code_is_refused_alike_for_known_and_unknown_customer_numbers(
    identity: Harness,
) -> None:
    known, unknown = await known_and_unknown_numbers(identity, "+32470123402")
    http = identity.http("203.0.113.40")

    with pinned_clock(identity) as set_clock:
        async def ask(number: str, after_s: float) -> tuple[int, dict, str | None]:
            set_clock(after_s)
            answer = await http.post("/v1/registrations/customer-number-codes",
                                     json={"customer_number": number, "locale": "nl-BE"})
            return answer.status_code, answer.json(), answer.headers.get("retry-after")

        within = [(await ask(known, s), await ask(unknown, s)) for s in (0, 1, 2, 3.5)]
        later = (await ask(known, 600.5), await ask(unknown, 600.5))
    for known_answer, unknown_answer in [*within, later]:
        assert known_answer == unknown_answer, "the answer does not tell whether the number is known"
    assert [k[0] for k, _ in within] == [202, 202, 202, 429]
    status, refused, retry_after = within[3][0]
    assert refused["error"]["code"] == "too_many_codes" and retry_after == "597", refused
    assert refused["error"]["details"]["retry_after_s"] == 597 and "597 seconds" in refused["error"]["message"]
    assert later[0][0] == 202, "ten minutes after the first code, a new attempt starts"
    await identity.events(RegistrationCodeIssued, expected=4, customer_number=known)
    await asyncio.sleep(1.0)
    assert len(await identity.events(RegistrationCodeIssued, customer_number=known)) == 4, "3, then 1 after the wait"


async def test_registering_with_a_wrong_code_answers_alike_for_known_and_unknown_customer_numbers(
    identity: Harness,
) -> None:
    known, unknown = await known_and_unknown_numbers(identity, "+32470123405")
    http = identity.http("203.0.113.43")
    wrong = {"code": "000000"}

    def registration(number: str) -> dict:
        return {"first_name": "Wim", "last_name": "Maes", "email": f"wim.{number.lower()}@example.be",
                "password": STRONG, "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
                "contract_number": f"{number}-L1"}

    codes_path, register_path = "/v1/registrations/customer-number-codes", "/v1/registrations/by-customer-number"
    with pinned_clock(identity) as set_clock:
        async def step(after_s: float, path: str, **body: str) -> tuple[int, dict]:
            answers = []
            for number in (known, unknown):
                set_clock(after_s)
                sent = registration(number) | body if path == register_path else body
                answer = await http.post(path, json={"customer_number": number} | sent)
                answers.append((answer.status_code, answer.json()))
            assert answers[0] == answers[1], f"the answer at {after_s} s tells the numbers apart"
            return answers[0]

        before = await step(0, register_path, **wrong)
        asked = await step(1, codes_path, locale="nl-BE")
        (texted,) = await identity.events(RegistrationCodeIssued, customer_number=known)
        if unseal(identity, texted, "code") == wrong["code"]:
            wrong = {"code": "000001"}
        # Half a second past the code's own instant: the waits told, whole seconds rounded up, then
        # land in the middle of a second, and the milliseconds each request takes cannot tip one
        # number's wait over into the next second and not the other's.
        misses = [await step(2.5 + n, register_path, **wrong) for n in range(5)]
        asked_again = await step(8, codes_path, locale="nl-BE")
        after = await step(9.5, register_path, **wrong)
    assert before[0] == 400 and before[1]["error"]["code"] == "code_not_requested", before
    assert asked[0] == asked_again[0] == 202
    assert [(m[0], m[1]["error"]["code"], m[1]["error"]["details"].get("tries_left")) for m in misses] == [
        (400, "code_wrong", 4), (400, "code_wrong", 3), (400, "code_wrong", 2), (400, "code_wrong", 1),
        (400, "code_dead", None)], misses
    assert after[0] == 400 and after[1]["error"]["code"] == "code_dead", after
    assert 590 < after[1]["error"]["details"]["retry_after_s"] < misses[-1][1]["error"]["details"]["retry_after_s"] <= 600


async def test_registration_codes_sent_again_within_one_attempt_give_five_wrong_tries_in_all(identity: Harness) -> None:
    customer_number, texted = await belgian_customer_texted_a_code(identity, "+32470123403")
    http = identity.http("203.0.113.41")
    ask = {"customer_number": customer_number, "locale": "nl-BE"}
    lien = {"first_name": "Lien", "last_name": "Claes", "email": f"lien.{customer_number.lower()}@example.be",
            "password": STRONG, "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
            "customer_number": customer_number, "contract_number": f"{customer_number}-L1"}
    answers = []
    for sends in (1, 2, 3):  # the most one attempt may be sent
        if sends > 1:
            assert (await http.post("/v1/registrations/customer-number-codes", json=ask)).status_code == 202
        latest = max(await identity.events(RegistrationCodeIssued, expected=sends, customer_number=customer_number),
                     key=lambda e: e.code_expires_at)
        code = unseal(identity, latest, "code")
        for _ in range(2 if sends < 3 else 1):
            miss = await http.post("/v1/registrations/by-customer-number",
                                   json=lien | {"code": f"{(int(code) + 1) % 10**6:06d}"})
            answers.append((miss.json()["error"]["code"], miss.json()["error"]["details"].get("tries_left")))
    assert answers == [("code_wrong", 4), ("code_wrong", 3), ("code_wrong", 2), ("code_wrong", 1), ("code_dead", None)]
    right = await http.post("/v1/registrations/by-customer-number", json=lien | {"code": code})
    assert right.json()["error"]["code"] == "code_dead", "the fifth wrong try ended the attempt"
    assert await identity.runtime.db["accounts"].find_one({"email": lien["email"]}) is None
    wait_s = right.json()["error"]["details"]["retry_after_s"]
    assert 0 < wait_s <= 600 and f"{wait_s} seconds" in right.json()["error"]["message"], "it says when to ask again"

    identity.clock.advance(timedelta(seconds=wait_s))
    try:
        assert (await http.post("/v1/registrations/customer-number-codes", json=ask)).status_code == 202
        fresh = max(await identity.events(RegistrationCodeIssued, expected=4, customer_number=customer_number),
                    key=lambda e: e.code_expires_at)
        done = await http.post("/v1/registrations/by-customer-number", json=lien | {"code": unseal(identity, fresh, "code")})
        assert done.status_code == 202, "a new attempt starts with a new code once the dead one's is over"
    finally:
        identity.clock.advance(-timedelta(seconds=wait_s))


async def test_a_registration_attempt_ended_by_wrong_codes_texts_no_code_until_it_is_over(identity: Harness) -> None:
    customer_number, texted = await belgian_customer_texted_a_code(identity, "+32470123404")
    http = identity.http("203.0.113.42")
    wrong = f"{(int(unseal(identity, texted, 'code')) + 1) % 10**6:06d}"
    bram = {"first_name": "Bram", "last_name": "Wouters", "email": f"bram.{customer_number.lower()}@example.be",
            "password": STRONG, "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
            "customer_number": customer_number, "contract_number": f"{customer_number}-L1", "code": wrong}
    for _ in range(5):
        await http.post("/v1/registrations/by-customer-number", json=bram)
    again = await http.post("/v1/registrations/customer-number-codes",
                            json={"customer_number": customer_number, "locale": "nl-BE"})
    unknown = await http.post("/v1/registrations/customer-number-codes",
                              json={"customer_number": f"BE-{uuid.uuid4().hex[:6]}", "locale": "nl-BE"})
    assert again.status_code == unknown.status_code == 202 and again.json() == unknown.json()
    await asyncio.sleep(1.0)  # the relay is quick: a code texted now would be on the topic by then
    assert len(await identity.events(RegistrationCodeIssued, customer_number=customer_number)) == 1, \
        "a code born dead is not texted"


async def test_a_belgian_registration_with_a_taken_email_answers_the_same_and_tells_its_owner(identity: Harness) -> None:
    customer_number, texted = await belgian_customer_texted_a_code(identity, "+32470123401")
    owner = await register_and_activate(identity, "Elke Wouters")
    http = identity.http()
    elke = {"first_name": "Elke", "last_name": "Wouters", "email": owner["email"], "password": STRONG,
            "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
            "customer_number": customer_number, "contract_number": f"{customer_number}-L1",
            "code": unseal(identity, texted, "code")}
    taken = await http.post("/v1/registrations/by-customer-number", json=elke)
    ordinary = await http.post("/v1/registrations", json=person("Ordinary Newcomer"))
    assert taken.status_code == ordinary.status_code == 202 and taken.json() == ordinary.json()
    await identity.events(CustomerAlreadyRegistered, customer_id=owner["customer_id"])
    assert await identity.runtime.db["accounts"].count_documents({"email": owner["email"]}) == 1
    assert (await identity.account(owner["email"]))["customer_number"] is None, "the owner's account is not changed"
    freed = await identity.runtime.db["customer_numbers"].find_one({"_id": customer_number})
    assert freed["account_id"] is None, "the number is free for a registration with another email"


async def test_a_customer_number_another_login_took_meanwhile_cannot_be_registered_again(identity: Harness) -> None:
    customer_number, texted = await belgian_customer_texted_a_code(identity, "+32470123400")
    http = identity.http()
    holder = await register_and_activate(identity, "Wout Peeters")
    # Meanwhile a link verdict gave the number to another login (the claim it records):
    await identity.runtime.db["customer_numbers"].update_one(
        {"_id": customer_number}, {"$set": {"account_id": holder["customer_id"]}})
    an = {"first_name": "An", "last_name": "Peeters", "email": f"an.{customer_number.lower()}@example.be",
          "password": STRONG, "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
          "customer_number": customer_number, "contract_number": f"{customer_number}-L1",
          "code": unseal(identity, texted, "code")}
    taken = await http.post("/v1/registrations/by-customer-number", json=an)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "customer_number_taken", taken.text
    assert await identity.runtime.db["accounts"].find_one({"email": an["email"]}) is None


async def test_a_device_authorised_and_remembered_before_the_link_goes_straight_in_after_it(identity: Harness) -> None:
    who = await register_and_activate(identity, "Jade Lemaire")
    http = identity.http()
    unlinked = (await login(identity, who)).json()
    challenge = (await http.post("/v1/me/device-challenges", headers=bearer(unlinked))).json()
    assert (await http.post("/v1/device-challenges/code",
                            json={"challenge": challenge["challenge"], "channel": "email"})).status_code == 202
    (issued,) = await identity.events(DeviceCodeIssued, customer_id=who["customer_id"])
    device = (await http.post("/v1/device-challenges/verify", json={
        "challenge": challenge["challenge"], "code": unseal(identity, issued, "code"), "remember": True})).json()
    assert (await http.get("/v1/me", headers=bearer(unlinked))).status_code == 401, "replaced by the device's session"

    customer_number = f"BE-{uuid.uuid4().hex[:6]}"
    await identity.publish(ContractLinkVerified(customer_id=who["customer_id"], customer_number=customer_number,
                                                contract_numbers=[f"{customer_number}-L1"]))
    await eventually(lambda: link_status_is(identity, who, "verified"), 20, "the link verified")
    assert (await http.get("/v1/me", headers=bearer(device))).status_code == 401, "the link ended it too"
    assert (await login(identity, who, device_token=device["device_token"])).json()["status"] == "authenticated"
    assert (await login(identity, who)).json()["status"] == "device_authorisation_required", "other devices are asked"


async def test_a_number_texted_a_code_before_it_got_a_login_answers_wrong_codes_like_an_unknown_number(
    identity: Harness,
) -> None:
    # The code texted before the login was linked stays on file; asked again, the number is texted
    # nothing (its owner signs in), and its answers must come from that request, as an unknown
    # number's do, not from the old code ("expired" would say the number is a customer's).
    known, _ = await belgian_customer_texted_a_code(identity, "+32470123408")
    unknown = f"BE-{uuid.uuid4().hex[:6]}"
    owner = await register_and_activate(identity, "Ruben Claes", identity.http("203.0.113.49"))
    await identity.publish(ContractLinkVerified(customer_id=owner["customer_id"], customer_number=known,
                                                contract_numbers=[f"{known}-L1"]))
    await eventually(lambda: link_status_is(identity, owner, "verified"), 20, "the login linked to the number")
    http = identity.http("203.0.113.48")

    def registration(number: str) -> dict:
        return {"first_name": "Ruben", "last_name": "Claes", "email": f"ruben.{number.lower()}@example.be",
                "password": STRONG, "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
                "contract_number": f"{number}-L1", "customer_number": number, "code": "000000"}

    with pinned_clock(identity) as set_clock:
        answers = []
        for number in (known, unknown):
            set_clock(3600)  # the old code has expired by then
            asked = await http.post("/v1/registrations/customer-number-codes",
                                    json={"customer_number": number, "locale": "nl-BE"})
            tried = await http.post("/v1/registrations/by-customer-number", json=registration(number))
            answers.append((asked.status_code, tried.status_code, tried.json()["error"]["code"],
                            tried.json()["error"]["details"].get("tries_left")))
    assert answers[0] == answers[1] == (202, 400, "code_wrong", 4), answers
