"""Statutory late-payment interest and fixed compensation. Pure: the only I/O is reading the
packaged rate table (data/late_payment.yaml), which the finance team maintains."""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

from shared.contract.money import currency_exponent, validate_currency

DEFAULT_PATH = Path(__file__).parent.parent / "data" / "late_payment.yaml"
_DAYS_PER_YEAR = 365  # actual/365, also in leap years: the statutes quote annual rates per 365 days


@dataclass(frozen=True)
class RatePeriod:
    start: date  # in force from this day until the next period's start (the last one: open-ended)
    annual_rate: Decimal  # percent, e.g. Decimal("10.15")
    reference_rate: Decimal | None  # percent, informational (e.g. the ECB MRO rate)
    source: str
    verified: bool = True


@dataclass(frozen=True)
class Jurisdiction:
    code: str
    name: str
    basis: str
    compensation_minor: dict[str, int]
    rates: tuple[RatePeriod, ...]  # sorted by start, strictly


@dataclass(frozen=True)
class InterestPiece:
    start: date
    end: date  # exclusive
    days: int
    annual_rate: Decimal
    amount: Decimal  # minor units, unrounded (shown to 28 digits; the total is rounded exactly)
    principal_minor: int = 0  # what was owed on each day of the piece


@dataclass(frozen=True)
class Interest:
    amount_minor: int
    pieces: tuple[InterestPiece, ...]


def load_jurisdictions(path: Path | None = None) -> dict[str, Jurisdiction]:
    """The jurisdictions in the rate table; ValueError naming jurisdiction, row and field on bad data."""
    return dict(_load_default()) if path is None else _load(path)


@lru_cache(maxsize=1)
def _load_default() -> dict[str, Jurisdiction]:
    return _load(DEFAULT_PATH)


def compensation_minor(jurisdiction: Jurisdiction, currency: str) -> int:
    return jurisdiction.compensation_minor.get(currency, 0)


def interest(jurisdiction: Jurisdiction, principal_minor: int, start: date, end: date) -> Interest:
    """Simple interest on principal_minor from start (inclusive, the first day of delay) to end
    (exclusive), actual days / 365, split wherever the rate changes; rounded once, half up."""
    if principal_minor < 0:
        raise ValueError(f"principal_minor must not be negative, got {principal_minor}")
    return interest_on_balance(jurisdiction, principal_minor, (), start, end)


def interest_on_balance(jurisdiction: Jurisdiction, open_minor: int, payments: Iterable[tuple[date, int]],
                        start: date, end: date) -> Interest:
    """Interest from start to end (exclusive) on what was owed each day: what is open now plus
    what was paid after that day (a reversal is a negative payment). A payment on day p lowers the
    principal from p on, so a part payment in the middle splits the span, as a rate change does;
    every piece is exact and the total is rounded once, half up."""
    if end <= start:
        return Interest(0, ())
    payments = [(day, amount) for day, amount in payments if day > start]
    bounds = [start, *sorted({day for day, _ in payments if day < end}), end]
    total, pieces = Fraction(0), []
    for a, b in zip(bounds, bounds[1:]):
        principal = max(0, open_minor + sum(amount for day, amount in payments if day >= b))
        exact, parts = _exact(jurisdiction, principal, a, b)
        total += exact
        pieces += parts
    return Interest(_round_half_up(total), tuple(pieces))


def _exact(jurisdiction: Jurisdiction, principal_minor: int, start: date, end: date) -> tuple[Fraction, list[InterestPiece]]:
    if principal_minor == 0:
        return Fraction(0), []
    rates = jurisdiction.rates
    i = bisect_right([r.start for r in rates], start) - 1
    if i < 0:
        # No rate is known then; the first row's rate would be a guess, and a wrong one in court.
        first = rates[0].start.isoformat() if rates else "nothing"
        raise ValueError(f"{jurisdiction.code}: no late-payment rate is known for {start.isoformat()} "
                         f"(the rate table starts at {first})")
    pieces: list[InterestPiece] = []
    total = Fraction(0)  # exact, so splitting a span never changes the result
    cursor = start
    while cursor < end:
        stop = min(end, rates[i + 1].start) if i + 1 < len(rates) else end
        days = (stop - cursor).days
        exact = principal_minor * Fraction(rates[i].annual_rate) * days / (100 * _DAYS_PER_YEAR)
        total += exact
        pieces.append(InterestPiece(cursor, stop, days, rates[i].annual_rate,
                                    Decimal(exact.numerator) / Decimal(exact.denominator), principal_minor))
        cursor, i = stop, i + 1
    return total, pieces


