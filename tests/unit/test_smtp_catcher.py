"""The SMTP catcher reads envelope addresses and DATA on fast paths: it must answer as aiosmtpd does."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from aiosmtpd.smtp import SMTP

from deploy.sinks.smtp import SmtpCatcher, _CatcherSMTP

ARGUMENTS = [
    "<anna.dupont@example.fr>",
    "<anna.dupont@example.fr> SIZE=1234 BODY=8BITMIME",
    "  <noreply+notifications@leaseline.example>",
    "<o'brien@example.ie>",
    "<a..b@example.com>",
    "<.anna@example.com>",
    "<anna.@example.com>",
    '<"anna dupont"@example.fr>',
    "<anna@[192.0.2.1]>",
    "<anna(comment)@example.fr>",
    "<>",
    "<anna@example.fr",
    "anna@example.fr",
    "anna@example.fr SIZE=10",
    "<élodie@exemple.fr>",
    "<" + "x" * 65 + "@example.fr>",
    "<" + "x" * 64 + "@example.fr>",
    "",
    "<anna@exa mple.fr>",
    "<anna@example.fr>>",
    "<anna@example..fr>",
    "<anna@.example.fr>",
    "<anna@example.fr.>",
    "<anna@-example.fr>",
    "<anna@example.fr>\tSIZE=1",
    "<anna@example.fr> (a comment) SIZE=1",
    "<anna@example.fr>  ",
]


def session(limit: int) -> _CatcherSMTP:
    smtp = _CatcherSMTP(object(), hostname="test", enable_SMTPUTF8=True)  # type: ignore[arg-type]
    smtp.local_part_limit = limit
    return smtp


async def test_the_catcher_serves_its_own_sessions() -> None:
    assert isinstance(SmtpCatcher(None, keep=False)._protocol(), _CatcherSMTP)


@pytest.mark.parametrize("limit", [0, 64])
@pytest.mark.parametrize("arg", ARGUMENTS)
def test_envelope_addresses_are_read_as_aiosmtpd_reads_them(arg: str, limit: int) -> None:
    smtp = session(limit)
    assert smtp._getaddr(arg) == SMTP._getaddr(smtp, arg)


def test_random_arguments_are_read_as_aiosmtpd_reads_them() -> None:
    alphabet = "ab.@<> \t()\"'+-_[]:;,\\é"
    chooser = random.Random(20261201)
    smtp = session(64)
    for _ in range(5000):
        arg = "<" + "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 14)))
        if chooser.random() < 0.5:
            arg += ">" + "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 4)))
        assert answer(smtp._getaddr, arg) == answer(lambda a: SMTP._getaddr(smtp, a), arg), arg


def answer(read: object, arg: str) -> object:
    """What reading ``arg`` gives, or the exception it raises: the standard library's parser
    raises IndexError on a few malformed inputs, and the fast path must not hide that either."""
    try:
        return read(arg)  # type: ignore[operator]
    except Exception as error:
        return repr(error)


# --- DATA: the same streams to aiosmtpd's session and to the catcher's -------------------------


class Recording:
    """A handler that keeps what each session was given."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        self.contents.append(envelope.content)  # type: ignore[attr-defined]
        return "250 Kept"


async def transcript(session_class: type[SMTP], pieces: list[bytes], data_size_limit: int) -> tuple[bytes, list[bytes]]:
    """Everything the server answered to ``pieces`` (sent one by one, each in its own segment as
    far as the socket allows), and the contents its handler was given."""
    handler = Recording()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: session_class(handler, hostname="parity", enable_SMTPUTF8=True, data_size_limit=data_size_limit),
        "127.0.0.1", 0,
    )
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        try:
            for piece in [b"EHLO client.example\r\n", *pieces, b"QUIT\r\n"]:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.002 if len(pieces) < 50 else 0)  # long streams: let segments merge
        except ConnectionError:  # the server hung up (too many bogus commands): what it said counts
            pass
        answered = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                answered += chunk
        writer.close()
        return answered, handler.contents
    finally:
        server.close()
        await server.wait_closed()


