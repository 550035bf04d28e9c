"""Raw bytes read back from Kafka never hold a token, a code or a password in clear."""

from __future__ import annotations

import pytest

from shared.events import CustomerRegistered, PasswordResetRequested
from tests.integration.identity.conftest import OTHER_STRONG, STRONG, Harness, person, unseal

pytestmark = pytest.mark.integration

IDENTITY_TOPICS = (
    "customer.registered", "customer.already_registered", "customer.activated", "customer.password_reset_requested",
    "customer.password_changed", "customer.activation_link_reissued",
)


async def test_no_secret_crosses_kafka_in_clear(identity: Harness) -> None:
    http = identity.http()
    body = person("Odile Secret")
    await http.post("/v1/registrations", json=body)
    await http.post("/v1/registrations", json=body)  # already registered
    (registered,) = await identity.events(CustomerRegistered, email=body["email"])
    activation = unseal(identity, registered, "activation_token")
    await http.post("/v1/activations", json={"token": activation})
    await http.post("/v1/password-resets", json={"email": body["email"]})
    (reset,) = await identity.events(PasswordResetRequested, customer_id=registered.customer_id)
    reset_token = unseal(identity, reset, "reset_token")
    assert (await http.post("/v1/password-resets/confirm",
                            json={"token": reset_token, "new_password": OTHER_STRONG})).status_code == 200

    raw = b"".join([b for topic in IDENTITY_TOPICS for b in await identity.raw_topic_bytes(topic)])
    assert body["email"].encode() in raw, "the bytes were really read"
    for secret in (activation, activation.split(".", 1)[1], reset_token.split(".", 1)[1], STRONG, OTHER_STRONG):
        assert secret.encode() not in raw
    assert b"argon2" not in raw, "not even the hash"
