"""Refusals the framework makes before any handler runs still answer in the one error shape."""

import httpx

from services.identity.bootstrap import build
from services.identity.settings import IdentitySettings
from shared.crypto import Keyring

JSON = {"content-type": "application/json"}


def api() -> httpx.AsyncClient:
    """The identity app, not started: these requests never reach a store."""
    app = build(IdentitySettings(event_secret_keys=Keyring.generate_spec("unit"))).app
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://identity")


async def test_a_body_that_is_not_even_text_is_a_malformed_request() -> None:
    async with api() as http:
        answer = await http.post("/v1/sessions", content=b"\xa5q\x9f\xf0", headers=JSON)
    assert answer.status_code == 400
    assert answer.json() == {"error": {"code": "malformed_request", "fields": [], "details": {},
                                       "message": "the request body could not be read: send JSON in UTF-8"}}


async def test_broken_json_names_where_it_breaks() -> None:
    async with api() as http:
        answer = await http.post("/v1/sessions", content=b'{"email": "a@b.fr"', headers=JSON)
    assert answer.status_code == 422
    (field,) = answer.json()["error"]["fields"]
    assert field["code"] == "json_invalid" and field["loc"][0] == "body"


async def test_an_unknown_path_is_a_not_found_in_the_error_shape() -> None:
    async with api() as http:
        answer = await http.get("/v1/nowhere")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
