from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from shared.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    service_name: str = "notifier"
    http_port: int = 8004
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    sms_url: str = Field(default="http://127.0.0.1:8025/sms", pattern=r"^https?://")
    public_base_url: str = Field(default="http://127.0.0.1:8004", pattern=r"^https?://")
    mail_from: str = "Tahsilat Collections <collections@tahsilat.local>"
    # Delivery providers (adapters/providers.py)
    smtp_tls: Literal["starttls", "tls", "none", "auto"] = Field(default="auto", description=(
        "starttls: upgrade or fail; tls: implicit TLS (port 465); none: plain text; auto: STARTTLS if offered"))
    smtp_username: str | None = Field(default=None, min_length=1, description="with SMTP_PASSWORD: log in (over TLS)")
    smtp_password: SecretStr | None = Field(default=None, min_length=1)
    smtp_validate_certs: bool = Field(default=True, description="check the SMTP server's certificate and name")
    smtp_max_connections: int = Field(default=10, ge=1, description="SMTP connections open at once")
    smtp_messages_per_connection: int = Field(default=100, ge=1, description="messages sent over one SMTP connection")
    smtp_idle_seconds: float = Field(default=30, gt=0, description="an unused SMTP connection is closed after this long")
    smtp_ca_file: str | None = Field(default=None, description="CA bundle that signed the SMTP server's certificate")
    sms_provider: Literal["sink", "twilio"] = Field(default="sink", description=(
        "sink: JSON POST to SMS_URL; twilio: a Twilio-compatible Messages API at SMS_API_BASE"))
    sms_api_base: str = Field(default="https://api.twilio.com", pattern=r"^https?://")
    sms_account_sid: str | None = Field(default=None, min_length=1, description="twilio: account sid (AC...)")
    sms_auth_token: SecretStr | None = Field(default=None, min_length=1, description="twilio: auth token")
    sms_from: str | None = Field(default=None, min_length=1, description="twilio: sender number (E.164) or name")
    sms_messaging_service_sid: str | None = Field(default=None, min_length=1, description="twilio: instead of SMS_FROM")
    # Contact rules: the defaults of a tenant that has not set its own (PUT /v1/settings).
    allowed_send_start: time = Field(default=time(8), description="customers may be contacted from (their local time)")
    allowed_send_end: time = Field(default=time(21), description="until (exclusive; 00:00 is midnight)")
    excluded_weekdays: str = Field(default="", pattern=r"^[1-7]?(,[1-7])*$",
                                   description="ISO weekdays never contacted, e.g. 6,7 for weekends")
    contact_cap_messages: int = Field(default=7, ge=0, description="messages per customer per rolling window (0: none)")
    contact_cap_days: int = Field(default=7, ge=1, le=90)
    default_language: Literal["en", "tr", "cs", "fa"] = "en"
    sms_segment_limit: int = Field(default=3, ge=1, le=10, description="longest SMS a template may produce, in segments")
    link_signing_key: SecretStr | None = Field(default=None, min_length=32, description=(
        "signs unsubscribe links; unset: a random key kept in the notifier's database"))
    email_webhook_secret: SecretStr | None = Field(default=None, min_length=16, description=(
        "HMAC secret of the email provider's event webhook (bounces, complaints, deliveries); unset: endpoint off"))
    webhook_allow_private_networks: bool = Field(default=False, description=(
        "let customers' webhook endpoints be loopback or private addresses (local development only)"))
    webhook_tolerance_seconds: int = Field(default=300, ge=30, description="how old a signed webhook may be")
    max_send_attempts: int = Field(default=5, ge=1)
    send_batch_size: int = Field(default=50, ge=1)
    sms_max_in_flight: int = Field(default=10, ge=1, description="SMS provider requests at once")
    webhook_max_in_flight: int = Field(default=10, ge=1, description="webhook requests at once")
    send_batches_in_flight: int = Field(default=4, ge=1, description="dispatch batches claimed and sent at once")
    send_lease_seconds: float = Field(
        default=120, gt=0, description="a notification still 'sending' after this long was interrupted: send again")

    @model_validator(mode="after")
    def _providers_complete(self):
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD go together")
        if self.smtp_ca_file and not Path(self.smtp_ca_file).is_file():
            raise ValueError(f"SMTP_CA_FILE {self.smtp_ca_file} is not a readable file")
        if self.sms_provider == "twilio":
            missing = [n.upper() for n in ("sms_account_sid", "sms_auth_token") if getattr(self, n) is None]
            if not (self.sms_from or self.sms_messaging_service_sid):
                missing.append("SMS_FROM (or SMS_MESSAGING_SERVICE_SID)")
            if missing:
                raise ValueError(f"SMS_PROVIDER=twilio needs {', '.join(missing)}")
        return self

    @property
    def sms_status_callback_url(self) -> str:
        """Where the SMS provider reports delivery (and what its signature covers)."""
        return self.public_base_url.rstrip("/") + "/v1/webhooks/sms/status"
