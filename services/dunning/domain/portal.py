"""The customer portal's rules: the signed link each notice carries (bound to one tenant and
customer, ending at a time), and what a customer may arrange on their own within the limits of
the policy (a promise no later than, a plan of at most so many instalments over so many days)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from shared import tokens


@dataclass(frozen=True)
class PortalSubject:
    tenant_id: str
    customer_id: str
    expires_at: datetime


class PortalLinkError(Exception):
    """Why a link opens nothing: "invalid" (malformed, forged, for another key) or "expired"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign_link(key: bytes, tenant_id: str, customer_id: str, expires_at: datetime) -> str:
    return tokens.sign(key, "portal", [tenant_id, customer_id, int(expires_at.timestamp())])


def verify_link(key: bytes, token: str, now: datetime) -> PortalSubject:
    fields = tokens.verify(key, "portal", token)
    try:
        tenant_id, customer_id, expires = fields  # type: ignore[misc]
        expires_at = datetime.fromtimestamp(int(expires), timezone.utc)
    except (ValueError, TypeError, OverflowError):
        raise PortalLinkError("invalid") from None
    if now >= expires_at:
        raise PortalLinkError("expired")
    return PortalSubject(str(tenant_id), str(customer_id), expires_at)


def link_expiry(now: datetime, days: int) -> datetime:
    """Links live whole days: those of one day's notices share their end (and their token)."""
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=days + 1)


class SelfServiceError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def check_promise(promised: date, today: date, max_days: int) -> None:
    if promised < today:
        raise SelfServiceError("promised_date", "must not be in the past")
    if promised > today + timedelta(days=max_days):
        raise SelfServiceError("promised_date", f"at most {max_days} days from today ({today + timedelta(days=max_days)})")


def check_plan(count: int, first_due: date, every_days: int, today: date, *, max_instalments: int,
               max_days: int, max_first_due_days: int) -> None:
    if count < 2:
        raise SelfServiceError("count", "a plan has at least 2 instalments")
    if count > max_instalments:
        raise SelfServiceError("count", f"at most {max_instalments} instalments")
    if first_due < today:
        raise SelfServiceError("first_due", "must not be in the past")
    if first_due > today + timedelta(days=max_first_due_days):
        raise SelfServiceError("first_due", f"at most {max_first_due_days} days from today")
    last = first_due + timedelta(days=every_days * (count - 1))
    if last > today + timedelta(days=max_days):
        raise SelfServiceError("count", f"the last instalment ({last}) would fall more than {max_days} days from today")
