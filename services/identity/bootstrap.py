"""Wires identity: stores, keys, hasher, policies, HTTP API, Kafka consumers, the access sweep."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from fastapi import FastAPI

from services.identity.adapters.hashing import PasswordHasher
from services.identity.adapters.signing import (
    AccessTokens,
    KeyWatch,
    load_or_create_key,
    read_configured_pem,
    retire_previous_keys,
)
from services.identity.adapters.stores import Stores
from services.identity.domain.passwords import PasswordPolicy
from services.identity.entrypoints import consumers, http_errors
from services.identity.entrypoints.http_api import build_api
from services.identity.entrypoints.sweep import sweep_forever
from services.identity.service_layer.context import Identity
from services.identity.settings import ACCESS_TOKEN_TTL_MAX_S, IdentitySettings
from shared.clock import Clock
from shared.crypto import Keyring
from shared.runtime.service import ServiceRuntime


class IdentityRuntime(ServiceRuntime):
    """The shared runtime plus what identity must do at start: load its signing key, start the sweep."""

    identity: Identity

    async def start(self) -> None:
        await super().start()
        settings: IdentitySettings = self.settings  # type: ignore[assignment]
        key = await load_or_create_key(
            pem=read_configured_pem(settings.jwt_private_key_path, settings.jwt_private_key_pem.get_secret_value()),
            kid=settings.jwt_key_id or None,
            store=self.identity.stores.keys,
            keyring=self.identity.keyring,
            now=self.clock.now(),
        )
        previous = await retire_previous_keys(
            current=key, store=self.identity.stores.keys, keyring=self.identity.keyring, now=self.clock.now(),
            keep_for=timedelta(seconds=ACCESS_TOKEN_TTL_MAX_S),
        )
        self.identity.tokens.use(key, previous=previous)
        watch = KeyWatch(self.identity.tokens, self.identity.stores.keys, self.identity.keyring, self.clock,
                         keep_for=timedelta(seconds=ACCESS_TOKEN_TTL_MAX_S), interval_s=settings.signing_keys_refresh_s)
        self.identity.key_watch = watch
        self._background = [
            asyncio.create_task(sweep_forever(self.identity, settings.access_sweep_interval_s), name="access-sweep"),
            asyncio.create_task(watch.run(), name="signing-key-watch"),
        ]

    async def stop(self) -> None:
        for task in getattr(self, "_background", []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):  # at worst a fraction of a second of counting is lost
            await self.identity.stores.limiter.close()
        await super().stop()
        self.identity.hasher.close()

    async def readiness(self) -> dict[str, str]:
        checks = await super().readiness()
        if not self.identity.tokens.ready:
            checks["signing_key"] = "not loaded"
        return checks


def keyring_of(settings: IdentitySettings) -> Keyring:
    spec = settings.event_secret_keys.get_secret_value()
    if not spec:
        raise SystemExit(
            "EVENT_SECRET_KEYS is not set: identity seals tokens and codes with it. "
            f"For a local run: export EVENT_SECRET_KEYS={Keyring.generate_spec('local')}"
        )
    return Keyring.parse(spec)


def build(settings: IdentitySettings, *, clock: Clock | None = None, **overrides: Any) -> IdentityRuntime:
    app = FastAPI(
        title="Leaseline identity",
        version="1.0.0",
        description="Registration, activation, sign-in, sessions, devices, organisations. Errors answer "
        '`{"error": {"code", "message", "fields", "details"}}`.',
    )
    runtime = IdentityRuntime(settings, clock=clock, app=app)
    stores = Stores.attach(runtime)
    ctx = Identity(
        stores=stores,
        clock=runtime.clock,
        keyring=keyring_of(settings),
        hasher=overrides.get("hasher") or PasswordHasher(
            settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism,
            settings.argon2_workers or None,
        ),
        tokens=AccessTokens(
            issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl=timedelta(seconds=settings.access_token_ttl_s)
        ),
        passwords=PasswordPolicy(),
        lockout=settings.lockout_policy(),
        limits=settings.rate_limits(),
        refresh_ttl=timedelta(days=settings.refresh_token_ttl_days),
        source=settings.service_name,
        answer_floor_s=settings.answer_floor_ms / 1000,
    )
    runtime.identity = ctx
    http_errors.install(app)
    build_api(app, ctx, settings)
    consumers.subscribe(runtime.consumer(), ctx)
    return runtime
