"""Delivery providers: SMTP for email, an HTTP SMS gateway. Both get the notification key so
a provider can drop a duplicate if a send is retried after a crash."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib
import httpx

from services.notifier.adapters.templates import RenderedEmail


class DeliveryError(RuntimeError):
    pass


class EmailSender:
    def __init__(self, host: str, port: int, mail_from: str) -> None:
        self.host, self.port, self.mail_from = host, port, mail_from

    async def send(self, *, to: str, email: RenderedEmail, language: str, key: str, unsubscribe_url: str,
                   at: datetime | None = None) -> str:
        msg = EmailMessage()
        message_id = f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@tahsilat>"
        msg["Date"] = format_datetime((at or datetime.now(timezone.utc)).astimezone(timezone.utc))  # RFC 5322 requires it
        msg["From"] = self.mail_from
        msg["To"] = to
        msg["Subject"] = email.subject
        msg["Message-ID"] = message_id
        msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg["X-Tahsilat-Notification-Key"] = key
        msg.set_content(email.text)
        msg.add_alternative(email.html, subtype="html")
        msg["Content-Language"] = language  # after set_content: it drops every Content-* header set before it
        try:
            await aiosmtplib.send(msg, hostname=self.host, port=self.port, timeout=15)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {exc}") from exc
        return message_id


class SmsSender:
    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url, self.client = url, client

    async def send(self, *, to: str, text: str, key: str) -> str:
        try:
            response = await self.client.post(self.url, json={"to": to, "text": text, "message_id": key}, timeout=15)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"SMS gateway {self.url}: {exc}") from exc
        if response.status_code >= 300:
            raise DeliveryError(f"SMS gateway answered {response.status_code}: {response.text[:200]}")
        # Accepted is accepted: a reply body we cannot read must not make us send the message again.
        try:
            body = response.json()
        except ValueError:
            return key
        return str(body.get("id", key)) if isinstance(body, dict) else key
