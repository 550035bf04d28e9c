"""The envelope every integration event travels in, and the base class of event payloads.

Wire format: a CloudEvents 1.0 JSON document (structured mode) as the Kafka value, the aggregate id
(CloudEvents ``subject``) as the Kafka key, so that one customer's or one contract's events keep
their order on a topic. Extension attributes: ``correlationid`` (the request or process that started
it all), ``causationid`` (the event that directly caused this one) and ``schemaversion``.

Readers are tolerant: fields they do not know are ignored, so a producer may add optional fields
without a new version. Removing or changing a field is a new ``schema_version``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema

from shared.crypto import Keyring

SOURCE_PREFIX = "leaseline/"

# A secret that crosses Kafka only sealed (see shared.crypto): activation and reset tokens, codes.
Sealed = Annotated[
    str,
    Field(pattern=r"^sealed:v1:[A-Za-z0-9_.-]+:[A-Za-z0-9_-]+$"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^sealed:v1:[A-Za-z0-9_.-]+:[A-Za-z0-9_-]+$",
            "description": "AES-256-GCM sealed secret: sealed:v1:<key id>:<base64url(nonce||ciphertext)>",
            "x-sealed": True,
        }
    ),
]


class Event(BaseModel):
    """An integration event's payload. Subclasses name their type, version and subject field."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    subject_field: ClassVar[str]

    @property
    def subject(self) -> str:
        return str(getattr(self, self.subject_field))

    @classmethod
    def seal(cls, keyring: Keyring, field: str, secret: str) -> str:
        """Seal ``secret`` for ``field`` of this event type (bound to it by associated data)."""
        return keyring.seal(secret, context=cls.seal_context(field))

    @classmethod
    def seal_context(cls, field: str) -> str:
        if field not in cls.model_fields:
            raise KeyError(f"{cls.event_type} has no field {field!r}")
        return f"{cls.event_type}/v{cls.schema_version}/{field}"

    def unseal(self, keyring: Keyring, field: str) -> str:
        return keyring.unseal(getattr(self, field), context=self.seal_context(field))


class Envelope(BaseModel):
    """CloudEvents 1.0 attributes plus Leaseline's tracing extensions."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: AwareDatetime
    subject: str = Field(min_length=1)
    datacontenttype: Literal["application/json"] = "application/json"
    schemaversion: int = Field(ge=1)
    correlationid: str = Field(min_length=1)
    causationid: str | None = None
    data: dict[str, Any]

    @classmethod
    def wrap(
        cls,
        event: Event,
        *,
        source: str,
        time: datetime,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> "Envelope":
        event_id = event_id or uuid.uuid4().hex
        return cls(
            id=event_id,
            source=source if source.startswith(SOURCE_PREFIX) else SOURCE_PREFIX + source,
            type=event.event_type,
            time=time,
            subject=event.subject,
            schemaversion=event.schema_version,
            correlationid=correlation_id or event_id,
            causationid=causation_id,
            data=event.model_dump(mode="json"),
        )

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False).encode()

    def kafka_headers(self) -> dict[str, str]:
        """Binary-mode copies of the routing attributes, so tools can filter without parsing."""
        return {
            "content-type": "application/cloudevents+json",
            "ce_id": self.id,
            "ce_type": self.type,
            "ce_schemaversion": str(self.schemaversion),
        }
