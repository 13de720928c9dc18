"""Credit: a limit, terms and security for an application, a limit for an existing customer,
and automatic holds when exposure passes the limit. Pure: no I/O, no clock.

Money is integer minor units. Ratios are computed exactly with `fractions.Fraction` (a Decimal
policy factor converts to a Fraction without loss, and 45/30 stays exact), so a limit that is
exactly a step is never floored one step short by a rounding error. Limits are rounded DOWN to
the policy's step: the engine never recommends more than its rules give. A share of a limit
(a deposit) is rounded half-up to the minor unit, the way a person would round it.

Every rule leaves a `Reason` (a code and its numbers) that `explain` turns into a sentence in
en, tr, cs or fa.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Annotated, Literal

from babel.numbers import format_decimal
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from shared.contract.events import RiskGrade, SecurityRequirement
from shared.contract.money import CurrencyCode, format_money_native, native_digits, numbering_system

RiskClass = Literal["low", "medium", "high", "very_high"]
RISK_CLASSES: tuple[RiskClass, ...] = ("low", "medium", "high", "very_high")
MAX_MINOR = 10**15  # far beyond any credit limit, well inside bigint
_SECTOR_KEY = r"^[a-z][a-z0-9_]{0,59}$"
_CONFIG = ConfigDict(extra="forbid", frozen=True)


# --- configuration -----------------------------------------------------------------------------

class SectorRisk(BaseModel):
    model_config = _CONFIG

    risk: RiskClass
    limit_factor: Decimal = Field(ge=0, le=5, description="multiplies the revenue-based limit")


class Band(BaseModel):
    """One step of a factor table: values below `below` (and at or above the previous band's
    `below`) get `factor`. The last band has no `below`: it takes every value left."""
    model_config = _CONFIG

    below: Decimal | None = Field(default=None, ge=0)
    factor: Decimal = Field(ge=0, le=1, description="bands only reduce the limit; 1 = no reduction")


def _check_bands(bands: tuple[Band, ...]) -> tuple[Band, ...]:
    """Bands in increasing order with one open band last: a value finds exactly one band."""
    bounds = [b.below for b in bands]
    if bounds[-1] is not None:
        raise ValueError("the last band must have no `below`, so that every value falls into a band")
    if None in bounds[:-1]:
        raise ValueError("only the last band may have no `below`")
    if any(lower >= upper for lower, upper in zip(bounds[:-2], bounds[1:-1])):
        raise ValueError(f"bands must be in increasing order of `below`, got {[str(b) for b in bounds[:-1]]}")
    return bands


def _sectors() -> dict[str, SectorRisk]:
    table = {
        "construction": ("very_high", "0.5"),
        "retail": ("medium", "0.9"),
        "hospitality": ("high", "0.7"),
        "manufacturing": ("medium", "1.0"),
        "wholesale": ("medium", "0.9"),
        "healthcare": ("low", "1.1"),
        "public_sector": ("low", "1.2"),
        "transport": ("high", "0.7"),
        "agriculture": ("high", "0.8"),
        "it_services": ("low", "1.0"),
        "professional_services": ("low", "1.0"),
        "energy": ("medium", "1.0"),
    }
    return {name: SectorRisk(risk=risk, limit_factor=Decimal(factor)) for name, (risk, factor) in table.items()}


class CreditPolicy(BaseModel):
    """A tenant's credit rules; `CreditPolicy()` is the shipped default.

    Amounts (`rounding_minor`, `insurance_above_minor`) are minor units of the currency the
    tenant lends in: 100_000 is 1,000.00 EUR but 100,000 JPY.
    """
    model_config = _CONFIG

    sectors: dict[Annotated[str, StringConstraints(pattern=_SECTOR_KEY)], SectorRisk] = Field(
        default_factory=_sectors, description="lower-case keys, words joined by _ (e.g. public_sector)")
    default_sector_risk: SectorRisk = Field(
        default=SectorRisk(risk="medium", limit_factor=Decimal(1)), description="for a sector not listed")
    revenue_share: Decimal = Field(
        default=Decimal("0.10"), gt=0, le=1, description="the base limit as a share of declared annual revenue")
    years_trading_bands: tuple[Band, ...] = Field(
        default=(Band(below=Decimal(2), factor=Decimal("0.5")), Band(below=Decimal(5), factor=Decimal("0.8")),
                 Band(factor=Decimal(1))), min_length=1)
    bureau_score_bands: tuple[Band, ...] = Field(
        default=(Band(below=Decimal(40), factor=Decimal("0.5")), Band(below=Decimal(70), factor=Decimal("0.8")),
                 Band(factor=Decimal(1))), min_length=1)
    no_bureau_score_factor: Decimal = Field(default=Decimal("0.8"), ge=0, le=1)
    max_terms_days: dict[RiskClass, Annotated[int, Field(ge=0, le=365)]] = Field(
        default_factory=lambda: {"low": 60, "medium": 45, "high": 30, "very_high": 14})
    rounding_minor: int = Field(default=100_000, gt=0, le=MAX_MINOR, description="limits are multiples of this")
    deposit_share: Decimal = Field(default=Decimal("0.20"), ge=0, le=1, description="of the granted limit")
    deposit_risk_classes: frozenset[RiskClass] = Field(default=frozenset({"very_high"}))
    guarantee_max_multiple: Decimal = Field(
        default=Decimal(2), ge=1, le=10, description="offered cover lifts the limit to at most this × the recommendation")
    insurance_above_minor: int = Field(
        default=50_000_000, gt=0, le=MAX_MINOR, description="a limit above this needs credit insurance for the excess")
    grade_factors: dict[RiskGrade, Annotated[Decimal, Field(ge=0, le=5)]] = Field(
        default_factory=lambda: {"A": Decimal("1.5"), "B": Decimal("1.2"), "C": Decimal("0.8"), "D": Decimal("0.4")})
    no_grade_factor: Decimal = Field(default=Decimal(1), ge=0, le=5)
    default_terms_days: int = Field(default=30, ge=0, le=365, description="for a customer without agreed terms")

    @field_validator("years_trading_bands", "bureau_score_bands")
    @classmethod
    def _ordered_bands(cls, value: tuple[Band, ...]) -> tuple[Band, ...]:
        return _check_bands(value)

    @field_validator("max_terms_days")
    @classmethod
    def _every_risk_class(cls, value: dict[RiskClass, int]) -> dict[RiskClass, int]:
        if missing := [r for r in RISK_CLASSES if r not in value]:
            raise ValueError(f"missing risk class(es) {missing}")
        return value

    @field_validator("grade_factors")
    @classmethod
    def _every_grade(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        if missing := [g for g in ("A", "B", "C", "D") if g not in value]:
            raise ValueError(f"missing grade(s) {missing}")
        return value


# --- results -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reason:
    """Why, as data: `explain` words it. A param ending in `_minor` is money in params["currency"]."""
    code: str
    params: dict[str, int | float | str]


@dataclass(frozen=True)
class CreditRecommendation:
    limit_minor: int
    terms_days: int
    security: tuple[SecurityRequirement, ...]
    reasons: tuple[Reason, ...]
    risk_class: RiskClass


@dataclass(frozen=True)
class Decision:
    decision: Literal["approved", "changed", "declined"]
    limit_minor: int
    terms_days: int
    security: tuple[SecurityRequirement, ...]


# --- arithmetic --------------------------------------------------------------------------------

def _floor_to(amount: Fraction | int, step: int) -> int:
    """Down to a multiple of `step`: a limit is never rounded up past what the rules give."""
    return math.floor(Fraction(amount) / step) * step


def _round_half_up(amount: Fraction) -> int:
    """To the nearest minor unit, halves up (amounts here are never negative)."""
    return math.floor(amount + Fraction(1, 2))


def _number(value: Decimal, places: str) -> int | float:
    """A reason's number (not money), half-up to `places`: an int when whole, so it reads "50"."""
    rounded = value.quantize(Decimal(places), rounding=ROUND_HALF_UP)
    return int(rounded) if rounded == rounded.to_integral_value() else float(rounded)


