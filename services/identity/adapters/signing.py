"""Access tokens: short-lived JWTs signed with an asymmetric key (EdDSA/Ed25519 or ES256), with ``kid``.

Keys come from the environment (``JWT_PRIVATE_KEY_PATH`` or ``JWT_PRIVATE_KEY_PEM``, with
``JWT_KEY_ID``) or, when none is configured, are generated at first start and kept in the
service's own store, the private key sealed with ``EVENT_SECRET_KEYS`` (see docs/identity.md).
Anyone verifies a token with the public keys published at ``/.well-known/jwks.json``.

Rotation: when the key changes (a new one configured), the one that signed before is retired, not
forgotten. Every key that signed is recorded in the store (its public half, sealed so that nobody
with write access to the store can slip in a key of their own); a retired key stays published and
accepted for ``keep_for`` after its retirement (the longest access-token lifetime allowed), so the
tokens it signed live out their lifetime.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from services.identity.domain.errors import Refusal
from shared.clock import Clock
from shared.crypto import Keyring, SealError
from shared.storage import ConcurrencyConflict, DocumentStore
from shared.storage.mongo import is_duplicate_key

log = logging.getLogger(__name__)

KEY_DOC = "current"
SEAL_CONTEXT = "identity/signing-key"
VERIFICATION_KEY = "verification_key"  # kind of the records of every key that signed


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private: Any
    public: Any

    def jwk(self) -> dict[str, str]:
        algorithm = jwt.algorithms.get_default_algorithms()[self.algorithm]
        jwk = json.loads(algorithm.to_jwk(self.public))
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def key_from_pem(pem: bytes, kid: str | None = None) -> SigningKey:
    private = serialization.load_pem_private_key(pem, password=None)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        algorithm = "EdDSA"
    elif isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1":
        algorithm = "ES256"
    else:
        raise ValueError("the JWT signing key must be Ed25519 (EdDSA) or EC P-256 (ES256)")
    public = private.public_key()
    if not kid:
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        kid = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")
    return SigningKey(kid, algorithm, private, public)


def generate_key() -> SigningKey:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_from_pem(pem)


def _pem(key: SigningKey) -> str:
    return key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


async def load_or_create_key(
    *, pem: bytes | None, kid: str | None, store: DocumentStore, keyring: Keyring, now: datetime
) -> SigningKey:
    if pem:
        return key_from_pem(pem, kid)
    doc = await store.get(KEY_DOC)
    if doc is None:
        key = generate_key()
        try:
            await store.create(
                KEY_DOC,
                {
                    "kid": key.kid,
                    "algorithm": key.algorithm,
                    "private_key": keyring.seal(_pem(key), context=SEAL_CONTEXT),
                    "public_jwk": key.jwk(),
                    "created_at": now,
                },
            )
            return key
        except Exception as error:
            if not is_duplicate_key(error):
                raise
            doc = await store.get(KEY_DOC)  # another instance generated it first: use theirs
    assert doc is not None
    return key_from_pem(keyring.unseal(doc.state["private_key"], context=SEAL_CONTEXT).encode(), doc.state["kid"])


def read_configured_pem(path: str, inline: str) -> bytes | None:
    if inline:
        return inline.encode()
    if path:
        return Path(path).read_bytes()
    return None


def _verification_context(kid: str) -> str:
    return f"identity/verification-key/{kid}"


def _public_key(record: dict[str, Any], keyring: Keyring) -> SigningKey:
    jwk = keyring.unseal(record["public_jwk"], context=_verification_context(record["kid"]))
    algorithm = jwt.algorithms.get_default_algorithms()[record["algorithm"]]
    return SigningKey(record["kid"], record["algorithm"], None, algorithm.from_jwk(jwk))


async def retire_previous_keys(
    *, current: SigningKey, store: DocumentStore, keyring: Keyring, now: datetime, keep_for: timedelta
) -> list[tuple[SigningKey, datetime | None]]:
    """Record ``current`` as the key that signs, retire those that signed before it, and return the
    other keys whose tokens are still accepted (see :func:`other_keys`).

    Several instances starting at once record and retire the same way: a lost race is reloaded."""
    own_id = f"{VERIFICATION_KEY}:{current.kid}"
    for _ in range(3):
        try:
            own = await store.get(own_id)
            if own is None:
                await store.create(own_id, {
                    "kind": VERIFICATION_KEY, "kid": current.kid, "algorithm": current.algorithm,
                    "public_jwk": keyring.seal(json.dumps(current.jwk()), context=_verification_context(current.kid)),
                    "signing_since": now, "retired_at": None,
                })
            elif own.state["retired_at"] is not None:  # back to a key used before: it signs again
                await store.update(own, own.state | {"signing_since": now, "retired_at": None})
            break
        except ConcurrencyConflict:
            continue
    signing_elsewhere = await store.collection.find(
        {"kind": VERIFICATION_KEY, "kid": {"$ne": current.kid}, "retired_at": None}, {"_id": 1}
    ).to_list()
    for raw in signing_elsewhere:
        doc = await store.get(raw["_id"])
        if doc is not None and doc.state["retired_at"] is None:
            try:
                await store.update(doc, doc.state | {"retired_at": now})
            except ConcurrencyConflict:  # another instance retired it at this moment
                pass
    return await other_keys(current_kid=current.kid, store=store, keyring=keyring, now=now, keep_for=keep_for)


async def other_keys(
    *, current_kid: str, store: DocumentStore, keyring: Keyring, now: datetime, keep_for: timedelta
) -> list[tuple[SigningKey, datetime | None]]:
    """The keys besides ours whose tokens are accepted: each retired one until ``keep_for`` after its
    retirement, and, with no end (None), one another instance signs with right now (a rolling
    restart onto a new key: instances still on the old one must verify, and publish, the new one)."""
    accepted: list[tuple[SigningKey, datetime | None]] = []
    records = await store.collection.find({"kind": VERIFICATION_KEY, "kid": {"$ne": current_kid}}).to_list()
    for record in records:
        retired_at = record.get("retired_at")
        until = retired_at + keep_for if retired_at is not None else None
        if until is not None and now >= until:
            continue
        try:
            accepted.append((_public_key(record, keyring), until))
        except (SealError, KeyError, ValueError) as error:  # ValueError: a JWK that is not a key
            # Not sealed by our keyring (tampered, or sealed with a key since removed from
            # EVENT_SECRET_KEYS): its tokens are refused, which is the safe side.
            log.warning("a signing key of the store could not be unsealed: its tokens are refused",
                        extra={"kid": record.get("kid"), "error": type(error).__name__})
    return accepted


class AccessTokens:
    """Issues and verifies access tokens; verification accepts only our algorithms and our key ids."""

    def __init__(self, *, issuer: str, audience: str, ttl: timedelta) -> None:
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._current: SigningKey | None = None
        self._keys: dict[str, SigningKey] = {}
        self._retired_until: dict[str, datetime] = {}

    def use(self, key: SigningKey, *, previous: Iterable[tuple[SigningKey, datetime | None]] = ()) -> None:
        """Sign with ``key``; also accept (and publish) each other key until its moment passes
        (None: until further notice)."""
        previous = [(k, until) for k, until in previous if k.kid != key.kid]
        self._current = key
        self._keys = {key.kid: key, **{k.kid: k for k, _ in previous}}
        self._retired_until = {k.kid: until for k, until in previous if until is not None}

    def accept_others(self, others: Iterable[tuple[SigningKey, datetime | None]]) -> None:
        """Replace the other keys accepted (see :func:`other_keys`); ours keeps signing."""
        if self._current is None:
            raise RuntimeError("signing key not loaded yet")
        self.use(self._current, previous=others)

    @property
    def current_kid(self) -> str | None:
        return self._current.kid if self._current else None

    def knows(self, token: str) -> bool:
        """Whether the token names a key id this instance has heard of (accepted or not)."""
        try:
            return str(jwt.get_unverified_header(token).get("kid")) in self._keys
        except jwt.PyJWTError:
            return True  # not even a token: learning more keys will not help

    @property
    def ready(self) -> bool:
        return self._current is not None

    def _accepted(self, kid: str, now: datetime) -> SigningKey | None:
        until = self._retired_until.get(kid)
        if until is not None and now >= until:
            return None
        return self._keys.get(kid)

    def jwks(self, now: datetime) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.jwk() for kid, k in self._keys.items() if self._accepted(kid, now) is not None]}

    def issue(self, claims: dict[str, Any], now: datetime) -> str:
        if self._current is None:
            raise RuntimeError("signing key not loaded yet")
        body = {
            **claims,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + self.ttl).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(body, self._current.private, algorithm=self._current.algorithm, headers={"kid": self._current.kid})

    def verify(self, token: str, now: datetime) -> dict[str, Any]:
        invalid = Refusal("access_token_invalid", "the access token is not valid: sign in again", 401,
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid from None
        key = self._accepted(str(header.get("kid")), now)
        if key is None or header.get("alg") != key.algorithm:
            raise invalid
        try:
            # pyjwt checks exp/nbf against the system clock; we check them against the injected one.
            claims = jwt.decode(
                token, key.public, algorithms=[key.algorithm], audience=self.audience, issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "sid", "iss", "aud"], "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise invalid from None
        stamp = now.timestamp()
        if stamp >= claims["exp"]:
            raise Refusal("access_token_expired", "the access token has expired: refresh it", 401,
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if stamp + 60 < claims.get("nbf", claims["iat"]):
            raise invalid
        return claims


class KeyWatch:
    """Keeps an instance's list of accepted keys in step with the store while it runs.

    In a rolling restart onto a new key, the instances already on it sign with it while the others
    still run: those must verify its tokens (a client's next call may reach any instance) and
    publish it at their JWKS endpoint (other services may fetch it from any instance). So every
    instance reads the keys again every ``interval_s``, and at once (at most every
    ``min_interval_s``) when a token names a key it has never heard of."""

    def __init__(self, tokens: AccessTokens, store: DocumentStore, keyring: Keyring, clock: Clock, *,
                 keep_for: timedelta, interval_s: float, min_interval_s: float = 5.0) -> None:
        self._tokens = tokens
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._keep_for = keep_for
        self._interval_s = interval_s
        self._min_interval_s = min_interval_s
        self._last = float("-inf")

    async def refresh(self) -> None:
        current = self._tokens.current_kid
        if current is None:
            return
        self._last = time.monotonic()
        self._tokens.accept_others(await other_keys(
            current_kid=current, store=self._store, keyring=self._keyring, now=self._clock.now(), keep_for=self._keep_for))

    async def learn_key_of(self, token: str) -> None:
        """Before verifying ``token``: read the keys again if it names one unknown here (not too often:
        a made-up key id must not become a way to make us read the store)."""
        if not self._tokens.knows(token) and time.monotonic() - self._last >= self._min_interval_s:
            await self.refresh()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("signing keys could not be read again; trying at the next interval")
