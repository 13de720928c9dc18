"""Dunning policies and the schedule of a case: pure rules, no I/O."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class PolicyStep:
    name: str
    offset_days: int  # relative to the due date
    channel: str  # email | sms | collector_call | letter | legal
    template: str


@dataclass(frozen=True)
class Policy:
    name: str
    segment: str
    steps: tuple[PolicyStep, ...]
    send_hour_local: int = 9  # steps fall due at this hour of the customer's day


STANDARD = Policy(
    "standard",
    "medium",
    (
        PolicyStep("pre_due", -3, "email", "reminder_pre_due"),
        PolicyStep("due", 0, "email", "reminder_due"),
        PolicyStep("overdue_7", 7, "email", "reminder_overdue"),
        PolicyStep("overdue_7", 7, "sms", "reminder_overdue"),
        PolicyStep("final_14", 14, "email", "final_notice"),
        PolicyStep("final_14", 14, "sms", "final_notice"),
    ),
)
GENTLE = Policy(
    "gentle",
    "low",
    (
        PolicyStep("pre_due", -3, "email", "reminder_pre_due"),
        PolicyStep("due", 0, "email", "reminder_due"),
        PolicyStep("overdue_7", 7, "email", "reminder_overdue"),
        PolicyStep("final_14", 14, "email", "final_notice"),
    ),
)
# Risky customers get a denser schedule and earlier SMS.
STRICT = Policy(
    "strict",
    "high",
    (
        PolicyStep("pre_due", -5, "email", "reminder_pre_due"),
        PolicyStep("pre_due_sms", -1, "sms", "reminder_pre_due"),
        PolicyStep("due", 0, "email", "reminder_due"),
        PolicyStep("overdue_3", 3, "sms", "reminder_overdue"),
        PolicyStep("overdue_7", 7, "email", "reminder_overdue"),
        PolicyStep("overdue_7", 7, "sms", "reminder_overdue"),
        PolicyStep("final_14", 14, "email", "final_notice"),
        PolicyStep("final_14", 14, "sms", "final_notice"),
    ),
)
DEFAULT_POLICIES = {p.segment: p for p in (GENTLE, STANDARD, STRICT)}


def policy_for(segment: str | None) -> Policy:
    return DEFAULT_POLICIES.get(segment or "medium", STANDARD)


def policy_named(name: str) -> Policy:
    return next((p for p in DEFAULT_POLICIES.values() if p.name == name), STANDARD)


@dataclass(frozen=True)
class ScheduledStep:
    name: str
    channel: str
    template: str
    offset_days: int
    due_at: datetime
    status: str  # scheduled | skipped


def step_due_at(due_date: date, offset_days: int, timezone: str, hour: int) -> datetime:
    local = datetime.combine(due_date + timedelta(days=offset_days), time(hour), ZoneInfo(timezone))
    return local.astimezone(ZoneInfo("UTC"))


def schedule_case(policy: Policy, due_date: date, timezone: str, now: datetime) -> list[ScheduledStep]:
    """All steps of the policy with their times. When a case opens late (an old invoice, or
    catch-up after downtime), only the most recent past step is still sent: a customer 20 days
    overdue gets the current notice, not the whole history."""
    steps = [
        ScheduledStep(s.name, s.channel, s.template, s.offset_days,
                      step_due_at(due_date, s.offset_days, timezone, policy.send_hour_local), "scheduled")
        for s in policy.steps
    ]
    past_offsets = [s.offset_days for s in steps if s.due_at <= now]
    if past_offsets:
        latest = max(past_offsets)
        steps = [
            s if s.due_at > now or s.offset_days == latest else ScheduledStep(
                s.name, s.channel, s.template, s.offset_days, s.due_at, "skipped")
            for s in steps
        ]
    return steps


def notification_key(case_id: str, step: str, channel: str, round_: int = 0) -> str:
    """One notification per (case, step, channel) and round, whatever is retried or redelivered."""
    return f"{case_id}:{step}:{channel}" + (f":r{round_}" if round_ else "")
