"""Settings of the contracts service (environment variables, upper-case field names)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class ContractsSettings(ServiceSettings):
    service_name: str = "contracts"
    http_port: int = Field(default=8002, ge=0, le=65535)
