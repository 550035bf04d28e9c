"""Fuzz the identity HTTP API from its own OpenAPI document: no input makes it fail (no 5xx), and
every refusal is a clear 4xx: ``{"error": {"code", "message", "fields", "details"}}``, a 422 naming
the fields.

The service runs as a real process (uvicorn, real broker and store), as in production. Operations
that need a signed-in caller get a real access token (a customer's for ``/v1/me``, a staff member's
with both staff roles for organisations and staff), so they are fuzzed past the authentication;
lockout is off and rate limits are high in this instance, so that requests reach the handlers
rather than stop at a 429.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from shared.crypto import Keyring
from shared.events import CustomerRegistered, PasswordResetRequested
from shared.events.registry import topic_for
from tests.conftest import Infrastructure
from tests.integration.helpers import read_topic, settings_env
from tests.integration.identity.conftest import OTHER_STRONG, STRONG, identity_settings

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 40
HIGH = 1_000_000
ROOT = Path(__file__).resolve().parents[3]
NAME_FIELDS = ("first_name", "last_name")
#: What reads as no name at all once whitespace is collapsed: not only spaces (str.split's whitespace).
BLANK = st.text(alphabet=" \t\n\r\u00a0\u2003\u3000\x1c", min_size=1, max_size=6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Account:
    """A signed-in caller; signs in again when the fuzzer ended its session or required a new password."""

    base: str
    email: str
    password: str
    token: str | None = field(default=None, repr=False)
    #: The token of the reset link emailed next to this account (read from Kafka), for a fuzzed compromise report.
    next_reset_link: Callable[[], str] | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        if self.token is None:
            self.token = self._sign_in()
        return {"Authorization": f"Bearer {self.token}"}

    def _sign_in(self) -> str:
        answer = httpx.post(f"{self.base}/v1/sessions", json={"email": self.email, "password": self.password}, timeout=30)
        body = answer.json()
        if answer.status_code == 403 and body["error"]["code"] == "password_reset_required":
            # A fuzzed compromise report: only the emailed link sets a new password, as a person would.
            assert self.next_reset_link is not None, answer.text
            new = OTHER_STRONG if self.password == STRONG else STRONG
            reset_link = self.next_reset_link
            assert httpx.post(f"{self.base}/v1/password-resets", json={"email": self.email}, timeout=30).status_code == 202
            changed = httpx.post(f"{self.base}/v1/password-resets/confirm", timeout=30,
                                 json={"token": reset_link(), "new_password": new})
            assert changed.status_code == 200, changed.text
            self.password = new
            return self._sign_in()
        if answer.status_code == 403 and body["error"]["code"] == "password_change_required":
            # A fuzzed compromise report or "everyone must change": change it, as a person would.
            new = OTHER_STRONG if self.password == STRONG else STRONG
            changed = httpx.post(f"{self.base}/v1/password-changes/forced", timeout=30,
                                 json={"change_ticket": body["error"]["details"]["change_ticket"], "new_password": new})
            assert changed.status_code == 200, changed.text
            self.password = new
            return self._sign_in()
        assert answer.status_code == 200 and body["status"] == "authenticated", answer.text
        return str(body["access_token"])


@dataclass
class Api:
    base: str
    customer: Account
    staff: Account

    def account_for(self, path: str) -> Account:
        return self.customer if path.startswith("/v1/me") else self.staff


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(log.read_text()[-3000:])
        time.sleep(0.2)
    raise AssertionError(f"identity never became ready: {log.read_text()[-3000:]}")


def registered_customer(infra: Infrastructure, base: str, namespace: str, keyring: Keyring) -> Account:
    email = f"fuzz.{uuid.uuid4().hex[:8]}@example.fr"
    answer = httpx.post(f"{base}/v1/registrations", timeout=30, json={
        "first_name": "Fabienne", "last_name": "Zanetti", "email": email, "password": STRONG, "locale": "fr-FR",
        "terms_version": "FR-2026-09", "terms_accepted": True})
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = asyncio.run(read_topic(infra.kafka_bootstrap, topic_for(CustomerRegistered.event_type, namespace), 5))
        events = [CustomerRegistered.model_validate(json.loads(r.value)["data"]) for r in records]
        mine = [e for e in events if e.email == email]
        if mine:
            token = mine[0].unseal(keyring, "activation_token")
            assert httpx.post(f"{base}/v1/activations", json={"token": token}, timeout=30).status_code == 200
            return Account(base, email, STRONG, next_reset_link=lambda: emailed_reset_token(infra, namespace, keyring, email))
        time.sleep(0.3)
    raise AssertionError("the registration never reached Kafka")


_spent_reset_links: set[str] = set()


def emailed_reset_token(infra: Infrastructure, namespace: str, keyring: Keyring, email: str) -> str:
    """The reset link emailed to ``email`` that no earlier call returned (waiting for it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = asyncio.run(read_topic(infra.kafka_bootstrap, topic_for(PasswordResetRequested.event_type, namespace), 5))
        events = [PasswordResetRequested.model_validate(json.loads(r.value)["data"]) for r in records]
        fresh = [e for e in events if e.email == email and e.reset_token not in _spent_reset_links]
        if fresh:
            latest = max(fresh, key=lambda e: e.reset_expires_at)
            _spent_reset_links.update(e.reset_token for e in fresh)
            return latest.unseal(keyring, "reset_token")
        time.sleep(0.3)
    raise AssertionError("the reset link never reached Kafka")


@pytest.fixture(scope="module")
def identity_api(infra: Infrastructure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    port = free_port()
    config = identity_settings(
        infra, http_port=port, answer_floor_ms=0, lockout_enabled=False,
        rate_address_sends_per_hour=HIGH, rate_account_sends_per_hour=HIGH,
        rate_address_checks_per_5min=HIGH, rate_account_checks_per_15min=HIGH,
    )
    env = settings_env(config)
    log = tmp_path_factory.mktemp("identity") / "identity.log"
    staff_email = f"fuzz.staff.{uuid.uuid4().hex[:8]}@leaseline.example"
    added = subprocess.run(
        [sys.executable, "-m", "services.identity", "staff-add", staff_email, "Stan", "Fuzzer",
         "service_desk,security_administrator"],
        input=f"{STRONG}\n".encode(), env=env, cwd=ROOT, capture_output=True, timeout=120,
    )
    assert added.returncode == 0, added.stderr.decode()[-3000:]
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.identity"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc, log)
            keyring = Keyring.parse(config.event_secret_keys.get_secret_value())
            customer = registered_customer(infra, base, config.topic_namespace, keyring)
            yield Api(base, customer, Account(base, staff_email, STRONG))
        finally:
            proc.terminate()
            proc.wait(30)


def assert_clear_refusal(response: Any, what: str) -> None:
    """A 4xx says why in the one error shape; a 422 names each field refused and why."""
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:300]}"
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{what} -> {response.status_code} without the error shape: {response.text[:300]}") from None
    assert isinstance(error.get("code"), str) and error["code"], (what, error)
    assert isinstance(error.get("message"), str) and error["message"], (what, error)
    assert isinstance(error.get("details"), dict), (what, error)
    assert isinstance(error.get("fields"), list), (what, error)
    for problem in error["fields"]:
        assert set(problem) == {"loc", "msg", "code"} and problem["loc"] and problem["msg"], (what, problem)
    if response.status_code == 422:
        assert error["fields"], f"{what}: a 422 names the fields it refuses: {error}"


