"""Dunning policies: what is said to a customer, when, on which channel, at what charge.

A policy is a document (YAML in files or through the API), validated here with errors that
name the line and field; it is pure data and rules, no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from services.dunning.domain.charges import load_jurisdictions
from shared.contract.events import Channel, Language, RiskSegment
from shared.contract.money import to_major, to_minor, validate_currency
from shared.contract.templates import NOTICE_TEMPLATES, RENDERED_CHANNELS

ANY_TENANT = "*"  # policies shipped as files apply to every tenant that has none of its own
_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class PolicyError(ValueError):
    """A policy document that cannot be used; `problems` name the line and field of each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


_MAX_MINOR = 10**15  # far beyond any fee or threshold, well inside bigint


def _amounts(value: Any) -> dict[str, int]:
    """{"EUR": "5.00"} in major units -> {"EUR": 500} minor units; the currency must be ISO 4217."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected currency: amount pairs, e.g. {EUR: \"5.00\"}")
    out: dict[str, int] = {}
    for currency, amount in value.items():
        validate_currency(currency)
        try:
            number = Decimal(str(amount))
        except InvalidOperation:
            raise ValueError(f"{currency}: {amount!r} is not an amount") from None
        if not number.is_finite() or abs(number) >= _MAX_MINOR:
            raise ValueError(f"{currency}: {amount!r} is not a usable amount")
        minor = to_minor(number, currency)
        if abs(minor) >= _MAX_MINOR:
            raise ValueError(f"{currency}: {amount!r} is beyond any sensible amount")
        if minor < 0:
            raise ValueError(f"{currency}: {amount} is negative")
        out[currency] = minor
    return out


class _Problems(ValueError):
    """Several problems found by the cross-field rules, each naming its field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="unique within the policy, e.g. overdue_7_email")
    offset_days: int = Field(ge=-90, le=3650, description="days from the due date; negative is before it")
    channel: Channel
    template: str | None = Field(default=None, description="the notice template (email, sms and letter steps)")
    fee: dict[str, int] = Field(default_factory=dict, description="fixed fee per currency, major units in YAML")
    min_overdue: dict[str, int] = Field(
        default_factory=dict, description="per currency: below this amount owed the step is skipped")

    @field_validator("fee", "min_overdue", mode="before")
    @classmethod
    def _major_units(cls, value: dict[str, Any] | None) -> dict[str, int]:
        return _amounts(value)

    @field_serializer("fee", "min_overdue")
    def _as_written(self, value: dict[str, int]) -> dict[str, str]:
        """Back in major units, as the document is written: a stored policy reads back the same."""
        return {currency: str(to_major(minor, currency)) for currency, minor in value.items()}

    @model_validator(mode="after")
    def _template_for_messages(self) -> "StepSpec":
        if self.channel in RENDERED_CHANNELS and not self.template:
            raise ValueError(f"a {self.channel} step needs a template")
        return self


class Charges(BaseModel):
    """Statutory late-payment charges: interest on the overdue amount, and a fixed compensation
    once per invoice, from the jurisdiction's table (services/dunning/data/late_payment.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    jurisdiction: str = Field(description="a code of the rate table, e.g. eu-2011-7 or tr-ttk-1530")
    interest: bool = True
    compensation: bool = True

    @field_validator("jurisdiction")
    @classmethod
    def _known(cls, code: str) -> str:
        known = load_jurisdictions()
        if code not in known:
            raise ValueError(f"unknown jurisdiction {code!r}; the rate table has {', '.join(sorted(known))}")
        return code


class Settlement(BaseModel):
    """Settlement offers a collector may make: a discount for paying the whole overdue amount by a
    date. Without this section the policy allows none."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_discount_percent: Decimal = Field(gt=0, le=50, description="the largest discount, in percent of what is overdue")
    max_days: int = Field(default=14, ge=1, le=90, description="the pay-by date at most this many days after the offer")
    min_days_overdue: int = Field(default=0, ge=0, le=3650,
                                  description="offered only once the oldest overdue invoice is this many days late")

    @field_serializer("max_discount_percent")
    def _as_written(self, value: Decimal) -> str:
        return str(value)


