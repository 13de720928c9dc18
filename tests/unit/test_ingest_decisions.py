"""What an incoming invoice record means against what is recorded; reference matching; waves."""
from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from services.invoicing.domain.ingest import IncomingInvoice, RecordedInvoice, decide, waves
from services.invoicing.domain.model import OpenInvoice, unmatched_references

ISSUE, DUE = date(2026, 2, 1), date(2026, 3, 3)


def incoming(**over) -> IncomingInvoice:
    return IncomingInvoice(**({"customer_id": "C1", "number": "N-1", "currency": "EUR", "amount_minor": 10_000,
                               "issue_date": ISSUE, "due_date": DUE} | over))


def recorded(**over) -> RecordedInvoice:
    return RecordedInvoice(**({"customer_id": "C1", "number": "N-1", "currency": "EUR", "amount_minor": 10_000,
                               "open_minor": 10_000, "issue_date": ISSUE, "due_date": DUE, "status": "open"} | over))


def test_new_records_are_created_open_for_their_amount():
    d = decide(incoming(), None)
    assert (d.outcome, d.new_open_minor) == ("created", 10_000)


def test_cancelling_what_was_never_issued_is_rejected():
    d = decide(incoming(cancelled=True), None)
    assert (d.outcome, d.field) == ("rejected", "status")


def test_the_same_record_again_is_unchanged():
    assert decide(incoming(), recorded()).outcome == "unchanged"


def test_a_changed_record_is_an_adjustment_that_keeps_what_was_paid():
    d = decide(incoming(amount_minor=12_000, due_date=date(2026, 3, 20)), recorded(open_minor=4_000))
    assert d.outcome == "adjusted"
    assert d.changes == {"amount_minor": {"old": 10_000, "new": 12_000},
                         "due_date": {"old": "2026-03-03", "new": "2026-03-20"}}
    assert d.new_open_minor == 6_000  # 12,000 less the 6,000 already paid


def test_cutting_below_what_was_paid_is_rejected():
    d = decide(incoming(amount_minor=5_000), recorded(open_minor=4_000))
    assert (d.outcome, d.field) == ("rejected", "amount_minor")
    assert "6000 minor units already paid" in d.reason


def test_an_invoice_cannot_move_customer_or_currency():
    assert decide(incoming(customer_id="C2"), recorded()).field == "customer.id"
    assert decide(incoming(currency="USD"), recorded()).field == "currency"


def test_cancellation_only_while_nothing_is_paid():
    assert decide(incoming(cancelled=True), recorded()).outcome == "cancelled"
    d = decide(incoming(cancelled=True), recorded(open_minor=9_999))
    assert (d.outcome, d.field) == ("rejected", "status")


def test_a_cancelled_invoice_stays_cancelled():
    assert decide(incoming(cancelled=True), recorded(status="cancelled")).outcome == "unchanged"
    assert decide(incoming(), recorded(status="cancelled")).field == "status"


def test_waves_keep_repeated_keys_apart_and_in_order():
    assert waves(["a", "b", "a", "c", "a", "b"]) == [[0, 1, 3], [2, 5], [4]]
    assert waves([]) == []


@given(st.lists(st.sampled_from("abcde"), max_size=40))
def test_waves_cover_every_item_once_with_distinct_keys(keys):
    result = waves(keys)
    assert sorted(i for wave in result for i in wave) == list(range(len(keys)))
    for wave in result:
        assert len({keys[i] for i in wave}) == len(wave)
    # The n-th occurrence of a key is in wave n.
    for n, wave in enumerate(result):
        for i in wave:
            assert keys[:i].count(keys[i]) == n


def test_references_that_name_no_open_invoice_in_the_currency():
    invoices = [OpenInvoice("1", "N-1", "X-1", "EUR", 100, ISSUE, DUE),
                OpenInvoice("2", "N-2", "X-2", "USD", 100, ISSUE, DUE),
                OpenInvoice("3", "N-3", "X-3", "EUR", 0, ISSUE, DUE)]
    assert unmatched_references(invoices, "EUR", ["N-1", "X-1", "N-2", "N-3", "NOPE"]) == ["N-2", "N-3", "NOPE"]


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4))
def test_stable_ids_are_uuid5_of_the_joined_parts(parts):
    import uuid

    from services.invoicing.service_layer.ingest import _NS, stable_id

    assert stable_id(*parts) == str(uuid.uuid5(_NS, "\x1f".join(parts)))