def takes_a_name(schema: Any, components: dict[str, Any]) -> bool:
    """Whether a request body (an OpenAPI schema, ``$ref``s followed) has a first or last name somewhere."""
    if isinstance(schema, list):
        return any(takes_a_name(item, components) for item in schema)
    if not isinstance(schema, dict):
        return False
    if isinstance(schema.get("$ref"), str):
        return takes_a_name(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    if any(name in schema.get("properties", {}) for name in NAME_FIELDS):
        return True
    return any(takes_a_name(value, components) for value in schema.values())


def blank_names(body: Any, blank: str) -> Any:
    if isinstance(body, dict):
        return {k: blank if k in NAME_FIELDS else blank_names(v, blank) for k, v in body.items()}
    return body


def with_blank_names(case: schemathesis.Case, blank: str) -> schemathesis.Case:
    """A schema-valid request whose names are whitespace alone: the schema allows them, the service must not."""
    case.body = blank_names(case.body, blank)
    return case


def test_no_request_makes_the_identity_api_fail_and_every_refusal_says_why(identity_api: Api) -> None:
    """Every operation, EXAMPLES_PER_OPERATION generated requests each, as the schema allows them
    (positive) and as it does not (negative), signed in where the operation needs it; where the body
    has names, also valid bodies whose names are whitespace alone. (schemathesis' own pytest loader does
    not run on pytest 9, so its strategies are driven directly.)"""
    schema = schemathesis.openapi.from_url(f"{identity_api.base}/openapi.json")
    components = httpx.get(f"{identity_api.base}/openapi.json", timeout=30).json()["components"]["schemas"]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 10, "the OpenAPI document lists the API"
    signed_in = {op.label for op in operations if op.definition.raw.get("security")}
    assert len(signed_in) > 15, "the operations that need a token are known as such"
    named: set[str] = set()
    for operation in operations:
        positive = operation.as_strategy(GenerationMode.POSITIVE)
        either = st.one_of(positive, operation.as_strategy(GenerationMode.NEGATIVE))
        if takes_a_name(operation.definition.raw.get("requestBody"), components):
            named.add(operation.label)
            either = st.one_of(either, st.tuples(positive, BLANK).map(lambda pair: with_blank_names(*pair)))

        @given(case=either)
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def clear_answers(case: schemathesis.Case) -> None:
            account = identity_api.account_for(case.operation.path) if case.operation.label in signed_in else None
            ours = account.headers() if account else None
            response = case.call(base_url=identity_api.base, timeout=30, headers=ours)
            # A negative case may drop or break the Authorization header: then a 401 is the right answer.
            sent_ours = bool(ours) and response.request.headers.get("Authorization") == ours["Authorization"]
            if sent_ours and response.status_code == 401 and response.json()["error"]["code"] == "session_ended":
                account.token = None  # type: ignore[union-attr]  # the fuzzer signed this session out
                ours = account.headers()  # type: ignore[union-attr]
                response = case.call(base_url=identity_api.base, timeout=30, headers=ours)
            if sent_ours:
                assert response.status_code != 401, f"{case.method} {case.formatted_path}: token refused: {response.text}"
            assert_clear_refusal(response, f"{case.method} {case.formatted_path}")

        clear_answers()
    assert len(named) == 5, f"the registrations, the organisation's two and the contract link take names: {named}"


LENGTHS = (72, 73, 100, 128, 129, 1024, 1025, 5000)


def long_password(length: int) -> str:
    words = "Velvet-Harbour-Lantern-Quiet-Orchard-Compass-Amber-Thistle-Gondola-"
    return (words * (length // len(words) + 1))[:length - 2] + "9!"


def test_passwords_of_every_length_around_the_limits_get_an_answer_not_a_failure(identity_api: Api) -> None:
    """72 is zxcvbn's own limit, 128 the policy's, 1024 the schema's: each side of each."""
    base = identity_api.base
    token = "cus_x." + "A" * 43
    for length in LENGTHS:
        password = long_password(length)
        bodies = {
            "/v1/registrations": {"first_name": "Lange", "last_name": "Wachtwoord", "locale": "nl-BE",
                                  "email": f"long.{length}.{uuid.uuid4().hex[:6]}@example.be", "password": password,
                                  "terms_version": "BE-2026-01", "terms_accepted": True},
            "/v1/sessions": {"email": identity_api.customer.email, "password": password},
            "/v1/activations": {"token": token, "password": password},
            "/v1/password-resets/confirm": {"token": token, "new_password": password},
            "/v1/password-changes/forced": {"change_ticket": token, "new_password": password},
        }
        for path, body in bodies.items():
            answer = httpx.post(f"{base}{path}", json=body, timeout=30)
            assert_clear_refusal(answer, f"POST {path} with a {length}-character password")
            assert password not in answer.text, "a password is never echoed back"
            if path == "/v1/registrations":
                expected = 202 if length <= 128 else 422
                assert answer.status_code == expected, (length, answer.text)
        changed = httpx.put(f"{base}/v1/me/password", headers=identity_api.customer.headers(), timeout=30,
                            json={"current_password": identity_api.customer.password, "new_password": password})
        assert_clear_refusal(changed, f"PUT /v1/me/password with a {length}-character password")
        if length <= 128:
            assert changed.status_code == 200, (length, changed.text)
            identity_api.customer.password, identity_api.customer.token = password, changed.json()["access_token"]
        else:
            assert changed.status_code == 422
            assert changed.json()["error"]["fields"][0]["loc"] == ["body", "new_password"]