ENVELOPE = b"MAIL FROM:<noreply@leaseline.example>\r\nRCPT TO:<anna.dupont@example.fr>\r\nDATA\r\n"


def one_message(body: bytes, *, chunk: int = 0) -> list[bytes]:
    """An envelope, then ``body`` (which ends with the lone dot) in chunks of ``chunk`` bytes."""
    if not chunk:
        return [ENVELOPE, body]
    return [ENVELOPE] + [body[i : i + chunk] for i in range(0, len(body), chunk)]


STREAMS = {
    "plain": one_message(b"Subject: hello\r\n\r\nBonjour Anna,\r\n.\r\n"),
    "empty": one_message(b".\r\n"),
    "blank first line": one_message(b"\r\n.\r\n"),
    "dot-stuffed lines": one_message(b"..starts with a dot\r\n.\r\n...\r\nmiddle . dot\r\n..\r\n.\r\n"),
    "bare line ends inside lines": one_message(b"a\rb\nc\r\r\n\n.\r\n\r.\r\n.\r\n"),
    "not UTF-8": one_message(b"caf\xe9 \xff\xfe\r\n.\r\n"),
    "terminator split over segments": one_message(b"line one\r\nline two\r\n.\r\n", chunk=3),
    "one byte at a time": one_message(b"..x\r\ny\r\n.\r\n", chunk=1),
    "lines of 999 to 1003 bytes": one_message(b"".join(b"x" * n + b"\r\n" for n in (999,)) + b".\r\n")
    + one_message(b"x" * 1000 + b"\r\n.\r\n")
    + one_message(b"x" * 1001 + b"\r\n.\r\n")
    + one_message(b"x" * 1002 + b"\r\n.\r\n")
    + one_message(b"x" * 1003 + b"\r\n.\r\nafter\r\n.\r\n"),
    "a very long line, then a message": one_message(b"y" * 5000 + b"\r\nmore\r\n.\r\n", chunk=700)
    + one_message(b"fine\r\n.\r\n"),
    "next commands pipelined behind the message": [
        ENVELOPE, b"first\r\n.\r\n" + ENVELOPE, b"second\r\n.\r\nRSET\r\n" + ENVELOPE + b"third\r\n.\r\nNOOP\r\n",
    ],
    "DATA with an argument, DATA without recipients": [
        b"MAIL FROM:<a@example.fr>\r\nDATA\r\nRCPT TO:<b@example.fr>\r\nDATA now\r\nDATA\r\nok\r\n.\r\n",
    ],
}


@pytest.mark.parametrize("limit", [0, 64, 33554432])
@pytest.mark.parametrize("name", list(STREAMS))
async def test_data_is_read_as_aiosmtpd_reads_it(name: str, limit: int) -> None:
    ours = await transcript(_CatcherSMTP, STREAMS[name], limit)
    theirs = await transcript(SMTP, STREAMS[name], limit)
    assert ours == theirs
    assert b"250 Kept" in ours[0] or name == "DATA with an argument, DATA without recipients" or limit == 64


async def test_random_messages_are_read_as_aiosmtpd_reads_them() -> None:
    chooser = random.Random(20261202)
    for _ in range(40):
        lines = [
            bytes(chooser.choice(b"a.\r\n ") for _ in range(chooser.choice((0, 1, 2, 5, 40, 1000, 1001, 1400))))
            for _ in range(chooser.randint(0, 6))
        ]
        body = b"".join(line + b"\r\n" for line in lines) + b".\r\n"
        stream = one_message(body, chunk=chooser.choice((0, 1, 2, 7, 300)))
        limit = chooser.choice((0, 50, 3000))
        assert await transcript(_CatcherSMTP, stream, limit) == await transcript(SMTP, stream, limit), (body, limit)
