"""Settings of the restitution service (environment variables, upper-case field names)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class RestitutionSettings(ServiceSettings):
    service_name: str = "restitution"
    http_port: int = Field(default=8003, ge=0, le=65535)
