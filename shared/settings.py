"""Typed settings that fail fast with one clear line per problem."""
from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka_security import KafkaSecurity

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """What every service process needs. Each field is read from the env var of the same
    name in upper case (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, ...)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    service_name: str
    database_url: str = Field(pattern=r"^postgres(ql)?://", description="this service's own database")
    kafka_bootstrap_servers: str = Field(min_length=1)
    topic_prefix: str = ""
    kafka_partitions: int = Field(default=6, ge=1)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    roles: str = Field(default="all", description="comma list of api, worker, relay, or all")
    clock_file: str | None = Field(default=None, description="shared movable clock, for tests and demo only")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    db_pool_max: int = Field(default=10, ge=1)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0, description=(
        "longest a statement may run (0: no limit); a transaction may sit idle twice as long"))
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(default=None, description="CA bundle that signed the brokers' certificates")
    kafka_ssl_certfile: str | None = Field(default=None, description="client certificate, for mutual TLS")
    kafka_ssl_keyfile: str | None = Field(default=None, description="the client certificate's key")
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_interval_ms: int = 3_000
    kafka_fetch_max_wait_ms: int = 50
    consumer_max_batch: int = Field(default=5_000, ge=1, description="most records a consumer takes per poll batch")
    consumer_members: int = Field(default=1, ge=1, le=8, description=(
        "members of each consumer group in one process: while one waits for PostgreSQL another works"))
    inbox_retention_days: int = Field(
        default=30, ge=1, description="handled event ids kept for deduplication; outlast the broker's offset retention")
    rate_limit_per_minute: int = Field(default=3000, ge=0,
                                       description="requests a minute per API key and process (0: no limit)")
    rate_limit_burst: int = Field(default=200, ge=1, description="requests per API key at once before the limit")
    ops_token: SecretStr | None = Field(
        default=None, min_length=16, description="when set, /metrics and the API docs need `Authorization: Bearer <it>`")
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024,
        description="largest HTTP request body; larger ones answer 413 before they are read (a 10,000-item bulk is ~5 MB)")

    @model_validator(mode="after")
    def _kafka_security_complete(self):
        if self.kafka_security_protocol.startswith("SASL") and not (self.kafka_sasl_username and
                                                                   self.kafka_sasl_password):
            raise ValueError(f"KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with"
                             f" KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (mutual TLS)")
        return self

    @property
    def kafka(self) -> KafkaSecurity:
        """How to reach the brokers, for every Kafka client of the process."""
        return KafkaSecurity(
            protocol=self.kafka_security_protocol, sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None,
            cafile=self.kafka_ssl_cafile, certfile=self.kafka_ssl_certfile, keyfile=self.kafka_ssl_keyfile)

    def has_role(self, role: str) -> bool:
        roles = {r.strip() for r in self.roles.split(",")}
        return "all" in roles or role in roles


def load_settings(cls: type[S], **overrides) -> S:
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = [f"{cls.__name__}: invalid configuration"]
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {name}: {err['msg']} (set the environment variable {name})")
        raise SystemExit("\n".join(lines)) from None
    except Exception as exc:  # noqa: BLE001 - e.g. unparsable JSON in an env var
        print(f"{cls.__name__}: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
