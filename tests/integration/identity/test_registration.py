"""Registering, activating and resending links, through the HTTP API, with events read back from Kafka."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.events import ActivationLinkReissued, CustomerActivated, CustomerAlreadyRegistered, CustomerRegistered
from tests.integration.identity.conftest import STRONG, Harness, login, person, register_and_activate, unseal

pytestmark = pytest.mark.integration


async def test_a_new_customer_registers_activates_with_the_sealed_link_and_signs_in(identity: Harness) -> None:
    http = identity.http()
    jeanne = person("Jeanne Martin") | {"email": "  Jeanne.Martin.reg@Example.FR ", "mobile": "06 12 34 56 78"}

    answer = await http.post("/v1/registrations", json=jeanne)

    assert answer.status_code == 202
    (registered,) = await identity.events(CustomerRegistered, email="jeanne.martin.reg@example.fr")
    assert registered.mobile == "+33612345678" and registered.locale == "fr-FR"
    assert registered.activation_token.startswith("sealed:v1:test:")
    assert registered.activation_expires_at - identity.clock.now() > timedelta(hours=71)
    early = await login(identity, {"email": "jeanne.martin.reg@example.fr", "password": STRONG})
    assert early.status_code == 403 and early.json()["error"]["code"] == "account_not_activated"
    assert "/v1/activations/resend" in early.json()["error"]["message"], "the refusal says what to do"

    token = unseal(identity, registered, "activation_token")
    assert (await http.post("/v1/activations", json={"token": token})).json() == {"status": "activated"}
    await identity.events(CustomerActivated, customer_id=registered.customer_id)
    signed_in = await login(identity, {"email": "JEANNE.martin.reg@example.fr", "password": STRONG})
    assert signed_in.status_code == 200 and signed_in.json()["status"] == "authenticated"


async def test_an_activation_link_works_once_and_then_says_it_was_used(identity: Harness) -> None:
    http = identity.http()
    body = person("Bruno Lefevre")
    await http.post("/v1/registrations", json=body)
    (registered,) = await identity.events(CustomerRegistered, email=body["email"])
    token = unseal(identity, registered, "activation_token")

    first = await http.post("/v1/activations", json={"token": token})
    again = await http.post("/v1/activations", json={"token": token})

    assert first.status_code == 200
    assert again.status_code == 400 and again.json()["error"]["code"] == "activation_already_used"


async def test_an_activation_link_expires_after_72_hours(identity: Harness) -> None:
    http = identity.http()
    body = person("Chloe Dubois")
    await http.post("/v1/registrations", json=body)
    (registered,) = await identity.events(CustomerRegistered, email=body["email"])
    identity.clock.advance(timedelta(hours=72, seconds=1))
    try:
        late = await http.post("/v1/activations", json={"token": unseal(identity, registered, "activation_token")})
    finally:
        identity.clock.advance(-timedelta(hours=72, seconds=1))
    assert late.status_code == 400 and late.json()["error"]["code"] == "activation_expired"


async def test_a_forged_activation_token_is_refused_as_invalid(identity: Harness) -> None:
    http = identity.http()
    body = person("Didier Moreau")
    await http.post("/v1/registrations", json=body)
    (registered,) = await identity.events(CustomerRegistered, email=body["email"])
    genuine = unseal(identity, registered, "activation_token")
    account_id, secret = genuine.split(".", 1)
    forged = f"{account_id}.{secret[::-1]}"

    for token in (forged, "cus_doesnotexist." + "A" * 43, "not-a-token"):
        answer = await http.post("/v1/activations", json={"token": token})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "activation_invalid", token


async def test_a_resent_link_replaces_the_old_one_and_unknown_emails_get_the_same_answer(identity: Harness) -> None:
    http = identity.http()
    body = person("Emma Petit")
    await http.post("/v1/registrations", json=body)
    (registered,) = await identity.events(CustomerRegistered, email=body["email"])

    known = await http.post("/v1/activations/resend", json={"email": body["email"]})
    unknown = await http.post("/v1/activations/resend", json={"email": "nobody.here@example.fr"})

    assert known.status_code == unknown.status_code == 202 and known.json() == unknown.json()
    (reissued,) = await identity.events(ActivationLinkReissued, customer_id=registered.customer_id)
    old = await http.post("/v1/activations", json={"token": unseal(identity, registered, "activation_token")})
    assert old.json()["error"]["code"] == "activation_superseded"
    new = await http.post("/v1/activations", json={"token": unseal(identity, reissued, "activation_token")})
    assert new.status_code == 200


async def test_registering_a_taken_email_answers_the_same_and_tells_the_owner(identity: Harness) -> None:
    http = identity.http()
    owner = await register_and_activate(identity, "Fatima Benali")
    newcomer = person("Someone Else")

    for_taken = await http.post("/v1/registrations", json=person("Fatima Benali") | {"email": owner["email"].upper()})
    for_new = await http.post("/v1/registrations", json=newcomer)

    assert for_taken.status_code == for_new.status_code == 202
    assert for_taken.json() == for_new.json()
    assert set(for_taken.headers) - {"x-request-id"} == set(for_new.headers) - {"x-request-id"}
    (told,) = await identity.events(CustomerAlreadyRegistered, customer_id=owner["customer_id"])
    assert told.email == owner["email"]
    assert (await identity.runtime.db["accounts"].count_documents({"email": owner["email"]})) == 1


async def test_a_long_passphrase_is_accepted_and_signs_in(identity: Harness) -> None:
    passphrase = "the quiet heron waits by the copper canal while seven lanterns drift south past the old mill of Gent"
    assert len(passphrase) == 100, "longer than the 72 characters the strength estimator reads"
    who = await register_and_activate(identity, "Lucien Aubry", password=passphrase)
    signed_in = await login(identity, who)
    assert signed_in.status_code == 200 and signed_in.json()["status"] == "authenticated"


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"terms_accepted": False}, "terms_accepted", "terms_not_accepted"),
        ({"password": "Tiny-7bq"}, "password", "password_too_short"),
        ({"password": "passwordpassword"}, "password", "password_too_weak"),
        ({"password": "Leaseline2026!"}, "password", "password_too_weak"),  # the service's name and the year
        ({"password": "Summer2024!!"}, "password", "password_too_weak"),
        ({"password": "Martin-Gaspard-2026!"}, "password", "password_personal"),
        ({"password": "Velvet-Harbour-Lantern-42-" * 4 + "x" * 25}, "password", "password_too_long"),  # 129
        ({"email": "not an email"}, "email", "value_error"),
        ({"mobile": "+33 1 23"}, "mobile", "value_error"),
        ({"locale": "de-DE"}, "locale", "literal_error"),
    ],
)
async def test_a_refused_registration_names_the_field_and_the_reason(
    identity: Harness, change: dict, field: str, code: str
) -> None:
    body = person("Gaspard Martin") | change
    answer = await identity.http().post("/v1/registrations", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_failed"
    assert [f["code"] for f in error["fields"] if f["loc"][-1] == field] == [code], error
    if "password" in change:
        assert change["password"] not in answer.text, "a password is never echoed back"
