"""Contact rules, pure: when a message may go (allowed sending hours in the customer's timezone,
weekends and holidays, a cap on messages per rolling window), what may be sent at all, and what
an inbound SMS asks for."""
from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

UTC = timezone.utc


@dataclass(frozen=True)
class SendingWindow:
    """When people may be contacted, in their own timezone: from `start` to `end` (exclusive) on
    days that are neither an excluded weekday (ISO, 1 Monday .. 7 Sunday) nor a holiday."""

    start: time = time(8)
    end: time = time(21)  # time(0) means midnight at the end of the day
    excluded_weekdays: frozenset[int] = frozenset()
    holidays: frozenset[date] = frozenset()

    def allows_day(self, day: date) -> bool:
        return day.isoweekday() not in self.excluded_weekdays and day not in self.holidays


@dataclass(frozen=True)
class ContactCap:
    """At most `messages` per customer in any rolling `days` (0 messages: no cap)."""

    messages: int = 7
    days: int = 7


def _local_at(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The instant of wall time `at` on `day` in `tz`; a wall time skipped by a DST change is the
    first instant after the gap (what a clock shows after springing forward)."""
    naive = datetime.combine(day, at)
    instant = naive.replace(tzinfo=tz).astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == naive:
        return instant
    # in a gap: the clock jumps over `at`; the first minute whose wall time is past it
    moment = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    while moment.astimezone(tz).replace(tzinfo=None) < naive:
        moment += timedelta(minutes=1)
    return moment


def next_allowed_send(now: datetime, timezone_name: str, window: SendingWindow | None = None) -> datetime:
    """`now` if the customer may be contacted now, else the first allowed minute after it in their
    timezone. Deferred, never dropped: a window that allows no day at all within a year is a
    configuration error, raised."""
    window = window or SendingWindow()
    tz = ZoneInfo(timezone_name)
    local = now.astimezone(tz)
    day = local.date()
    for _ in range(400):
        if window.allows_day(day):
            opens = _local_at(day, window.start, tz)
            closes = _local_at(day + timedelta(days=1), time(0), tz) if window.end == time(0) \
                else _local_at(day, window.end, tz)
            if now < opens:
                return opens
            if now < closes:
                return now
        day += timedelta(days=1)
    raise ValueError("the sending window allows no day within a year: check excluded weekdays and holidays")


def cap_release(now: datetime, recent_sends: Sequence[datetime], cap: ContactCap) -> datetime:
    """When one more message fits under the cap: `now` if it does already, else when the oldest
    send that keeps the window full leaves it. `recent_sends` sorted ascending."""
    if cap.messages <= 0:
        return now
    span = timedelta(days=cap.days)
    in_window = recent_sends[bisect.bisect_right(recent_sends, now - span):]
    in_window = [s for s in in_window if s <= now]
    if len(in_window) < cap.messages:
        return now
    return in_window[len(in_window) - cap.messages] + span


def when_may_send(now: datetime, timezone_name: str, window: SendingWindow, recent_sends: Sequence[datetime],
                  cap: ContactCap) -> tuple[datetime, str | None]:
    """The first time at or after `now` inside the sending window and under the cap, and why it is
    later than now ("outside sending hours", "contact cap: N in D days"), or None if it is now."""
    at, reason = now, None
    for _ in range(50):
        allowed = next_allowed_send(at, timezone_name, window)
        released = cap_release(allowed, recent_sends, cap)
        if allowed > at and reason is None:
            reason = "outside allowed sending hours"
        if released == allowed:
            return allowed, reason
        reason = f"contact cap: {cap.messages} messages in {cap.days} days"
        at = released
    return at, reason


@dataclass(frozen=True)
class Block:
    code: str  # a NotificationFailed code
    reason: str


@dataclass(frozen=True)
class ContactState:
    """What the notifier knows of a contact when a message to it is due."""

    email: str | None = None
    phone: str | None = None
    webhook_url: str | None = None
    email_opt_out: bool = False
    sms_opt_out: bool = False
    webhook_opt_out: bool = False
    declined_channels: frozenset[str] = field(default_factory=frozenset)
    suppressed: frozenset[str] = field(default_factory=frozenset)  # channels whose address is suppressed

    def address(self, channel: str) -> str | None:
        return {"email": self.email, "sms": self.phone, "webhook": self.webhook_url}.get(channel)


def blocked(channel: str, contact: ContactState) -> Block | None:
    """Why a message on `channel` cannot go to this contact, or None if it can."""
    if channel not in ("email", "sms", "webhook"):
        return Block("declined", f"channel {channel!r} is not sent by the notifier")
    if not contact.address(channel):
        return Block("no_address", {"email": "no email address on file", "sms": "no phone number on file",
                                    "webhook": "no webhook endpoint on file"}[channel])
    if {"email": contact.email_opt_out, "sms": contact.sms_opt_out, "webhook": contact.webhook_opt_out}[channel]:
        return Block("opted_out", {"email": "customer unsubscribed from email", "sms": "customer sent STOP",
                                   "webhook": "customer turned the webhook off"}[channel])
    if channel in contact.declined_channels:
        return Block("declined", f"the contact's preferences exclude {channel}")
    if channel in contact.suppressed:
        return Block("suppressed", f"the {channel} address is on the suppression list")
    return None


def blocked_reason(channel: str, email: str | None, phone: str | None, email_opt_out: bool, sms_opt_out: bool) -> str | None:
    """Why a message on `channel` cannot go to this contact, or None (email and SMS only)."""
    b = blocked(channel, ContactState(email=email, phone=phone, email_opt_out=email_opt_out, sms_opt_out=sms_opt_out))
    return b.reason if b else None


# Inbound SMS keywords, matched on the whole message, case-insensitively, ignoring accents and
# surrounding punctuation: the carriers' standard English words and their Turkish, Czech and
# Persian equivalents.
_STOP = (
    "stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout", "opt out", "opt-out",
    "iptal", "dur", "durdur", "abonelik iptal", "istemiyorum",          # Turkish
    "zrusit", "konec", "odhlasit", "stop vse",                           # Czech (accents folded)
    "لغو", "توقف", "انصراف", "لغو عضویت",                                # Persian
)
_START = ("start", "unstop", "yes", "başla", "başlat", "evet", "začít", "ano", "شروع")


def _fold(text: str) -> str:
    """Lower-case, accents removed (Turkish ı and İ to i), Persian ی/ي and ک/ك unified, outer
    punctuation and spaces stripped, inner spaces collapsed."""
    text = text.replace("ı", "i").replace("İ", "i").replace("ي", "ی").replace("ك", "ک")
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept = "".join(c for c in decomposed if not unicodedata.combining(c) or unicodedata.category(c) == "Mc")
    return " ".join(kept.strip(" \t\r\n.!?,;:'\"()").split())


def sms_keyword(body: str) -> str | None:
    """"stop" or "start" when the inbound message asks for it, else None."""
    folded = _fold(body)
    if folded in STOP_WORDS:
        return "stop"
    if folded in START_WORDS:
        return "start"
    return None


STOP_WORDS = frozenset(_fold(w) for w in _STOP)
START_WORDS = frozenset(_fold(w) for w in _START)
