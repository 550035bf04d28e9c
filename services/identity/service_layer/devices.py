"""Device authorisation: an unknown device proves itself with a 6-digit code sent by text or email,
or with a personal client certificate its owner registered from a device already authorised."""

from __future__ import annotations

from typing import Any

from services.identity.adapters.certificates import NotACertificate, device_id_of, parse_certificate
from services.identity.domain import accounts as rules
from services.identity.domain import codes, tokens
from services.identity.domain.errors import FieldProblem, Refusal
from services.identity.service_layer.context import Caller, Identity, addressed, retrying
from shared.events import DeviceAuthorised, DeviceCodeIssued, Envelope
from shared.storage import ConcurrencyConflict, StoredDocument


#: A challenge started by a sign-in that must change its password first: the device proven, the
#: answer is the change ticket instead of a session.
PASSWORD_CHANGE = "password_change"


async def recognise(ctx: Identity, account_id: str, device_token: str | None) -> str | None:
    """The id of the remembered device this token proves, refreshing its last use; None otherwise."""
    parts = tokens.split_compound(device_token) if device_token else None
    if parts is None:
        return None
    device_id, secret = parts
    device = await ctx.stores.devices.get(device_id)
    if device is None or device.state["account_id"] != account_id or not device.state.get("token_hash"):
        return None
    if not tokens.same(tokens.hash_secret(secret), device.state["token_hash"]):
        return None
    if not codes.remembered_device_usable(device.state, ctx.now()):
        return None
    return await _used_now(ctx, device)


async def _used_now(ctx: Identity, device: StoredDocument) -> str:
    """Record that a remembered device was used (its 180 days start again); returns its id."""
    try:
        await ctx.stores.devices.update(device, device.state | {"last_used_at": ctx.now()})
    except ConcurrencyConflict:
        pass  # a concurrent sign-in from the same device refreshed it already
    return device.id


async def start_challenge(ctx: Identity, caller: Caller, account: StoredDocument, *, purpose: str,
                          replaces_session: str | None = None) -> dict[str, Any]:
    challenge_id = tokens.new_id("chl")
    secret = tokens.new_secret()
    now = ctx.now()
    expires_at = now + tokens.CHALLENGE_TTL
    await ctx.stores.challenges.create(
        challenge_id,
        {
            "account_id": account.id,
            "purpose": purpose,
            "replaces_session": replaces_session,
            "secret_hash": tokens.hash_secret(secret),
            "device_id": tokens.new_id("dev"),
            "created_at": now,
            "expires_at": expires_at,
            "status": "open",
            "code": None,
            "codes_sent": 0,
            "channel": None,
        },
    )
    return {
        "status": "device_authorisation_required",
        "challenge": tokens.compound(challenge_id, secret),
        "channels": rules.channels(account.state),
        "expires_at": expires_at,
    }


async def _open_challenge(ctx: Identity, challenge_token: str) -> tuple[StoredDocument, StoredDocument]:
    parts = tokens.split_compound(challenge_token)
    invalid = Refusal("challenge_invalid", "this device authorisation is not valid: sign in again", 400)
    if parts is None:
        raise invalid
    challenge = await ctx.stores.challenges.get(parts[0])
    if challenge is None or not tokens.same(tokens.hash_secret(parts[1]), challenge.state["secret_hash"]):
        raise invalid
    if challenge.state["status"] != "open":
        raise Refusal("challenge_closed", "this device authorisation is already finished: sign in again", 400)
    if ctx.now() >= challenge.state["expires_at"]:
        raise Refusal("challenge_expired", "this device authorisation has expired: sign in again", 400)
    account = await ctx.stores.accounts.get(challenge.state["account_id"])
    if account is None or account.state["status"] != rules.ACTIVE:
        raise invalid
    reported = rules.refusal_after_compromise(account.state)  # reported after the challenge started
    if reported is not None:
        raise reported
    return challenge, account


