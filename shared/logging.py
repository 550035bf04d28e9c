"""Structured JSON logs that carry the service, event id and correlation id.

Secrets (tokens, codes, passwords) and personal data never reach a log line in clear:

- a field whose name says it holds a secret (``password``, ``pwd``, ``password_hash``,
  ``reset_token``, ``otp``, ``api_key``, ``activationCode`` ...) is redacted whatever its value, at
  any depth of the ``extra`` values (dicts, lists);
- every other text (the message, string values at any depth, exception text, tracebacks) is
  scrubbed (:func:`scrub`): ``code=123456``-like assignments of secrets redacted, emails and phone
  numbers masked.

Names are over-matched on purpose (``error_code`` is redacted too): a lost error code costs less
than a leaked one-time code. Use :func:`scrub` for text that leaves the process by other ways
(dead-letter headers, say).
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_event_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)
_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

REDACTED = "[redacted]"

#: Anywhere in a field name (separators removed): these always mean a secret.
_SECRET_PARTS = (
    "password", "passwd", "passphrase", "pwd", "secret", "token", "credential", "authorization", "cookie",
    "apikey", "privatekey", "jwt",
)
#: As a whole word of a field name (``reset_code``, ``otpValue``, ``key``), not inside another word.
_SECRET_WORDS = {"pass", "otp", "code", "codes", "pin", "key", "keys", "hash", "salt", "auth", "signature", "cvv"}
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

#: ``password=hunter2``, ``"token": "abc"``, ``code: 123456`` in free text.
_SECRET_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<key>["']?\b[\w.-]*?(?:password|passwd|passphrase|pwd|secret|token|otp|code|pin|api[_-]?key|authorization|cookie)\b["']?)
    (?P<sep>\s*[=:]\s*)
    (?P<quote>["']?)
    (?P<value>(?:bearer\s+)?[^\s"',;&)}\]]+)
    """
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
#: International numbers (+33 6 12 34 56 78, +447700900123) and French national ones (06 12 34 56 78).
_PHONE = re.compile(
    r"(?<![\w+])\+\d(?:[ .()-]?\d){7,14}(?!\w)"
    r"|(?<![\w.:/-])0[1-9](?:[ .-]?\d{2}){4}(?![\w-])"
)
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_MAX_DEPTH = 8


def mask_email(email: str) -> str:
    """``jeanne.martin@example.fr`` -> ``j***@example.fr``."""
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", email)


def mask_phone(phone: str) -> str:
    """``+33612345678`` -> ``+336*****678``: enough to tell numbers apart in support, no more."""
    phone = re.sub(r"[ .()-]", "", phone)
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:4] + "*" * (len(phone) - 7) + phone[-3:]


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (so its value is never shown)."""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    if any(part in flat for part in _SECRET_PARTS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORDS.findall(name))


def scrub(text: str) -> str:
    """``text`` with secret assignments redacted, bearer tokens removed, emails and phones masked."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m['key']}{m['sep']}{m['quote']}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = mask_email(text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


def clean(name: str, value: Any, depth: int = 0) -> Any:
    """A log-safe copy of ``value``, held in a field called ``name`` (see the module docstring)."""
    if name and is_secret_name(name):
        return REDACTED
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return scrub(value)
    if depth >= _MAX_DEPTH:
        return "[too deep to log]"
    if isinstance(value, Mapping):
        return {str(k): clean(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [clean("", item, depth + 1) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return clean(name, dataclasses.asdict(value), depth)
    if hasattr(value, "model_dump"):  # a pydantic model: its fields, each judged by its name
        return clean(name, value.model_dump(mode="json"), depth)
    return scrub(str(value))


@contextmanager
def log_context(*, event_id: str | None = None, correlation_id: str | None = None) -> Iterator[None]:
    """Every log line written inside carries these ids."""
    tokens = []
    if event_id is not None:
        tokens.append((_event_id, _event_id.set(event_id)))
    if correlation_id is not None:
        tokens.append((_correlation_id, _correlation_id.set(correlation_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        if (event_id := _event_id.get()) is not None:
            line["event_id"] = event_id
        if (correlation_id := _correlation_id.get()) is not None:
            line["correlation_id"] = correlation_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                line[name] = clean(name, value)
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(line, default=lambda v: scrub(str(v)), ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", json_lines: bool = True) -> None:
    """Route every logger (ours, FastStream's, aiokafka's, uvicorn's) through one JSON handler."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka", "pymongo", "faststream.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
