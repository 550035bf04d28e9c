"""Refusals the framework makes before any handler runs still answer in the one error shape."""

import httpx
import pytest
from pydantic import ValidationError

from services.identity.bootstrap import build
from services.identity.entrypoints import http_schemas as s
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


BLANK_NAMES = ["   ", "\t\n", "\u00a0\u2003", "\x1c"]  # spaces; tab and newline; no-break and em spaces; a separator
REGISTRATION = {"first_name": "Jeanne", "last_name": "Martin", "email": "jeanne.martin@example.fr",
                "password": "Velvet-Harbour-Lantern-42", "locale": "fr-FR", "terms_version": "FR-2026-09",
                "terms_accepted": True}
BELGIAN = REGISTRATION | {"customer_number": "BE-100234", "code": "123456", "contract_number": "BE-100234-L1",
                          "locale": "nl-BE"}


@pytest.mark.parametrize("blank", BLANK_NAMES)
@pytest.mark.parametrize(("path", "body"), [("/v1/registrations", REGISTRATION),
                                            ("/v1/registrations/by-customer-number", BELGIAN)])
@pytest.mark.parametrize("name", ["first_name", "last_name"])
async def test_a_name_of_whitespace_alone_is_refused_as_that_field_not_a_failure(
    path: str, body: dict, name: str, blank: str
) -> None:
    async with api() as http:
        answer = await http.post(path, json=body | {name: blank})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_failed"
    assert error["fields"] == [{"loc": ["body", name], "msg": "must not be blank", "code": "value_error"}]


PERSON = {"first_name": "Anna", "last_name": "Bakker", "email": "anna.bakker@garage.nl", "locale": "nl-NL"}


@pytest.mark.parametrize("blank", BLANK_NAMES)
@pytest.mark.parametrize(("model", "body", "loc"), [
    (s.PersonBody, PERSON, ()),
    (s.InviteBody, PERSON | {"role": "adviser"}, ()),
    (s.OrganisationBody, {"name": "Garage West", "kind": "garage", "administrator": PERSON}, ("administrator",)),
    (s.VehicleLinkBody, {"method": "vehicle", "first_name": "Anna", "last_name": "Bakker",
                         "vin": "VF1RFB00067123456", "last_payment_amount": "389.90"}, ()),
])
def test_every_body_with_a_name_refuses_one_of_whitespace_alone(model: type, body: dict, loc: tuple, blank: str) -> None:
    nested = body | {"administrator": PERSON | {"last_name": blank}} if loc else body | {"last_name": blank}
    with pytest.raises(ValidationError) as refused:
        model.model_validate(nested)
    (problem,) = refused.value.errors()
    assert problem["loc"] == (*loc, "last_name") and "must not be blank" in problem["msg"]