def _round_half_up(x: Fraction) -> int:
    # x >= 0 here; Decimal's quantize would first round the non-terminating /365 quotient to 28 digits.
    whole, rest = divmod(x.numerator, x.denominator)
    return whole + (2 * rest >= x.denominator)


# --- loading and validation ----------------------------------------------------------------------


def _load(path: Path) -> dict[str, Jurisdiction]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = data.get("jurisdictions") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: expected a non-empty top-level 'jurisdictions:' mapping")
    return {str(code): _jurisdiction(path, str(code), entry) for code, entry in entries.items()}


def _jurisdiction(path: Path, code: str, entry: Any) -> Jurisdiction:
    def fail(where: str, problem: str) -> ValueError:
        return ValueError(f"{path}: jurisdiction {code!r}, {where}: {problem}")

    if not isinstance(entry, dict):
        raise fail("entry", "must be a mapping")
    for key in ("name", "basis"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise fail(f"field '{key}'", "must be a non-empty string")
    # Only actual/365 is implemented; any other value would silently be ignored.
    if entry.get("day_count") != "actual/365":
        raise fail("field 'day_count'", f"must be 'actual/365', got {entry.get('day_count')!r}")

    compensation: dict[str, int] = {}
    raw_compensation = entry.get("compensation") or {}
    if not isinstance(raw_compensation, dict):
        raise fail("field 'compensation'", "must be a mapping of currency code to amount")
    for currency, raw in raw_compensation.items():
        where = f"field 'compensation' ({currency})"
        try:
            validate_currency(str(currency))
        except ValueError as e:
            raise fail(where, str(e)) from None
        amount = _decimal(raw)
        if amount is None:
            raise fail(where, f"must be a non-negative decimal amount as a quoted string, got {raw!r}")
        minor = amount.scaleb(currency_exponent(currency))  # the ISO exponent, never hand-written
        if minor != minor.to_integral_value():
            raise fail(where, f"{raw!r} has more decimals than {currency} has")
        compensation[currency] = int(minor)

    raw_rates = entry.get("rates")
    if not isinstance(raw_rates, list) or not raw_rates:
        raise fail("field 'rates'", "must be a non-empty list")
    rates: list[RatePeriod] = []
    for n, row in enumerate(raw_rates):
        if not isinstance(row, dict):
            raise fail(f"rates[{n}]", "must be a mapping")
        start = row.get("from")
        # YAML reads 2024-01-01 as a date; a datetime (or a string) means a typo in the row.
        if not isinstance(start, date) or isinstance(start, datetime):
            raise fail(f"rates[{n}] field 'from'", f"must be a date like 2024-01-01, got {start!r}")
        where = f"rates[{n}] (from {start.isoformat()})"
        if rates and start <= rates[-1].start:
            raise fail(f"{where} field 'from'",
                       f"rows must be sorted strictly by date; {start} follows {rates[-1].start}")
        rate = _decimal(row.get("rate"))
        if rate is None:
            raise fail(f"{where} field 'rate'",
                       f"must be a non-negative percentage as a quoted string, got {row.get('rate')!r}")
        reference = None
        if row.get("reference_rate") is not None:
            reference = _decimal(row["reference_rate"])
            if reference is None:
                raise fail(f"{where} field 'reference_rate'",
                           f"must be a non-negative percentage as a quoted string, got {row['reference_rate']!r}")
        source = row.get("source")
        if not isinstance(source, str) or not source.strip():
            raise fail(f"{where} field 'source'", "must say where the value comes from")
        verified = row.get("verified", True)
        if not isinstance(verified, bool):
            raise fail(f"{where} field 'verified'", f"must be true or false, got {verified!r}")
        rates.append(RatePeriod(start, rate, reference, source.strip(), verified))
    return Jurisdiction(code, entry["name"].strip(), entry["basis"].strip(), compensation, tuple(rates))


def _decimal(raw: Any) -> Decimal | None:
    """A finite, non-negative Decimal from a string; None otherwise. Strings only: a YAML float
    (10.1) has already been through binary rounding."""
    if not isinstance(raw, str):
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() and value >= 0 else None
