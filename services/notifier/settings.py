from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    service_name: str = "notifier"
    http_port: int = 8004
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    sms_url: str = Field(default="http://127.0.0.1:8025/sms", pattern=r"^https?://")
    public_base_url: str = Field(default="http://127.0.0.1:8004", pattern=r"^https?://")
    mail_from: str = "Tahsilat Collections <collections@tahsilat.local>"
    quiet_start_hour: int = Field(default=8, ge=0, le=23)
    quiet_end_hour: int = Field(default=21, ge=1, le=24)
    max_send_attempts: int = Field(default=5, ge=1)
    send_batch_size: int = Field(default=50, ge=1)
    send_lease_seconds: float = Field(
        default=120, gt=0, description="a notification still 'sending' after this long was interrupted: send again")
