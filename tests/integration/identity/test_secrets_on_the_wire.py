"""Raw bytes read back from Kafka never hold a token, a code or a password in clear.

Every flow that makes identity publish runs once (registration, resend, activation, reset, change,
lock and unlock, contract link, device codes by text and email, Belgian registration, invitation of
an organisation user, access end); then every topic of the service's namespace is read raw.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.identity.service_layer.administration import Person, create_staff_account
from services.identity.service_layer.contracts import end_expired_access
from shared.events import (
    AccountLocked,
    AccountUnlocked,
    ActivationLinkReissued,
    ContractClosed,
    ContractLinkRequested,
    ContractLinkVerified,
    ContractOpened,
    CustomerAccessEnded,
    CustomerActivated,
    CustomerAlreadyRegistered,
    CustomerDetailsChanged,
    CustomerRegistered,
    DeviceAuthorised,
    DeviceCodeIssued,
    OrganisationUserInvited,
    PasswordChanged,
    PasswordResetRequested,
    RegistrationCodeIssued,
)
from tests.integration.helpers import eventually, read_topic
from tests.integration.identity.conftest import OTHER_STRONG, STRONG, Harness, bearer, person, unseal

pytestmark = pytest.mark.integration

CHANGED = "Amber-Thistle-Gondola-58"
BELGIAN = "Copper-Meadow-Falcon-31"
INVITEE = "Saffron-Glacier-Tunnel-64"
WRONG = "Wrong-Guess-Number-1"
IDENTITY_EVENTS = (
    CustomerRegistered, CustomerAlreadyRegistered, ActivationLinkReissued, CustomerActivated, CustomerDetailsChanged,
    PasswordResetRequested, PasswordChanged, AccountLocked, AccountUnlocked, DeviceCodeIssued, DeviceAuthorised,
    RegistrationCodeIssued, CustomerAccessEnded, ContractLinkRequested, OrganisationUserInvited,
)


def secret_part(token: str) -> str:
    return token.split(".", 1)[1]


async def namespace_topics(identity: Harness) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=identity.infra.kafka_bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(identity.settings.topic_namespace))
    finally:
        await admin.close()


async def test_no_secret_crosses_kafka_in_clear(identity: Harness) -> None:
    http = identity.http()
    ctx = identity.runtime.identity
    body = person("Odile Secret") | {"mobile": "+33611223344"}
    tokens: list[str] = []  # compound tokens: the whole and the secret part must not appear
    codes: list[str] = []  # 6-digit codes: must not appear as a JSON string
    passwords = [STRONG, OTHER_STRONG, CHANGED, BELGIAN, INVITEE, WRONG]

    # Registration, a second registration of the same email, a resent link, activation.
    await http.post("/v1/registrations", json=body)
    await http.post("/v1/registrations", json=body)
    (registered,) = await identity.events(CustomerRegistered, email=body["email"])
    customer_id = registered.customer_id
    await identity.events(CustomerAlreadyRegistered, customer_id=customer_id)
    tokens.append(unseal(identity, registered, "activation_token"))
    await http.post("/v1/activations/resend", json={"email": body["email"]})
    (reissued,) = await identity.events(ActivationLinkReissued, customer_id=customer_id)
    tokens.append(unseal(identity, reissued, "activation_token"))
    assert (await http.post("/v1/activations", json={"token": tokens[-1]})).status_code == 200

    # A reset, then a change knowing the current password.
    await http.post("/v1/password-resets", json={"email": body["email"]})
    (reset,) = await identity.events(PasswordResetRequested, customer_id=customer_id)
    tokens.append(unseal(identity, reset, "reset_token"))
    assert (await http.post("/v1/password-resets/confirm",
                            json={"token": tokens[-1], "new_password": OTHER_STRONG})).status_code == 200
    session = (await http.post("/v1/sessions", json={"email": body["email"], "password": OTHER_STRONG})).json()
    tokens.append(session["refresh_token"])
    changed = await http.put("/v1/me/password", headers=bearer(session),
                             json={"current_password": OTHER_STRONG, "new_password": CHANGED})
    assert changed.status_code == 200, changed.text

    # A lock, lifted by its expiry.
    guesser = identity.http("192.0.2.77")
    for _ in range(5):
        await guesser.post("/v1/sessions", json={"email": body["email"], "password": WRONG})
    await identity.events(AccountLocked, customer_id=customer_id)
    identity.clock.advance(timedelta(minutes=15))
    try:
        assert (await http.post("/v1/sessions", json={"email": body["email"], "password": CHANGED})).status_code == 200
    finally:
        identity.clock.advance(-timedelta(minutes=15))
    await identity.events(AccountUnlocked, customer_id=customer_id)
    after_lock = (await http.post("/v1/sessions", json={"email": body["email"], "password": CHANGED})).json()

    # A contract link, then a device authorised by text and by email codes.
    number = f"BE-{uuid.uuid4().hex[:6]}"
    await http.post("/v1/me/contract-links", headers=bearer(after_lock), json={
        "method": "vehicle", "first_name": "Odile", "last_name": "Secret", "vin": "WBA8E9G50GNT12345",
        "last_payment_amount": "389.90"})
    await identity.events(ContractLinkRequested, customer_id=customer_id)
    await identity.publish(ContractLinkVerified(customer_id=customer_id, customer_number=number,
                                                contract_numbers=[f"{number}-L1"]))

    async def challenged() -> dict | None:
        answer = (await http.post("/v1/sessions", json={"email": body["email"], "password": CHANGED})).json()
        return answer if answer["status"] == "device_authorisation_required" else None

    challenge = (await eventually(challenged, 20, "device authorisation after the link"))["challenge"]
    tokens.append(challenge)
    for channel in ("sms", "email"):
        assert (await http.post("/v1/device-challenges/code",
                                json={"challenge": challenge, "channel": channel})).status_code == 202
    issued = await identity.events(DeviceCodeIssued, expected=2, customer_id=customer_id)
    codes += [unseal(identity, e, "code") for e in issued]
    latest = max(issued, key=lambda e: e.code_expires_at)
    device = (await http.post("/v1/device-challenges/verify", json={
        "challenge": challenge, "code": unseal(identity, latest, "code"), "remember": True})).json()
    tokens.append(device["device_token"])
    await identity.events(DeviceAuthorised, customer_id=customer_id)

    # Belgian registration from a customer number, then the end of its access 18 months after its contract.
    be_number = f"BE-{uuid.uuid4().hex[:6]}"
    await identity.publish(ContractOpened(
        contract_number=f"{be_number}-L1", customer_number=be_number, holder_first_name="Pieter",
        holder_last_name="Claes", product="lease", market="BE", currency="EUR", start_date=date(2024, 1, 15),
        end_date=date(2028, 1, 14), vin="WBA8E9G50GNT12346", vehicle_model="BMW 320d", mobile_on_file="+32470123499"))
    await eventually(lambda: identity.runtime.db["customer_numbers"].find_one({"_id": be_number}), 20, "the opening")
    await http.post("/v1/registrations/customer-number-codes", json={"customer_number": be_number, "locale": "nl-BE"})
    (texted,) = await identity.events(RegistrationCodeIssued, customer_number=be_number)
    codes.append(unseal(identity, texted, "code"))
    pieter = {"first_name": "Pieter", "last_name": "Claes", "email": f"pieter.{be_number.lower()}@example.be",
              "password": BELGIAN, "locale": "nl-BE", "terms_version": "BE-2026-01", "terms_accepted": True,
              "customer_number": be_number, "code": codes[-1], "contract_number": f"{be_number}-L1"}
    assert (await http.post("/v1/registrations/by-customer-number", json=pieter)).status_code == 202
    await identity.events(CustomerDetailsChanged, email=pieter["email"])
    (be_registered,) = await identity.events(CustomerRegistered, email=pieter["email"])
    tokens.append(unseal(identity, be_registered, "activation_token"))
    assert (await http.post("/v1/activations", json={"token": tokens[-1]})).status_code == 200
    closing = await identity.publish(ContractClosed(contract_number=f"{be_number}-L1", customer_number=be_number,
                                                    closed_on=identity.clock.now().date(), reason="ended",
                                                    customer_has_running_contract=False))

    async def closed() -> bool:
        doc = await identity.runtime.db["customer_numbers"].find_one({"_id": be_number})
        return closing.id in doc["_applied"]

    await eventually(closed, 20, "the closing")
    identity.clock.advance(timedelta(days=560))
    try:
        await end_expired_access(ctx)
    finally:
        identity.clock.advance(-timedelta(days=560))
    await identity.events(CustomerAccessEnded, email=pieter["email"])

    # An organisation user invited, who chooses a password when activating.
    desk_email = f"desk.{uuid.uuid4().hex[:6]}@leaseline.example"
    await create_staff_account(ctx, Person("Sam", "Desk", desk_email, "en"), ["service_desk"], STRONG)
    desk = (await http.post("/v1/sessions", json={"email": desk_email, "password": STRONG})).json()
    admin_email = f"wout.{uuid.uuid4().hex[:6]}@garage.be"
    created = await http.post("/v1/organisations", headers=bearer(desk), json={
        "name": "Garage Noord", "kind": "garage",
        "administrator": {"first_name": "Wout", "last_name": "Jacobs", "email": admin_email, "locale": "nl-BE"}})
    assert created.status_code == 201, created.text
    (invited,) = await identity.events(OrganisationUserInvited, email=admin_email)
    tokens.append(unseal(identity, invited, "activation_token"))
    assert (await http.post("/v1/activations", json={"token": tokens[-1], "password": INVITEE})).status_code == 200

    topics = await namespace_topics(identity)
    assert {identity.topic(cls.event_type) for cls in IDENTITY_EVENTS} <= set(topics), "every kind was published"
    records = [r for topic in topics for r in await read_topic(identity.infra.kafka_bootstrap, topic, timeout_s=5)]
    raw = b"|".join(
        b"|".join([bytes(r.value or b""), bytes(r.key or b""), *(bytes(v or b"") for _, v in r.headers or ())])
        for r in records
    )
    assert body["email"].encode() in raw and pieter["email"].encode() in raw, "the bytes were really read"
    looked_for = (
        [(f"token {i}", t) for i, t in enumerate(tokens)]
        + [(f"secret of token {i}", secret_part(t)) for i, t in enumerate(tokens)]
        + [(f"code {i} as a JSON string", f'"{c}"') for i, c in enumerate(codes)]
        + [(f"password {i}", p) for i, p in enumerate(passwords)]
        + [("an argon2 hash", "argon2")]
    )
    assert [name for name, value in looked_for if value.encode() in raw] == [], "found in clear on Kafka"
