"""Report periods as people write them: a month, a quarter, a year, or a run of days."""
from __future__ import annotations

import re
from datetime import date, timedelta


class PeriodError(ValueError):
    pass


def parse_period(text: str) -> tuple[date, date]:
    """2026-03 (a month), 2026-Q1 (a quarter), 2026 (a year) or 2026-03-01..2026-03-15 (days,
    both included): the first day and the day after the last."""
    text = text.strip()
    try:
        if m := re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})\.\.(\d{4})-(\d{2})-(\d{2})", text):
            first = date(int(m[1]), int(m[2]), int(m[3]))
            last = date(int(m[4]), int(m[5]), int(m[6]))
            if last < first:
                raise PeriodError("the period ends before it starts")
            return first, last + timedelta(days=1)
        if m := re.fullmatch(r"(\d{4})-(\d{2})", text):
            first = date(int(m[1]), int(m[2]), 1)
            return first, date(first.year + first.month // 12, first.month % 12 + 1, 1)
        if m := re.fullmatch(r"(\d{4})-Q([1-4])", text, re.IGNORECASE):
            first = date(int(m[1]), 3 * int(m[2]) - 2, 1)
            end_month = first.month + 3
            return first, date(first.year + (end_month - 1) // 12, (end_month - 1) % 12 + 1, 1)
        if m := re.fullmatch(r"(\d{4})", text):
            return date(int(m[1]), 1, 1), date(int(m[1]) + 1, 1, 1)
    except ValueError as e:
        if isinstance(e, PeriodError):
            raise
        raise PeriodError(f"no such date: {e}") from None
    raise PeriodError("give a month (2026-03), a quarter (2026-Q1), a year (2026) or days (2026-03-01..2026-03-15)")


def month_ends(last: date, count: int = 6) -> list[date]:
    """The points of a trend: the last day of each of the `count - 1` months before `last`'s,
    then `last` itself, oldest first."""
    ends: list[date] = []
    first = last.replace(day=1)
    for _ in range(count - 1):
        ends.append(first - timedelta(days=1))
        first = ends[-1].replace(day=1)
    return [*reversed(ends), last]


__all__ = ["PeriodError", "month_ends", "parse_period"]
