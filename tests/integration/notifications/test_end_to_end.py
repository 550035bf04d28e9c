"""Identity and notifications together, on the real broker, store and sinks: what a customer does
with the messages they receive."""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlparse

import pytest

from deploy.sinks.smtp import CaughtMail
from services.notifications.domain.sms import segments
from shared.events import ContractLinkVerified
from shared.settings import ServiceSettings
from tests.conftest import Infrastructure, drop_database
from tests.integration.helpers import eventually
from tests.integration.identity.conftest import bearer, person, start_harness, stop_harness
from tests.integration.notifications.conftest import KEYS, PORTAL, Sinks, StartNotifications

pytestmark = pytest.mark.integration


def link_token(mail: CaughtMail, path: str) -> str:
    links = [u for u in re.findall(r"https?://\S+", mail.text()) if urlparse(u).path.endswith(path)]
    assert links, f"no {path} link in: {mail.text()[:500]}"
    assert links[0].startswith(PORTAL), "links are absolute, on the portal"
    return parse_qs(urlparse(links[0]).query)["token"][0]


async def test_a_customer_registers_activates_authorises_a_device_by_sms_and_resets_a_password(
    infra: Infrastructure, settings: ServiceSettings, sinks: Sinks, notifications: StartNotifications
) -> None:
    await notifications()
    identity = await start_harness(infra, topic_namespace=settings.topic_namespace, event_secret_keys=KEYS,
                                   answer_floor_ms=0)
    try:
        http = identity.http()
        who = person("Camille Lefebvre") | {"mobile": "+33698765432"}

        # Registration -> activation email -> its link activates the account.
        assert (await http.post("/v1/registrations", json=who)).status_code == 202
        (welcome,) = await eventually(lambda: sinks.mail.to(who["email"]), 60, "the activation email")
        activated = await http.post("/v1/activations", json={"token": link_token(welcome, "/activate")})
        assert activated.status_code == 200, activated.text
        signed_in = (await http.post("/v1/sessions", json={"email": who["email"], "password": who["password"]})).json()
        assert signed_in["status"] == "authenticated"

        # Once a contract is linked, a new device needs a code: it arrives by SMS and authorises it.
        customer_id = (await http.get("/v1/me", headers=bearer(signed_in))).json()["account_id"]
        number = f"FR-{uuid.uuid4().hex[:6]}"
        await identity.publish(ContractLinkVerified(customer_id=customer_id, customer_number=number,
                                                    contract_numbers=[f"{number}-L1"]))

        async def device_challenge() -> dict | None:
            answer = (await http.post("/v1/sessions", json={"email": who["email"], "password": who["password"]})).json()
            return answer if answer["status"] == "device_authorisation_required" else None

        challenge = await eventually(device_challenge, 30, "device authorisation to be required")
        sent = await http.post("/v1/device-challenges/code", json={"challenge": challenge["challenge"], "channel": "sms"})
        assert sent.status_code == 202, sent.text
        (sms,) = await eventually(lambda: [m for m in sinks.sms.messages if m.to == who["mobile"]], 60, "the SMS code")
        assert segments(sms.body).count == 1, "a code arrives in one piece"
        code = re.search(r"\b(\d{6})\b", sms.body).group(1)  # type: ignore[union-attr]
        done = await http.post("/v1/device-challenges/verify", json={"challenge": challenge["challenge"], "code": code})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "authenticated"

        # Forgotten password -> reset email -> its link sets a new password that works.
        assert (await http.post("/v1/password-resets", json={"email": who["email"]})).status_code == 202

        def reset_mail() -> list[CaughtMail]:
            return [m for m in sinks.mail.to(who["email"]) if "/reset-password" in m.text()]

        (reset,) = await eventually(reset_mail, 60, "the reset email")
        new_password = "Tournesol-Vagabond-2031?"
        confirmed = await http.post("/v1/password-resets/confirm",
                                    json={"token": link_token(reset, "/reset-password"), "new_password": new_password})
        assert confirmed.status_code == 200, confirmed.text
        again = await http.post("/v1/sessions", json={"email": who["email"], "password": new_password})
        assert again.status_code == 200 and again.json()["status"] in {"authenticated", "device_authorisation_required"}
    finally:
        # The topics are shared with the notifications service still running: the settings fixture
        # deletes them after it. The database is identity's own.
        await stop_harness(identity, keep_data=True)
        await drop_database(infra.mongodb_uri, identity.settings.mongodb_database)
