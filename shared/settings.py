"""Settings read from the environment (12-factor), with defaults that run on one machine.

Every service reads the same base settings; a service that needs more subclasses
``ServiceSettings``. Variable names are upper-case field names (``KAFKA_BOOTSTRAP_SERVERS``,
``MONGODB_URI`` ...); a service's database defaults to ``leaseline_<service>``.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    service_name: str = Field(default="leaseline", description="Name used in logs, event sources and metrics")
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    mongodb_uri: str = "mongodb://127.0.0.1:27017/"
    mongodb_database: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"
    log_json: bool = True
    # "kid:base64key,kid2:base64key": the first key seals, every key listed can unseal.
    event_secret_keys: SecretStr = SecretStr("")
    consumer_max_attempts: int = Field(default=5, ge=1)
    consumer_backoff_initial_s: float = Field(default=0.2, gt=0)
    consumer_backoff_max_s: float = Field(default=10.0, gt=0)
    # One attempt of a handler is cut off after this long and counts as a transient failure: a
    # handler that never returns is retried, then parked, instead of holding its partition forever.
    consumer_handler_timeout_s: float = Field(default=10.0, gt=0)
    consumer_batch_max: int = Field(default=500, ge=1)
    consumer_concurrency: int = Field(default=64, ge=1)
    # While events flow, the broker answers a fetch once it has this many bytes for the consumer,
    # or after this long: under a steady trickle, a fetch per record or two cost the broker and the
    # consumer more CPU than the records (docs/assumptions.md); at most 25 ms more on an event's
    # way. An idle consumer waits longer per fetch (shared.messaging.fetch_pacing).
    consumer_fetch_min_bytes: int = Field(default=65536, ge=1)
    consumer_fetch_max_wait_ms: int = Field(default=25, ge=0, le=500)
    # Handled offsets are committed at most this often (0: after every batch); see
    # EventConsumer._commit_handled. A crash redelivers at most this much more, to idempotent handlers.
    consumer_commit_interval_s: float = Field(default=0.25, ge=0, le=5)
    relay_batch_max: int = Field(default=500, ge=1)
    relay_idle_poll_s: float = Field(default=0.2, gt=0)
    #: Every so often the relay reads whole collections for events its own writes did not name
    #: (another process's, or a crash's); also how often the outbox backlog gauge is refreshed.
    relay_sweep_s: float = Field(default=30.0, gt=0)
    topic_namespace: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    topic_partitions: int = Field(default=3, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {value!r}")
        return level

    @model_validator(mode="after")
    def _default_database(self) -> "ServiceSettings":
        if not self.mongodb_database:
            object.__setattr__(self, "mongodb_database", f"leaseline_{self.service_name}")
        return self
