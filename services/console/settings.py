"""The console's settings: where the services' APIs are, and the secret that seals sessions."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict



class ConsoleSettings(BaseSettings):
    """Each field from the env var of the same name in upper case (DUNNING_URL, ...)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    service_name: str = "console"
    dunning_url: str = Field(pattern=r"^https?://\S+$", description="the dunning API, e.g. http://dunning:8000")
    invoicing_url: str = Field(pattern=r"^https?://\S+$")
    risk_url: str = Field(pattern=r"^https?://\S+$")
    session_secret: SecretStr = Field(min_length=32, description=(
        "seals the session cookie (the signed-in key, encrypted); the same on every console replica"))
    session_hours: float = Field(default=10, gt=0, le=24 * 7, description="a session ends this long after sign-in")
    cookie_secure: bool = Field(default=False, description="send the cookie over HTTPS only (set behind TLS)")
    api_timeout_seconds: float = Field(default=10, gt=0)
    clock_file: str | None = Field(default=None, description="shared movable clock, for tests and demo only")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8005, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    ops_token: SecretStr | None = Field(default=None, min_length=16,
                                        description="when set, /metrics needs `Authorization: Bearer <it>`")
