"""The HTTP API, version 1. Routes only translate: body -> handler call -> answer."""

import ipaddress
import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.identity.adapters.certificates import fingerprint_from_header
from services.identity.domain import accounts as rules
from services.identity.domain.errors import FieldProblem, Refusal
from services.identity.entrypoints import http_schemas as s
from services.identity.service_layer import administration, contracts, devices, passwords, registration, sessions
from services.identity.service_layer.administration import Actor, Person
from services.identity.service_layer.context import Caller, Identity
from services.identity.settings import IdentitySettings
from shared.logging import log_context

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorBody, "description": text}
    for code, text in {
        400: "Refused: see error.code",
        401: "Not authenticated, or credentials wrong",
        403: "Not allowed",
        404: "No such resource (or not yours)",
        409: "Conflicts with the current state",
        422: "A field is invalid: see error.fields",
        429: "Too many attempts: see the Retry-After header",
    }.items()
}
REGISTRATION_ACCEPTED = (
    "Thank you. If this address can be registered, an email with an activation link is on its way: "
    "open it within 72 hours to activate your account."
)
SENT_IF_KNOWN = "If an account matches, we sent an email with a link. Check your spam folder if it does not arrive."


def client_address(peer: str, forwarded_for: list[str], trusted_hops: int) -> str:
    """The client's address behind ``trusted_hops`` proxies of ours, from their X-Forwarded-For.

    Each proxy appends the address it received the request from, so only the last ``trusted_hops``
    entries were written by us; everything to their left came with the request and is whatever the
    client chose to send (it would let anyone pick a fresh address per request and escape every
    per-address limit). The entry our outermost proxy appended is the client. Fewer entries than
    hops: the request passed fewer proxies, and the leftmost entry is the furthest one we can trust.
    A malformed entry there is not an address: the peer is used.
    """
    entries = [e.strip() for value in forwarded_for for e in value.split(",") if e.strip()]
    if not entries:
        return peer
    chosen = entries[-min(trusted_hops, len(entries))]
    try:
        return str(ipaddress.ip_address(chosen))
    except ValueError:
        return peer


@dataclass(frozen=True)
class Principal:
    account_id: str
    session_id: str
    kind: str
    roles: tuple[str, ...]
    organisation_id: str | None
    state: dict[str, Any]
    amr: list[str]  # how this session's sign-in was proven (pwd, otp, device, x509)

    @property
    def actor(self) -> Actor:
        return Actor(self.account_id, self.kind, self.roles, self.organisation_id)


