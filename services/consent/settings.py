"""Settings of the consent service (environment variables, upper-case field names)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class ConsentSettings(ServiceSettings):
    service_name: str = "consent"
    http_port: int = Field(default=8005, ge=0, le=65535)
