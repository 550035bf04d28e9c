"""Building the bytes of a multipart email (text + HTML) with the headers mail systems expect.

Built by hand rather than with ``email.message.EmailMessage``: the standard library's generator
costs about 2 ms per message here, which alone would cap a process below the throughput target;
these few lines cost a tenth of that. What the standard library does best, it still does: address
formatting, RFC 2047 encoding and folding of the subject, RFC 5322 dates. ``tests/unit`` parses the
result back with the standard parser.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.charset import BASE64, Charset
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr

CRLF = "\r\n"
UTF8_B = Charset("utf-8")
UTF8_B.header_encoding = BASE64  # "=?utf-8?b?...?=": the default tries both encodings per header


@dataclass(frozen=True)
class Sender:
    name: str
    address: str

    @classmethod
    def parse(cls, text: str) -> "Sender":
        name, address = parseaddr(text)
        if "@" not in address:
            raise ValueError(f"SMTP_FROM must hold an email address, got {text!r}")
        return cls(name, address)

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]


def message_id(delivery_id: str, sender: Sender) -> str:
    """Stable across attempts, so a receiving system can recognise a message sent twice."""
    return f"<{delivery_id}@{sender.domain}>"


def _header(name: str, value: str) -> str:
    value = " ".join(value.split())
    if value.isascii() and len(name) + len(value) < 76:
        return f"{name}: {value}"
    encoded = Header(value, "us-ascii" if value.isascii() else UTF8_B, header_name=name).encode(linesep=CRLF)
    return f"{name}: {encoded}"


def _address(name: str | None, address: str) -> str:
    name = " ".join((name or "").split())  # no line break may reach a header
    if not address.isascii():  # an internationalised mailbox travels as UTF-8 (SMTPUTF8)
        return f"{name} <{address}>" if name else address
    return formataddr((name, address), charset="utf-8")


def _body(text: str) -> str:
    return base64.encodebytes(text.encode("utf-8")).decode("ascii").replace("\n", CRLF)


def build_email(
    *,
    delivery_id: str,
    sender: Sender,
    to_address: str,
    to_name: str | None,
    subject: str,
    text: str,
    html: str,
    date: datetime,
    language: str,
    unsubscribe_url: str | None = None,
) -> bytes:
    boundary = f"=_{uuid.uuid4().hex}"
    headers = [
        f"From: {_address(sender.name, sender.address)}",
        f"To: {_address(to_name, to_address)}",
        _header("Subject", subject),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id(delivery_id, sender)}",
        "MIME-Version: 1.0",
        f"Content-Language: {language}",
        f"X-Leaseline-Notification: {delivery_id}",
    ]
    if unsubscribe_url:
        headers.append(f"List-Unsubscribe: <{unsubscribe_url}>")
    else:  # a service message: no auto-replies, no out-of-office answers to no-reply@
        headers += ["Auto-Submitted: auto-generated", "X-Auto-Response-Suppress: All"]
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    parts = [
        f"--{boundary}",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: base64",
        "",
        _body(text),
        f"--{boundary}",
        'Content-Type: text/html; charset="utf-8"',
        "Content-Transfer-Encoding: base64",
        "",
        _body(html),
        f"--{boundary}--",
        "",
    ]
    return (CRLF.join(headers) + CRLF + CRLF + CRLF.join(parts)).encode("utf-8")
