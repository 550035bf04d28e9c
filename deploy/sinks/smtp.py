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

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session
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


_END_OF_DATA = b"\r\n.\r\n"  # a line holding a lone dot


def _dot_atoms(address: str) -> bool:
    """Both halves of ``local@domain`` are dot-atoms: no empty atom between, before or after dots."""
    return all(atom for part in address.split("@") for atom in part.split("."))


class _CatcherSMTP(SMTP):
    """aiosmtpd's session, with cheaper readings of envelope addresses and of DATA: the catcher
    shares two cores with the service the notifications benchmark measures. Same answers as
    aiosmtpd's (``tests/unit/test_smtp_catcher.py`` compares them).

    - Addresses: aiosmtpd 1.4 parses MAIL FROM and RCPT TO with the email package's RFC 5322
      header parser, and declares a typing Protocol class inside the method at every call (for its
      type checker only): a fifth of the catcher's CPU per message.
    - DATA: aiosmtpd reads a message line by line, with a debug log call and fragment bookkeeping
      per line, and its stream reader (limited to one line) pauses and resumes the socket every two
      kilobytes: two thirds of the catcher's CPU per message. Here the message is read in the
      chunks the socket delivers, up to the lone dot and not a byte past it (a client may pipeline
      its next command behind the message), and aiosmtpd's rules are applied to the whole.
    """

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

    async def smtp_DATA(self, arg: str) -> None:
        if self._decode_data:  # never so in the catcher: aiosmtpd's own reading decodes
            return await super().smtp_DATA(arg)
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await self._read_to_lone_dot()
        except asyncio.CancelledError:  # the connection was lost during DATA, as aiosmtpd handles it
            self._writer.close()
            raise
        if data is None:  # the client closed its side mid-message: nothing to accept
            self._writer.close()
            return
        lines = data.split(b"\r\n")[:-1] if data else []
        refusal = self._refusal_for(lines)
        if refusal is not None:
            await self.push(refusal)
            self._set_post_data_state()
            return
        if data.startswith(b".") or b"\r\n." in data:  # de-transparency (RFC 5321 4.5.2)
            data = b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)
        self.envelope.content = self.envelope.original_content = data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_to_lone_dot(self) -> bytes | None:
        """The message as sent, up to and without its final lone-dot line, which is consumed;
        None when the stream ends first.

        Looks into the reader's buffer without taking from it (as aiosmtpd itself does with
        ``_reader._buffer``), so that it takes exactly up to the end of the message."""
        reader = self._reader
        taken = bytearray(b"\r\n")  # a line ends before the first one: the message may be empty
        while True:
            buffered: bytearray = reader._buffer  # type: ignore[attr-defined]
            if not buffered:
                more = await reader.read(1)  # waits for the next bytes
                if not more:
                    return None
                taken += more
                if taken.endswith(_END_OF_DATA):  # the byte that came in ended the message
                    return bytes(taken[2:-3])
                continue
            tail = max(0, len(taken) - len(_END_OF_DATA) + 1)
            end = (taken[tail:] + buffered).find(_END_OF_DATA)
            if end >= 0:
                taken += await reader.readexactly(end + len(_END_OF_DATA) - (len(taken) - tail))
                return bytes(taken[2:-3])
            taken += await reader.read(len(buffered))

    def _refusal_for(self, lines: list[bytes]) -> str | None:
        """aiosmtpd's answer to a message with a line too long or too much data, else None. Its
        reader flags a line too long when the line, without its line end, is longer than the
        limit, before counting its bytes; the byte count is checked before its own length check."""
        limit = self.data_size_limit
        total = sum(map(len, lines)) + 2 * len(lines)
        if (not limit or total <= limit) and max(map(len, lines), default=0) + 2 <= self.line_length_limit:
            return None  # nothing to refuse (a message this long is always this short per line)
        counted = 0
        for line in lines:
            if len(line) > self.line_length_limit:
                return "500 Line too long (see RFC5321 4.5.3.1.6)"
            counted += len(line) + 2
            if limit and counted > limit:
                return "552 Error: Too much mail data"
            if len(line) + 2 > self.line_length_limit:
                return "500 Line too long (see RFC5321 4.5.3.1.6)"
        return None


class _Handler:
    def __init__(self, catcher: "SmtpCatcher") -> None:
        self._catcher = catcher

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = self._catcher._refusal_of(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

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
        self._refusals: dict[str, list[tuple[int, str]]] = {}  # by recipient address, lower-cased
        self.refused: list[tuple[str, str]] = []  # (recipient, reply) of every RCPT refused
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

    def refuse_recipient(self, address: str, code: int = 451, message: str = "4.2.1 Mailbox busy, try again later",
                         times: int = 1) -> None:
        """Answer RCPT TO for this one address with this reply, the next ``times`` times; other
        recipients are accepted meanwhile (``fail`` refuses every message)."""
        self._refusals.setdefault(address.lower(), []).extend([(code, message)] * times)

    def _refusal_of(self, address: str) -> str | None:
        pending = self._refusals.get(address.lower()) if self._refusals else None
        if not pending:
            return None
        code, message = pending.pop(0)
        reply = f"{code} {message}"
        self.refused.append((address, reply))
        return reply

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
