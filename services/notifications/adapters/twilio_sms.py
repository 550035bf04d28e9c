"""Sending SMS with Twilio's official client, in its asynchronous mode, over one HTTP session.

Two things the installed client (twilio 9.13, ``AsyncTwilioHttpClient``) does that we must make up for:
- its ``timeout`` argument is ignored for async requests (it passes ``timeout=None`` to aiohttp,
  which then has no deadline at all), so every call is bounded here with ``asyncio.timeout``;
- its aiohttp session must be created inside the running event loop, so it is built in ``start``.

The API's base URL is configurable so that, locally and in tests, the real client talks to the
Twilio-compatible sink of ``deploy/sinks``.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from services.notifications.domain.retries import PermanentFailure, ProviderMisconfigured, TransientFailure

log = logging.getLogger(__name__)

# Twilio's request logger prints every request at INFO; ours says what matters.
_quiet_http_log = logging.getLogger("services.notifications.twilio_http")
_quiet_http_log.setLevel(logging.WARNING)

TRANSIENT_CODES = {20429, 20500, 20503, 30001}  # too many requests, internal errors, queue overflow
# Refusals that say our account or settings are wrong, whoever the recipient: authentication
# (20003), account suspended or not active (20005, 30002), test credentials (20008), unknown
# account or resource (20404), the sender number invalid, missing or not ours (21212, 21603,
# 21606, 21659), a trial account's unverified recipient (21608), a destination country not enabled
# in the account's geographic permissions (21408).
CONFIGURATION_CODES = {20003, 20005, 20008, 20404, 21212, 21408, 21603, 21606, 21608, 21659, 30002}
CONFIGURATION_STATUSES = {401, 403, 404}


class TwilioSms:
    def __init__(
        self, *, account_sid: str, auth_token: str, from_number: str, base_url: str, timeout_s: float = 10.0
    ) -> None:
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._from = from_number
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout_s
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None

    async def start(self) -> None:
        self._http = AsyncTwilioHttpClient(logger=_quiet_http_log)
        # A non-empty ``environment`` keeps TWILIO_EDGE / TWILIO_REGION from the process
        # environment from rewriting the host we point it at.
        self._client = Client(
            self._account_sid, self._auth_token, http_client=self._http, environment={"LEASELINE": "1"}
        )
        self._client.api.base_url = self._base_url

    async def send(self, to: str, body: str) -> str:
        """Send one SMS; returns Twilio's message SID. Raises TransientFailure or PermanentFailure."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            async with asyncio.timeout(self._timeout):
                message = await self._client.api.v2010.account.messages.create_async(to=to, from_=self._from, body=body)
        except TwilioRestException as error:
            raise _classify(error.status, error.code, error.msg) from None
        except TwilioServiceException as error:
            raise _classify(error.status, error.code, error.title) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise TransientFailure(f"Twilio unreachable: {type(error).__name__}: {error}") from None
        return str(message.sid)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = self._client = None


def _classify(status: int, code: int | None, message: str) -> TransientFailure | PermanentFailure:
    reason = f"Twilio {status}/{code}: {message}"
    if status in CONFIGURATION_STATUSES or code in CONFIGURATION_CODES:
        # Every SMS would fail this way: retried (and codes fall back to email meanwhile), and
        # said loudly to whoever runs the service, never recorded as the recipient's fault.
        log.error("Twilio refuses our account or settings: operator action needed",
                  extra={"alert": "operator", "provider": "twilio", "status": status, "code": code,
                         "provider_message": message})
        return ProviderMisconfigured(f"{reason} (our Twilio account or settings, not the recipient)",
                                     code=str(code or status))
    if status == 429 or status >= 500 or (code in TRANSIENT_CODES):
        return TransientFailure(reason, code=str(code or status))
    # The recipient's number: 21211 invalid, 21610 unsubscribed (STOP), 21614 not a mobile...
    return PermanentFailure(reason, code=str(code or status))
