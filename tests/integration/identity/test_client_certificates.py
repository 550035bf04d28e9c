"""A personal client certificate replaces the device code at sign-in (003), on the real broker and store.

The TLS-terminating proxy verifies the certificate and forwards its SHA-256 fingerprint in a header;
these tests play the proxy by setting that header."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.events import DeviceAuthorised
from tests.conftest import Infrastructure
from tests.integration.identity.conftest import Harness, bearer, login, register_and_activate, start_harness, stop_harness
from tests.integration.identity.test_contracts_and_devices import authorise_by_email, linked

pytestmark = pytest.mark.integration

HEADER = "x-client-cert-sha256"


@pytest.fixture(scope="module")
async def identity(infra: Infrastructure) -> AsyncIterator[Harness]:
    harness = await start_harness(infra, client_cert_header=HEADER)
    yield harness
    await stop_harness(harness)


def certificate(name: str, *, valid_for: timedelta = timedelta(days=365)) -> tuple[str, str]:
    """A certificate in PEM and its SHA-256 fingerprint, as the proxy would forward it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(start + valid_for)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return cert.public_bytes(serialization.Encoding.PEM).decode(), hashlib.sha256(der).hexdigest()


def presenting(identity: Harness, fingerprint: str, address: str = "198.51.100.20"):  # type: ignore[no-untyped-def]
    """A client on a new device whose proxy forwards this certificate (written the way proxies print it)."""
    http = identity.http(address)
    http.headers[HEADER] = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    return http


async def test_a_registered_certificate_replaces_the_code_on_any_new_device_until_it_is_forgotten(
    identity: Harness,
) -> None:
    who, _ = await linked(identity, "Bastien Lemoine")
    authorised = await authorise_by_email(identity, who, identity.http(), remember=False)
    pem, fingerprint = certificate("Bastien Lemoine")
    registered = await identity.http().post("/v1/me/client-certificates", headers=bearer(authorised),
                                            json={"certificate_pem": pem, "label": "Work laptop"})
    assert registered.status_code == 201, registered.text
    assert registered.json()["fingerprint_sha256"] == fingerprint
    notices = await identity.events(DeviceAuthorised, expected=2, customer_id=who["customer_id"])
    assert {n.device_label for n in notices} >= {"Work laptop"}, "the owner is told, as of any new device"

    signed_in = (await login(identity, who, client=presenting(identity, fingerprint))).json()
    assert signed_in["status"] == "authenticated", signed_in
    assert (await identity.http().get("/v1/me", headers=bearer(signed_in))).status_code == 200
    devices = (await identity.http().get("/v1/me/devices", headers=bearer(signed_in))).json()
    assert "Work laptop" in {d["label"] for d in devices}

    assert (await login(identity, who)).json()["status"] == "device_authorisation_required", "no certificate, a code"
    forgotten = await identity.http().delete(f"/v1/me/devices/{registered.json()['device_id']}", headers=bearer(authorised))
    assert forgotten.status_code == 204
    again = (await login(identity, who, client=presenting(identity, fingerprint))).json()
    assert again["status"] == "device_authorisation_required", "a forgotten certificate proves nothing"


async def test_a_certificate_proves_nothing_for_another_account_nor_when_only_the_password_is_known(
    identity: Harness,
) -> None:
    owner, _ = await linked(identity, "Clémence Aubry")
    other, _ = await linked(identity, "Damien Collet")
    pem, fingerprint = certificate("Clémence Aubry")

    unlinked = await register_and_activate(identity, "Gaspard Noël")  # signs in without any device step
    refused = await identity.http().post("/v1/me/client-certificates",
                                         headers=bearer((await login(identity, unlinked)).json()),
                                         json={"certificate_pem": pem})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_applicable"
    authorised = await authorise_by_email(identity, owner, identity.http(), remember=False)
    assert (await identity.http().post("/v1/me/client-certificates", headers=bearer(authorised),
                                       json={"certificate_pem": pem})).status_code == 201
    twice = await identity.http().post("/v1/me/client-certificates", headers=bearer(authorised),
                                       json={"certificate_pem": pem})
    assert twice.json()["error"]["code"] == "certificate_registered"

    answer = (await login(identity, other, client=presenting(identity, fingerprint, "198.51.100.21"))).json()
    assert answer["status"] == "device_authorisation_required", "someone else's certificate"
    wrong_password = await presenting(identity, fingerprint).post(
        "/v1/sessions", json={"email": owner["email"], "password": "not-the-password-at-all"})
    assert wrong_password.status_code == 401, "the certificate replaces the code, not the password"


async def test_certificates_that_are_not_or_no_longer_valid_are_refused_with_a_reason(identity: Harness) -> None:
    who, _ = await linked(identity, "Elodie Fabre")
    authorised = await authorise_by_email(identity, who, identity.http(), remember=False)
    expired, _ = certificate("Elodie Fabre", valid_for=timedelta(hours=1))
    cases = {"not a certificate": ("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
                                   "validation_failed", "not_a_certificate"),
             "expired": (expired, "certificate_not_valid_now", "certificate_not_valid_now")}
    for case, (pem, code, field_code) in cases.items():
        answer = await identity.http().post("/v1/me/client-certificates", headers=bearer(authorised),
                                            json={"certificate_pem": pem})
        assert answer.status_code == 422 and answer.json()["error"]["code"] == code, (case, answer.text)
        (field,) = answer.json()["error"]["fields"]
        assert field["loc"] == ["body", "certificate_pem"] and field["code"] == field_code, (case, field)
        assert field["msg"] == answer.json()["error"]["message"], "the field says why, as the error does"


async def test_without_a_configured_header_a_client_sent_fingerprint_is_ignored(infra: Infrastructure) -> None:
    """A client may send any header: only the one the operator named (CLIENT_CERT_HEADER), which their
    proxy overwrites, is believed."""
    plain = await start_harness(infra)
    try:
        who, _ = await linked(plain, "Fabien Renaud")
        authorised = await authorise_by_email(plain, who, plain.http(), remember=False)
        pem, fingerprint = certificate("Fabien Renaud")
        assert (await plain.http().post("/v1/me/client-certificates", headers=bearer(authorised),
                                        json={"certificate_pem": pem})).status_code == 201
        answer = (await login(plain, who, client=presenting(plain, fingerprint))).json()
        assert answer["status"] == "device_authorisation_required"
    finally:
        await stop_harness(plain)