def _percent(factor: Decimal) -> int | float:
    """0.5 -> 50, 0.125 -> 12.5."""
    return _number(factor * 100, "0.1")


def _band_factor(bands: tuple[Band, ...], value: Decimal) -> Decimal:
    return next(b.factor for b in bands if b.below is None or value < b.below)


def _sector_key(sector: str) -> str:
    """"Public sector" and "public-sector" both find public_sector."""
    return "_".join(sector.strip().lower().replace("-", " ").split())


# --- a new customer's application --------------------------------------------------------------

class CreditApplicationInput(BaseModel):
    model_config = _CONFIG

    sector: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)]
    years_trading: Decimal = Field(ge=0, le=200)
    declared_revenue_minor: int = Field(gt=0, le=MAX_MINOR)
    currency: CurrencyCode = Field(pattern=r"^[A-Z]{3}$")
    requested_limit_minor: int = Field(gt=0, le=MAX_MINOR)
    requested_terms_days: int = Field(ge=0, le=365)
    bureau_score: int | None = Field(default=None, ge=0, le=100)
    security_offered: list[SecurityRequirement] = Field(default_factory=list)


def recommend_for_application(app: CreditApplicationInput, policy: CreditPolicy) -> CreditRecommendation:
    """The rules, in order:

    1. recommendation = revenue × revenue_share × sector factor × years band × bureau band,
       down to a multiple of rounding_minor;
    2. a request at or below it is granted (down to a step);
    3. above it, an offered bank guarantee covers the part above the recommendation: the limit
       rises by the guarantee, to at most the request and guarantee_max_multiple × recommendation;
    4. a limit above insurance_above_minor needs credit insurance for the excess; without enough
       offered the limit stays at the threshold plus the insurance offered;
    5. a sector in deposit_risk_classes pays a deposit of deposit_share of the granted limit
       (a deposit offered does not raise the limit);
    6. terms are capped by the sector's risk class.

    Security in the result is what the granted limit is conditional on; guarantees and insurance
    appear only as far as the applicant offered them.
    """
    step = policy.rounding_minor
    money = {"currency": app.currency}
    sector_name = _sector_key(app.sector)
    sector = policy.sectors.get(sector_name, policy.default_sector_risk)
    reasons = [
        Reason("sector_risk", {"sector": sector_name, "risk": sector.risk, "factor": _percent(sector.limit_factor)}),
        Reason("revenue_share", {"share": _percent(policy.revenue_share)}),
    ]
    years_factor = _band_factor(policy.years_trading_bands, app.years_trading)
    if years_factor < 1:
        reasons.append(Reason("young_company", {"years": float(app.years_trading), "factor": _percent(years_factor)}))
    if app.bureau_score is None:
        bureau_factor = policy.no_bureau_score_factor
        if bureau_factor < 1:
            reasons.append(Reason("no_bureau_score", {"factor": _percent(bureau_factor)}))
    else:
        bureau_factor = _band_factor(policy.bureau_score_bands, Decimal(app.bureau_score))
        if bureau_factor < 1:
            reasons.append(Reason("bureau_score", {"score": app.bureau_score, "factor": _percent(bureau_factor)}))
    recommended = _floor_to(
        app.declared_revenue_minor * Fraction(policy.revenue_share) * Fraction(sector.limit_factor)
        * Fraction(years_factor) * Fraction(bureau_factor), step)

    offered = {kind: sum(s.amount_minor for s in app.security_offered if s.kind == kind)
               for kind in ("deposit", "bank_guarantee", "credit_insurance")}
    requested = _floor_to(app.requested_limit_minor, step)
    if requested <= recommended:
        limit = requested
        if requested < recommended:
            reasons.append(Reason("requested_below_recommendation", {
                **money, "requested_minor": app.requested_limit_minor, "recommended_minor": recommended,
                "limit_minor": limit}))
    else:
        ceiling = _floor_to(recommended * Fraction(policy.guarantee_max_multiple), step)
        limit = min(requested, _floor_to(recommended + offered["bank_guarantee"], step), ceiling)
        reasons.append(Reason("requested_above_recommendation", {
            **money, "requested_minor": app.requested_limit_minor, "recommended_minor": recommended,
            "ceiling_minor": ceiling}))

    threshold = policy.insurance_above_minor
    insured_ceiling = _floor_to(threshold + offered["credit_insurance"], step)
    if limit > threshold and limit > insured_ceiling:
        limit = insured_ceiling
        reasons.append(Reason("insurance_cap", {**money, "threshold_minor": threshold, "limit_minor": limit}))

    security: list[SecurityRequirement] = []
    if sector.risk in policy.deposit_risk_classes:
        deposit = _round_half_up(limit * Fraction(policy.deposit_share))
        if deposit > 0:
            security.append(SecurityRequirement(kind="deposit", amount_minor=deposit))
            reasons.append(Reason("security_deposit", {
                **money, "amount_minor": deposit, "share": _percent(policy.deposit_share), "risk": sector.risk}))
    if limit > recommended:
        security.append(SecurityRequirement(kind="bank_guarantee", amount_minor=limit - recommended))
        reasons.append(Reason("security_guarantee", {
            **money, "amount_minor": limit - recommended, "recommended_minor": recommended}))
    if limit > threshold:
        security.append(SecurityRequirement(kind="credit_insurance", amount_minor=limit - threshold))
        reasons.append(Reason("security_insurance", {
            **money, "amount_minor": limit - threshold, "threshold_minor": threshold}))

    max_terms = policy.max_terms_days[sector.risk]
    terms = min(app.requested_terms_days, max_terms)
    if app.requested_terms_days > max_terms:
        reasons.append(Reason("terms_capped", {
            "max_days": max_terms, "requested_days": app.requested_terms_days, "risk": sector.risk}))
    return CreditRecommendation(limit, terms, tuple(security), tuple(reasons), sector.risk)


