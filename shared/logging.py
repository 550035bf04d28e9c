"""Structured JSON logs that carry the service, event id and correlation id.

Secrets (tokens, codes, passwords) never reach a log line: fields with such names are redacted
whatever their value, and helpers mask emails and phone numbers for the lines that need them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_event_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)
_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

_SECRET_NAME = re.compile(r"(pass(word)?|secret|token|code|otp|authorization|cookie|key)$", re.IGNORECASE)
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def mask_email(email: str) -> str:
    """``jeanne.martin@example.fr`` -> ``j***@example.fr``."""
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", email)


def mask_phone(phone: str) -> str:
    """``+33612345678`` -> ``+336*****678``: enough to tell numbers apart in support, no more."""
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:4] + "*" * (len(phone) - 7) + phone[-3:]


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


def _redact(name: str, value: Any) -> Any:
    if _SECRET_NAME.search(name):
        return "[redacted]"
    if isinstance(value, str) and "@" in value:
        return mask_email(value)
    return value


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
            "message": mask_email(record.getMessage()),
        }
        if (event_id := _event_id.get()) is not None:
            line["event_id"] = event_id
        if (correlation_id := _correlation_id.get()) is not None:
            line["correlation_id"] = correlation_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                line[name] = _redact(name, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


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