class Correlated:
    """Every request gets an id (the caller's ``X-Request-Id`` when well-formed): the correlation id
    of its logs and events, sent back with the answer, which is never cached.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs every
    request in a task of its own behind memory streams, which cost more than the route itself here."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"x-request-id"), "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["received_at"] = time.perf_counter()

        async def answer(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in (b"x-request-id", b"cache-control")]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode()),
                                                  (b"cache-control", b"no-store")]}
            await send(message)

        with log_context(correlation_id=request_id):
            await self.app(scope, receive, answer)


def build_api(app: FastAPI, ctx: Identity, settings: IdentitySettings) -> None:
    bearer = HTTPBearer(auto_error=False, description="Access token from POST /v1/sessions")

    app.add_middleware(Correlated)

    async def caller(request: Request) -> Caller:  # async: FastAPI runs a plain def in a thread
        address = request.client.host if request.client else "unknown"
        if settings.trust_forwarded_for:
            address = client_address(address, request.headers.getlist("x-forwarded-for"), settings.trusted_proxy_hops)
        return Caller(
            correlation_id=getattr(request.state, "request_id", uuid.uuid4().hex),
            address=address,
            user_agent=request.headers.get("user-agent", "")[:200],
            client_certificate=fingerprint_from_header(request.headers.get(settings.client_cert_header))
            if settings.client_cert_header else None,
            received_at=getattr(request.state, "received_at", None),
        )

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Refusal("unauthenticated", "send an access token: Authorization: Bearer <token>", 401,
                          headers={"WWW-Authenticate": "Bearer"})
        if ctx.key_watch is not None:
            await ctx.key_watch.learn_key_of(credentials.credentials)
        claims = ctx.tokens.verify(credentials.credentials, ctx.now())
        session = await ctx.stores.sessions.get(str(claims["sid"]))
        account = await ctx.stores.accounts.get(str(claims["sub"]))
        if (
            session is None
            or account is None
            or session.state["account_id"] != account.id
            or not sessions.session_is_live(session.state, account.state, ctx.now())
        ):
            raise Refusal("session_ended", "this session has ended: sign in again", 401,
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return Principal(account.id, session.id, account.state["kind"], tuple(account.state.get("roles", [])),
                         account.state.get("organisation_id"), account.state, list(session.state.get("amr", [])))

    Who = Annotated[Principal, Depends(principal)]
    Asker = Annotated[Caller, Depends(caller)]

    def must_accept_terms(accepted: bool) -> None:
        if not accepted:
            raise Refusal("validation_failed", "accept the terms and conditions to register", 422,
                          fields=[FieldProblem(("body", "terms_accepted"), "accept the terms and conditions to register",
                                               "terms_not_accepted")])

    def reg_of(body: s.RegistrationBody) -> registration.Registration:
        return registration.Registration(body.first_name, body.last_name, body.email, body.password, body.locale,
                                         body.terms_version, body.mobile)

    v1 = APIRouter(prefix="/v1", responses=ERRORS)

    # --- registration and activation ------------------------------------------------------------

    @v1.post("/registrations", status_code=202, response_model=s.Accepted, tags=["registration"])
    async def register(body: s.RegistrationBody, who: Asker) -> s.Accepted:
        """Register with name, email (the username) and password. The same answer whether or not the
        email already has an account (its owner is told by email instead)."""
        must_accept_terms(body.terms_accepted)
        await registration.register(ctx, who, reg_of(body))
        return s.Accepted(message=REGISTRATION_ACCEPTED)

    @v1.post("/registrations/customer-number-codes", status_code=202, response_model=s.Accepted, tags=["registration"])
    async def registration_code(body: s.CustomerNumberCodeBody, who: Asker) -> s.Accepted:
        """Belgian-style start: text a code to the mobile number on file for this customer number."""
        await registration.request_registration_code(ctx, who, body.customer_number, body.locale)
        return s.Accepted(message="If we know this customer number, a code is on its way to the mobile number on file.")

    @v1.post("/registrations/by-customer-number", status_code=202, response_model=s.Accepted, tags=["registration"])
    async def register_by_customer_number(body: s.CustomerNumberRegistrationBody, who: Asker) -> s.Accepted:
        """Complete a registration with the texted code: the account is linked to its contract and, like
        any account, waits for activation by the link emailed to the address given. The same answer
        whether or not the email already has an account (its owner is told by email instead)."""
        must_accept_terms(body.terms_accepted)
        await registration.register_with_customer_number(ctx, who, body.customer_number, body.code,
                                                         body.contract_number, reg_of(body))
        return s.Accepted(message=REGISTRATION_ACCEPTED)

    @v1.post("/activations", response_model=s.Done, tags=["registration"])
    async def activate(body: s.ActivationBody, who: Asker) -> s.Done:
        """Activate with the emailed link's token (single use, 72 hours)."""
        await registration.activate(ctx, who, body.token, body.password)
        return s.Done(status="activated")

    @v1.post("/activations/resend", status_code=202, response_model=s.Accepted, tags=["registration"])
    async def resend(body: s.EmailBody, who: Asker) -> s.Accepted:
        await registration.resend_activation(ctx, who, body.email)
        return s.Accepted(message=SENT_IF_KNOWN)

    # --- sessions -------------------------------------------------------------------------------

    @v1.post("/sessions", response_model=s.Tokens | s.DeviceChallenge, tags=["sessions"])
    async def login(body: s.LoginBody, who: Asker) -> dict[str, Any]:
        """Sign in. Answers tokens, or a device challenge when this device must be authorised first."""
        return await sessions.login(ctx, who, sessions.Login(body.email, body.password, body.device_token))

    @v1.post("/sessions/refresh", response_model=s.Tokens, tags=["sessions"])
    async def refresh(body: s.RefreshBody, who: Asker) -> dict[str, Any]:
        """Trade a refresh token for a new pair; the old refresh token is spent."""
        return await sessions.refresh(ctx, who, body.refresh_token)

    @v1.post("/device-challenges/code", status_code=202, response_model=s.CodeSent, tags=["devices"])
    async def device_code(body: s.DeviceCodeBody, who: Asker) -> dict[str, Any]:
        """Send a 6-digit code (10 minutes, 5 tries) by text or email."""
        return await devices.send_code(ctx, who, body.challenge, body.channel)

    @v1.post("/device-challenges/verify", response_model=s.Tokens, tags=["devices"])
    async def device_verify(body: s.DeviceVerifyBody, who: Asker) -> dict[str, Any]:
        """Authorise the device with the code; ``remember`` returns a device token for next time."""
        return await devices.verify_code(ctx, who, body.challenge, body.code, body.remember, body.device_label)

    # --- passwords ------------------------------------------------------------------------------

    @v1.post("/password-resets", status_code=202, response_model=s.Accepted, tags=["passwords"])
    async def forgot(body: s.EmailBody, who: Asker) -> s.Accepted:
        """Forgotten password: a reset link by email (1 hour). The same answer for unknown emails."""
        await passwords.request_reset(ctx, who, body.email)
        return s.Accepted(message=SENT_IF_KNOWN)

    @v1.post("/password-resets/confirm", response_model=s.Done, tags=["passwords"])
    async def reset(body: s.ResetBody, who: Asker) -> s.Done:
        """Set a new password with the reset link's token: every session ends."""
        await passwords.reset(ctx, who, body.token, body.new_password)
        return s.Done(status="password_changed")

    @v1.post("/password-changes/forced", response_model=s.Done, tags=["passwords"])
    async def forced(body: s.ForcedChangeBody, who: Asker) -> s.Done:
        """The change an administrator required, with the ticket from the refused sign-in."""
        await passwords.forced_change(ctx, who, body.change_ticket, body.new_password)
        return s.Done(status="password_changed")

    # --- the signed-in customer or user ---------------------------------------------------------

    @v1.get("/me", response_model=s.Me, tags=["me"])
    async def me(p: Who) -> dict[str, Any]:
        st = p.state
        return {
            "account_id": p.account_id, "kind": st["kind"], "email": st["email"], "first_name": st["first_name"],
            "last_name": st["last_name"], "locale": st["locale"], "mobile": st.get("mobile"), "roles": st["roles"],
            "organisation_id": st.get("organisation_id"),
            "link": {k: v for k, v in st.get("link", {}).items() if k in ("status", "method", "reason", "request_id")},
            "customer_number": st.get("customer_number"), "contract_numbers": st.get("contract_numbers", []),
        }

    @v1.put("/me/password", response_model=s.Tokens, tags=["me"])
    async def change_password(body: s.ChangePasswordBody, p: Who, who: Asker) -> dict[str, Any]:
        """Change the password (the current one is needed); every session ends and a new one is returned,
        on this session's device (still authorised)."""
        return await passwords.change(ctx, who, p.account_id, body.current_password, body.new_password,
                                      session_id=p.session_id)

    @v1.get("/me/sessions", response_model=list[s.SessionItem], tags=["me"])
    async def my_sessions(p: Who) -> list[dict[str, Any]]:
        return await sessions.list_sessions(ctx, p.account_id, p.session_id)

    @v1.delete("/me/sessions/current", status_code=204, tags=["me"])
    async def logout(p: Who) -> Response:
        """Sign out here."""
        await sessions.revoke_session(ctx, p.session_id, "logout", owner=p.account_id)
        return Response(status_code=204)

    @v1.delete("/me/sessions", status_code=204, tags=["me"])
    async def logout_everywhere(p: Who) -> Response:
        """Sign out on every device, this one included."""
        await sessions.end_all_sessions(ctx, p.account_id, "logout_everywhere")
        return Response(status_code=204)

    @v1.delete("/me/sessions/{session_id}", status_code=204, tags=["me"])
    async def revoke_session(session_id: str, p: Who) -> Response:
        if not await sessions.revoke_session(ctx, session_id, "revoked_by_owner", owner=p.account_id):
            raise Refusal("not_found", "no such session", 404)
        return Response(status_code=204)

    @v1.get("/me/devices", response_model=list[s.DeviceItem], tags=["me"])
    async def my_devices(p: Who) -> list[dict[str, Any]]:
        return await devices.list_devices(ctx, p.account_id)

    @v1.delete("/me/devices/{device_id}", status_code=204, tags=["me"])
    async def forget_device(device_id: str, p: Who) -> Response:
        """Forget a device: it must be authorised again, and its sessions end."""
        if not await devices.forget_device(ctx, p.account_id, device_id):
            raise Refusal("not_found", "no such device", 404)
        return Response(status_code=204)

    @v1.post("/me/client-certificates", status_code=201, response_model=s.CertificateRegistered, tags=["me"])
    async def register_certificate(body: s.CertificateBody, p: Who, who: Asker) -> dict[str, Any]:
        """Register a personal client certificate (PEM): signing in with it then replaces the device code.
        Only from a device already authorised; it is listed, and forgotten, with the devices."""
        return await devices.register_certificate(ctx, who, p.account_id, p.amr, body.certificate_pem, body.label)

    @v1.post("/me/device-challenges", response_model=s.DeviceChallenge, tags=["me"])
    async def authorise_this_device(p: Who, who: Asker) -> dict[str, Any]:
        """Authorise the device of the current session (this session is replaced by one on the device).
        A contract link ends the sessions opened before it, so after a link the device is authorised at
        sign-in instead; this serves a customer who authorises (and remembers) a device ahead of the link."""
        account = await ctx.stores.accounts.get(p.account_id)
        assert account is not None
        return await devices.start_challenge(ctx, who, account, purpose="session", replaces_session=p.session_id)

    @v1.post("/me/compromise-reports", response_model=s.Done, tags=["me"])
    async def report_compromise(p: Who) -> s.Done:
        """Someone else may know my password (002, art. 2.8): end every session, forget every device;
        the password then opens nothing until a new one is set with the emailed reset link."""
        await passwords.report_compromise(ctx, p.account_id)
        return s.Done(status="secured")

    @v1.post("/me/contract-links", status_code=202, response_model=s.LinkRequested, tags=["me"])
    async def link_contract(body: s.ContractLinkBody, p: Who, who: Asker) -> s.LinkRequested:
        """Associate the login with a finance contract: vehicle details, or the customer number."""
        if isinstance(body, s.VehicleLinkBody):
            request_id = await contracts.request_link(
                ctx, who, p.account_id, method="vehicle", first_name=body.first_name, last_name=body.last_name,
                vin=body.vin, last_payment_amount=body.last_payment_amount,
            )
        else:
            request_id = await contracts.request_link(
                ctx, who, p.account_id, method="customer_number", customer_number=body.customer_number
            )
        return s.LinkRequested(request_id=request_id)

    # --- organisations and staff ----------------------------------------------------------------

    def person(body: s.PersonBody) -> Person:
        return Person(body.first_name, body.last_name, body.email, body.locale, body.mobile)

    @v1.post("/organisations", status_code=201, response_model=s.OrganisationCreated, tags=["organisations"])
    async def create_organisation(body: s.OrganisationBody, p: Who, who: Asker) -> dict[str, str]:
        """Service desk: create an organisation and invite its first user administrator."""
        return await administration.create_organisation(ctx, who, p.actor, body.name, body.kind, person(body.administrator))

    @v1.get("/organisations/{organisation_id}/users", response_model=list[s.UserItem], tags=["organisations"])
    async def organisation_users(organisation_id: str, p: Who) -> list[dict[str, Any]]:
        return await administration.list_users(ctx, p.actor, organisation_id)

    @v1.post("/organisations/{organisation_id}/users", status_code=201, response_model=s.UserCreated,
             tags=["organisations"])
    async def invite(organisation_id: str, body: s.InviteBody, p: Who, who: Asker) -> s.UserCreated:
        """User administrator: create a colleague's account (they get an activation link)."""
        user_id = await administration.invite_user(ctx, who, p.actor, organisation_id, person(body), body.role)
        return s.UserCreated(user_id=user_id)

    @v1.post("/organisations/{organisation_id}/users/{user_id}/disable", response_model=s.Done, tags=["organisations"])
    async def disable(organisation_id: str, user_id: str, p: Who) -> s.Done:
        await administration.set_enabled(ctx, p.actor, organisation_id, user_id, enabled=False)
        return s.Done(status="disabled")

    @v1.post("/organisations/{organisation_id}/users/{user_id}/enable", response_model=s.Done, tags=["organisations"])
    async def enable(organisation_id: str, user_id: str, p: Who) -> s.Done:
        await administration.set_enabled(ctx, p.actor, organisation_id, user_id, enabled=True)
        return s.Done(status="enabled")

    @v1.post("/organisations/{organisation_id}/users/{user_id}/unblock", response_model=s.Done, tags=["organisations"])
    async def unblock(organisation_id: str, user_id: str, p: Who, who: Asker) -> s.Done:
        await administration.unblock_member(ctx, who, p.actor, organisation_id, user_id)
        return s.Done(status="unblocked")

    AuditLimit = Annotated[int, Query(ge=1, le=administration.AUDIT_PAGE_MAX, description="Records per page")]
    AuditBefore = Annotated[str | None, Query(max_length=64, description="Page on: records older than this one")]

    @v1.get("/organisations/{organisation_id}/audit", response_model=list[s.AuditItem], tags=["organisations"])
    async def organisation_audit(organisation_id: str, p: Who, limit: AuditLimit = administration.AUDIT_PAGE_MAX,
                                 before: AuditBefore = None) -> list[dict[str, Any]]:
        """The organisation's audit trail, newest first."""
        return await administration.audit_trail(ctx, p.actor, organisation_id=organisation_id, target_id=None,
                                                limit=limit, before=before)

    @v1.post("/staff/accounts/{account_id}/unblock", response_model=s.Done, tags=["staff"])
    async def staff_unblock(account_id: str, p: Who, who: Asker) -> s.Done:
        """Service desk: unblock any account, user administrators included."""
        await administration.staff_unblock(ctx, who, p.actor, account_id)
        return s.Done(status="unblocked")

    @v1.post("/staff/password-change-requirements", response_model=s.Count, tags=["staff"])
    async def require_change(body: s.PasswordChangeRequirementBody, p: Who, who: Asker) -> s.Count:
        """Security administrator: everyone (or these accounts) must choose a new password at next sign-in."""
        count = await administration.require_password_change(ctx, who, p.actor, everyone=body.everyone,
                                                             account_ids=body.account_ids)
        return s.Count(accounts=count)

    @v1.get("/staff/audit", response_model=list[s.AuditItem], tags=["staff"])
    async def staff_audit(p: Who, target_id: str | None = None, limit: AuditLimit = administration.AUDIT_PAGE_MAX,
                          before: AuditBefore = None) -> list[dict[str, Any]]:
        """Every audit record (or those of one target), newest first."""
        if p.kind != rules.STAFF:
            raise Refusal("forbidden", "staff only", 403)
        return await administration.audit_trail(ctx, p.actor, organisation_id=None, target_id=target_id,
                                                limit=limit, before=before)

    app.include_router(v1)

    @app.get("/.well-known/jwks.json", tags=["keys"])
    async def jwks() -> dict[str, Any]:
        """The public keys that verify access tokens (EdDSA or ES256, selected by ``kid``)."""
        return ctx.tokens.jwks(ctx.now())