def _security_key(security: Iterable[SecurityRequirement]) -> list[tuple[str, int]]:
    """The same security in another order is the same security."""
    return sorted((s.kind, s.amount_minor) for s in security)


def decide(rec: CreditRecommendation, *, approve: bool, limit_minor: int | None, terms_days: int | None,
           security: list[SecurityRequirement] | None) -> Decision:
    """A person's decision on a recommendation. None keeps the recommended value; approving
    with every value as recommended is "approved", with any value different "changed"; a
    decline grants nothing and so takes no values."""
    if not approve:
        if limit_minor not in (None, 0):
            raise ValueError(f"limit_minor: a decline grants no limit, got {limit_minor}")
        if terms_days is not None:
            raise ValueError("terms_days: a decline grants no terms")
        if security:
            raise ValueError("security: a decline asks for no security")
        return Decision("declined", 0, 0, ())
    limit = rec.limit_minor if limit_minor is None else limit_minor
    terms = rec.terms_days if terms_days is None else terms_days
    chosen = rec.security if security is None else tuple(security)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_MINOR:
        raise ValueError(f"limit_minor: an approval needs a limit above 0 (decline instead), got {limit!r}")
    if isinstance(terms, bool) or not isinstance(terms, int) or not 0 <= terms <= 365:
        raise ValueError(f"terms_days: must be 0 to 365, got {terms!r}")
    if not all(isinstance(s, SecurityRequirement) for s in chosen):
        raise ValueError("security: every item must be a SecurityRequirement")
    unchanged = (limit == rec.limit_minor and terms == rec.terms_days
                 and _security_key(chosen) == _security_key(rec.security))
    return Decision("approved" if unchanged else "changed", limit, terms, chosen)


