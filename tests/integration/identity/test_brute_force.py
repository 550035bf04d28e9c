"""Brute force is on by default: locks that double, a permanent lock only staff lift, rate limits."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest

from services.identity.service_layer.administration import Person, create_staff_account
from services.identity.service_layer.context import Caller
from services.identity.service_layer.sessions import open_session
from shared.events import AccountLocked, AccountUnlocked, OrganisationUserInvited
from shared.storage import ConcurrencyConflict
from tests.integration.identity.conftest import (
    OTHER_STRONG,
    STRONG,
    Harness,
    bearer,
    login,
    person,
    register_and_activate,
    start_harness,
    stop_harness,
    unseal,
)
from tests.conftest import Infrastructure

pytestmark = pytest.mark.integration

WRONG = "Wrong-Guess-Number-1"


async def fail(identity: Harness, who: dict, times: int) -> None:
    for _ in range(times):
        answer = await login(identity, who | {"password": WRONG})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_credentials"


async def test_five_failures_lock_for_15_minutes_then_30_and_a_lock_never_confirms_a_guess(identity: Harness) -> None:
    who = await register_and_activate(identity, "Paul Girard")
    await fail(identity, who, 5)

    (locked,) = await identity.events(AccountLocked, customer_id=who["customer_id"])
    assert timedelta(minutes=14) < locked.locked_until - identity.clock.now() <= timedelta(minutes=15)
    assert locked.failed_attempts == 5
    right_during_lock = await login(identity, who)
    assert right_during_lock.status_code == 401, "the right password during a lock reads like a wrong one"
    assert right_during_lock.json()["error"]["code"] == "invalid_credentials"

    identity.clock.advance(timedelta(minutes=15))
    await fail(identity, who, 5)
    locks = await identity.events(AccountLocked, expected=2, customer_id=who["customer_id"])
    second = max(locks, key=lambda e: e.locked_until)
    assert timedelta(minutes=29) < second.locked_until - identity.clock.now() <= timedelta(minutes=30)
    (unlocked,) = await identity.events(AccountUnlocked, customer_id=who["customer_id"])
    assert unlocked.unlocked_by == "lock-expiry"

    identity.clock.advance(timedelta(minutes=30))
    assert (await login(identity, who)).status_code == 200, "after the lock the right password works again"


class RightPasswordLast:
    """The service's hasher, except that the verify of ``password`` ends only once the account is
    locked: the right password in flight while the guesses sent with it place the lock."""

    def __init__(self, hasher: Any, identity: Harness, email: str, password: str) -> None:
        self._hasher, self._identity, self._email, self._password = hasher, identity, email, password

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hasher, name)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        proven = await self._hasher.verify(stored_hash, password)
        if password == self._password:
            deadline = time.monotonic() + 20
            while not (await self._identity.account(self._email)).get("lock") and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        return proven


async def test_the_right_password_in_flight_while_a_burst_of_guesses_locks_the_account_is_refused(
    identity: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    who = await register_and_activate(identity, "Agathe Roussel")
    ctx = identity.runtime.identity
    monkeypatch.setattr(ctx, "hasher", RightPasswordLast(ctx.hasher, identity, who["email"], STRONG))
    http = identity.http("198.51.100.40")

    right, *guesses = await asyncio.gather(login(identity, who, http),
                                           *(login(identity, who | {"password": WRONG}, http) for _ in range(20)))

    assert [g.status_code for g in guesses] == [401] * 20
    assert right.status_code == 401 and right.json()["error"]["code"] == "invalid_credentials", right.text
    stored = await identity.account(who["email"])
    assert stored["lock"] is not None, "every guess of the burst was counted: the lock holds"
    assert (await login(identity, who, http)).status_code == 401, "and still holds"
    (locked,) = await identity.events(AccountLocked, customer_id=who["customer_id"])
    assert locked.failed_attempts == 5


async def test_a_wrong_password_whose_failure_cannot_be_stored_reads_like_any_other_at_the_floor(
    identity: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    who = await register_and_activate(identity, "Bastien Perrot")
    accounts = identity.runtime.identity.stores.accounts

    async def always_conflicts(*args: Any, **kwargs: Any) -> Any:
        raise ConcurrencyConflict("someone else wrote the account meanwhile")

    monkeypatch.setattr(accounts, "update", always_conflicts)
    http = identity.http("198.51.100.41")
    floor = identity.settings.answer_floor_ms / 1000
    for target in (who, {"email": "bastien.nobody@example.fr"}):
        started = time.perf_counter()
        answer = await login(identity, target | {"password": WRONG}, http)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_credentials", answer.text
        assert time.perf_counter() - started >= floor, "it leaves at the floor, like an unknown email's"


async def test_repeated_locks_become_permanent_and_only_the_service_desk_lifts_them(identity: Harness) -> None:
    who = await register_and_activate(identity, "Quentin Faure")
    for minutes in (15, 30, 60, 120):
        await fail(identity, who, 5)
        identity.clock.advance(timedelta(minutes=minutes))
    await fail(identity, who, 5)
    locks = await identity.events(AccountLocked, expected=5, customer_id=who["customer_id"])
    assert sum(1 for e in locks if e.locked_until is None) == 1, "the fifth lock is permanent"

    identity.clock.advance(timedelta(days=30))
    assert (await login(identity, who)).status_code == 401, "a month later it still holds"

    desk_id = await create_staff_account(
        identity.runtime.identity, Person("Sam", "Desk", "sam.desk.bf@leaseline.example", "en"), ["service_desk"], STRONG
    )
    desk = (await login(identity, {"email": "sam.desk.bf@leaseline.example", "password": STRONG})).json()
    assert (await identity.http().post(f"/v1/staff/accounts/{who['customer_id']}/unblock", headers=bearer(desk))).status_code == 200
    (lifted,) = await identity.events(AccountUnlocked, customer_id=who["customer_id"], unlocked_by=desk_id)
    assert lifted.email == who["email"]
    assert (await login(identity, who)).status_code == 200
    audit = (await identity.http().get("/v1/staff/audit", params={"target_id": who["customer_id"]},
                                       headers=bearer(desk))).json()
    assert [(a["actor_id"], a["action"]) for a in audit] == [(desk_id, "account.unblock")]


async def test_unknown_emails_are_never_locked_but_are_rate_limited_like_known_ones(infra: Infrastructure) -> None:
    harness = await start_harness(infra, rate_account_checks_per_15min=8, rate_address_checks_per_5min=1000)
    try:
        known = await register_and_activate(harness, "Rose Lambert")
        unknown = {"email": "rose.nobody@example.fr", "password": STRONG}
        for who in (known, unknown):
            codes = [(await login(harness, who | {"password": WRONG})).status_code for _ in range(9)]
            assert codes == [401] * 8 + [429], codes
        limited = await login(harness, unknown)
        assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["Retry-After"]) > 0
        harness.clock.advance(timedelta(minutes=16))
        assert (await login(harness, unknown)).status_code == 401, "the window passed"
    finally:
        await stop_harness(harness)


@dataclass
class Organisation:
    """A service desk member, an organisation, its activated administrator and one invited member, each
    set up from an address of its own (so that the limits under test count only the test's requests)."""

    desk: dict[str, str]
    organisation_id: str
    administrator: dict[str, str]
    member_id: str


async def an_organisation(harness: Harness) -> Organisation:
    def elsewhere() -> httpx.AsyncClient:
        return harness.http(f"198.18.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}")

    ctx = harness.runtime.identity
    desk_email = f"desk.{uuid.uuid4().hex[:6]}@leaseline.example"
    await create_staff_account(ctx, Person("Sam", "Desk", desk_email, "en"), ["service_desk"], STRONG)
    desk = bearer((await login(harness, {"email": desk_email, "password": STRONG}, client=elsewhere())).json())
    admin_email = f"anna.{uuid.uuid4().hex[:6]}@garage.nl"
    created = (await elsewhere().post("/v1/organisations", headers=desk, json={
        "name": "Garage West", "kind": "garage",
        "administrator": {"first_name": "Anna", "last_name": "Bakker", "email": admin_email, "locale": "nl-NL"}})).json()
    (invited,) = await harness.events(OrganisationUserInvited, email=admin_email)
    activated = await elsewhere().post("/v1/activations", json={"token": unseal(harness, invited, "activation_token"),
                                                                "password": STRONG})
    assert activated.status_code == 200, activated.text
    # Signed in past the device step (the device flow itself is proven elsewhere).
    account = await ctx.stores.accounts.get(created["administrator_id"])
    administrator = bearer(await open_session(ctx, Caller("t"), account, device_id=None, amr=["pwd", "otp"]))
    member = await elsewhere().post(f"/v1/organisations/{created['organisation_id']}/users", headers=administrator,
                                    json=colleague("Bram"))
    assert member.status_code == 201, member.text
    return Organisation(desk, created["organisation_id"], administrator, member.json()["user_id"])


def colleague(first: str, email: str | None = None) -> dict:
    return {"first_name": first, "last_name": "Visser", "locale": "nl-NL", "role": "adviser",
            "email": email or f"{first.lower()}.{uuid.uuid4().hex[:6]}@garage.nl"}


def new_organisation(email: str) -> dict:
    return {"name": "Garage Oost", "kind": "garage",
            "administrator": {"first_name": "Joost", "last_name": "Smit", "email": email, "locale": "nl-NL"}}


async def test_one_address_is_limited_across_accounts_on_every_endpoint_that_sends_or_checks(
    infra: Infrastructure,
) -> None:
    harness = await start_harness(infra, rate_address_checks_per_5min=3, rate_address_sends_per_hour=2,
                                  answer_floor_ms=0)
    try:
        attacker, neighbour = harness.http("203.0.113.66"), harness.http("203.0.113.99")
        signed_in = await register_and_activate(harness, "Tanguy Leroux")  # from another address
        session = bearer((await login(harness, signed_in)).json())
        org = await an_organisation(harness)
        users = f"/v1/organisations/{org.organisation_id}/users"
        signed = {"/v1/organisations": org.desk, users: org.administrator,
                  f"{users}/{org.member_id}/unblock": org.administrator}

        def newcomer(i: int) -> dict:
            return person("Ulysse Barbier") | {"email": f"ulysse.{i}@example.fr"}

        calls = {
            "/v1/sessions": lambda i: {"email": f"target{i}@example.fr", "password": WRONG},
            "/v1/activations": lambda i: {"token": f"cus_x{i}." + "A" * 43},
            "/v1/password-resets/confirm": lambda i: {"token": f"cus_x{i}." + "A" * 43, "new_password": STRONG},
            "/v1/sessions/refresh": lambda i: {"refresh_token": f"ses_x{i}." + "A" * 43},
            "/v1/device-challenges/verify": lambda i: {"challenge": f"chl_x{i}." + "A" * 43, "code": "123456"},
            "/v1/password-changes/forced": lambda i: {"change_ticket": f"cus_x{i}." + "A" * 43, "new_password": STRONG},
            # A password too weak to pass is counted too: the limit comes before the strength check.
            "/v1/registrations/by-customer-number": lambda i: newcomer(i) | {"customer_number": f"BE-{i}000",
                                                                              "code": "123456", "password": "weak",
                                                                              "contract_number": f"BE-{i}000-L1"},
            "PUT /v1/me/password": lambda i: {"current_password": WRONG, "new_password": OTHER_STRONG},
            "/v1/me/contract-links": lambda i: {"method": "customer_number", "customer_number": f"BE-{i}001"},
        }
        sends = {
            "/v1/registrations": newcomer,
            "/v1/password-resets": lambda i: {"email": f"target{i}@example.fr"},
            "/v1/activations/resend": lambda i: {"email": f"target{i}@example.fr"},
            "/v1/registrations/customer-number-codes": lambda i: {"customer_number": f"BE-{i}000", "locale": "nl-BE"},
            "/v1/device-challenges/code": lambda i: {"challenge": f"chl_x{i}." + "A" * 43, "channel": "sms"},
            "/v1/organisations": lambda i: new_organisation(f"joost.{i}.{uuid.uuid4().hex[:6]}@garage.nl"),
            users: lambda i: colleague(f"Eva{i}"),
            # The service desk's unblock shares this one's counters (one account, one kind of message).
            f"{users}/{org.member_id}/unblock": lambda i: None,
            "/v1/me/client-certificates": lambda i: {"certificate_pem": f"not a certificate {i}"},
        }
        for target, body in [*calls.items(), *sends.items()]:
            method, _, path = target.rpartition(" ")
            headers = session if path.startswith("/v1/me/") else signed.get(path, {})

            async def call(client, i: int) -> int:  # type: ignore[no-untyped-def]
                answer = await client.request(method or "POST", path, json=body(i), headers=headers)
                assert answer.status_code < 500, (target, answer.text)
                return answer.status_code

            allowed = 3 if target in calls else 2
            statuses = [await call(attacker, i) for i in range(allowed + 1)]
            assert 429 not in statuses[:allowed] and statuses[-1] == 429, (target, statuses)
            assert await call(neighbour, 99) != 429, target
    finally:
        await stop_harness(harness)


async def test_behind_the_proxy_a_client_cannot_escape_the_address_limit_by_forging_forwarded_for(
    infra: Infrastructure,
) -> None:
    harness = await start_harness(infra, trust_forwarded_for=True, rate_address_checks_per_5min=3)
    try:
        proxy = harness.http("10.0.0.5")  # every request arrives from the load balancer

        async def sign_in_via_proxy(client_sent: str, proxy_saw: str) -> int:
            answer = await proxy.post("/v1/sessions", json={"email": "nobody@example.fr", "password": WRONG},
                                      headers={"X-Forwarded-For": f"{client_sent}, {proxy_saw}"})
            return answer.status_code

        statuses = [await sign_in_via_proxy(f"192.0.2.{i}", "203.0.113.66") for i in range(4)]
        assert statuses == [401, 401, 401, 429], "a fresh forged address per request changes nothing"
        assert await sign_in_via_proxy("192.0.2.1", "203.0.113.99") == 401, "another client is counted apart"
    finally:
        await stop_harness(harness)


@pytest.fixture(scope="module")
async def two_sends_an_hour(infra: Infrastructure) -> AsyncIterator[tuple[Harness, Organisation, dict]]:
    """A service that sends one account at most two messages an hour (default per-address limits)."""
    harness = await start_harness(infra, rate_account_sends_per_hour=2, answer_floor_ms=0)
    try:
        customer = await register_and_activate(harness, "Romane Giraud")
        yield harness, await an_organisation(harness), customer
    finally:
        await stop_harness(harness)


@pytest.mark.parametrize("endpoint", ["organisation", "invitation", "unblock by the administrator",
                                      "unblock by the service desk", "client certificate"])
async def test_one_account_is_sent_at_most_so_many_messages_whatever_the_address(
    two_sends_an_hour: tuple[Harness, Organisation, dict], endpoint: str,
) -> None:
    harness, org, customer = two_sends_an_hour
    users = f"/v1/organisations/{org.organisation_id}/users"
    invitee = f"joost.{uuid.uuid4().hex[:6]}@garage.nl"
    if endpoint == "client certificate":
        session = bearer((await login(harness, customer, client=harness.http("198.19.0.1"))).json())
    path, headers, body = {
        "organisation": ("/v1/organisations", org.desk, new_organisation(invitee)),
        "invitation": (users, org.administrator, colleague("Eva", invitee)),
        "unblock by the administrator": (f"{users}/{org.member_id}/unblock", org.administrator, None),
        "unblock by the service desk": (f"/v1/staff/accounts/{customer['customer_id']}/unblock", org.desk, None),
        "client certificate": ("/v1/me/client-certificates", session if endpoint == "client certificate" else {},
                               {"certificate_pem": "not a certificate"}),
    }[endpoint]
    statuses = []
    for n in range(3):  # each from an address of its own
        answer = await harness.http(f"198.19.1.{n + 10}").post(path, headers=headers, json=body)
        assert answer.status_code < 500, answer.text
        statuses.append(answer.status_code)
    assert 429 not in statuses[:2] and statuses[2] == 429, statuses
