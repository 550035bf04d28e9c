"""Every refusal answers ``{"error": {"code", "message", "fields", "details"}}`` with a 4xx status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.identity.domain.errors import Refusal

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, *, fields: list[dict[str, Any]] | None = None,
                   details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "fields": fields or [], "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(error: dict[str, Any]) -> dict[str, Any]:
    # Never echo the input back: it may be a password.
    message = str(error.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return {"loc": [str(p) if not isinstance(p, int) else p for p in error.get("loc", ())], "msg": message,
            "code": str(error.get("type", "invalid"))}


def install(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def refused(request: Request, refusal: Refusal) -> JSONResponse:
        fields = [{"loc": list(f.loc), "msg": f.msg, "code": f.code} for f in refusal.fields]
        return error_response(refusal.status, refusal.code, refusal.message, fields=fields, details=refusal.details,
                              headers=refusal.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = [_field(e) for e in error.errors()]
        summary = "; ".join(f"{'.'.join(map(str, f['loc'][1:])) or 'body'}: {f['msg']}" for f in fields[:5])
        return error_response(422, "validation_failed", summary or "the request is not valid", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {400: "malformed_request", 404: "not_found", 405: "method_not_allowed", 401: "unauthenticated",
                 403: "forbidden"}
        message = str(error.detail)
        if error.status_code == 400:  # a body fastapi could not even decode ("There was an error parsing the body")
            message = "the request body could not be read: send JSON in UTF-8"
        return error_response(error.status_code, codes.get(error.status_code, "http_error"), message,
                              headers=getattr(error, "headers", None))
