"""Sending email over SMTP through a small pool of reused connections (aiosmtplib).

Each connection carries one transaction at a time (aiosmtplib serialises them anyway); a pool of a
few lets several messages travel at once without a TCP and EHLO handshake per message. A connection
that breaks is dropped and reopened on its next use; a connection the server closed while idle is
detected on first use and replaced once at once, so that an idle timeout never costs a retry.

Replies are sorted into what a later attempt may fix (4xx, connection refused or lost, timeouts),
what it will not (5xx to the recipient or the content: unknown mailbox, message refused), and what
our own setup causes (credentials, a refused sender, authentication or STARTTLS required, relaying
denied): retried like a transient failure and reported to an operator, never the recipient's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from services.notifications.domain.retries import (
    DeliveryFailure,
    PermanentFailure,
    ProviderMisconfigured,
    TransientFailure,
)

log = logging.getLogger(__name__)


class SmtpPool:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        size: int = 4,
        timeout_s: float = 10.0,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        local_hostname: str = "localhost",
    ) -> None:
        self._host, self._port = host, port
        self._timeout = timeout_s
        self._username, self._password = username, password
        self._starttls = starttls
        self._local_hostname = local_hostname
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP | None] = asyncio.LifoQueue()
        for _ in range(size):
            self._idle.put_nowait(None)  # opened on first use
        self.connections_opened = 0

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """Send one message; returns the server's reply to DATA. Raises TransientFailure or
        PermanentFailure."""
        client = await self._idle.get()
        try:
            reused = client is not None and client.is_connected
            try:
                client = client if reused else await self._connect(client)
                return await self._transaction(client, sender, recipient, message)
            except SMTPServerDisconnected:
                if not reused:
                    raise
                # The server closed this connection while it was idle: one fresh one, at once.
                client = await self._connect(client)
                return await self._transaction(client, sender, recipient, message)
        except (SMTPResponseException, SMTPRecipientsRefused) as error:
            failure = classify(error)
            if isinstance(failure, ProviderMisconfigured):
                # Our setup, not the recipient: every message would meet it. Retried, and an
                # operator must look; a fresh connection (and login) for the next attempt.
                client = await self._discard(client)
                log.error("the SMTP server refuses our settings: operator action needed",
                          extra={"alert": "operator", "provider": "smtp", "code": failure.code,
                                 "stage": type(error).__name__})
            raise failure from None
        except SMTPNotSupported as error:
            raise PermanentFailure(f"server cannot take this message: {error.message}") from None
        except (SMTPServerDisconnected, SMTPConnectError, SMTPTimeoutError, OSError, asyncio.TimeoutError) as error:
            client = await self._discard(client)
            raise TransientFailure(f"SMTP connection: {type(error).__name__}: {error}") from None
        except SMTPException as error:
            client = await self._discard(client)
            raise TransientFailure(f"SMTP: {type(error).__name__}: {error}") from None
        except ValueError as error:  # an address aiosmtplib refuses to put in an envelope
            raise PermanentFailure(f"invalid address: {error}") from None
        finally:
            self._idle.put_nowait(client if client is not None and client.is_connected else None)

    async def _transaction(self, client: aiosmtplib.SMTP, sender: str, recipient: str, message: bytes) -> str:
        # MAIL, RCPT and DATA rather than sendmail(): for one recipient sendmail() parses each
        # address twice more and normalises the message twice (to announce a SIZE that messages
        # of a few kilobytes do not need), a tenth of the sending process's CPU per email here.
        encoding = "ascii" if sender.isascii() and recipient.isascii() else "utf-8"
        options = ["SMTPUTF8"] if encoding == "utf-8" else []
        if options and not client.supports_extension("smtputf8"):
            raise SMTPNotSupported("the server does not take non-ASCII addresses (SMTPUTF8)")
        try:
            await client.mail(sender, options=options, encoding=encoding, timeout=self._timeout)
            await client.rcpt(recipient, encoding=encoding, timeout=self._timeout)
            reply = await client.data(message, timeout=self._timeout)
        except SMTPResponseException:
            # A refusal leaves a half-open envelope on the server: reset it for the next message.
            with contextlib.suppress(ConnectionError, SMTPException, asyncio.TimeoutError):
                await client.rset(timeout=self._timeout)
            raise
        return reply.message

    async def _connect(self, old: aiosmtplib.SMTP | None) -> aiosmtplib.SMTP:
        await self._discard(old)
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            timeout=self._timeout,
            start_tls=self._starttls,
            local_hostname=self._local_hostname,
            username=self._username or None,
            password=self._password or None,
        )
        await client.connect()
        self.connections_opened += 1
        return client

    @staticmethod
    async def _discard(client: aiosmtplib.SMTP | None) -> None:
        if client is not None:
            client.close()
        return None

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client is not None and client.is_connected:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.quit(), timeout=2)
                client.close()


# Relaying or authentication refused, STARTTLS required: what a server says to a client it does not
# trust to send for us, whichever recipient comes next.
_OUR_SETUP = re.compile(r"relay|authenticat|starttls", re.IGNORECASE)
_ENHANCED_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_ABOUT_THE_RECIPIENT = (SMTPRecipientRefused, SMTPDataError)  # refusals once a recipient was named


def classify(error: SMTPResponseException | SMTPRecipientsRefused) -> DeliveryFailure:
    """What a refusal means: retry later (4xx), the recipient's or the content's for good (5xx at
    RCPT or DATA), or our setup's (ProviderMisconfigured): a refusal before any recipient was
    named (the greeting, EHLO, STARTTLS, our login, MAIL FROM: the sender is ours), and, at any
    stage, 530 (authentication or STARTTLS required) or a 5xx that refuses relaying or asks for
    authentication (5.7.x: ``554 5.7.1 Relay access denied``, ``530 5.7.0 Must issue a STARTTLS
    command first``)."""
    if isinstance(error, SMTPRecipientsRefused):
        failures = [classify(refusal) for refusal in error.recipients]
        ours = [f for f in failures if isinstance(f, ProviderMisconfigured)]
        if ours:
            return ours[0]
        code = min(refusal.code for refusal in error.recipients)
        detail = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
        return _by_code(code, f"recipient refused: {detail}")
    code, message = error.code, error.message
    if isinstance(error, SMTPRecipientRefused):
        reason = f"recipient refused: {code} {message}"
    elif isinstance(error, SMTPAuthenticationError):
        reason = f"SMTP login refused: {code} {message}"
    else:
        reason = f"{type(error).__name__}: {code} {message}"
    if isinstance(error, SMTPAuthenticationError) or (
        code >= 500 and (not isinstance(error, _ABOUT_THE_RECIPIENT) or _refuses_our_setup(code, message))
    ):
        return ProviderMisconfigured(f"{reason} (our SMTP settings or account, not the recipient)", code=str(code))
    return _by_code(code, reason)


def _refuses_our_setup(code: int, message: str) -> bool:
    if code == 530:
        return True
    status = _ENHANCED_STATUS.match(message)
    about_security = status is None or status.group(2) == "7"  # 5.7.x: security or policy
    return about_security and _OUR_SETUP.search(message) is not None


def _by_code(code: int, reason: str) -> TransientFailure | PermanentFailure:
    if 400 <= code < 500:
        return TransientFailure(reason, code=str(code))
    return PermanentFailure(reason, code=str(code))
