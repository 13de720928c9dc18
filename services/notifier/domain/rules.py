"""Contact rules, pure: quiet hours in the customer's timezone, and what may be sent."""
from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo


def next_allowed_send(now: datetime, timezone: str, start_hour: int = 8, end_hour: int = 21) -> datetime:
    """`now` if it is between start_hour and end_hour in the customer's timezone, else the next
    start_hour there. Deferred, never dropped."""
    local = now.astimezone(ZoneInfo(timezone))
    if start_hour <= local.hour < end_hour:
        return now
    day = local.date() if local.hour < start_hour else local.date() + timedelta(days=1)
    return datetime.combine(day, time(start_hour), ZoneInfo(timezone)).astimezone(ZoneInfo("UTC"))


def blocked_reason(channel: str, email: str | None, phone: str | None, email_opt_out: bool, sms_opt_out: bool) -> str | None:
    """Why a message on `channel` cannot go to this contact, or None if it can."""
    if channel == "email":
        if not email:
            return "no email address on file"
        if email_opt_out:
            return "customer unsubscribed from email"
    elif channel == "sms":
        if not phone:
            return "no phone number on file"
        if sms_opt_out:
            return "customer sent STOP"
    else:
        return f"channel {channel!r} is not sent by the notifier"
    return None
