"""Signing in and out: access tokens verifiable by anyone with the JWKS, rotating refresh tokens, sessions."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import SecretStr

from services.identity.bootstrap import build
from tests.conftest import Infrastructure
from tests.integration.identity.test_contracts_and_devices import authorise_by_email, linked
from tests.integration.identity.conftest import (
    Harness,
    ShiftableClock,
    bearer,
    identity_settings,
    login,
    register_and_activate,
    stop_harness,
)

pytestmark = pytest.mark.integration


async def signed_in(identity: Harness, name: str) -> tuple[dict, dict]:
    who = await register_and_activate(identity, name)
    answer = await login(identity, who)
    assert answer.status_code == 200, answer.text
    return who, answer.json()


async def test_another_service_verifies_an_access_token_with_the_published_jwks_alone(identity: Harness) -> None:
    who, tokens = await signed_in(identity, "Hugo Laurent")
    jwks = (await identity.http().get("/.well-known/jwks.json")).json()
    assert "/.well-known/jwks.json" in (await identity.http().get("/openapi.json")).json()["paths"]

    header = jwt.get_unverified_header(tokens["access_token"])
    (key,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert header["alg"] == key["alg"] == "EdDSA" and "d" not in key, "only the public half is published"
    claims = jwt.decode(tokens["access_token"], jwt.PyJWK(key).key, algorithms=["EdDSA"], audience="leaseline",
                        issuer="leaseline-identity")
    assert claims["sub"] == who["customer_id"] and claims["sid"] == tokens["session_id"]
    assert claims["exp"] - claims["iat"] == 900


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_tampered_expired_foreign_and_unsigned_tokens_are_refused(identity: Harness) -> None:
    who, tokens = await signed_in(identity, "Ines Garcia")
    http = identity.http()
    good = tokens["access_token"]
    head, body, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    stranger_key = ed25519.Ed25519PrivateKey.generate()
    kid = jwt.get_unverified_header(good)["kid"]

    forgeries = {
        "tampered": f"{head}.{_b64(claims | {'sub': 'cus_someone_else'})}.{signature}",
        "wrong key": jwt.encode(claims, stranger_key, algorithm="EdDSA", headers={"kid": kid}),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{body}.",
        "alg HS256 with the public key": jwt.encode(
            claims, json.dumps((await http.get("/.well-known/jwks.json")).json()["keys"][0]).encode() * 2,
            algorithm="HS256", headers={"kid": kid},
        ),
        "garbage": "not.a.token",
    }
    assert (await http.get("/v1/me", headers=bearer(tokens))).status_code == 200
    for name, token in forgeries.items():
        answer = await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401, name
        assert answer.json()["error"]["code"] == "access_token_invalid", name

    identity.clock.advance(timedelta(minutes=15))
    try:
        expired = await http.get("/v1/me", headers=bearer(tokens))
    finally:
        identity.clock.advance(-timedelta(minutes=15))
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "access_token_expired"
    assert (await http.get("/v1/me")).json()["error"]["code"] == "unauthenticated"


async def test_a_refresh_token_is_rotated_and_replaying_an_old_one_closes_the_whole_session(identity: Harness) -> None:
    _, tokens = await signed_in(identity, "Jules Roux")
    http = identity.http()

    first = await http.post("/v1/sessions/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200
    rotated = first.json()
    assert rotated["refresh_token"] != tokens["refresh_token"] and rotated["session_id"] == tokens["session_id"]

    replay = await http.post("/v1/sessions/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "refresh_token_reused"
    after = await http.post("/v1/sessions/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert after.status_code == 401, "the thief's replay also closed the legitimate holder's family"
    assert (await http.get("/v1/me", headers=bearer(rotated))).json()["error"]["code"] == "session_ended"


async def test_a_forged_refresh_token_is_refused(identity: Harness) -> None:
    _, tokens = await signed_in(identity, "Karim Haddad")
    session_id = tokens["session_id"]
    answer = await identity.http().post("/v1/sessions/refresh", json={"refresh_token": f"{session_id}.{'B' * 43}"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "refresh_token_invalid"


async def test_logout_ends_this_session_and_logout_everywhere_ends_them_all(identity: Harness) -> None:
    who = await register_and_activate(identity, "Lea Fontaine")
    http = identity.http()
    laptop = (await login(identity, who)).json()
    phone = (await login(identity, who)).json()
    tablet = (await login(identity, who)).json()

    listed = (await http.get("/v1/me/sessions", headers=bearer(laptop))).json()
    assert {s["session_id"] for s in listed} == {laptop["session_id"], phone["session_id"], tablet["session_id"]}
    assert [s["current"] for s in listed] == [True, False, False]

    assert (await http.delete("/v1/me/sessions/current", headers=bearer(laptop))).status_code == 204
    assert (await http.get("/v1/me", headers=bearer(laptop))).status_code == 401
    assert (await http.post("/v1/sessions/refresh", json={"refresh_token": laptop["refresh_token"]})).status_code == 401
    assert (await http.get("/v1/me", headers=bearer(phone))).status_code == 200

    assert (await http.delete(f"/v1/me/sessions/{tablet['session_id']}", headers=bearer(phone))).status_code == 204
    assert (await http.get("/v1/me", headers=bearer(tablet))).status_code == 401

    assert (await http.delete("/v1/me/sessions", headers=bearer(phone))).status_code == 204
    assert (await http.get("/v1/me", headers=bearer(phone))).status_code == 401
    assert (await http.post("/v1/sessions/refresh", json={"refresh_token": phone["refresh_token"]})).status_code == 401
    fresh = (await login(identity, who)).json()
    assert [s["session_id"] for s in (await http.get("/v1/me/sessions", headers=bearer(fresh))).json()] == [
        fresh["session_id"]
    ]


async def test_a_customer_cannot_see_or_end_another_customers_sessions_or_devices(identity: Harness) -> None:
    _, mallory = await signed_in(identity, "Mallory Noir")
    victor, _ = await linked(identity, "Victor Blanc")
    http = identity.http()
    victim = await authorise_by_email(identity, victor, http, remember=True)
    (device,) = (await http.get("/v1/me/devices", headers=bearer(victim))).json()
    assert device["remembered"]

    attempt = await http.delete(f"/v1/me/sessions/{victim['session_id']}", headers=bearer(mallory))
    assert attempt.status_code == 404, "someone else's session does not exist for this caller"
    assert (await http.get("/v1/me", headers=bearer(victim))).status_code == 200
    forget = await http.delete(f"/v1/me/devices/{device['device_id']}", headers=bearer(mallory))
    assert forget.status_code == 404 and forget.json()["error"]["code"] == "not_found"
    assert (await http.get("/v1/me/devices", headers=bearer(mallory))).json() == []
    mine = (await http.get("/v1/me/sessions", headers=bearer(mallory))).json()
    assert victim["session_id"] not in {s["session_id"] for s in mine}

    assert (await http.get("/v1/me/devices", headers=bearer(victim))).json() == [device], "the device is untouched"
    assert (await http.get("/v1/me", headers=bearer(victim))).status_code == 200, "and its session lives"
    again = await login(identity, victor, device_token=victim["device_token"])
    assert again.json()["status"] == "authenticated", "still remembered"


def _pem() -> str:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


async def test_after_a_key_rotation_tokens_signed_with_the_old_key_stay_valid_until_they_expire(
    infra: Infrastructure,
) -> None:
    clock = ShiftableClock()
    first = identity_settings(infra, jwt_private_key_pem=SecretStr(_pem()), jwt_key_id="key-2026-11")

    async def started(settings) -> Harness:  # type: ignore[no-untyped-def]
        runtime = build(settings, clock=clock)
        await runtime.start()
        return Harness(runtime, settings, clock, infra)

    before = await started(first)
    try:
        who = await register_and_activate(before, "Romane Giraud")
        old = (await login(before, who)).json()
    finally:
        await stop_harness(before, keep_data=True)

    rotated = first.model_copy(update={"jwt_private_key_pem": SecretStr(_pem()), "jwt_key_id": "key-2026-12"})
    after = await started(rotated)
    try:
        http = after.http()
        assert jwt.get_unverified_header(old["access_token"])["kid"] == "key-2026-11"
        assert (await http.get("/v1/me", headers=bearer(old))).status_code == 200, "the old key still verifies"
        assert {k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]} == {
            "key-2026-11", "key-2026-12"}
        new = (await http.post("/v1/sessions/refresh", json={"refresh_token": old["refresh_token"]})).json()
        assert jwt.get_unverified_header(new["access_token"])["kid"] == "key-2026-12"

        clock.advance(timedelta(minutes=15))
        expired = await http.get("/v1/me", headers=bearer(old))
        assert expired.json()["error"]["code"] == "access_token_expired", "its own lifetime still ends it"
        clock.advance(timedelta(minutes=46))  # past the longest lifetime allowed (1 h) since the rotation
        assert [k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]] == ["key-2026-12"]
        assert (await http.get("/v1/me", headers=bearer(old))).json()["error"]["code"] == "access_token_invalid"
    finally:
        await stop_harness(after, keep_data=True)

    again = await started(rotated)  # a later restart does not bring the retired key back
    try:
        jwks = (await again.http().get("/.well-known/jwks.json")).json()
        assert [k["kid"] for k in jwks["keys"]] == ["key-2026-12"]
    finally:
        await stop_harness(again)


async def test_in_a_rolling_restart_onto_a_new_key_the_instances_still_on_the_old_one_accept_and_publish_it(
    infra: Infrastructure,
) -> None:
    """Instance A still signs with the old key while B, restarted, signs with the new one: a client
    signed in at B may call A next, and other services may fetch the JWKS from A."""
    clock = ShiftableClock()
    old_settings = identity_settings(infra, jwt_private_key_pem=SecretStr(_pem()), jwt_key_id="key-old",
                                     signing_keys_refresh_s=0.3)
    new_settings = old_settings.model_copy(update={"jwt_private_key_pem": SecretStr(_pem()), "jwt_key_id": "key-new"})
    instances = []
    try:
        for settings in (old_settings, new_settings):
            runtime = build(settings, clock=clock)
            await runtime.start()
            instances.append(Harness(runtime, settings, clock, infra))
        a, b = instances
        who = await register_and_activate(a, "Maëlle Perrin")
        signed_at_b = (await login(b, who)).json()
        assert jwt.get_unverified_header(signed_at_b["access_token"])["kid"] == "key-new"
        assert (await a.http().get("/v1/me", headers=bearer(signed_at_b))).status_code == 200, \
            "A learns the new key from the first token naming it"
        signed_at_a = (await login(a, who)).json()
        assert (await b.http().get("/v1/me", headers=bearer(signed_at_a))).status_code == 200, "and B accepts the old one"

        # A JWKS reader that never sends A a token learns the new key within the refresh interval.
        a.runtime.identity.tokens.accept_others([])  # as if A had never heard of it
        assert {k["kid"] for k in (await a.http().get("/.well-known/jwks.json")).json()["keys"]} == {"key-old"}
        for _ in range(50):
            published = {k["kid"] for k in (await a.http().get("/.well-known/jwks.json")).json()["keys"]}
            if published == {"key-old", "key-new"}:
                break
            await asyncio.sleep(0.1)
        assert published == {"key-old", "key-new"}

        forged = jwt.encode({"sub": "x", "sid": "y"}, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA",
                            headers={"kid": "key-nobody-has"})
        refused = await a.http().get("/v1/me", headers={"authorization": f"Bearer {forged}"})
        assert refused.json()["error"]["code"] == "access_token_invalid"
    finally:
        for harness in reversed(instances):
            await stop_harness(harness, keep_data=harness is not instances[0])
