"""Settings of the notifications service (environment variables, upper-case field names)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from shared.settings import ServiceSettings


class NotificationSettings(ServiceSettings):
    service_name: str = "notifications"
    http_port: int = Field(default=8004, ge=0, le=65535)
    # FerretDB v1 (SQLite) deadlocks on an update command of 100 statements or more, and the
    # relay marks one statement per document: keep its batches well below that.
    relay_batch_max: int = Field(default=50, ge=1, le=99)
    # Handlers mostly wait for batched inserts: more of them at once make bigger, fewer batches.
    consumer_concurrency: int = Field(default=256, ge=1)

    portal_base_url: str = Field(default="http://127.0.0.1:8000", description="Absolute base of links in messages")

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_from: str = "Leaseline <no-reply@leaseline.example>"
    smtp_pool_size: int = Field(default=4, ge=1, le=64)
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = False

    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr("local-sink-token")
    twilio_from_number: str = "+15005550006"
    twilio_base_url: str = Field(default="https://api.twilio.com", description="Point at the local sink in development")
    twilio_timeout_s: float = Field(default=10.0, gt=0)

    # Delivery attempts: exponential backoff with jitter, bounded, then failed and parked.
    delivery_max_attempts: int = Field(default=8, ge=1)
    delivery_backoff_initial_s: float = Field(default=5.0, gt=0)
    delivery_backoff_max_s: float = Field(default=600.0, gt=0)
    delivery_fallback_after_attempts: int = Field(
        default=3, ge=1, description="Transient failures after which a message with a fallback and an expiry (a code) "
        "goes by its fallback channel")
    delivery_fallback_margin_s: float = Field(
        default=120.0, ge=0, description="Such a message also falls back when its next attempt would come this close "
        "to its expiry")
    delivery_lease_s: float = Field(default=60.0, gt=0, description="A claimed delivery is re-tried by anyone after this")
    delivery_concurrency: int = Field(default=32, ge=1)
    delivery_queue_max: int = Field(default=1000, ge=1, description="Deliveries waiting in memory before the consumer waits")
    delivery_poll_s: float = Field(default=1.0, gt=0, description="How often this process checks whether what it scheduled fell due (in memory)")
    delivery_sweep_s: float = Field(default=15.0, gt=0, description="How often the store is searched for due deliveries this process did not schedule (other processes', abandoned leases)")
    outcome_batch_max: int = Field(default=100, ge=1, description="Outcomes written (and events stored) per document")
    outcome_flush_s: float = Field(default=0.2, gt=0, description="Longest wait before outcomes are written")

    quiet_hours_start: str = Field(default="21:00", pattern=r"^\d{2}:\d{2}$")
    quiet_hours_end: str = Field(default="08:00", pattern=r"^\d{2}:\d{2}$")
    default_time_zone: str = "Europe/Paris"

    staff_api_token: SecretStr = Field(
        default=SecretStr(""), description="Bearer token of the staff API; without one its endpoints answer 503")

    @field_validator("portal_base_url")
    @classmethod
    def _absolute_portal(cls, value: str) -> str:
        """Every portal link is this base + a path: a relative or scheme-less base would put
        broken links in every message."""
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"PORTAL_BASE_URL must be an absolute http(s) address, got {value!r}")
        return value.rstrip("/")