# --- an existing customer ----------------------------------------------------------------------

def recommend_limit(*, invoiced_last_year_minor: int, months_of_history: int, terms_days: int | None,
                    grade: str | None, policy: CreditPolicy) -> tuple[int, tuple[Reason, ...]]:
    """Enough limit for what a customer owes in a normal cycle: the average monthly invoicing
    (over the months of history, at most 12; a first month counts as one) × (terms / 30 + 1),
    i.e. the invoices still within terms plus a month of new ones, × the grade's factor,
    down to a multiple of rounding_minor."""
    if invoiced_last_year_minor < 0:
        raise ValueError(f"invoiced_last_year_minor: must not be negative, got {invoiced_last_year_minor}")
    if months_of_history < 0:
        raise ValueError(f"months_of_history: must not be negative, got {months_of_history}")
    if terms_days is not None and not 0 <= terms_days <= 365:
        raise ValueError(f"terms_days: must be 0 to 365, got {terms_days}")
    if grade is not None and grade not in policy.grade_factors:
        raise ValueError(f"grade: must be one of {sorted(policy.grade_factors)} or None, got {grade!r}")
    if invoiced_last_year_minor == 0:
        return 0, (Reason("no_history", {}),)
    months = min(12, max(1, months_of_history))
    terms = policy.default_terms_days if terms_days is None else terms_days
    cycles = Fraction(terms + 30, 30)
    reasons = [Reason("invoicing_basis", {"months": months, "terms_days": terms,
                                          "multiplier": _number(Decimal(terms + 30) / 30, "0.01")})]
    factor = policy.no_grade_factor if grade is None else policy.grade_factors[grade]
    if grade is not None:
        reasons.append(Reason("grade_factor", {"grade": grade, "factor": _percent(factor)}))
    limit = _floor_to(Fraction(invoiced_last_year_minor, months) * cycles * Fraction(factor), policy.rounding_minor)
    return limit, tuple(reasons)


