"""A Twilio-compatible sink: the Messages API subset the official client uses, nothing sent anywhere.

- ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form: To, From, Body) answers 201
  with Twilio's message JSON (``sid`` "SM..." and the usual fields), and stores the message;
- ``GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`` returns a stored message;
- errors use Twilio's shape ``{"code", "message", "more_info", "status"}``: 401/20003 without
  valid Basic credentials, 400/21211 for a malformed number, 400/21602 without a body;
- ``POST /_control/fail`` ``{"status": 400, "code": 21211, "times": 1, "to": "+33..."?}`` makes the
  next matching requests fail that way; ``POST /_control/reset``; ``GET /_control/messages``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

API = "/2010-04-01"
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
MESSAGES_FILE = "messages.jsonl"
_ERRORS = {
    20003: "Authenticate",
    20429: "Too Many Requests",
    21211: "The 'To' number {to} is not a valid phone number.",
    21602: "Message body is required.",
    21603: "The 'From' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    30003: "Unreachable destination handset",
}


@dataclass
class SentSms:
    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    received_at: float
    num_segments: int = 1
    status: str = "queued"

    def twilio_json(self) -> dict[str, Any]:
        created = formatdate(self.received_at, usegmt=True)
        uri = f"{API}/Accounts/{self.account_sid}/Messages/{self.sid}.json"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": self.body,
            "date_created": created,
            "date_sent": None,
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(self.num_segments),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": self.to,
            "uri": uri,
        }


@dataclass
class _Failure:
    status: int
    code: int
    message: str | None
    times: int
    to: str | None = None


@dataclass
class TwilioSinkState:
    directory: Path | None
    auth_token: str | None = None
    messages: list[SentSms] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    requests: int = 0
    clients: set[tuple[str, int]] = field(default_factory=set)  # (address, port): one per TCP connection

    def store(self, sms: SentSms) -> None:
        self.messages.append(sms)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (self.directory / MESSAGES_FILE).open("a", encoding="utf-8") as out:
                row = asdict(sms)
                row["from"] = row.pop("from_")
                out.write(json.dumps(row, ensure_ascii=False) + "\n")

    def next_failure(self, to: str) -> _Failure | None:
        for failure in self.failures:
            if failure.to in (None, to):
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.remove(failure)
                return failure
        return None


def twilio_error(status: int, code: int, message: str | None = None, **values: str) -> JSONResponse:
    text = message or _ERRORS.get(code, "Error").format(**values)
    body = {"code": code, "message": text, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return JSONResponse(body, status_code=status)


def segments_of(body: str) -> int:
    """A rough count, as informative as Twilio's own field is for a sink (GSM-7 assumed)."""
    return 1 if len(body) <= 160 else -(-len(body) // 153)


def create_app(state: TwilioSinkState) -> FastAPI:
    app = FastAPI(title="Twilio sink (local)", docs_url=None, redoc_url=None)

    def authorised(request: Request, account_sid: str) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == account_sid and (state.auth_token is None or password == state.auth_token)

    @app.post(API + "/Accounts/{account_sid}/Messages.json")
    async def create_message(account_sid: str, request: Request) -> JSONResponse:
        state.requests += 1
        if request.client is not None:
            state.clients.add((request.client.host, request.client.port))
        if not authorised(request, account_sid):
            return twilio_error(401, 20003)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(), keep_blank_values=True).items()}
        to, sender, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        failure = state.next_failure(to)
        if failure is not None:
            return twilio_error(failure.status, failure.code, failure.message, to=to)
        if not E164.match(to):
            return twilio_error(400, 21211, to=to)
        if not sender and not form.get("MessagingServiceSid"):
            return twilio_error(400, 21603)
        if not body:
            return twilio_error(400, 21602)
        sms = SentSms(f"SM{uuid.uuid4().hex}", account_sid, to, sender, body, time.time(), segments_of(body))
        state.store(sms)
        return JSONResponse(sms.twilio_json(), status_code=201)

    @app.get(API + "/Accounts/{account_sid}/Messages/{sid}.json")
    async def fetch_message(account_sid: str, sid: str, request: Request) -> JSONResponse:
        if not authorised(request, account_sid):
            return twilio_error(401, 20003)
        for sms in state.messages:
            if sms.sid == sid and sms.account_sid == account_sid:
                return JSONResponse(sms.twilio_json())
        return twilio_error(404, 20404, f"The requested resource {sid} was not found")

    @app.post("/_control/fail")
    async def fail(request: Request) -> dict[str, Any]:
        spec = await request.json()
        state.failures.append(
            _Failure(int(spec.get("status", 400)), int(spec.get("code", 21211)), spec.get("message"),
                     int(spec.get("times", 1)), spec.get("to"))
        )
        return {"pending_failures": len(state.failures)}

    @app.post("/_control/reset")
    async def reset() -> dict[str, Any]:
        state.failures.clear()
        state.messages.clear()
        return {"ok": True}

    @app.get("/_control/messages")
    async def messages() -> list[dict[str, Any]]:
        return [sms.twilio_json() for sms in reversed(state.messages)]

    return app


class TwilioSink:
    """The sink served by uvicorn inside the running event loop (``port=0``: any free port)."""

    def __init__(self, directory: Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 auth_token: str | None = None) -> None:
        self.state = TwilioSinkState(directory, auth_token)
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def messages(self) -> list[SentSms]:
        return self.state.messages

    @property
    def connections(self) -> int:
        """How many TCP connections the Messages API was called over (a client that keeps one
        HTTP session reuses its connections)."""
        return len(self.state.clients)

    def fail(self, status: int = 400, code: int = 21211, times: int = 1, to: str | None = None,
             message: str | None = None) -> None:
        self.state.failures.append(_Failure(status, code, message, times, to))

    async def start(self) -> "TwilioSink":
        config = uvicorn.Config(create_app(self.state), host=self.host, port=self.port, log_config=None,
                                access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    async def __aenter__(self) -> "TwilioSink":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def serve(directory: Path, host: str, port: int, auth_token: str | None) -> None:
    sink = TwilioSink(directory, host=host, port=port, auth_token=auth_token)
    await sink.start()
    print(f"Twilio sink on {sink.base_url}, writing to {directory / MESSAGES_FILE}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sink.stop()