async def send_code(ctx: Identity, caller: Caller, challenge_token: str, channel: str) -> dict[str, Any]:
    await ctx.limit(caller, "device_code", "send", None)
    limited: list[str] = []

    async def attempt() -> dict[str, Any]:
        challenge, account = await _open_challenge(ctx, challenge_token)
        if channel not in rules.channels(account.state):
            raise Refusal("channel_unavailable", "no mobile number on file: choose email", 400)
        # Five wrong tries end the challenge, however many codes it was sent.
        wrong_so_far = (challenge.state.get("code") or {}).get("tries", 0)
        issued = codes.issue_code(ctx.now(), challenge.state["codes_sent"], tokens.DEVICE_CODE_TTL,
                                  wrong_tries_so_far=wrong_so_far)
        if not limited:  # once per request, also when a concurrent write makes us try again
            await ctx.limit(caller, "device_code", "send", account.id, address=False)
            limited.append(account.id)
        event = DeviceCodeIssued(
            customer_id=account.id,
            **addressed(account.state),
            device_id=challenge.state["device_id"],
            channel=channel,  # type: ignore[arg-type]
            mobile=account.state.get("mobile") if channel == "sms" else None,
            code=ctx.seal(DeviceCodeIssued, "code", issued.code),
            code_expires_at=issued.stored["expires_at"],
        )
        await ctx.stores.challenges.update(
            challenge,
            challenge.state | {"code": issued.stored, "codes_sent": challenge.state["codes_sent"] + 1, "channel": channel},
            [ctx.envelope(event, caller)],
        )
        return {"status": "code_sent", "channel": channel, "code_expires_at": issued.stored["expires_at"]}

    return await retrying(attempt)


async def verify_code(ctx: Identity, caller: Caller, challenge_token: str, code: str, remember: bool,
                      label: str | None) -> dict[str, Any]:
    """Authorise the device with its code: a session on it, or, for a sign-in that must change its
    password first, the change ticket (``password_change_required``, with the device token if it is
    to be remembered)."""
    from services.identity.service_layer.sessions import open_session, password_change_required, revoke_session

    await ctx.limit(caller, "device_verify", "check", None)
    limited: list[str] = []

    async def check() -> tuple[StoredDocument, StoredDocument]:
        challenge, account = await _open_challenge(ctx, challenge_token)
        if not limited:
            await ctx.limit(caller, "device_verify", "check", account.id, address=False)
            limited.append(account.id)
        outcome = codes.check_code(challenge.state.get("code"), code, ctx.now())
        if outcome.ok:
            await ctx.stores.challenges.update(challenge, challenge.state | {"status": "done", "code": None})
            return challenge, account
        assert outcome.refusal is not None
        if challenge.state.get("code") is not None:
            dead = outcome.refusal.code == "code_dead"
            await ctx.stores.challenges.update(
                challenge, challenge.state | {"code": outcome.stored} | ({"status": "dead"} if dead else {})
            )
        raise outcome.refusal

    challenge, account = await retrying(check)
    device_id = challenge.state["device_id"]
    label = (label or caller.user_agent or "unnamed device")[:200]
    secret = tokens.new_secret() if remember else None
    state, event = authorised_device(ctx, caller, account, device_id, label, remembered=remember,
                                     token_hash=tokens.hash_secret(secret) if secret else None,
                                     channel=challenge.state.get("channel"))
    await ctx.stores.devices.create(device_id, state, [event])
    device_token = {"device_token": tokens.compound(device_id, secret)} if secret else {}
    if challenge.state["purpose"] == PASSWORD_CHANGE:
        raise await password_change_required(ctx, account.id, **device_token)
    if challenge.state.get("replaces_session"):
        await revoke_session(ctx, challenge.state["replaces_session"], "device_authorised", owner=account.id)
    response = await open_session(ctx, caller, account, device_id=device_id, amr=["pwd", "otp"])
    return response | device_token


def authorised_device(ctx: Identity, caller: Caller, account: StoredDocument, device_id: str, label: str, *,
                      remembered: bool, token_hash: str | None, channel: str | None,
                      **extra: Any) -> tuple[dict[str, Any], Envelope]:
    """A device just authorised, as stored, and the event that tells its owner."""
    now = ctx.now()
    state = {"account_id": account.id, "label": label, "remembered": remembered, "token_hash": token_hash,
             "channel": channel, **extra, "authorised_at": now, "last_used_at": now, "revoked_at": None}
    event = DeviceAuthorised(customer_id=account.id, **addressed(account.state), device_id=device_id,
                             device_label=label, remembered=remembered)
    return state, ctx.envelope(event, caller)


async def list_devices(ctx: Identity, account_id: str) -> list[dict[str, Any]]:
    raws = await ctx.stores.devices.collection.find({"account_id": account_id, "revoked_at": None}).to_list()
    now = ctx.now()
    return [
        {
            "device_id": r["_id"],
            "label": r["label"],
            "remembered": r["remembered"] and codes.remembered_device_usable(r, now),
            "authorised_at": r["authorised_at"],
            "last_used_at": r["last_used_at"],
        }
        for r in sorted(raws, key=lambda r: r["authorised_at"])
    ]


