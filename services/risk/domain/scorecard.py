"""The scorecard: a customer's book, at a moment, becomes a score 0-100 (higher is riskier), a
grade A-D and the factors that moved it, each with the numbers it quotes so it can be said in
the customer's or the collector's language. Factors, weights, bands, grade bands and the
grade -> dunning segment mapping are a tenant's configuration. Pure: the same book at the same
moment gives the same assessment.

Credit limits are deliberately not a factor: people change them outside the event stream, so a
score resting on them would differ when the store is rebuilt from the topics."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.risk.domain.book import CustomerBook, InvoiceFact
from services.risk.domain.explain import explain
from shared.contract.events import RiskFactor

Grade = Literal["A", "B", "C", "D"]
Segment = Literal["low", "medium", "high"]
FactorName = Literal["late_share", "days_beyond_terms", "max_days_overdue", "recent_very_late", "overdue_share",
                     "broken_promises", "rejected_disputes", "reversed_payments", "contact_problems", "trend"]
GRADES: tuple[Grade, ...] = ("A", "B", "C", "D")


class Band(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    at_least: float = Field(description="the factor's value from which these points apply")
    points: int = Field(ge=0, le=100)


class FactorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    weight: float = Field(default=1.0, ge=0, le=5, description="multiplies the band's points")
    bands: tuple[Band, ...] = Field(description="ascending by at_least; the last band reached applies")

    @model_validator(mode="after")
    def _ascending(self) -> "FactorConfig":
        values = [b.at_least for b in self.bands]
        if values != sorted(values) or len(set(values)) != len(values):
            raise ValueError("bands must be in strictly ascending order of at_least")
        return self

    def points(self, value: float) -> int:
        reached = [b.points for b in self.bands if value >= b.at_least]
        return round(self.weight * reached[-1]) if reached else 0


def _bands(*pairs: tuple[float, int]) -> FactorConfig:
    return FactorConfig(bands=tuple(Band(at_least=v, points=p) for v, p in pairs))


DEFAULT_FACTORS: dict[str, FactorConfig] = {
    # share of the year's settled invoices paid after their due date (+ grace)
    "late_share": _bands((0.1, 3), (0.25, 7), (0.5, 12), (0.75, 18)),
    # days beyond terms, weighted by amount within each currency and by recency
    "days_beyond_terms": _bands((3, 5), (10, 12), (20, 20), (35, 28), (60, 35)),
    # the oldest open invoice's days past due
    "max_days_overdue": _bands((1, 3), (15, 8), (30, 14), (60, 20), (90, 25)),
    # of the last N settled invoices, how many were paid very late
    "recent_very_late": _bands((1, 4), (2, 8), (3, 12), (4, 16)),
    # the overdue part of what is open (the worst currency)
    "overdue_share": _bands((0.25, 4), (0.5, 8), (0.75, 12)),
    "broken_promises": _bands((1, 8), (2, 14), (3, 20)),
    "rejected_disputes": _bands((1, 4), (2, 8)),
    "reversed_payments": _bands((1, 6), (2, 12), (3, 18)),
    "contact_problems": _bands((1, 3), (2, 6)),
    # days late over the last 90 days minus over the year: getting later
    "trend": _bands((5, 4), (10, 8), (20, 12)),
}


class Scorecard(BaseModel):
    """A tenant's scorecard; the shipped one is `Scorecard()`."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    factors: dict[FactorName, FactorConfig] = Field(default_factory=lambda: dict(DEFAULT_FACTORS))
    grade_below: dict[Literal["A", "B", "C"], int] = Field(
        default_factory=lambda: {"A": 20, "B": 40, "C": 60},
        description="a score below A's bound is grade A, below B's is B, below C's is C, else D")
    segments: dict[Grade, Segment] = Field(
        default_factory=lambda: {"A": "low", "B": "medium", "C": "medium", "D": "high"},
        description="the dunning segment (policy) of each grade")
    new_customer_points: int = Field(default=25, ge=0, le=100, description="no payment history yet")
    grace_days: int = Field(default=0, ge=0, le=60, description="paid this many days late still counts as on time")
    very_late_days: int = Field(default=30, ge=1, le=365)
    recent_invoices: int = Field(default=5, ge=1, le=50)
    recency_half_life_days: int = Field(default=90, ge=1, le=3650)
    lookback_days: int = Field(default=365, ge=30, le=3650)

    @model_validator(mode="after")
    def _consistent(self) -> "Scorecard":
        a, b, c = (self.grade_below[g] for g in ("A", "B", "C")) if len(self.grade_below) == 3 else (None,) * 3
        if a is None:
            raise ValueError("grade_below needs the bounds of A, B and C")
        if not 0 < a < b < c <= 100:
            raise ValueError("grade_below: the bounds must rise A < B < C within 1..100")
        missing = [g for g in GRADES if g not in self.segments]
        if missing:
            raise ValueError(f"segments: no segment for grade(s) {', '.join(missing)}")
        return self

    def grade_of(self, score: int) -> Grade:
        for g in ("A", "B", "C"):
            if score < self.grade_below[g]:  # type: ignore[index]
                return g  # type: ignore[return-value]
        return "D"


@dataclass(frozen=True)
class Assessment:
    score: int
    grade: Grade
    segment: Segment
    # (name, value, points, params) of each factor: said in words only when someone reads them
    # (a customer's latest assessment, a RiskAssessed), not for every event folded.
    raw_factors: tuple[tuple[str, float, int, dict], ...] = field(default=(), compare=False)
    language: str = field(default="en", compare=False)

    @cached_property
    def factors(self) -> tuple[RiskFactor, ...]:
        return tuple(_factor(name, value, points, self.language, **params)
                     for name, value, points, params in self.raw_factors)

    def factors_json(self) -> list[dict]:
        """The factors as `RiskFactor.model_dump(mode="json")` gives them, without the models."""
        return [{"name": name, "value": float(value), "points": points,
                 "explanation": explain(name, params, self.language), "params": params}
                for name, value, points, params in self.raw_factors]


