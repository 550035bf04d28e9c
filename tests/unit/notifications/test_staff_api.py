"""The staff API, in front of a store of two deliveries: closed unless a token is configured, and
nothing in its answers that reads an address or a number out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from services.notifications.domain.delivery import Delivery, Status
from services.notifications.entrypoints.http import add_routes
from shared.clock import FixedClock

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
TOKEN = "a-long-staff-token-for-support"


def refused_sms() -> dict[str, Any]:
    sms = Delivery(
        id="ntf_sms", source_event_id="evt_1", source_event_type="customer.device_code_issued", channel="sms",
        recipient="+33612345678", template="device_code", locale="fr-FR", category="transactional",
        urgency="immediate", created_at=NOW, envelope={}, origin={}, customer_id="cus_jeanne",
    )
    refusal = "Twilio 400/21211: The 'To' number +33612345678 is not a valid phone number."
    retried = sms.retry_later(NOW, NOW + timedelta(seconds=5), "451 4.7.1 <jeanne.martin@example.fr>: try later")
    return retried.finish(Status.FAILED, NOW + timedelta(seconds=5), reason=refusal, permanent=True,
                          fallback_id="ntf_email").to_document()


def fallback_email() -> dict[str, Any]:
    return Delivery(
        id="ntf_email", source_event_id="evt_1", source_event_type="customer.device_code_issued", channel="email",
        recipient="jeanne.martin@example.fr", template="device_code", locale="fr-FR", category="transactional",
        urgency="immediate", created_at=NOW, envelope={}, origin={}, customer_id="cus_jeanne", fallback_of="ntf_sms",
        note="instead of sms: Twilio 400/21211: The 'To' number +33612345678 is not a valid phone number.",
        last_error="recipient refused: 550 5.1.1 <jeanne.martin@example.fr>: User unknown",
        status=Status.RETRYING, attempts=1,
    ).active_document()


class Store:
    def __init__(self, *docs: dict[str, Any]) -> None:
        self.docs = {doc["_id"]: doc for doc in docs}

    async def for_customer(self, customer_id: str, limit: int) -> list[dict[str, Any]]:
        return [d for d in self.docs.values() if d["customer_id"] == customer_id][:limit]

    async def for_customer_number(self, customer_number: str, limit: int) -> list[dict[str, Any]]:
        return [d for d in self.docs.values() if d.get("customer_number") == customer_number][:limit]

    async def one(self, delivery_id: str) -> dict[str, Any] | None:
        return self.docs.get(delivery_id)


def registration_code() -> dict[str, Any]:
    return Delivery(
        id="ntf_code", source_event_id="evt_2", source_event_type="customer.registration_code_issued", channel="sms",
        recipient="+32470123456", template="registration_code", locale="nl-BE", category="transactional",
        urgency="immediate", created_at=NOW, envelope={}, origin={}, customer_number="BE-100234",
    ).finish(Status.SENT, NOW, provider_id="SM" + "1" * 32).to_document()


def client(token: str) -> httpx.AsyncClient:
    app = FastAPI()
    store = Store(refused_sms(), fallback_email(), registration_code())
    add_routes(app, store, FixedClock(NOW), token)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifications")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_without_a_configured_token_the_staff_api_is_closed_and_says_why() -> None:
    async with client("") as http:
        for headers in ({}, bearer(""), bearer("anything")):
            answer = await http.get("/v1/customers/cus_jeanne/deliveries", headers=headers)
            assert answer.status_code == 503, headers
            assert answer.json()["detail"] == "staff API disabled: set STAFF_API_TOKEN"
        assert (await http.get("/v1/deliveries/ntf_sms")).status_code == 503


async def test_a_missing_or_wrong_token_is_refused_and_the_right_one_lets_support_in() -> None:
    async with client(TOKEN) as http:
        for headers in ({}, bearer(TOKEN[:-1]), bearer(TOKEN + "x"), {"Authorization": TOKEN}):
            answer = await http.get("/v1/customers/cus_jeanne/deliveries", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.headers["www-authenticate"] == "Bearer"
        assert (await http.get("/v1/deliveries/ntf_sms", headers=bearer("wrong"))).status_code == 401
        answer = await http.get("/v1/customers/cus_jeanne/deliveries", headers=bearer(TOKEN))
        assert answer.status_code == 200 and {d["id"] for d in answer.json()} == {"ntf_sms", "ntf_email"}


async def test_a_code_texted_before_the_account_existed_is_found_by_customer_number_with_the_token_only() -> None:
    async with client(TOKEN) as http:
        assert (await http.get("/v1/customer-numbers/BE-100234/deliveries")).status_code == 401
        answer = await http.get("/v1/customer-numbers/BE-100234/deliveries", headers=bearer(TOKEN))
    [code] = answer.json()
    assert (code["id"], code["status"], code["recipient"]) == ("ntf_code", "sent", "+324*****456")


async def test_addresses_and_numbers_quoted_in_provider_reasons_are_masked() -> None:
    async with client(TOKEN) as http:
        sms = (await http.get("/v1/deliveries/ntf_sms", headers=bearer(TOKEN))).json()
        email = (await http.get("/v1/deliveries/ntf_email", headers=bearer(TOKEN))).json()

    assert sms["recipient"] == "+336*****678"
    assert sms["reason"] == "Twilio 400/21211: The 'To' number +336*****678 is not a valid phone number."
    assert [a["reason"] for a in sms["history"]] == ["451 4.7.1 <j***@example.fr>: try later", sms["reason"]]
    assert email["recipient"] == "j***@example.fr"
    assert email["reason"] == "recipient refused: 550 5.1.1 <j***@example.fr>: User unknown"
    assert email["note"] == "instead of sms: Twilio 400/21211: The 'To' number +336*****678 is not a valid phone number."
    for answer in (sms, email):
        text = str(answer)
        assert "jeanne.martin" not in text and "612345678" not in text, answer


def test_compose_requires_a_staff_token() -> None:
    root = Path(__file__).resolve().parents[3]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    notifications = compose["services"]["notifications"]
    assert notifications["ports"], "published: hence the token"
    assert notifications["environment"]["STAFF_API_TOKEN"].startswith("${STAFF_API_TOKEN:?"), "no silent default"


def test_make_run_makes_a_kept_token_and_gives_it_to_notifications_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.run import base_env, service_env, staff_api_token, staff_token_file

    monkeypatch.setenv("LEASELINE_LOCAL_DIR", str(tmp_path))
    monkeypatch.delenv("STAFF_API_TOKEN", raising=False)
    token = staff_api_token()
    assert len(token) >= 32 and staff_api_token() == token, "made once, kept between runs"
    assert staff_token_file().stat().st_mode & 0o077 == 0, "readable by its owner only"
    monkeypatch.setenv("STAFF_API_TOKEN", "chosen-by-the-operator")
    assert staff_api_token() == "chosen-by-the-operator"
    base = base_env({"STAFF_API_TOKEN": "chosen-by-the-operator"}, "127.0.0.1:9092", "mongodb://x/")
    assert "STAFF_API_TOKEN" not in base, "not in what every child shares"
    assert service_env("notifications", base, "", token)["STAFF_API_TOKEN"] == token
    for name in ("identity", "contracts", "restitution", "consent"):
        assert "STAFF_API_TOKEN" not in service_env(name, base, "", token), name
