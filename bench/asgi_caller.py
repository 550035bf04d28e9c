"""The lightest possible HTTP client for a benchmark: one ASGI call per request, in the same process.

A load generator shares this machine's two cores with the service it measures, and httpx costs about
as much CPU per request as the service's own routing and validation (its request building, its
``ASGITransport``, its response objects). That cost belongs to the client, not to the service: this
caller hands the app a request the way an ASGI server would, and nothing else, so what a benchmark
measures is the service's whole HTTP path (middleware, routing, validation, serialisation) and its
work, without a client's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message


class AsgiCaller:
    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 40000), host: str = "bench") -> None:
        self._app = app
        self._client = client
        self._host = host.encode()

    async def post_json(self, path: str, payload: Any) -> tuple[int, bytes]:
        """``(status, body)`` of ``POST path`` with ``payload`` as its JSON body."""
        body = json.dumps(payload).encode()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", self._host), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
            "client": self._client, "server": (self._host.decode(), 80),
        }
        delivered = False
        disconnected = asyncio.Event()
        status = 0
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()  # the app asks only once the answer is sent: the client leaves
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    disconnected.set()

        await self._app(scope, receive, send)
        return status, b"".join(chunks)