def _factor(name: str, value: float, points: int, language: str = "en", **params: int | float | str) -> RiskFactor:
    return RiskFactor(name=name, value=value, points=points, params=params,
                      explanation=explain(name, params, language))


def _days(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 86_400


def _settled_in(invoices: list[InvoiceFact], since: datetime, until: datetime) -> list[InvoiceFact]:
    return sorted((i for i in invoices if i.status == "paid" and i.paid_at is not None and since < i.paid_at <= until
                   and i.days_late is not None), key=lambda i: (i.paid_at, i.invoice_id))


def days_beyond_terms(settled: list[InvoiceFact], open_overdue: list[tuple[InvoiceFact, int]], as_of: datetime,
                      half_life_days: int) -> float | None:
    """Days late, weighted by amount (within each currency, so currencies are never added up:
    each currency weighs as much as its share of the invoices) and by recency (a payment
    `half_life_days` old weighs half). Open overdue invoices count with their days so far."""
    items = [(i, max(i.days_late or 0, 0), 0.5 ** (_days(as_of, i.paid_at) / half_life_days)) for i in settled]
    items += [(i, d, 1.0) for i, d in open_overdue]
    if not items:
        return None
    per_currency: dict[str, list[tuple[InvoiceFact, int, float]]] = {}
    for item in items:
        per_currency.setdefault(item[0].currency, []).append(item)
    total_weight, total = 0.0, 0.0
    for group in per_currency.values():
        amount = sum(i.amount_minor for i, _, _ in group)
        share = len(group) / len(items)
        for inv, days, recency in group:
            w = share * (inv.amount_minor / amount) * recency
            total_weight += w
            total += w * days
    return total / total_weight if total_weight else 0.0


def assess(book: CustomerBook, as_of: datetime, card: Scorecard | None = None, language: str = "en") -> Assessment:
    """The customer's score at `as_of` (the time of the event that caused the assessment)."""
    card = card or Scorecard()
    year_ago = as_of - timedelta(days=card.lookback_days)
    invoices = list(book.invoices.values())
    settled = _settled_in(invoices, year_ago, as_of)
    open_ = [i for i in invoices if i.status == "open" and i.open_minor > 0]
    overdue = [(i, (as_of.date() - i.due_date).days) for i in open_ if as_of.date() > i.due_date]
    f = book.facts
    factors: list[tuple[str, float, int, dict]] = []

    def add(name: str, value: float, **params: int | float | str) -> None:
        cfg = card.factors.get(name)  # type: ignore[call-overload]
        if cfg is None:
            return
        factors.append((name, value, cfg.points(value), params))

    if not settled and not overdue:
        factors.append(("no_history", len(invoices), card.new_customer_points, {"invoices": len(invoices)}))
    if settled:
        late = sum(1 for i in settled if (i.days_late or 0) > card.grace_days)
        add("late_share", round(late / len(settled), 3), late=late, settled=len(settled))
        recent = settled[-card.recent_invoices:]
        very_late = sum(1 for i in recent if (i.days_late or 0) >= card.very_late_days)
        add("recent_very_late", very_late, very_late=very_late, recent=len(recent), days=card.very_late_days)
    dbt = days_beyond_terms(settled, overdue, as_of, card.recency_half_life_days)
    if dbt is not None and (settled or overdue):
        add("days_beyond_terms", round(dbt, 1), days=round(dbt, 1))
    if overdue:
        worst = max(overdue, key=lambda x: (x[1], x[0].invoice_id))
        add("max_days_overdue", worst[1], days=worst[1], overdue=len(overdue))
        shares = {}
        for cur in {i.currency for i in open_}:
            total = sum(i.open_minor for i in open_ if i.currency == cur)
            shares[cur] = sum(i.open_minor for i, _ in overdue if i.currency == cur) / total
        cur = max(shares, key=lambda c: (shares[c], c))
        add("overdue_share", round(shares[cur], 3), percent=round(100 * shares[cur]), currency=cur)
    if f.promises_broken or f.plans_broken:
        add("broken_promises", f.promises_broken + f.plans_broken, promises=f.promises_broken, plans=f.plans_broken)
    if f.disputes_rejected:
        add("rejected_disputes", f.disputes_rejected, rejected=f.disputes_rejected, opened=f.disputes_opened)
    if f.payments_reversed:
        add("reversed_payments", f.payments_reversed, reversed=f.payments_reversed)
    if f.contacts_bounced or f.contacts_opted_out:
        add("contact_problems", f.contacts_bounced + f.contacts_opted_out, bounced=f.contacts_bounced,
            opted_out=f.contacts_opted_out)
    recent_quarter = [i for i in settled if i.paid_at > as_of - timedelta(days=90)]
    if len(recent_quarter) >= 2 and len(settled) > len(recent_quarter):
        avg = lambda xs: sum(max(i.days_late or 0, 0) for i in xs) / len(xs)  # noqa: E731
        change = round(avg(recent_quarter) - avg(settled), 1)
        add("trend", change, change=change, quarter=round(avg(recent_quarter), 1), year=round(avg(settled), 1))
    score = max(0, min(100, sum(points for _, _, points, _ in factors)))
    grade = card.grade_of(score)
    return Assessment(score, grade, card.segments[grade], tuple(factors), language)


def explained(factors: list[RiskFactor], language: str) -> list[RiskFactor]:
    """The same factors, said in another language."""
    return [x.model_copy(update={"explanation": explain(x.name, x.params, language)}) for x in factors]
