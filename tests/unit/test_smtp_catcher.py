"""The SMTP catcher reads envelope addresses on a fast path: it must answer as aiosmtpd does."""

from __future__ import annotations

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
    import random

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
