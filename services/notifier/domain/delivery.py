"""Provider delivery reports, pure: a Twilio-style SMS status callback and the email event
webhooks of the large providers (SendGrid's event array, Amazon SES notifications, directly or
inside an SNS envelope), normalised to one DeliveryReport."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

Outcome = Literal["delivered", "failed", "deferred"]
BounceClass = Literal["hard", "soft", "complaint"]


class ReportError(ValueError):
    """A webhook body that is not a report we understand (answered 400, naming the field)."""


@dataclass(frozen=True)
class DeliveryReport:
    channel: str
    outcome: Outcome
    provider_message_id: str | None = None
    notification_key: str | None = None
    bounce_class: BounceClass | None = None
    detail: str = ""
    at: datetime | None = None

    @property
    def permanent(self) -> bool:
        return self.outcome == "failed" and self.bounce_class in ("hard", "complaint")


# Twilio error codes of an undelivered SMS that no retry will fix (the number is wrong, a
# landline, or blocks us); the rest (unreachable handset, carrier filtering, unknown) may pass later.
TWILIO_PERMANENT = {"30004", "30005", "30006", "21211", "21614", "21610"}


def twilio_status(form: Mapping[str, str]) -> DeliveryReport | None:
    """A Twilio status callback; None for the intermediate states (queued, sending, sent)."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if not sid:
        raise ReportError("MessageSid: missing")
    if not status:
        raise ReportError("MessageStatus: missing")
    if status in ("delivered", "read"):
        return DeliveryReport("sms", "delivered", provider_message_id=sid, detail=status)
    if status in ("undelivered", "failed"):
        code = form.get("ErrorCode") or ""
        return DeliveryReport("sms", "failed", provider_message_id=sid,
                              bounce_class="hard" if code in TWILIO_PERMANENT else "soft",
                              detail=f"{status}, Twilio error {code or 'none'}")
    return None


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _iso(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def _message_id(value: Any) -> str | None:
    """Our Message-ID is stored with its angle brackets; providers quote it with or without."""
    if not value or not isinstance(value, str):
        return None
    value = value.strip()
    return value if value.startswith("<") else f"<{value}>"


def _sendgrid(event: Mapping[str, Any], i: int) -> DeliveryReport | None:
    kind = event.get("event")
    if not isinstance(kind, str):
        raise ReportError(f"[{i}].event: missing")
    common = {"provider_message_id": _message_id(event.get("smtp-id")),
              "notification_key": event.get("notification_key") if isinstance(event.get("notification_key"), str) else None,
              "at": _epoch(event.get("timestamp"))}
    reason = str(event.get("reason") or event.get("response") or "")[:300]
    status = str(event.get("status") or "")
    if kind == "delivered":
        return DeliveryReport("email", "delivered", detail="delivered", **common)
    if kind == "bounce":
        hard = event.get("type", "bounce") == "bounce" and not status.startswith("4")
        return DeliveryReport("email", "failed", bounce_class="hard" if hard else "soft",
                              detail=f"bounce {status} {reason}".strip(), **common)
    if kind == "dropped":
        return DeliveryReport("email", "failed", bounce_class="hard", detail=f"dropped: {reason}".strip(), **common)
    if kind == "spamreport":
        return DeliveryReport("email", "failed", bounce_class="complaint", detail="marked as spam", **common)
    if kind == "deferred":
        return DeliveryReport("email", "deferred", detail=f"deferred: {reason}".strip(), **common)
    return None  # opens, clicks, processed: not delivery outcomes


def _ses(note: Mapping[str, Any]) -> DeliveryReport | None:
    kind = note.get("notificationType") or note.get("eventType")
    mail = note.get("mail")
    if not isinstance(mail, Mapping):
        raise ReportError("mail: missing")
    headers = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), Mapping) else {}
    key = next((h.get("value") for h in mail.get("headers") or [] if isinstance(h, Mapping)
                and str(h.get("name", "")).lower() == "x-tahsilat-notification-key"), None)
    common = {"provider_message_id": _message_id(headers.get("messageId")), "notification_key": key}
    if kind == "Delivery":
        return DeliveryReport("email", "delivered", detail="delivered",
                              at=_iso((note.get("delivery") or {}).get("timestamp")), **common)
    if kind == "Bounce":
        bounce = note.get("bounce") or {}
        permanent = bounce.get("bounceType") == "Permanent"
        return DeliveryReport("email", "failed", bounce_class="hard" if permanent else "soft",
                              detail=f"bounce {bounce.get('bounceType')}/{bounce.get('bounceSubType')}",
                              at=_iso(bounce.get("timestamp")), **common)
    if kind == "Complaint":
        return DeliveryReport("email", "failed", bounce_class="complaint", detail="complaint",
                              at=_iso((note.get("complaint") or {}).get("timestamp")), **common)
    if kind == "DeliveryDelay":
        return DeliveryReport("email", "deferred", detail="delivery delayed", **common)
    return None


def email_events(body: Any) -> list[DeliveryReport]:
    """The reports in an email provider's webhook body: a SendGrid-style array of events, an SES
    notification, or an SES notification inside an SNS envelope (`Message` as a JSON string)."""
    if isinstance(body, list):
        reports = []
        for i, event in enumerate(body):
            if not isinstance(event, Mapping):
                raise ReportError(f"[{i}]: not an object")
            report = _sendgrid(event, i)
            if report:
                reports.append(report)
        return reports
    if isinstance(body, Mapping):
        if body.get("Type") == "Notification" and isinstance(body.get("Message"), str):
            try:
                body = json.loads(body["Message"])
            except ValueError as exc:
                raise ReportError(f"Message: not JSON ({exc})") from None
            if not isinstance(body, Mapping):
                raise ReportError("Message: not an object")
        report = _ses(body)
        return [report] if report else []
    raise ReportError("body: expected an array of events or a notification object")