async def forget_device(ctx: Identity, account_id: str, device_id: str) -> bool:
    async def attempt() -> bool:
        device = await ctx.stores.devices.get(device_id)
        if device is None or device.state["account_id"] != account_id:
            return False
        if device.state["revoked_at"] is None:
            await ctx.stores.devices.update(device, device.state | {"revoked_at": ctx.now(), "token_hash": None})
        return True

    if not await retrying(attempt):
        return False
    from services.identity.service_layer.sessions import revoke_session

    on_device = ctx.stores.sessions.collection.find({"account_id": account_id, "device_id": device_id, "revoked_at": None})
    for raw in await on_device.to_list():
        await revoke_session(ctx, raw["_id"], "device_forgotten", owner=account_id)
    return True


async def forget_all_devices(ctx: Identity, account_id: str) -> None:
    raws = await ctx.stores.devices.collection.find({"account_id": account_id, "revoked_at": None}, {"_id": 1}).to_list()
    for raw in raws:
        await forget_device(ctx, account_id, raw["_id"])


#: Sessions whose device was authorised: by a code, as a remembered device, or by a certificate.
DEVICE_PROVEN = frozenset({"otp", "device", "x509"})


async def register_certificate(ctx: Identity, caller: Caller, account_id: str, session_amr: list[str],
                               pem: str, label: str | None) -> dict[str, Any]:
    """Bind a personal client certificate to the account: from then on, signing in with it replaces
    the code. Only from a device already authorised (else a stolen password would be enough to
    register the thief's certificate), and told to the owner like any new device."""
    await ctx.limit(caller, "client_certificate", "send", account_id)  # the new-device notice
    account = await ctx.stores.accounts.get(account_id)
    assert account is not None
    if not rules.needs_device_authorisation(account.state):
        raise Refusal("not_applicable", "this account signs in without device authorisation: no certificate is needed", 409)
    if not DEVICE_PROVEN.intersection(session_amr):
        raise Refusal("device_not_authorised", "authorise this device first (POST /v1/me/device-challenges)", 403)
    try:
        cert = parse_certificate(pem)
    except NotACertificate as error:
        raise Refusal("validation_failed", str(error), 422,
                      fields=[FieldProblem(("body", "certificate_pem"), str(error), "not_a_certificate")]) from None
    now = ctx.now()
    if not cert.not_before <= now < cert.not_after:
        why = f"this certificate is valid from {cert.not_before.isoformat()} until {cert.not_after.isoformat()}"
        raise Refusal("certificate_not_valid_now", why, 422,
                      fields=[FieldProblem(("body", "certificate_pem"), why, "certificate_not_valid_now")])
    device_id = device_id_of(cert.sha256)
    existing = await ctx.stores.devices.get(device_id)
    if existing is not None and existing.state["revoked_at"] is None:
        raise Refusal("certificate_registered", "this certificate is registered already", 409)
    label = (label or f"client certificate {cert.subject}")[:200]
    state, event = authorised_device(ctx, caller, account, device_id, label, remembered=True, token_hash=None,
                                     channel="x509", certificate_sha256=cert.sha256,
                                     certificate_subject=cert.subject, certificate_not_after=cert.not_after)
    if existing is None:
        await ctx.stores.devices.create(device_id, state, [event])
    else:  # revoked before (by this owner or another): registered afresh
        await ctx.stores.devices.update(existing, state, [event])
    return {"device_id": device_id, "fingerprint_sha256": cert.sha256, "subject": cert.subject,
            "not_after": cert.not_after}


async def recognise_certificate(ctx: Identity, account_id: str, sha256: str | None) -> str | None:
    """The device id of the certificate the client presented, if it is this account's and valid now."""
    if sha256 is None:
        return None
    device = await ctx.stores.devices.get(device_id_of(sha256))
    now = ctx.now()
    if (
        device is None
        or device.state["account_id"] != account_id
        or device.state.get("certificate_sha256") != sha256
        or now >= device.state["certificate_not_after"]
        or not codes.remembered_device_usable(device.state, now)  # forgotten, or 180 days unused
    ):
        return None
    return await _used_now(ctx, device)
