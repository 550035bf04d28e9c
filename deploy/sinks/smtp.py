"""An SMTP catcher: accepts every message, keeps it as an .eml file and in memory."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError


@dataclass(frozen=True)
class CaughtMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    received_at: float  # time.time()
    path: Path | None

    def parsed(self) -> EmailMessage:
        return BytesParser(policy=policy.default).parsebytes(self.data)  # type: ignore[return-value]

    @property
    def subject(self) -> str:
        return str(self.parsed()["Subject"])

    def text(self) -> str:
        part = self.parsed().get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""

    def html(self) -> str:
        part = self.parsed().get_body(preferencelist=("html",))
        return part.get_content() if part is not None else ""


# <local@domain> made only of characters that need no quoting (RFC 5321 dot-atoms): what every
# sender we know writes. Anything else (quoted local parts, comments, a missing bracket) goes
# through the full parser, as in aiosmtpd.
_PLAIN_ANGLE_ADDR = re.compile(r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>(.*)", re.DOTALL)


def _dot_atoms(address: str) -> bool:
    """Both halves of ``local@domain`` are dot-atoms: no empty atom between, before or after dots."""
    return all(atom for part in address.split("@") for atom in part.split("."))


class _CatcherSMTP(SMTP):
    """aiosmtpd's session, with a cheaper reading of MAIL FROM and RCPT TO addresses.

    aiosmtpd 1.4 parses them with the email package's RFC 5322 header parser, and declares a
    typing Protocol class inside the method at every call (for its type checker only): a fifth of
    the catcher's CPU per message in the notifications benchmark, where the catcher shares two
    cores with the service it measures. Same answers (``tests/unit/test_smtp_catcher.py``)."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        if not arg:
            return "", ""
        plain = _PLAIN_ANGLE_ADDR.match(arg.lstrip())
        rest = plain.group(2).lstrip(" \t") if plain is not None else ""
        if plain is not None and _dot_atoms(plain.group(1)) and not rest.startswith("("):
            addr = plain.group(1)  # the parser also skips the blanks after ">" (and comments: slow path)
        else:
            try:
                if arg.lstrip().startswith("<"):
                    address, rest = get_angle_addr(arg)
                else:
                    address, rest = get_addr_spec(arg)
            except HeaderParseError:
                return None, None
            addr = address.addr_spec
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest


class _Handler:
    def __init__(self, catcher: "SmtpCatcher") -> None:
        self._catcher = catcher

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self._catcher._receive(envelope)


class SmtpCatcher:
    """``directory`` None keeps messages in memory only; ``keep`` False keeps none (benchmarks:
    count them with ``on_message``)."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 1025,
        keep: bool = True,
        on_message: Callable[[CaughtMail], None] | None = None,
    ) -> None:
        self.directory = directory
        self.host = host
        self.port = port
        self.keep = keep
        self.on_message = on_message
        self.messages: list[CaughtMail] = []
        self.received = 0
        self._failures: list[tuple[int, str]] = []
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[SMTP] = set()

    async def start(self) -> "SmtpCatcher":
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _protocol(self) -> SMTP:
        session = _CatcherSMTP(_Handler(self), hostname="leaseline-smtp-catcher", enable_SMTPUTF8=True,
                       loop=asyncio.get_running_loop())
        self._sessions.add(session)
        return session

    async def stop(self) -> None:
        """Stop listening and cut every open connection (as a crashed server would)."""
        if self._server is not None:
            self._server.close()
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.abort()
            self._sessions.clear()
            await self._server.wait_closed()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def fail(self, code: int = 451, message: str = "Try again later", times: int = 1) -> None:
        """Answer the next ``times`` messages with this reply instead of accepting them."""
        self._failures += [(code, message)] * times

    def _receive(self, envelope: Envelope) -> str:
        if self._failures:
            code, message = self._failures.pop(0)
            return f"{code} {message}"
        data = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not data:
            data = envelope.content
        path = None
        now = time.time()
        if self.directory is not None:
            path = self.directory / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
            path.write_bytes(data)
        mail = CaughtMail(str(envelope.mail_from), tuple(envelope.rcpt_tos), data, now, path)
        self.received += 1
        if self.keep:
            self.messages.append(mail)
        if self.on_message is not None:
            self.on_message(mail)
        return f"250 OK queued as {uuid.uuid4().hex[:12]}"

    def to(self, address: str) -> list[CaughtMail]:
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.rcpt_tos)]

    async def __aenter__(self) -> "SmtpCatcher":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def serve(directory: Path, host: str, port: int) -> None:
    catcher = await SmtpCatcher(directory, host=host, port=port, keep=False).start()
    print(f"SMTP catcher on {host}:{catcher.port}, writing to {directory}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await catcher.stop()
