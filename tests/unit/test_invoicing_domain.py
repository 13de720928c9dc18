"""Invoicing domain: cash application, overdue instant, aging. Pure, no I/O."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.invoicing.domain.model import (
    AllocationLine,
    CashApplication,
    OpenInvoice,
    aging_bucket,
    allocate_payment,
    overdue_at,
)

UTC = timezone.utc


def inv(invoice_id: str, open_minor: int, due: date, *, currency: str = "EUR", number: str | None = None,
        external_id: str | None = None, issue: date | None = None) -> OpenInvoice:
    return OpenInvoice(
        invoice_id=invoice_id,
        number=number or f"INV-{invoice_id}",
        external_id=external_id or f"ext-{invoice_id}",
        currency=currency,
        open_minor=open_minor,
        issue_date=issue or due - timedelta(days=30),
        due_date=due,
    )


# --------------------------------------------------------------------------- allocate_payment


class TestAllocatePayment:
    def test_exact_payment_settles_single_invoice(self):
        a = inv("a", 10_000, date(2026, 3, 1))
        result = allocate_payment([a], 10_000, "EUR")
        assert result == CashApplication([AllocationLine("a", 10_000, 0)], 0)
        assert result.settled == ["a"]

    def test_partial_payment_leaves_rest_open_and_settles_nothing(self):
        a = inv("a", 10_000, date(2026, 3, 1))
        result = allocate_payment([a], 2_500, "EUR")
        assert result.allocations == [AllocationLine("a", 2_500, 7_500)]
        assert result.unapplied_minor == 0
        assert result.settled == []

    def test_oldest_due_date_first_across_several_invoices(self):
        newest = inv("new", 3_000, date(2026, 3, 20))
        oldest = inv("old", 1_000, date(2026, 1, 10))
        middle = inv("mid", 2_000, date(2026, 2, 15))
        # 1000 settles "old", 2000 settles "mid", 500 goes to "new" (2500 still open)
        result = allocate_payment([newest, oldest, middle], 3_500, "EUR")
        assert result.allocations == [
            AllocationLine("old", 1_000, 0),
            AllocationLine("mid", 2_000, 0),
            AllocationLine("new", 500, 2_500),
        ]
        assert result.settled == ["old", "mid"]
        assert result.unapplied_minor == 0

    def test_same_due_date_older_issue_date_first(self):
        due = date(2026, 3, 1)
        later_issue = inv("b", 1_000, due, issue=date(2026, 2, 1))
        earlier_issue = inv("a", 1_000, due, issue=date(2026, 1, 1))
        result = allocate_payment([later_issue, earlier_issue], 1_000, "EUR")
        assert result.allocations == [AllocationLine("a", 1_000, 0)]

    def test_over_payment_becomes_unapplied_credit(self):
        a = inv("a", 1_000, date(2026, 1, 1))
        b = inv("b", 2_000, date(2026, 2, 1))
        result = allocate_payment([a, b], 5_000, "EUR")
        assert [x.amount_minor for x in result.allocations] == [1_000, 2_000]
        assert result.unapplied_minor == 2_000
        assert result.settled == ["a", "b"]

    def test_no_open_invoice_everything_unapplied(self):
        result = allocate_payment([], 4_200, "EUR")
        assert result.allocations == []
        assert result.unapplied_minor == 4_200
        assert result.settled == []

    def test_reference_by_number_goes_first_even_if_not_oldest(self):
        old = inv("old", 1_000, date(2026, 1, 1))
        new = inv("new", 1_000, date(2026, 6, 1), number="INV-2026-0042")
        result = allocate_payment([old, new], 1_500, "EUR", references=["INV-2026-0042"])
        assert result.allocations == [AllocationLine("new", 1_000, 0), AllocationLine("old", 500, 500)]

    def test_reference_by_external_id(self):
        old = inv("old", 1_000, date(2026, 1, 1))
        new = inv("new", 1_000, date(2026, 6, 1), external_id="erp-77")
        result = allocate_payment([old, new], 1_000, "EUR", references=["erp-77"])
        assert result.allocations == [AllocationLine("new", 1_000, 0)]
        assert result.settled == ["new"]

    def test_references_in_the_order_given(self):
        a = inv("a", 1_000, date(2026, 1, 1))
        b = inv("b", 1_000, date(2026, 2, 1))
        c = inv("c", 1_000, date(2026, 3, 1))
        result = allocate_payment([a, b, c], 2_500, "EUR", references=["INV-c", "ext-b"])
        assert result.allocations == [
            AllocationLine("c", 1_000, 0),
            AllocationLine("b", 1_000, 0),
            AllocationLine("a", 500, 500),
        ]

    def test_unknown_and_duplicate_references_are_harmless(self):
        a = inv("a", 1_000, date(2026, 1, 1))
        b = inv("b", 1_000, date(2026, 2, 1))
        result = allocate_payment([a, b], 2_000, "EUR", references=["nope", "INV-b", "ext-b", "INV-b"])
        assert result.allocations == [AllocationLine("b", 1_000, 0), AllocationLine("a", 1_000, 0)]

    def test_only_the_payment_currency_is_touched(self):
        try_old = inv("try-old", 5_000, date(2025, 1, 1), currency="TRY")
        eur = inv("eur", 1_000, date(2026, 1, 1), currency="EUR")
        result = allocate_payment([try_old, eur], 3_000, "EUR")
        assert result.allocations == [AllocationLine("eur", 1_000, 0)]
        assert result.unapplied_minor == 2_000

    def test_reference_to_invoice_in_other_currency_is_ignored(self):
        try_inv = inv("try", 5_000, date(2026, 1, 1), currency="TRY", number="INV-T")
        eur = inv("eur", 1_000, date(2026, 1, 1), currency="EUR")
        result = allocate_payment([try_inv, eur], 1_000, "EUR", references=["INV-T"])
        assert result.allocations == [AllocationLine("eur", 1_000, 0)]

    def test_already_paid_invoices_are_skipped(self):
        paid = inv("paid", 0, date(2025, 1, 1))
        a = inv("a", 1_000, date(2026, 1, 1))
        result = allocate_payment([paid, a], 1_000, "EUR", references=["INV-paid"])
        assert result.allocations == [AllocationLine("a", 1_000, 0)]

    @pytest.mark.parametrize("amount", [0, -1, -10_000])
    def test_non_positive_amount_rejected(self, amount):
        with pytest.raises(ValueError):
            allocate_payment([inv("a", 1_000, date(2026, 1, 1))], amount, "EUR")


@st.composite
def invoices_and_payment(draw):
    n = draw(st.integers(0, 8))
    invoices = []
    for i in range(n):
        invoices.append(OpenInvoice(
            invoice_id=f"id{i}",
            number=f"N{i}",
            external_id=f"X{i}",
            currency=draw(st.sampled_from(["EUR", "TRY", "JPY"])),
            open_minor=draw(st.integers(0, 20_000)),
            issue_date=draw(st.dates(date(2025, 1, 1), date(2025, 12, 31))),
            due_date=draw(st.dates(date(2026, 1, 1), date(2026, 3, 31))),
        ))
    currency = draw(st.sampled_from(["EUR", "TRY", "JPY"]))
    amount = draw(st.integers(1, 100_000))
    pool = [i.number for i in invoices] + [i.external_id for i in invoices] + ["unknown-ref"]
    refs = draw(st.none() | st.lists(st.sampled_from(pool), max_size=5))
    return invoices, amount, currency, refs


@given(invoices_and_payment())
def test_allocation_invariants(case):
    invoices, amount, currency, refs = case
    by_id = {i.invoice_id: i for i in invoices}
    result = allocate_payment(invoices, amount, currency, refs)

    # money is conserved
    assert sum(a.amount_minor for a in result.allocations) + result.unapplied_minor == amount
    assert result.unapplied_minor >= 0
    ids = [a.invoice_id for a in result.allocations]
    assert len(ids) == len(set(ids)), "an invoice was allocated twice"
    for line in result.allocations:
        invoice = by_id[line.invoice_id]
        assert invoice.currency == currency, "touched another currency"
        assert 0 < line.amount_minor <= invoice.open_minor, "over-allocated"
        assert line.invoice_open_minor == invoice.open_minor - line.amount_minor
    # credit is left only when every open invoice in the currency is settled
    open_in_currency = sum(i.open_minor for i in invoices if i.currency == currency)
    assert result.unapplied_minor == max(0, amount - open_in_currency)
    # at most one partial allocation, and it is the last one
    partial = [k for k, a in enumerate(result.allocations) if a.invoice_open_minor > 0]
    assert partial in ([], [len(result.allocations) - 1])
    assert result.settled == [a.invoice_id for a in result.allocations if a.invoice_open_minor == 0]


@given(invoices_and_payment())
def test_without_references_oldest_first_prefix(case):
    invoices, amount, currency, _ = case
    result = allocate_payment(invoices, amount, currency)
    eligible = sorted(
        (i for i in invoices if i.currency == currency and i.open_minor > 0),
        key=lambda i: (i.due_date, i.issue_date, i.number),
    )
    ids = [a.invoice_id for a in result.allocations]
    assert ids == [i.invoice_id for i in eligible[: len(ids)]]


# --------------------------------------------------------------------------- overdue_at


class TestOverdueAt:
    def test_istanbul_midnight_after_due_date(self):
        # Europe/Istanbul is UTC+3 all year: 2026-03-21 00:00 local == 2026-03-20 21:00 UTC
        assert overdue_at(date(2026, 3, 20), "Europe/Istanbul") == datetime(2026, 3, 20, 21, 0, tzinfo=UTC)

    def test_istanbul_with_grace_days(self):
        # grace 5 days: overdue at 2026-03-26 00:00 local == 2026-03-25 21:00 UTC
        assert overdue_at(date(2026, 3, 20), "Europe/Istanbul", grace_days=5) == datetime(
            2026, 3, 25, 21, 0, tzinfo=UTC)

    def test_utc(self):
        assert overdue_at(date(2026, 12, 31), "UTC") == datetime(2027, 1, 1, tzinfo=UTC)

    def test_result_is_utc(self):
        assert overdue_at(date(2026, 3, 20), "Asia/Tokyo").utcoffset() == timedelta(0)

    @pytest.mark.parametrize(
        ("due", "expected_utc"),
        [
            # 2026-03-08 00:00 EST (UTC-5): the switch to EDT happens at 02:00 that night
            (date(2026, 3, 7), datetime(2026, 3, 8, 5, 0, tzinfo=UTC)),
            # 2026-03-09 00:00 EDT (UTC-4)
            (date(2026, 3, 8), datetime(2026, 3, 9, 4, 0, tzinfo=UTC)),
            # 2026-11-01 00:00 EDT (UTC-4): fall back happens at 02:00
            (date(2026, 10, 31), datetime(2026, 11, 1, 4, 0, tzinfo=UTC)),
            # 2026-11-02 00:00 EST (UTC-5)
            (date(2026, 11, 1), datetime(2026, 11, 2, 5, 0, tzinfo=UTC)),
        ],
    )
    def test_new_york_across_dst(self, due, expected_utc):
        assert overdue_at(due, "America/New_York") == expected_utc

    def test_grace_spanning_dst_change_keeps_local_midnight(self):
        # due 2026-03-05, grace 3 -> local midnight 2026-03-09 (EDT) == 04:00 UTC
        assert overdue_at(date(2026, 3, 5), "America/New_York", 3) == datetime(2026, 3, 9, 4, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- aging


AS_OF = date(2026, 6, 30)


@pytest.mark.parametrize(
    ("days_past_due", "bucket"),
    [(-10, "current"), (0, "current"), (1, "1-30"), (30, "1-30"), (31, "31-60"), (60, "31-60"),
     (61, "61-90"), (90, "61-90"), (91, "90+"), (1000, "90+")],
)
def test_aging_bucket_boundaries(days_past_due, bucket):
    assert aging_bucket(AS_OF - timedelta(days=days_past_due), AS_OF) == bucket


def test_aging_bucket_with_gap_in_custom_buckets_raises():
    buckets = (("current", -10**9, 0), ("1-30", 1, 30))
    with pytest.raises(ValueError):
        aging_bucket(AS_OF - timedelta(days=45), AS_OF, buckets)
