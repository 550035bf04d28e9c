"""What a log line may show: no secret, no email or phone number in clear, at any depth."""

import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from shared.logging import JsonFormatter, log_context, mask_email, mask_phone, scrub

JEANNE = "jeanne.martin@example.fr"
OTP = "123456"


def line(message: str = "something happened", *, exc: BaseException | None = None, **extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("test", logging.WARNING, __file__, 1, message, (), None)
    if exc is not None:
        try:
            raise exc
        except BaseException:
            import sys

            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    return json.loads(JsonFormatter("identity").format(record))


def shown(logged: dict[str, Any]) -> str:
    return json.dumps(logged, ensure_ascii=False)


@pytest.mark.parametrize(
    "field",
    ["password", "pwd", "password_hash", "passwordHash", "new_password", "reset_token", "tokenValue", "otp",
     "otp_code", "activation_code", "code", "api_key", "apiKey", "client_secret", "authorization", "session_cookie",
     "pin", "passwd"],
)
def test_a_field_named_like_a_secret_is_redacted_whatever_its_value(field: str) -> None:
    logged = line(**{field: "Pivoine-Lumineuse-1987!"})
    assert logged[field] == "[redacted]"
    assert "Pivoine" not in shown(logged)


@pytest.mark.parametrize("field", ["customer_id", "topic", "attempt", "locale", "offset", "device_name"])
def test_ordinary_fields_are_kept(field: str) -> None:
    assert line(**{field: "fr-FR"})[field] == "fr-FR"


def test_secrets_nested_in_extra_values_are_redacted_at_any_depth() -> None:
    logged = line(payload={"token": "tok_s3cr3t", "customer": {"email": JEANNE, "otp": OTP}, "items": [{"pwd": "x1"}]})
    text = shown(logged)
    assert "tok_s3cr3t" not in text and OTP not in text and "x1" not in text and JEANNE not in text
    assert logged["payload"]["customer"]["email"] == "j***@example.fr"
    assert logged["payload"]["items"] == [{"pwd": "[redacted]"}]


def test_models_and_dataclasses_in_extra_are_judged_field_by_field() -> None:
    class Reset(BaseModel):
        customer_id: str
        reset_token: str

    @dataclass
    class Code:
        phone: str
        code: str

    logged = line(reset=Reset(customer_id="cus_1", reset_token="tok_abc"), sent=Code("+33612345678", OTP))
    assert logged["reset"] == {"customer_id": "cus_1", "reset_token": "[redacted]"}
    assert logged["sent"] == {"phone": "+336*****678", "code": "[redacted]"}


def test_emails_and_phone_numbers_are_masked_in_the_message_and_in_values() -> None:
    logged = line(f"sent to {JEANNE} and +33 6 12 34 56 78", recipient="06 12 34 56 78")
    assert "jeanne.martin" not in shown(logged)
    assert logged["message"] == "sent to j***@example.fr and +336*****678"
    assert logged["recipient"] == "0612***678"


def test_exception_text_is_scrubbed_before_it_is_logged() -> None:
    logged = line("handler rejected the event", exc=ValueError(f"{JEANNE} code={OTP} token: tok_live_1"))
    assert JEANNE not in logged["exception"] and OTP not in logged["exception"] and "tok_live_1" not in logged["exception"]
    assert "j***@example.fr" in logged["exception"] and "code=[redacted]" in logged["exception"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{JEANNE} code={OTP}", "j***@example.fr code=[redacted]"),
        ('{"password": "hunter22", "locale": "fr-FR"}', '{"password": "[redacted]", "locale": "fr-FR"}'),
        ("Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjdXMifQ.sig", "Authorization: [redacted]"),
        ("GET /activate?token=abcdef&lang=fr", "GET /activate?token=[redacted]&lang=fr"),
        ("call +447700900123 now", "call +447******123 now"),
        ("at 2026-11-22T09:30:00+00:00, offset 1234567890", "at 2026-11-22T09:30:00+00:00, offset 1234567890"),
    ],
)
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_masks_keep_enough_to_tell_apart_and_no_more() -> None:
    assert mask_email(JEANNE) == "j***@example.fr"
    assert mask_phone("+33612345678") == "+336*****678"
    assert mask_phone("+33 6 12 34 56 78") == "+336*****678"


def test_lines_written_in_a_log_context_carry_its_event_and_correlation_ids() -> None:
    with log_context(event_id="evt_1", correlation_id="req_9"):
        logged = line()
    assert (logged["event_id"], logged["correlation_id"], logged["service"]) == ("evt_1", "req_9", "identity")
    assert "event_id" not in line()
