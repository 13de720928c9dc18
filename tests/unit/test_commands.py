"""Hostile or impossible values in billing records are rejected with the field and the reason,
never passed on to crash something downstream (the database, the date arithmetic of timers)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.invoicing.service_layer.commands import CreditNoteRecord, InvoiceRecord, RecordPayment

INVOICE = {"external_id": "INV-1", "customer": {"id": "C1", "name": "Acme"}, "currency": "EUR", "amount_minor": 100,
           "issue_date": "2026-01-01", "due_date": "2026-02-01"}


def problems(model, body) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as err:
        model.model_validate(body)
    return [(".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, ")) for e in err.value.errors()]


@pytest.mark.parametrize("where, body, problem", [
    ("customer.name", INVOICE | {"customer": {"id": "C1", "name": "Ac\x00me"}}, "control character U+0000 at position 2"),
    ("number", INVOICE | {"number": "INV\x00-1"}, "control character U+0000 at position 3"),
    ("number", INVOICE | {"number": "INV\x1b[31m"}, "control character U+001B at position 3"),
    ("customer.name", INVOICE | {"customer": {"id": "C1", "name": "Invoice\u202efdp.exe"}},
     "bidirectional control character U+202E at position 7"),
    ("number", INVOICE | {"number": "\u2067INV-1"}, "bidirectional control character U+2067 at position 0"),
])
def test_control_and_bidirectional_override_characters_are_rejected(where, body, problem):
    assert problems(InvoiceRecord, body) == [(where, f"must not contain a {problem}")]


def test_ordinary_text_with_tabs_accents_and_right_to_left_script_is_fine():
    rec = InvoiceRecord.model_validate(INVOICE | {"number": "Fatura\t№ 7", "customer": {"id": "C1", "name": "شرکت آلفا"}})
    assert rec.customer.name == "شرکت آلفا"


@pytest.mark.parametrize("field, value", [("due_date", "9999-12-31"), ("issue_date", "0001-01-01")])
def test_dates_no_receivable_can_have_are_rejected(field, value):
    body = INVOICE | {field: value}
    if field == "issue_date":
        body["due_date"] = "2026-02-01"
    assert (field, "must be between 1900-01-01 and 2999-12-31") in problems(InvoiceRecord, body)


@pytest.mark.parametrize("received_at", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"])
def test_payment_times_outside_the_calendar_are_rejected(received_at):
    body = {"external_id": "P1", "customer_id": "C1", "currency": "EUR", "amount_minor": 1, "received_at": received_at}
    assert problems(RecordPayment, body) == [("received_at", "must be between 1900-01-01 and 2999-12-31")]


def test_credit_note_reason_and_references_are_checked_too():
    body = {"external_id": "CN1", "customer_id": "C1", "currency": "EUR", "amount_minor": 1, "issue_date": "2026-01-01",
            "invoice_refs": ["INV\x00"], "reason": "ok"}
    assert problems(CreditNoteRecord, body) == [("invoice_refs.0", "must not contain a control character U+0000 at position 3")]