class SelfService(BaseModel):
    """What a customer may arrange alone in the portal (a signed link in each notice). Without
    this section they may only dispute there: promises and plans go through a collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_promise_days: int = Field(default=14, ge=1, le=365, description="a promised date at most this many days ahead")
    max_instalments: int = Field(default=6, ge=2, le=60, description="a plan of at most this many instalments")
    max_plan_days: int = Field(default=180, ge=1, le=730, description="its last instalment at most this many days ahead")
    max_first_due_days: int = Field(default=30, ge=0, le=365, description="its first instalment at most this many days ahead")


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    segment: RiskSegment = Field(description="the risk segment it applies to")
    customer_group: str | None = Field(default=None, pattern=_NAME, description="only customers of this group")
    languages: list[Language] = Field(min_length=1, description="the languages its notices go out in")
    send_hour_local: int = Field(default=9, ge=0, le=23, description="steps fall due at this hour of the customer's day")
    fee_per: Literal["notice", "invoice"] = Field(
        default="notice", description="a step's fee once per notice, or once per invoice the notice lists")
    charges: Charges | None = None
    settlement: Settlement | None = None
    portal: SelfService | None = None
    steps: list[StepSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _rules(self) -> "PolicySpec":
        problems = []
        for i, (a, b) in enumerate(zip(self.steps, self.steps[1:]), start=1):
            if b.offset_days < a.offset_days:
                problems.append(f"steps.{i}.offset_days: {b.offset_days} comes before the previous step's"
                                f" {a.offset_days} (steps must be in order)")
        seen: set[str] = set()
        for i, s in enumerate(self.steps):
            if s.name in seen:
                problems.append(f"steps.{i}.name: {s.name!r} is used twice")
            seen.add(s.name)
            if s.template and s.channel in RENDERED_CHANNELS:
                have = NOTICE_TEMPLATES.get(s.template)
                if have is None:
                    problems.append(f"steps.{i}.template: unknown template {s.template!r}")
                elif missing := [lang for lang in self.languages if lang not in have]:
                    problems.append(f"steps.{i}.template: {s.template!r} has no {', '.join(missing)} version")
            if s.channel == "legal" and i != len(self.steps) - 1:
                problems.append(f"steps.{i}.channel: the legal hand-over must be the last step")
        if problems:
            raise _Problems(problems)
        return self

    @property
    def slot(self) -> tuple[str, str | None]:
        return self.segment, self.customer_group


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The line (1-based) of the YAML node at a pydantic error location, as deep as it goes."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


_LOC = re.compile(r"^(steps\.(\d+)\.(\w+)): ")


def parse_policy(text: str, where: str = "policy") -> PolicySpec:
    """A policy from YAML (or JSON, which is YAML); PolicyError lists every problem as
    "<where> line N, <field>: <reason>"."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise PolicyError([f"{where}{line}: not valid YAML ({getattr(e, 'problem', None) or e})"]) from None
    if not isinstance(data, dict):
        raise PolicyError([f"{where}: a policy is a mapping with name, segment, languages and steps"])
    try:
        return PolicySpec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if p not in ("function-after[_rules()]",))
            message = err["msg"].removeprefix("Value error, ")
            cause = (err.get("ctx") or {}).get("error")
            if not loc and isinstance(cause, _Problems):  # the cross-step rules: each names its field
                for part in cause.problems:
                    m = _LOC.match(part)
                    path = (("steps", int(m.group(2)), m.group(3)) if m else ())
                    line = _line_of(node, path)
                    problems.append(f"{where}{f' line {line}' if line else ''}, {part}")
                continue
            line = _line_of(node, loc)
            field = ".".join(str(p) for p in loc)
            problems.append(f"{where}{f' line {line}' if line else ''}, {field}: {message}")
        raise PolicyError(problems) from None


# --- scheduling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedStep:
    name: str
    position: int  # order within the policy
    channel: str
    template: str | None
    offset_days: int
    due_at: datetime


@lru_cache(maxsize=1 << 16)  # a batch's invoices share a few due dates and timezones: 6 steps each
def step_due_at(due_date: date, offset_days: int, timezone: str, hour: int) -> datetime:
    local = datetime.combine(due_date + timedelta(days=offset_days), time(hour), ZoneInfo(timezone))
    return local.astimezone(ZoneInfo("UTC"))


def plan_item(policy: PolicySpec, due_date: date, timezone: str) -> tuple[PlannedStep, ...]:
    """Every step of the policy for one invoice, at `send_hour_local` in the customer's timezone.
    Steps already past are planned too: the claim sends only the latest of them (no burst)."""
    key = (id(policy), due_date, timezone)
    cached = _plans.get(key)
    if cached is not None and cached[0] is policy:  # the cache holds the policy: its id is not reused meanwhile
        return cached[1]
    plan = tuple(PlannedStep(s.name, i, s.channel, s.template, s.offset_days,
                             step_due_at(due_date, s.offset_days, timezone, policy.send_hour_local))
                 for i, s in enumerate(policy.steps))
    if len(_plans) >= _PLANS_KEPT:
        _plans.clear()
    _plans[key] = (policy, plan)
    return plan


# The plans of (policy, due date, timezone): the invoices of a batch share a few of each, and
# building six steps per invoice was a tenth of the consumer's CPU. PolicySpec holds lists, so it
# is not hashable: keyed by identity, with the policy kept beside its plans.
_plans: dict[tuple[int, date, str], tuple[PolicySpec, tuple[PlannedStep, ...]]] = {}
_PLANS_KEPT = 1 << 16


def notification_key(case_id: str, step: str, channel: str, sequence: int = 0) -> str:
    """One notification per (case, step, channel) and notice of the case, whatever is retried or
    redelivered (a case can reach the same step again when a later invoice joins it)."""
    return f"{case_id}:{step}:{channel}" + (f":{sequence}" if sequence else "")