# --- exposure and automatic holds --------------------------------------------------------------

@dataclass(frozen=True)
class CreditLine:
    """A customer's (or group's) limit and open receivables in one currency; `held` is whether
    an automatic hold is on."""
    currency: str
    limit_minor: int | None
    exposure_minor: int
    held: bool

    @property
    def headroom_minor(self) -> int | None:
        """What may still be invoiced; negative when over the limit, None without a limit."""
        return None if self.limit_minor is None else self.limit_minor - self.exposure_minor


@dataclass(frozen=True)
class HoldChange:
    currency: str
    action: Literal["place", "release"]
    reason: Literal["limit_exceeded", "within_limit"]


def hold_changes(lines: Iterable[CreditLine]) -> list[HoldChange]:
    """Automatic holds to place or release. Exposure equal to the limit is within it; a line
    without a limit is never held automatically (a hold left from a removed limit is released)."""
    changes = []
    for line in lines:
        over = line.limit_minor is not None and line.exposure_minor > line.limit_minor
        if over and not line.held:
            changes.append(HoldChange(line.currency, "place", "limit_exceeded"))
        elif line.held and not over:
            changes.append(HoldChange(line.currency, "release", "within_limit"))
    return changes


def roll_up(members: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """A group's exposure per currency: {member: {currency: exposure}} summed per currency,
    never converted across currencies."""
    total: dict[str, int] = {}
    for exposures in members.values():
        for currency, amount in exposures.items():
            total[currency] = total.get(currency, 0) + amount
    return dict(sorted(total.items()))


# --- words -------------------------------------------------------------------------------------

LANGUAGES = ("en", "tr", "cs", "fa")

_TEMPLATES: dict[str, dict[str, str]] = {
    "sector_risk": {
        "en": "Sector {sector} carries {risk} credit risk; limit factor {factor}%",
        "tr": "{sector} sektörü {risk} kredi riski taşır; limit katsayısı %{factor}",
        "cs": "Odvětví {sector}: {risk} úvěrové riziko; koeficient limitu {factor} %",
        "fa": "بخش {sector} ریسک اعتباری {risk} دارد؛ ضریب سقف اعتبار {factor}٪",
    },
    "revenue_share": {
        "en": "Base limit is {share}% of the declared annual revenue",
        "tr": "Temel limit, beyan edilen yıllık cironun %{share} oranındadır",
        "cs": "Základní limit je {share} % deklarovaného ročního obratu",
        "fa": "سقف پایه {share}٪ درآمد سالانهٔ اعلام‌شده است",
    },
    "young_company": {
        "en": "Trading for {years} years: limit reduced to {factor}%",
        "tr": "{years} yıldır faaliyette: limit %{factor} oranına düşürüldü",
        "cs": "Doba podnikání {years} r.: limit snížen na {factor} %",
        "fa": "{years} سال سابقهٔ فعالیت: سقف به {factor}٪ کاهش یافت",
    },
    "bureau_score": {
        "en": "Credit bureau score {score}: limit reduced to {factor}%",
        "tr": "Kredi bürosu puanı {score}: limit %{factor} oranına düşürüldü",
        "cs": "Skóre úvěrového registru {score}: limit snížen na {factor} %",
        "fa": "امتیاز اعتباری {score}: سقف به {factor}٪ کاهش یافت",
    },
    "no_bureau_score": {
        "en": "No credit bureau score: limit reduced to {factor}%",
        "tr": "Kredi bürosu puanı yok: limit %{factor} oranına düşürüldü",
        "cs": "Bez skóre úvěrového registru: limit snížen na {factor} %",
        "fa": "امتیاز اعتباری در دست نیست: سقف به {factor}٪ کاهش یافت",
    },
    "requested_below_recommendation": {
        "en": "The requested limit of {requested} is below the recommended {recommended}; {limit} is granted",
        "tr": "Talep edilen {requested} limit, önerilen {recommended} tutarının altında; {limit} verildi",
        "cs": "Požadovaný limit {requested} je nižší než doporučených {recommended}; přiznáno {limit}",
        "fa": "سقف درخواستی {requested} کمتر از {recommended} پیشنهادی است؛ {limit} اعطا شد",
    },
    "requested_above_recommendation": {
        "en": "The requested limit of {requested} is above the recommended {recommended}; a bank guarantee can "
              "cover the part above it, up to a limit of {ceiling}",
        "tr": "Talep edilen {requested} limit, önerilen {recommended} tutarının üzerinde; aşan kısım banka teminat "
              "mektubuyla en fazla {ceiling} limite kadar karşılanabilir",
        "cs": "Požadovaný limit {requested} je vyšší než doporučených {recommended}; část nad doporučením může "
              "krýt bankovní záruka, a to až do limitu {ceiling}",
        "fa": "سقف درخواستی {requested} بیشتر از {recommended} پیشنهادی است؛ مازاد آن را می‌توان با ضمانت‌نامهٔ "
              "بانکی تا سقف {ceiling} پوشش داد",
    },
    "insurance_cap": {
        "en": "Limits above {threshold} need credit insurance; not enough was offered, so the limit is capped at "
              "{limit}",
        "tr": "{threshold} üzerindeki limitler için alacak sigortası gerekir; yeterli sigorta sunulmadığından "
              "limit {limit} ile sınırlandı",
        "cs": "Limity nad {threshold} vyžadují pojištění pohledávek; nabídnuté pojištění nestačí, limit je proto "
              "omezen na {limit}",
        "fa": "سقف‌های بالاتر از {threshold} به بیمهٔ اعتباری نیاز دارند؛ بیمهٔ کافی ارائه نشد، بنابراین سقف "
              "به {limit} محدود شد",
    },
    "security_deposit": {
        "en": "Deposit of {amount} ({share}% of the limit) required for {risk}-risk sectors",
        "tr": "Depozito gerekir: {amount} (limitin %{share} oranı), {risk} riskli sektörler için",
        "cs": "Požadována kauce {amount} ({share} % limitu), riziko odvětví: {risk}",
        "fa": "سپردهٔ {amount} ({share}٪ سقف اعتبار) برای بخش‌های با ریسک {risk} لازم است",
    },
    "security_guarantee": {
        "en": "Bank guarantee of {amount} required for the part of the limit above the recommended {recommended}",
        "tr": "Limitin önerilen {recommended} üzerindeki kısmı için {amount} tutarında banka teminat mektubu gerekir",
        "cs": "Pro část limitu nad doporučených {recommended} je nutná bankovní záruka {amount}",
        "fa": "برای بخشی از سقف که از {recommended} پیشنهادی بیشتر است، ضمانت‌نامهٔ بانکی به مبلغ {amount} لازم است",
    },
    "security_insurance": {
        "en": "Credit insurance of {amount} required: limits above {threshold} must be insured",
        "tr": "{amount} tutarında alacak sigortası gerekir: {threshold} üzerindeki limitler sigortalı olmalıdır",
        "cs": "Nutné pojištění pohledávek ve výši {amount}: limity nad {threshold} musí být pojištěny",
        "fa": "بیمهٔ اعتباری به مبلغ {amount} لازم است: سقف‌های بالاتر از {threshold} باید بیمه شوند",
    },
    "terms_capped": {
        "en": "Terms capped at {max_days} days for {risk}-risk sectors; {requested_days} were requested",
        "tr": "Vade, {risk} riskli sektörlerde en fazla {max_days} gün; {requested_days} gün talep edildi",
        "cs": "Splatnost omezena na {max_days} dní (riziko odvětví: {risk}); požadováno {requested_days} dní",
        "fa": "مهلت پرداخت برای بخش‌های با ریسک {risk} حداکثر {max_days} روز است؛ {requested_days} روز درخواست شده بود",
    },
    "no_history": {
        "en": "Nothing invoiced in the last year: no limit recommended yet",
        "tr": "Son bir yılda fatura kesilmedi: henüz limit önerilmiyor",
        "cs": "Za poslední rok nebylo nic fakturováno: limit zatím nelze doporučit",
        "fa": "در سال گذشته صورتحسابی صادر نشده است: هنوز سقفی پیشنهاد نمی‌شود",
    },
    "invoicing_basis": {
        "en": "Average monthly invoicing of the last {months} month(s), times {multiplier} to cover {terms_days} "
              "days of terms plus a month of new invoices",
        "tr": "Son {months} ayın aylık ortalama faturalaması, {terms_days} günlük vade ve bir aylık yeni faturalar "
              "için {multiplier} ile çarpıldı",
        "cs": "Průměrná měsíční fakturace za posledních {months} měs., vynásobená {multiplier} na pokrytí "
              "splatnosti {terms_days} dní a jednoho měsíce nové fakturace",
        "fa": "میانگین صورتحساب ماهانهٔ {months} ماه اخیر، ضرب در {multiplier} برای پوشش {terms_days} روز مهلت "
              "پرداخت و یک ماه صورتحساب جدید",
    },
    "grade_factor": {
        "en": "Risk grade {grade}: limit set to {factor}% of that amount",
        "tr": "Risk notu {grade}: limit bu tutarın %{factor} oranına ayarlandı",
        "cs": "Riziková třída {grade}: limit stanoven na {factor} % této částky",
        "fa": "درجهٔ ریسک {grade}: سقف روی {factor}٪ این مبلغ تنظیم شد",
    },
}

REASON_CODES = frozenset(_TEMPLATES)

# How a risk class reads in each language (cs agrees with "riziko", neuter).
_RISK_WORDS: dict[str, dict[str, str]] = {
    "en": {"low": "low", "medium": "medium", "high": "high", "very_high": "very high"},
    "tr": {"low": "düşük", "medium": "orta", "high": "yüksek", "very_high": "çok yüksek"},
    "cs": {"low": "nízké", "medium": "střední", "high": "vysoké", "very_high": "velmi vysoké"},
    "fa": {"low": "پایین", "medium": "متوسط", "high": "بالا", "very_high": "بسیار بالا"},
}

# The shipped sectors' names; a tenant's own sector keys read as written.
_SECTOR_WORDS: dict[str, dict[str, str]] = {
    "en": {"construction": "construction", "retail": "retail", "hospitality": "hospitality",
           "manufacturing": "manufacturing", "wholesale": "wholesale", "healthcare": "healthcare",
           "public_sector": "public sector", "transport": "transport", "agriculture": "agriculture",
           "it_services": "IT services", "professional_services": "professional services", "energy": "energy"},
    "tr": {"construction": "İnşaat", "retail": "Perakende", "hospitality": "Konaklama ve yeme-içme",
           "manufacturing": "İmalat", "wholesale": "Toptan ticaret", "healthcare": "Sağlık",
           "public_sector": "Kamu", "transport": "Ulaştırma", "agriculture": "Tarım",
           "it_services": "Bilişim hizmetleri", "professional_services": "Mesleki hizmetler", "energy": "Enerji"},
    "cs": {"construction": "stavebnictví", "retail": "maloobchod", "hospitality": "pohostinství a ubytování",
           "manufacturing": "zpracovatelský průmysl", "wholesale": "velkoobchod", "healthcare": "zdravotnictví",
           "public_sector": "veřejný sektor", "transport": "doprava", "agriculture": "zemědělství",
           "it_services": "IT služby", "professional_services": "odborné služby", "energy": "energetika"},
    "fa": {"construction": "ساخت‌وساز", "retail": "خرده‌فروشی", "hospitality": "هتلداری و پذیرایی",
           "manufacturing": "تولید صنعتی", "wholesale": "عمده‌فروشی", "healthcare": "بهداشت و درمان",
           "public_sector": "دولتی", "transport": "حمل‌ونقل", "agriculture": "کشاورزی",
           "it_services": "فناوری اطلاعات", "professional_services": "خدمات تخصصی", "energy": "انرژی"},
}


def _render(name: str, value: int | float | str, params: Mapping[str, int | float | str], language: str) -> str:
    if name.endswith("_minor"):
        return format_money_native(int(value), str(params["currency"]), language)
    if name == "risk":
        return _RISK_WORDS[language][str(value)]
    if name == "sector":
        return _SECTOR_WORDS[language].get(str(value), str(value))
    if isinstance(value, (int, float)):
        system = numbering_system(language)
        return native_digits(format_decimal(Decimal(str(value)), locale=language, numbering_system=system), language)
    return str(value)


def explain(reason: Reason, language: str) -> str:
    """The reason as a sentence in en, tr, cs or fa (numbers in the language's digits, money in
    its format); any other language gets English. An unknown code is an error, not silence."""
    lang = language.replace("_", "-").split("-")[0].lower()
    lang = lang if lang in LANGUAGES else "en"
    try:
        template = _TEMPLATES[reason.code][lang]
    except KeyError:
        raise ValueError(f"unknown reason code {reason.code!r}") from None
    values = {name.removesuffix("_minor"): _render(name, value, reason.params, lang)
              for name, value in reason.params.items() if name != "currency"}
    return template.format(**values)
