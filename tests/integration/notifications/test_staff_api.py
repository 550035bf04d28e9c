"""The staff API of a running service: closed without a token, while operations stay reachable."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.notifications.conftest import STAFF_TOKEN, StartNotifications

pytestmark = pytest.mark.integration


async def test_without_a_token_the_staff_api_is_closed_but_health_readiness_and_metrics_answer(
    notifications: StartNotifications,
) -> None:
    harness = await notifications(staff_api_token="")
    transport = httpx.ASGITransport(app=harness.service.runtime.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifications") as http:
        closed = await http.get("/v1/customers/cus_anyone/deliveries", headers={"Authorization": f"Bearer {STAFF_TOKEN}"})
        assert closed.status_code == 503 and "set STAFF_API_TOKEN" in closed.text
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(path)).status_code == 200, path


async def test_with_a_token_support_needs_it(notifications: StartNotifications) -> None:
    harness = await notifications()
    transport = httpx.ASGITransport(app=harness.service.runtime.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifications") as http:
        assert (await http.get("/v1/customers/cus_anyone/deliveries")).status_code == 401
        assert (await http.get("/healthz")).status_code == 200
    assert await harness.deliveries_of("cus_anyone") == []
