"""Tokens, codes and passwords never appear in clear: not in the raw bytes read back from Kafka, not in
any document of the identity database, not in any log line.

Every flow that makes identity publish runs once (registration, resend, activation, reset, change,
refresh, lock and unlock, contract link, device codes by text and email, Belgian registration, invitation
of an organisation user, a required password change, access end), with every log record of the process
captured as the project's JSON lines; then every topic of the service's namespace is read raw, and every
collection of its database is read whole.
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

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
from shared.logging import JsonFormatter
from tests.integration.helpers import eventually, read_topic
from tests.integration.identity.conftest import OTHER_STRONG, STRONG, Harness, bearer, person, unseal

pytestmark = pytest.mark.integration

CHANGED = "Amber-Thistle-Gondola-58"
BELGIAN = "Copper-Meadow-Falcon-31"
INVITEE = "Saffron-Glacier-Tunnel-64"
FORCED = "Marble-Lagoon-Quiver-73"
PERSONAL = "Odile-Secret-Harbour-95"  # refused (it holds her name): a refusal must not log it either
WRONG = "Wrong-Guess-Number-1"
IDENTITY_EVENTS = (
    CustomerRegistered, CustomerAlreadyRegistered, ActivationLinkReissued, CustomerActivated, CustomerDetailsChanged,
    PasswordResetRequested, PasswordChanged, AccountLocked, AccountUnlocked, DeviceCodeIssued, DeviceAuthorised,
    RegistrationCodeIssued, CustomerAccessEnded, ContractLinkRequested, OrganisationUserInvited,
)


async def namespace_topics(identity: Harness) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=identity.infra.kafka_bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(identity.settings.topic_namespace))
    finally:
        await admin.close()


@dataclass(frozen=True)
class EveryFlow:
    tokens: list[str]  # compound tokens ("<id>.<secret>"): neither the whole nor the secret part may appear
    codes: list[str]  # 6-digit codes
    passwords: list[str]
    emails: list[str]  # in clear on Kafka and in the database (not in logs: masked there): the bytes were read
    log_lines: list[str]


def secret_part(token: str) -> str:
    return token.split(".", 1)[1]


def secrets_looked_for(flow: EveryFlow) -> list[tuple[str, str]]:
    return (
        [(f"token {i}", t) for i, t in enumerate(flow.tokens)]
        + [(f"secret of token {i}", secret_part(t)) for i, t in enumerate(flow.tokens)]
        + [(f"password {i}", p) for i, p in enumerate(flow.passwords)]
    )


@pytest.fixture(scope="module")
async def every_flow(identity: Harness) -> AsyncIterator[EveryFlow]:
    """Every flow once, every log record of the process (any logger, down to DEBUG) kept as JSON lines."""
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter("identity"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        flow = await run_every_flow(identity)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    yield EveryFlow(**flow, log_lines=captured.getvalue().splitlines())


async def run_every_flow(identity: Harness) -> dict[str, Any]:
    http = identity.http()
    ctx = identity.runtime.identity
    body = person("Odile Secret") | {"mobile": "+33611223344"}
    tokens: list[str] = []
    codes: list[str] = []
    passwords = [STRONG, OTHER_STRONG, CHANGED, BELGIAN, INVITEE, FORCED, PERSONAL, WRONG]

    # Registration (refused once: her name in the password), a second registration of the same
    # email, a resent link, activation.
    refused = await http.post("/v1/registrations", json=body | {"password": PERSONAL})
    assert refused.status_code == 422 and refused.json()["error"]["fields"][0]["code"] == "password_personal"
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
    first = (await http.post("/v1/sessions", json={"email": body["email"], "password": OTHER_STRONG})).json()
    tokens.append(first["refresh_token"])
    session = (await http.post("/v1/sessions/refresh", json={"refresh_token": first["refresh_token"]})).json()
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

    # A password change a security administrator required of the service desk account (staff sign in
    # without device authorisation: the ticket comes with the refused sign-in).
    security_email = f"security.{uuid.uuid4().hex[:6]}@leaseline.example"
    await create_staff_account(ctx, Person("Sue", "Security", security_email, "en"), ["security_administrator"], STRONG)
    security = (await http.post("/v1/sessions", json={"email": security_email, "password": STRONG})).json()
    desk_id = (await identity.account(desk_email))["_id"]
    assert (await http.post("/v1/staff/password-change-requirements", headers=bearer(security),
                            json={"account_ids": [desk_id]})).status_code == 200
    required = (await http.post("/v1/sessions", json={"email": desk_email, "password": STRONG})).json()
    tokens.append(required["error"]["details"]["change_ticket"])
    assert (await http.post("/v1/password-changes/forced",
                            json={"change_ticket": tokens[-1], "new_password": FORCED})).status_code == 200
    return {"tokens": tokens, "codes": codes, "passwords": passwords, "emails": [body["email"], pieter["email"]]}


async def test_no_secret_crosses_kafka_in_clear(identity: Harness, every_flow: EveryFlow) -> None:
    topics = await namespace_topics(identity)
    assert {identity.topic(cls.event_type) for cls in IDENTITY_EVENTS} <= set(topics), "every kind was published"
    records = [r for topic in topics for r in await read_topic(identity.infra.kafka_bootstrap, topic, timeout_s=5)]
    raw = b"|".join(
        b"|".join([bytes(r.value or b""), bytes(r.key or b""), *(bytes(v or b"") for _, v in r.headers or ())])
        for r in records
    )
    assert all(email.encode() in raw for email in every_flow.emails), "the bytes were really read"
    looked_for = (
        secrets_looked_for(every_flow)
        + [(f"code {i} as a JSON string", f'"{c}"') for i, c in enumerate(every_flow.codes)]
        + [("an argon2 hash", "argon2")]
    )
    assert [name for name, value in looked_for if value.encode() in raw] == [], "found in clear on Kafka"


def texts_in(value: Any) -> list[str]:
    """Every text of a stored document, keys included, at any depth (bytes read as text)."""
    if isinstance(value, dict):
        return [text for k, v in value.items() for text in [str(k), *texts_in(v)]]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in texts_in(item)]
    if isinstance(value, (bytes, bytearray)):
        return [bytes(value).decode("latin-1")]
    return [value] if isinstance(value, str) else []


def standing_alone(code: str) -> re.Pattern[str]:
    """A code as itself, not as six digits inside a longer run of letters and digits (a hex hash)."""
    return re.compile(rf"(?<![0-9A-Za-z]){code}(?![0-9A-Za-z])")


async def test_the_identity_database_keeps_only_hashes_of_tokens_codes_and_passwords(
    identity: Harness, every_flow: EveryFlow,
) -> None:
    db = identity.runtime.db
    stored = {name: await db[name].find().to_list() for name in await db.list_collection_names()}
    assert {"accounts", "sessions", "devices", "device_challenges", "customer_numbers"} <= set(stored)
    texts = [text for docs in stored.values() for doc in docs for text in texts_in(doc)]
    everything = "\n".join(texts)
    assert all(email in everything for email in every_flow.emails), "the documents were really read"
    assert sum(doc.get("password_hash", "").startswith("$argon2id$") for doc in stored["accounts"]) >= 4
    found = [name for name, value in secrets_looked_for(every_flow) if value in everything]
    found += [f"code {i}" for i, c in enumerate(every_flow.codes) if standing_alone(c).search(everything)]
    assert found == [], "found in clear in the database"


def test_no_log_line_holds_a_password_token_or_code(every_flow: EveryFlow) -> None:
    lines = every_flow.log_lines
    assert len(lines) > 50 and all(line.startswith("{") for line in lines), "the JSON lines were really captured"
    everything = "\n".join(lines)
    found = [name for name, value in secrets_looked_for(every_flow) if value in everything]
    found += [f"code {i}" for i, c in enumerate(every_flow.codes) if standing_alone(c).search(everything)]
    assert found == [], "found in clear in the logs"
