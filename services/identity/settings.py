"""Identity's settings: the shared ones plus keys, token lifetimes, hashing cost and protection limits."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, SecretStr, model_validator

from services.identity.adapters.hashing import BELOW_OWASP, meets_owasp
from services.identity.domain.lockout import LockoutPolicy
from services.identity.domain.ratelimits import Limit, RateLimits
from shared.settings import ServiceSettings

# The longest an access token may live, whatever the setting was when it was signed: a retired
# signing key is accepted this long after its retirement.
ACCESS_TOKEN_TTL_MAX_S = 3600


class IdentitySettings(ServiceSettings):
    service_name: str = "identity"
    http_port: int = Field(default=8001, ge=0, le=65535)

    # Signing keys for access tokens. Neither set: generated at first start, kept sealed in the store.
    jwt_private_key_path: str = Field(default="", description="PEM file, Ed25519 (EdDSA) or EC P-256 (ES256)")
    jwt_private_key_pem: SecretStr = SecretStr("")
    jwt_key_id: str = ""
    jwt_issuer: str = "leaseline-identity"
    jwt_audience: str = "leaseline"
    access_token_ttl_s: int = Field(default=900, ge=30, le=ACCESS_TOKEN_TTL_MAX_S)
    refresh_token_ttl_days: int = Field(default=30, ge=1, le=365)

    # Any of OWASP's equivalent configurations, or above (checked below): 19456 KiB and 2 passes by default.
    argon2_memory_kib: int = Field(default=19456, ge=1)
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)
    argon2_workers: int = Field(default=0, ge=0, description="Threads hashing in parallel; 0: one per core")

    lockout_enabled: bool = True
    lockout_threshold: int = Field(default=5, ge=1)
    lockout_first_minutes: int = Field(default=15, ge=1)
    lockout_timed_locks: int = Field(default=4, ge=0)

    rate_address_sends_per_hour: int = Field(default=20, ge=1)
    rate_account_sends_per_hour: int = Field(default=5, ge=1)
    rate_address_checks_per_5min: int = Field(default=60, ge=1)
    rate_account_checks_per_15min: int = Field(default=30, ge=1)
    client_cert_header: str = Field(
        default="",
        description="Header in which the TLS-terminating proxy forwards the SHA-256 fingerprint of the client "
        "certificate it verified (replacing any the client sent); empty: client certificates are not used",
    )
    trust_forwarded_for: bool = Field(default=False, description="Behind a trusted proxy: client address from X-Forwarded-For")
    trusted_proxy_hops: int = Field(
        default=1, ge=1, description="How many proxies of ours append to X-Forwarded-For: the client is the entry "
        "the outermost appended (counted from the right); entries left of it are the client's own and ignored",
    )

    answer_floor_ms: int = Field(
        default=200, ge=0, description="Registration, reset and resend answer no sooner than this (equal timing)"
    )
    access_sweep_interval_s: float = Field(default=3600.0, gt=0)
    signing_keys_refresh_s: float = Field(
        default=30.0, gt=0, description="How often an instance reads again the signing keys other instances use"
    )

    @model_validator(mode="after")
    def _hash_cost_meets_owasp(self) -> "IdentitySettings":
        if not meets_owasp(self.argon2_memory_kib, self.argon2_time_cost, self.argon2_parallelism):
            raise ValueError(f"ARGON2_MEMORY_KIB={self.argon2_memory_kib}, ARGON2_TIME_COST={self.argon2_time_cost}: "
                             f"{BELOW_OWASP}")
        return self

    def lockout_policy(self) -> LockoutPolicy:
        return LockoutPolicy(
            enabled=self.lockout_enabled,
            threshold=self.lockout_threshold,
            first_lock=timedelta(minutes=self.lockout_first_minutes),
            timed_locks=self.lockout_timed_locks,
        )

    def rate_limits(self) -> RateLimits:
        return RateLimits(
            address_sends=Limit(self.rate_address_sends_per_hour, timedelta(hours=1)),
            account_sends=Limit(self.rate_account_sends_per_hour, timedelta(hours=1)),
            address_checks=Limit(self.rate_address_checks_per_5min, timedelta(minutes=5)),
            account_checks=Limit(self.rate_account_checks_per_15min, timedelta(minutes=15)),
        )
